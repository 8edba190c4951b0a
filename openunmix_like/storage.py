"""Local paths and fsspec URLs (``s3://``, ``gs://``, ``file://``) behind one small interface.

Only the catalogue engine (``umx-separate --engine ray``) uses URLs; fsspec and
its backends (s3fs, gcsfs) come with the ``ray`` extra and are imported here
only when a URL is met, so local paths need nothing beyond the base install.
``storage_options`` are passed to fsspec unchanged (for example
``{"endpoint_url": "http://127.0.0.1:9000"}`` for an S3-compatible server).
"""
from __future__ import annotations

import contextlib
import csv
import errno
import glob
import io
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .errors import OpenUnmixLikeError

StorageOptions = Optional[Dict[str, object]]


class StorageError(OpenUnmixLikeError, OSError):
    """A URL's backend failed with an error of its own (botocore's ``EndpointConnectionError`` is no
    ``OSError``): one line naming the URL. An ``OSError`` too, so that callers that take an unreadable
    file for a missing one (a ``_done.json`` record) treat it alike."""


@contextlib.contextmanager
def _backend(url: str, action: str) -> Iterator[None]:
    """Turn what an fsspec backend raises, beyond ``OSError``, into a :class:`StorageError` naming ``url``."""
    try:
        yield
    except (OSError, OpenUnmixLikeError):
        raise
    except Exception as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise StorageError(f"{url}: cannot {action} ({reason}); check the URL and --storage-options "
                           "(endpoint_url, credentials)") from None


def is_url(path: str) -> bool:
    """Whether ``path`` names a location through an fsspec protocol (``s3://...``)."""
    return "://" in str(path)


def require_fsspec():
    try:
        import fsspec
    except ImportError:
        raise OpenUnmixLikeError("URLs need fsspec: pip install 'openunmix-like[ray]'") from None
    return fsspec


def filesystem(url: str, storage_options: StorageOptions = None):
    """The fsspec filesystem of ``url`` and the path within it."""
    fsspec = require_fsspec()
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise OpenUnmixLikeError(f"{url}: no filesystem for this URL ({exc}); "
                                 "pip install 'openunmix-like[ray]' (s3fs) or the fsspec backend it names") from None
    except TypeError as exc:  # an option the backend does not take
        raise OpenUnmixLikeError(f"{url}: --storage-options not taken by its filesystem ({exc})") from None
    return fs, path


def join(base: str, relative: str) -> str:
    """``base`` / ``relative`` for local folders and URLs alike."""
    if is_url(base):
        return base.rstrip("/") + "/" + relative.lstrip("/")
    return str(Path(base) / relative)


def parent(path: str) -> str:
    if is_url(path):
        protocol, rest = path.split("://", 1)
        return f"{protocol}://{posixpath.dirname(rest.rstrip('/'))}"
    return str(Path(path).parent)


def _unstrip(url: str, fs, path: str) -> str:
    """Turn a path an fsspec filesystem returned back into a URL of the same protocol."""
    protocol = url.split("://", 1)[0]
    return f"{protocol}://{path.lstrip('/')}" if protocol != "file" else f"file://{path}"


def expand_url(spec: str, extensions: Sequence[str],
               storage_options: StorageOptions = None) -> Tuple[List[str], List[str]]:
    """Audio files named by a URL: an object, a prefix ("folder", searched recursively, without hidden
    files) or a glob."""
    fs, path = filesystem(spec, storage_options)
    try:
        with _backend(spec, "list"):
            return _expand(spec, fs, path, extensions)
    except StorageError as exc:
        return [], [str(exc)]
    except OSError as exc:
        return [], [f"{spec}: cannot list ({exc}); check the URL and credentials (--storage-options)"]


def _expand(spec: str, fs, path: str, extensions: Sequence[str]) -> Tuple[List[str], List[str]]:
    # An object named with [ ] * or ? ("[live] 01.flac") is that object, not a pattern, as a local file is.
    if glob.has_magic(path) and not fs.isfile(path):
        found = [p for p in fs.glob(path) if fs.isfile(p)]
        if not found:
            return [], [f"{spec}: pattern matches no files"]
        return sorted(_unstrip(spec, fs, p) for p in found), []
    if fs.isfile(path):
        return [spec], []
    if fs.isdir(path):
        # Without hidden files, as a local folder is searched (macOS puts ``._song.wav`` beside ``song.wav``).
        found = [p for p in fs.find(path) if Path(p).suffix.lower() in extensions and not Path(p).name.startswith(".")]
        if not found:
            return [], [f"{spec}: folder holds no audio files ({', '.join(sorted(extensions))})"]
        return sorted(_unstrip(spec, fs, p) for p in found), []
    return [], [f"{spec}: no such file or folder"]


def read_manifest(manifest: str, storage_options: StorageOptions = None) -> List[str]:
    """Paths listed by a manifest: a text file (one path or URL a line, as written but for the line ending;
    a line starting with ``#`` is a comment, a blank one is skipped), or a CSV/Parquet table with a ``path`` column.

    Raises:
        OpenUnmixLikeError: naming the manifest, when it cannot be read or has no ``path`` column.
    """
    suffix = Path(manifest.split("?", 1)[0]).suffix.lower()
    try:
        data = read_bytes(manifest, storage_options)
    except StorageError as exc:
        raise OpenUnmixLikeError(f"--manifest {exc}") from None
    except OSError as exc:
        raise OpenUnmixLikeError(f"--manifest {manifest}: cannot read ({exc})") from None
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data))
        except ImportError:
            raise OpenUnmixLikeError("Parquet manifests need pyarrow: pip install 'openunmix-like[ray]'") from None
        except Exception as exc:
            raise OpenUnmixLikeError(f"--manifest {manifest}: not a Parquet file ({exc})") from None
        if "path" not in table.column_names:
            raise OpenUnmixLikeError(f"--manifest {manifest}: no 'path' column (columns: {table.column_names})")
        return [str(p) for p in table.column("path").to_pylist() if p]
    # Bytes that are not UTF-8 stay as they are (as os.fsdecode keeps them): a local file's name of another encoding.
    text = data.decode("utf-8-sig", errors="surrogateescape")
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise OpenUnmixLikeError(f"--manifest {manifest}: no 'path' column in its header "
                                     f"(columns: {reader.fieldnames}); add one")
        return [row["path"] for row in reader if (row.get("path") or "").strip()]
    # A line is a name as it is, spaces included: only its ending (\n or \r\n) is left out.
    lines = (line[:-1] if line.endswith("\r") else line for line in text.split("\n"))
    return [line for line in lines if line.strip() and not line.startswith("#")]


def read_bytes(path: str, storage_options: StorageOptions = None) -> bytes:
    if is_url(path):
        fs, inner = filesystem(path, storage_options)
        with _backend(path, "read"):
            return fs.cat_file(inner)
    return Path(path).read_bytes()


def size(path: str, storage_options: StorageOptions = None) -> int:
    if is_url(path):
        fs, inner = filesystem(path, storage_options)
        with _backend(path, "read"):
            return int(fs.size(inner))
    return os.path.getsize(path)


def check_folder(url: str, option: str, storage_options: StorageOptions = None) -> None:
    """Fail at once, with one line, when the folder ``url`` cannot be reached (a wrong endpoint or
    credentials): else every track would find it out alone, each after the backend's retries."""
    try:
        exists(url, storage_options)
    except StorageError as exc:
        raise OpenUnmixLikeError(f"{option} {exc}") from None
    except OSError as exc:
        raise OpenUnmixLikeError(f"{option} {url}: cannot reach it ({' '.join(str(exc).split())}); check the URL "
                                 "and --storage-options (endpoint_url, credentials)") from None


def exists(path: str, storage_options: StorageOptions = None) -> bool:
    if is_url(path):
        fs, inner = filesystem(path, storage_options)
        with _backend(path, "read"):
            return fs.exists(inner)
    return os.path.exists(path)


@contextlib.contextmanager
def local_copy(path: str, storage_options: StorageOptions = None) -> Iterator[Path]:
    """A local file holding ``path``: the file itself, or a temporary download of a URL (removed after)."""
    if not is_url(path):
        yield Path(path)
        return
    from .fileio import no_room_in_temporary_folder, temporary_folder

    fs, inner = filesystem(path, storage_options)
    folder = tempfile.mkdtemp(prefix="umx-input-", dir=temporary_folder())
    try:
        local = Path(folder) / (posixpath.basename(inner.rstrip("/")) or "input")
        try:
            with _backend(path, "download"):
                fs.get_file(inner, str(local))
        except StorageError:
            raise
        except FileNotFoundError:
            raise OpenUnmixLikeError(f"{path}: no such object; check the URL") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise OpenUnmixLikeError(f"{path}: cannot download it: "
                                         f"{no_room_in_temporary_folder(Path(folder).parent, 'its copy')}") from None
            raise OpenUnmixLikeError(f"{path}: cannot download ({exc}); check the URL and credentials") from None
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def put_file(local: Path, url: str, storage_options: StorageOptions = None) -> None:
    """Upload ``local`` to ``url``: one PUT, so readers see the whole object or none."""
    fs, inner = filesystem(url, storage_options)
    try:
        with _backend(url, "upload"):
            fs.makedirs(posixpath.dirname(inner), exist_ok=True)
            fs.put_file(str(local), inner)
    except StorageError:
        raise
    except OSError as exc:
        raise OpenUnmixLikeError(f"{url}: cannot upload ({exc}); check the output URL and credentials") from None


def write_bytes(url: str, data: bytes, storage_options: StorageOptions = None) -> None:
    """Write ``data`` to a local path (atomically, by rename) or a URL (one PUT)."""
    if not is_url(url):
        from .fileio import write_bytes_atomic

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(url, data)
        return
    fs, inner = filesystem(url, storage_options)
    try:
        with _backend(url, "write"):
            fs.makedirs(posixpath.dirname(inner), exist_ok=True)
            fs.pipe_file(inner, data)
    except StorageError:
        raise
    except OSError as exc:
        raise OpenUnmixLikeError(f"{url}: cannot write ({exc}); check the output URL and credentials") from None


def remove(url: str, storage_options: StorageOptions = None) -> None:
    if is_url(url):
        fs, inner = filesystem(url, storage_options)
        with contextlib.suppress(FileNotFoundError), _backend(url, "remove"):
            fs.rm_file(inner)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(url)
