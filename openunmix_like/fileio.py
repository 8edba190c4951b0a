"""Atomic file writes: a reader never sees a half-written file.

A file is written under a hidden name beside its final path,
``.<name>.<pid>-<host>-<random>.partial<suffix>`` (a name too long to leave room for
the rest is cut and given a hash of the whole), and renamed into place when
complete. The writer's process id and a tag of its host in the name let a
later writer of the same path remove what a killed process left behind
(:func:`remove_stale_partials`) without touching files that a process still
running is writing.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Union

from .errors import OpenUnmixLikeError, shown

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs sharing a folder are not kept apart there
    fcntl = None


def sha256_of(path: Union[str, Path]) -> str:
    """The sha256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_mode() -> int:
    """Permissions a plain ``open(path, "w")`` would give (mkstemp uses 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()
# Process ids mean something only on their own host (output folders may be shared).
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
# Bytes of the final name kept in a partial file's name: the rest takes at most about 45
# bytes, and file systems allow 255.
NAME_KEPT = 180
# What follows ".<name>." in a partial file's name (tempfile's random part is [a-z0-9_]).
_PARTIAL_REST = re.compile(r"(?P<pid>[0-9]+)-(?P<host>[0-9a-f]{8})-[a-z0-9_]+\.partial(\.[A-Za-z0-9]+)?")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (a file named after it is then still its own)."""
    if os.name == "nt":
        return True  # os.kill(pid, 0) would terminate the process there: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, someone else's
        return True
    return True


def _partial_name(path: Path) -> str:
    """The part of ``path``'s name that its partial files carry."""
    encoded = os.fsencode(path.name)
    if len(encoded) <= NAME_KEPT:
        return path.name
    return f"{os.fsdecode(encoded[:NAME_KEPT - 9])}~{hashlib.sha1(encoded).hexdigest()[:8]}"


def remove_stale_partials(path: Union[str, Path]) -> List[Path]:
    """Remove the partial files of ``path`` left by writers on this host that are no longer running.

    Partial files of running processes, of other hosts, and without a process
    id (older versions) are left alone. Returns the removed paths.
    """
    path = Path(path)
    start = f".{_partial_name(path)}."
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(start)]
    except OSError:
        return []
    removed = []
    for name in names:
        match = _PARTIAL_REST.fullmatch(name[len(start):])
        if match and match["host"] == HOST_TAG and not process_alive(int(match["pid"])):
            with contextlib.suppress(FileNotFoundError):  # another run may remove it first
                (path.parent / name).unlink()
                removed.append(path.parent / name)
    return removed


def new_partial(path: Union[str, Path], suffix: str = "") -> Path:
    """Create an empty hidden file beside ``path`` to write ``path`` in, first removing stale ones.

    ``suffix`` lets writers that infer the format from the extension see it.
    """
    path = Path(path)
    remove_stale_partials(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{_partial_name(path)}.{os.getpid()}-{HOST_TAG}-", suffix=f".partial{suffix}",
                               dir=path.parent)
    os.close(fd)
    os.chmod(tmp, FILE_MODE)
    return Path(tmp)


# Temporary files in the system's temporary folder (TMPDIR) are named ``openunmix-like-<pid>-<host>-<random><suffix>``,
# so that a later run removes what a killed one (SIGKILL, the out-of-memory killer) left there.
TEMPORARY_PREFIX = "openunmix-like-"
_TEMPORARY_REST = re.compile(r"(?P<pid>[0-9]+)-(?P<host>[0-9a-f]{8})-[a-z0-9_]+(\.[A-Za-z0-9]+)?")


def temporary_folder() -> str:
    """The folder temporary files go to (``$TMPDIR``, else ``/tmp`` and Python's other candidates).

    Raises:
        OpenUnmixLikeError: no candidate can be written (a read-only container with no ``TMPDIR`` set).
    """
    try:
        return tempfile.gettempdir()
    except OSError as exc:  # FileNotFoundError: "No usable temporary directory found in [...]"
        raise OpenUnmixLikeError(f"no writable temporary folder ({exc.strerror or exc}); set TMPDIR to a folder "
                                 "with room") from None


def no_room_in_temporary_folder(folder: Union[str, Path], what: str, nb_bytes: Optional[int] = None) -> str:
    """The message for a temporary folder too full for ``what``, which takes about ``nb_bytes``."""
    size = f" (about {nb_bytes / 1e6:,.0f} MB)" if nb_bytes else ""
    return (f"no room for {what}{size} in the temporary folder {folder}; free space there or set TMPDIR to a "
            "folder with more room")


def remove_stale_temporaries(folder: Union[str, Path]) -> List[Path]:
    """Remove the package's temporary files in ``folder`` left by processes on this host that are no longer running."""
    removed = []
    try:
        names = [n for n in os.listdir(folder) if n.startswith(TEMPORARY_PREFIX)]
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY_REST.fullmatch(name[len(TEMPORARY_PREFIX):])
        if match and match["host"] == HOST_TAG and not process_alive(int(match["pid"])):
            with contextlib.suppress(OSError):  # another run removed it first, or another user's
                os.unlink(Path(folder) / name)
                removed.append(Path(folder) / name)
    return removed


def new_temporary(suffix: str = "") -> Path:
    """Create an empty file (readable by its owner only) in the temporary folder, first removing what killed runs
    left there; the caller removes it.

    Raises:
        OpenUnmixLikeError: no writable temporary folder.
        OSError: the file cannot be created there.
    """
    folder = temporary_folder()
    remove_stale_temporaries(folder)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-{HOST_TAG}-", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(tmp)


class FileInUse(OpenUnmixLikeError, PermissionError):
    """``path`` cannot be replaced or moved: on Windows, another program has it open (a stem in a player, a CSV
    in a spreadsheet: WinError 32 or 5). A ``PermissionError`` still, for callers that go on without the file."""

    def __init__(self, path: Union[str, Path], exc: OSError):
        super().__init__(exc.errno, exc.strerror, os.fspath(path))
        self.path = Path(path)
        self.message = (f"{shown(os.fspath(path))}: cannot be replaced ({exc.strerror or exc}); is it open in another "
                        "program? Close it and run the same command again")

    def __str__(self) -> str:
        return self.message


# ERROR_SHARING_VIOLATION (another program has the file open) and ERROR_ACCESS_DENIED (open, or being deleted).
IN_USE_WINERRORS = (32, 5)


def replace_file(src: Union[str, Path], dst: Union[str, Path], name: Union[str, Path, None] = None) -> None:
    """``os.replace(src, dst)``, where a file in use by another program (Windows' error 32 or 5) is
    :class:`FileInUse` naming ``name`` (the file the user knows: ``dst`` unless given; ``src`` when an earlier
    output is moved aside)."""
    try:
        os.replace(src, dst)
    except PermissionError as exc:
        name = dst if name is None else name
        # Only Windows refuses for a file open elsewhere; a POSIX EACCES means the folder's permissions.
        in_use = getattr(exc, "winerror", None) in IN_USE_WINERRORS and os.path.lexists(name)
        if isinstance(exc, FileInUse) or not in_use:
            raise
        raise FileInUse(name, exc) from exc


def replace_together(staged: Mapping[Path, Path]) -> None:
    """Rename each partial file of ``staged`` (final path -> partial file) over its final path: all or none.

    The files there are first moved aside, so that one that cannot be moved (open in another program, on
    Windows) stops the lot before anything changed, and a later failure puts every one back.

    Raises:
        FileInUse: a file there cannot be moved or replaced; every final path holds what it held before.
    """
    asides: Dict[Path, Path] = {}  # final path -> where its earlier file was moved
    placed: List[Path] = []
    try:
        for path in staged:
            if os.path.lexists(path):
                aside = new_partial(path, ".kept")
                try:
                    replace_file(path, aside, name=path)
                except BaseException:
                    aside.unlink()
                    raise
                asides[path] = aside
        for path, tmp in staged.items():
            replace_file(tmp, path)
            placed.append(path)
    except BaseException:
        for path in placed:
            with contextlib.suppress(OSError):
                os.unlink(path)
        for path, aside in asides.items():
            with contextlib.suppress(OSError):
                os.replace(aside, path)
        raise
    for aside in asides.values():
        with contextlib.suppress(OSError):
            aside.unlink()


@contextlib.contextmanager
def atomic_path(path: Union[str, Path], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    ``suffix`` lets writers that infer the format from the extension see it.

    Raises:
        FileInUse: ``path`` exists and cannot be replaced (open in another program, on Windows).
    """
    tmp_path = new_partial(path, suffix)
    try:
        yield tmp_path
        replace_file(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes_atomic(path: Union[str, Path], data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: Union[str, Path], obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def writable_folder(option: str, folder: Union[str, Path]) -> Path:
    """``folder`` created if missing, after checking a file can be made in it; for output options.

    Raises:
        OpenUnmixLikeError: ``<option> <folder>: ...`` in one line: a file is there, or the folder
            cannot be created or written (tried by making and removing a probe file).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OpenUnmixLikeError(f"{option} {folder}: is a file, not a folder; give a folder (created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OpenUnmixLikeError(f"{option} {folder}: cannot write there ({exc.strerror or exc}); give another folder "
                                 "or fix its permissions") from None
    return folder


@contextlib.contextmanager
def made_folders_removed_if_empty(*folders: Union[str, Path, None]):
    """Remove again, on leaving, those of ``folders`` (and their parents) that did not exist on entering
    and are empty then: a command that stops before writing leaves no empty output folder behind."""
    fresh = []
    for folder in filter(None, folders):
        fresh += [p for p in [Path(folder), *Path(folder).parents] if not p.exists() and p not in fresh]
    try:
        yield
    finally:
        for folder in sorted(fresh, key=lambda p: len(p.parts), reverse=True):  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty



class LockHeld(OSError):
    """Another process holds the lock file ``path``; ``pid`` is its process id, when it wrote one."""

    def __init__(self, path: Path, pid: Optional[int]):
        super().__init__(f"{path}: held by {'process ' + str(pid) if pid else 'another process'}")
        self.path, self.pid = path, pid


def _holder(path: Path) -> Optional[int]:
    try:
        text = path.read_text().split()
    except OSError:
        return None
    return int(text[0]) if text and text[0].isdigit() else None


@contextlib.contextmanager
def held_lock(path: Union[str, Path], wait: bool = True) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on the file ``path`` for the block; it holds the holder's
    process id, and is removed on leaving.

    Processes that write the same files (on this host, or on hosts sharing the folder where the file system
    supports locks) take turns. The lock ends with its process, so a killed holder leaves no stale lock: the
    file it leaves is taken over by the next. Where the file cannot be created (a read-only folder) or the
    platform has no ``flock``, the block runs without the lock.

    Raises:
        LockHeld: with ``wait=False``, another process holds the lock.
    """
    path = Path(path)
    fd = _acquire(path, wait)
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                path.unlink()  # while still held: a process waiting on this file takes the next one
            os.close(fd)


def _acquire(path: Path, wait: bool) -> Optional[int]:
    """The open, locked lock file (None where no lock can be taken)."""
    if fcntl is None:
        return None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(path, _holder(path)) from None
        except OSError:  # a file system without locks
            os.close(fd)
            return None
        try:  # the holder before removed the file we waited on: lock the file at the path now
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
