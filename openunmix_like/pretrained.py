"""Finding models: the bundled default, published weights by name, model folders.

Published weights are described as data in ``pretrained.json`` and fetched
into a cache folder on first use, each file checked against the sha256 prefix
in its name. Two environment variables change where:

- ``OPENUNMIX_LIKE_CACHE``: cache folder (default ``$XDG_CACHE_HOME/openunmix-like``
  or ``~/.cache/openunmix-like``); files go to ``<cache>/<name>/<file>``.
- ``OPENUNMIX_LIKE_BASE_URL``: a mirror; ``{name}`` and ``{file}`` in it are
  replaced, otherwise ``/<file>`` is appended.
- ``OPENUNMIX_LIKE_MIN_RATE``: the slowest download accepted, in KB/s averaged
  over each minute (default 10; 0 waits however long a transfer takes).
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import DownloadError, ModelError
from .fileio import atomic_path, sha256_of
from .modeldir import HASHED_NAME, AudioSettings, find_weight_files, load_model_dir, model_input_level, model_niter
from .progress import bar as progress_bar

if TYPE_CHECKING:
    from torch import nn

CACHE_ENV = "OPENUNMIX_LIKE_CACHE"
BASE_URL_ENV = "OPENUNMIX_LIKE_BASE_URL"
MIN_RATE_ENV = "OPENUNMIX_LIKE_MIN_RATE"
# Where the package's own default model lives (shipped as package data).
BUNDLED_MODEL_DIR = Path(__file__).parent / "models" / "default"
# Seconds a download waits for the server to connect or to send the next bytes.
TIMEOUT_S = 30
# A server may send a byte every few seconds, which no socket timeout catches: a transfer whose average over a
# period falls below the minimum rate is given up. 10 KB/s still brings a 35 MB published file in an hour.
MIN_RATE_KBPS = 10.0
RATE_PERIOD_S = 60.0


class TooSlow(TimeoutError):
    """A transfer that kept going, slower than the minimum rate (:func:`min_rate`)."""


@functools.lru_cache(maxsize=None)
def pretrained_table() -> Dict[str, dict]:
    """Published models: name -> description, URL template, settings, files."""
    return json.loads((Path(__file__).parent / "pretrained.json").read_text())


def known_files() -> Dict[str, AudioSettings]:
    """Settings of every published weight file, by file name."""
    return {
        file: AudioSettings.from_json(entry)
        for entry in pretrained_table().values()
        for file in entry["files"].values()
    }


def cache_dir() -> Path:
    """Where downloaded weights go: ``$OPENUNMIX_LIKE_CACHE``, else ``$XDG_CACHE_HOME/openunmix-like``, else
    ``~/.cache/openunmix-like``. A relative ``XDG_CACHE_HOME`` is ignored, as the XDG specification says:
    the cache would otherwise move with the folder the command runs in."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "openunmix-like"


def file_url(name: str, file: str) -> str:
    mirror = os.environ.get(BASE_URL_ENV)
    if not mirror:
        return pretrained_table()[name]["url"].format(file=file)
    if "{file}" in mirror:
        return mirror.format(name=name, file=file)
    return mirror.format(name=name).rstrip("/") + "/" + file


def expected_hash(file: str) -> str:
    match = HASHED_NAME.match(Path(file).stem)
    if not match:
        raise ValueError(f"published file name {file!r} carries no hash")
    return match.group("hash")


@contextlib.contextmanager
def writing_cache(dest: Path):
    """Turn a failure to write ``dest`` (the cache unwritable, a file in the way, the disk full) into
    a :class:`DownloadError` that says so, rather than one that blames the network."""
    try:
        yield
    except OSError as exc:
        blocker = next((p for p in dest.parents if p.exists() and not p.is_dir()), None)
        what = f"{blocker} is a file" if blocker else exc.strerror or str(exc) or type(exc).__name__
        raise DownloadError(
            f"cannot save {dest.name} in the download cache {dest.parent} ({what}); set {CACHE_ENV} "
            "to a writable folder with room for the weights, or free space there"
        ) from exc


def download(url: str, dest: Path, progress: bool = True) -> None:
    """Download ``url`` to ``dest`` atomically; refuse it if its hash does not match the name.

    Raises:
        DownloadError: the hash differs (the file is deleted), ``url`` is not a URL urllib can fetch,
            ``dest`` cannot be written (unwritable cache, disk full), or ``$OPENUNMIX_LIKE_MIN_RATE`` is no rate.
        OSError, urllib.error.URLError, http.client.HTTPException: the transfer failed, was cut off, got no
            HTTP reply or went slower than :func:`min_rate` (:class:`TooSlow`; :func:`failure_reason` says why
            in one line); nothing is left at ``dest``.
    """
    floor = RateFloor(min_rate())
    with writing_cache(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
    want = expected_hash(dest.name)
    digest = hashlib.sha256()
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except ValueError as exc:  # no scheme, a bad IPv6 address, ...
        raise DownloadError(f"{url}: not a URL that can be downloaded ({exc}); check {BASE_URL_ENV}") from None
    with response, contextlib.ExitStack() as files:
        with writing_cache(dest):
            out = files.enter_context(open(files.enter_context(atomic_path(dest)), "wb"))
        total, received = announced_size(response), 0
        # read1 returns what has arrived, where read waits for the whole block: the rate is checked as bytes come.
        read = getattr(response, "read1", response.read)
        with progress_bar(progress, total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
            try:
                for block in iter(lambda: read(1 << 20), b""):
                    with writing_cache(dest):
                        out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
                    floor.check(received)
            except http.client.IncompleteRead as exc:  # a chunked reply that stopped early
                raise ConnectionError(f"the transfer was cut off after {received} bytes") from exc
        with writing_cache(dest):
            out.close()  # flushes: a full disk may show only here
        if total is not None and received < total:
            raise ConnectionError(f"the transfer was cut off after {received} of {total} bytes")
        if not digest.hexdigest().startswith(want):
            raise DownloadError(
                f"{url}: downloaded file has sha256 {digest.hexdigest()[:len(want)]}..., "
                f"expected {want}...; it was deleted. Check the mirror or retry"
            )


def min_rate() -> float:
    """The slowest download accepted, in KB/s: ``$OPENUNMIX_LIKE_MIN_RATE``, else :data:`MIN_RATE_KBPS`; 0 is none.

    Raises:
        DownloadError: the variable is not a number of at least 0.
    """
    text = os.environ.get(MIN_RATE_ENV, "").strip()
    if not text:
        return MIN_RATE_KBPS
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not rate >= 0 or rate == float("inf"):
        raise DownloadError(f"{MIN_RATE_ENV}={text!r}: give the slowest download to accept in KB/s "
                            f"(default {MIN_RATE_KBPS:g}), or 0 to wait however long a transfer takes")
    return rate


class RateFloor:
    """Gives up a transfer whose average rate over a period of :data:`RATE_PERIOD_S` (each in turn, from the
    first byte's request) is below ``kbps`` KB/s; 0 never does. With the socket's timeout between the bytes,
    this bounds a file's download at about its size over the rate, plus a period."""

    def __init__(self, kbps: float):
        self.kbps, self.period_s = kbps, RATE_PERIOD_S
        self.start, self.received = time.monotonic(), 0

    def check(self, received: int) -> None:
        """Raises :class:`TooSlow` at the end of a period that brought too little, ``received`` bytes in all."""
        now = time.monotonic()
        elapsed = now - self.start
        if not self.kbps or elapsed < self.period_s:
            return
        kbps = (received - self.received) / 1000 / elapsed
        if kbps < self.kbps:
            raise TooSlow(f"the transfer slowed to {kbps:.1f} KB/s over {elapsed:.1f} s, below the {self.kbps:g} "
                          f"KB/s a download must keep up ({MIN_RATE_ENV} sets that, 0 for no limit)")
        self.start, self.received = now, received


def announced_size(response) -> Optional[int]:
    """The size in bytes a reply announces, or ``None`` (chunked, or no usable ``Content-Length``)."""
    if isinstance(response, http.client.HTTPResponse):
        return response.length  # parsed by http.client, which ignores a malformed Content-Length
    try:
        size = int(response.headers.get("Content-Length") or "")
    except ValueError:
        return None
    return size if size >= 0 else None


def failure_reason(exc: BaseException) -> str:
    """Why a transfer failed, in one line."""
    if isinstance(exc, http.client.BadStatusLine) and not isinstance(exc, ConnectionError):
        return f"the reply is not HTTP: {str(exc.line).strip()[:40]!r}"
    if isinstance(exc, urllib.error.HTTPError):  # its reason alone ("Not Found") hides the status
        return " ".join(f"HTTP {exc.code} {exc.reason or ''}".split())
    reason = getattr(exc, "reason", exc)  # a URLError wraps the socket error
    if isinstance(reason, TooSlow):
        return str(reason)
    if isinstance(reason, TimeoutError):  # says only "timed out"
        return f"the server did not answer within {TIMEOUT_S} s"
    return " ".join(str(reason).split()) or type(reason).__name__


def no_server(exc: BaseException) -> bool:
    """Whether ``exc`` says the server could not be reached or stopped answering (no name resolution,
    connection refused or timed out, or sent too slowly): the model's other files, from the same server,
    would wait as long."""
    return (isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError)) \
        or isinstance(exc, TimeoutError)


def fetch(name: str, targets: Optional[Sequence[str]] = None, progress: bool = True) -> Path:
    """Make sure the published files of ``name`` are in the cache; return their folder.

    Raises:
        DownloadError: offline or refused downloads, naming the files to fetch by hand.
    """
    entry = pretrained_table()[name]
    folder = cache_dir() / name
    files = [entry["files"][t] for t in (targets or entry["files"])]
    created = [p for p in [folder, *folder.parents] if not p.exists()]  # deepest first
    try:
        failed = download_missing(name, folder, files, progress)
        if failed:
            urls = " ".join(url for url, _ in failed)
            reasons = "; ".join(dict.fromkeys(reason for _, reason in failed))  # each once, in order
            raise DownloadError(
                f"cannot download the {name!r} weights ({reasons}): fetch {urls} "
                f"and put the files in {folder} (or set {BASE_URL_ENV} to a mirror; "
                f"the bundled model {BUNDLED_NAME!r} needs no download)"
            )
    except BaseException:
        # Leave no empty model folder behind; rmdir never removes a file, so files already there stay.
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    return folder


def download_missing(name: str, folder: Path, files: Sequence[str], progress: bool) -> List[Tuple[str, str]]:
    """Download the ``files`` of ``name`` that ``folder`` lacks (or holds with a wrong hash).

    A file already there with a wrong hash stays until a good copy replaces it. Once the server
    cannot be reached (:func:`no_server`), the files after are not tried: each would wait as long.

    Returns:
        ``(url, reason)`` of each download that failed for lack of network, or that the server
        refused or cut off; the reason says whether a file in ``folder`` failed its sha256 check.

    Raises:
        DownloadError: a downloaded file failed its hash check, or the cache cannot be read or written.
    """
    failed: List[Tuple[str, str]] = []
    unreachable = ""
    for file in files:
        dest = folder / file
        damaged = ""
        if dest.is_file():
            try:
                have, want = sha256_of(dest), expected_hash(file)
            except OSError as exc:  # say, a cache shared with another user, who owns the file
                raise DownloadError(f"{dest}: cannot read this file of the cache ({exc.strerror or exc}); "
                                    f"fix its permissions or set {CACHE_ENV} to a folder of your own") from exc
            if have.startswith(want):
                continue
            damaged = (f"{dest} in the cache failed its sha256 check (sha256 {have[:len(want)]}..., expected "
                       f"{want}...) and was left there; downloading a good copy failed: ")
        url = file_url(name, file)
        if unreachable:
            failed.append((url, damaged + unreachable))
            continue
        try:
            download(url, dest, progress)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            failed.append((url, damaged + failure_reason(exc)))
            if no_server(exc):
                unreachable = failure_reason(exc)
    return failed


def bundled_model_dir() -> Path:
    return BUNDLED_MODEL_DIR


BUNDLED_NAME = "default"  # what --model calls the bundled model (and {model} in output names)


def is_bundled_name(name_or_path: Union[str, Path]) -> bool:
    """Whether ``name_or_path`` names the bundled model: ``"default"``, unless a folder of that name is here."""
    return str(name_or_path) == BUNDLED_NAME and not Path(name_or_path).exists()


def load_models(
    name_or_path: Union[str, Path, None] = None,
    targets: Optional[Sequence[str]] = None,
    progress: bool = True,
) -> Tuple[Dict[str, nn.Module], AudioSettings]:
    """Resolve a model name, folder or the bundled default to target models and settings.

    ``targets`` may also be one target's name (``"vocals"``).

    Raises:
        TypeError: ``name_or_path`` is not a name, a path or ``None``.
        ModelError: the model or a target cannot be found or loaded.
    """
    if name_or_path is not None and not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"a model is a name ({', '.join(pretrained_table())}), a model folder or None (the bundled "
                        f"model), got {type(name_or_path).__name__}; wrap models of your own in Separator(...)")
    if isinstance(targets, str):
        targets = [targets]
    if name_or_path is None or is_bundled_name(name_or_path):
        folder = bundled_model_dir()
        if not folder.is_dir():
            raise ModelError(
                f"this installation has no bundled model ({folder} is missing); "
                f"pass a model folder or one of {', '.join(pretrained_table())}"
            )
        return load_model_dir(folder, targets, known_files())
    path = Path(name_or_path).expanduser()
    table = pretrained_table()
    name = str(name_or_path)
    if path.exists():
        check_not_shadowed(path, name, table)
        return load_model_dir(path, targets, known_files())
    if name not in table:
        close = difflib.get_close_matches(name.lower(), [*table, BUNDLED_NAME], n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ModelError(
            f"{name}: no such model folder, and not a published model "
            f"({hint}known: {', '.join(table)}, and {BUNDLED_NAME} for the bundled one)"
        )
    available = list(table[name]["files"])
    if targets is not None and not targets:
        raise ModelError(f"model {name!r}: targets=[] asks for no target; name at least one of "
                         f"{', '.join(available)}, or pass None for all")
    unknown = [t for t in targets or [] if t not in available]
    if unknown:
        raise ModelError(f"model {name!r} has no target(s) {', '.join(unknown)}; available: {', '.join(available)}")
    targets = list(targets or available)
    folder = fetch(name, targets, progress)
    # The files just checked against their hashes, not whatever else the cache folder holds.
    weights = {t: folder / table[name]["files"][t] for t in targets}
    return load_model_dir(folder, targets, known_files(), weights=weights)


def own_niter(name_or_path: Union[str, Path, None] = None) -> Optional[int]:
    """The Wiener EM iterations a model asks for where the caller gives none: a model folder's ``niter`` in
    ``separator.json`` (:func:`~openunmix_like.modeldir.model_niter`), else ``None`` (the default, 1). Published
    models say nothing, nor does the bundled one. Call it after :func:`load_models`, which reports a model that
    cannot be found.
    """
    folder = own_folder(name_or_path)
    return None if folder is None else model_niter(folder)


def own_input_level(name_or_path: Union[str, Path, None] = None) -> Optional[float]:
    """The level a model was trained at, for level matching: a model folder's ``input_level`` in
    ``separator.json`` (:func:`~openunmix_like.modeldir.model_input_level`; the bundled model records
    one), else ``None``. Published models record none: their scores with level matching are unmeasured
    here. Call it after :func:`load_models`, which reports a model that cannot be found.
    """
    folder = own_folder(name_or_path)
    return None if folder is None else model_input_level(folder)


def own_folder(name_or_path: Union[str, Path, None]) -> Optional[Path]:
    """The folder whose ``separator.json`` holds a model's own settings: the bundled model's, a model folder,
    or ``None`` for a published model (its settings are the reference's)."""
    if name_or_path is None or is_bundled_name(name_or_path):
        return bundled_model_dir()
    folder = Path(name_or_path).expanduser()
    return folder if folder.is_dir() else None


def check_not_shadowed(path: Path, name: str, table: Mapping[str, dict]) -> None:
    """Refuse, saying why, a file or a folder without weights that has a model's name where the command runs
    (an earlier ``--outdir umxhq``, say): the folder is taken as the model, and the user meant the model.

    Raises:
        ModelError: naming the path, the model it hides and what to do.
    """
    if name not in table and name != BUNDLED_NAME:
        return
    if path.is_dir() and find_weight_files(path):
        return
    what = "the bundled model" if name == BUNDLED_NAME else f"the published model {name!r}"
    kind = "a folder without weight files" if path.is_dir() else "a file"
    raise ModelError(f"{path.resolve()}: {kind}, taken for the model because it is named {name!r} and is where "
                     f"the command runs; to load {what}, run from another folder or rename this one")
