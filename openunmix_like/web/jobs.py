"""Jobs of ``umx-web``: one folder per job on disk, a queue, and worker processes that separate.

A job folder ``JOBS_DIR/<id>/`` holds ``job.json`` (its state), ``input<.ext>`` (the upload) and
``stems/<name>.<ext>`` (written by :func:`openunmix_like.cli.separate.separate_file`, so all of a
track's stems appear at once or none do). Separation runs in worker processes so the server's
event loop never waits on torch; a cancelled job's worker is killed and replaced. Each worker keeps
its temporary files (ffmpeg's decoded copy of an mp3) in its own folder under ``JOBS_DIR/.tmp/``,
removed with the worker. This module imports no web framework: :mod:`openunmix_like.web.app` puts
HTTP on top of :class:`JobManager`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
import traceback
import zipfile
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path
from typing import BinaryIO, Callable, Deque, Dict, List, Optional, Union

from ..audio import MP3_DEFAULT_BITRATE
from ..errors import AudioError, OpenUnmixLikeError
from ..fileio import LockHeld, held_lock
from ..processes import children_ignore_ctrl_c

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
# What a running job's worker is doing: loading the model (and reading the input's length), separating
# (``progress`` counts this), writing (finishing the stem files and the player's preview).
PHASES = ("loading", "separating", "writing")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
STEM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # never an option
SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")
FORMATS = {("wav", 16), ("wav", 24), ("flac", 16), ("flac", 24)}
MP3_BITRATES = (128, 192, 256, 320)  # kbit/s offered; MP3_DEFAULT_BITRATE unless asked
COPY_BLOCK = 1 << 20
TMP_DIR = ".tmp"  # the workers' temporary folders, inside the jobs folder (never a job id)
STAGING = ("upload", "job")  # JOBS_DIR/.<kind>-*: an upload being received, a job being stored
LOCK_NAME = ".umx-web.lock"  # held by the server that uses the jobs folder


class JobError(OpenUnmixLikeError):
    """A request names options the server cannot honour (unknown model, bad target name, format)."""


@dataclasses.dataclass
class Job:
    """State of one job, as saved in its ``job.json``."""

    id: str
    filename: str
    created: float
    model: str = "default"
    targets: Optional[List[str]] = None
    residual: Optional[str] = None
    ext: str = "wav"
    bits: int = 16
    bitrate: Optional[int] = None  # kbit/s, for mp3
    input: str = "input"
    status: str = "queued"
    progress: float = 0.0
    stems: List[str] = dataclasses.field(default_factory=list)
    error: Optional[str] = None
    phase: Optional[str] = None  # one of PHASES while running, else None

    def public(self) -> dict:
        """The fields the HTTP API returns."""
        return {"id": self.id, "status": self.status, "progress": round(self.progress, 4), "stems": self.stems,
                "error": self.error, "filename": self.filename, "created": self.created, "model": self.model,
                "ext": self.ext, "bitrate": self.bitrate, "phase": self.phase}


def new_job_id() -> str:
    """128 random bits: ids cannot be guessed from one another."""
    return secrets.token_hex(16)


FILENAME_CHARS = 200


def clean_filename(name: Optional[str]) -> str:
    """The upload's base name, printable and at most :data:`FILENAME_CHARS` characters (it is only shown, and
    gives the input its extension; never used as a path). A longer one is cut before its extension:
    ``<start of the name>….mp3``."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(c for c in base if c.isprintable()).strip()
    if len(base) > FILENAME_CHARS:
        suffix = Path(base).suffix if SUFFIX.match(Path(base).suffix) else ""
        base = base[:FILENAME_CHARS - 1 - len(suffix)].rstrip() + "\u2026" + suffix
    return base or "upload"


TRACK_NAME_BYTES = 200
# Device names Windows keeps for itself, whatever the case and extension ("nul.live", "con .wav"): no file or
# folder can be named so there.
WINDOWS_DEVICE = re.compile(r"^(CON|PRN|AUX|NUL|(COM|LPT)[0-9\u00b9\u00b2\u00b3])(?= *(\.|$))", re.IGNORECASE)


def track_name(filename: str) -> str:
    """The upload's name without its extension, safe as a file or folder name on any system.

    It names the zip's folder and the downloads: a name of dots (``..``) or with characters Windows
    refuses would make the zip write outside the folder it is extracted in, or not extract at all;
    so would a device name there (``aux.wav``, ``CON.mp3``), which is given a ``_``.
    """
    stem = re.sub(r'[<>:"/\\|?*\x00-\x1f\x7f]', "_", Path(filename).stem)
    # At most TRACK_NAME_BYTES, whole characters: "<name>/<stem>.wav" and "<name>-<stem>.wav" must fit in the
    # 255 bytes a file name may have where the zip is extracted (a name of 200 CJK characters is 600 bytes).
    stem = stem.encode()[:TRACK_NAME_BYTES].decode("utf-8", "ignore").strip(" .")
    return WINDOWS_DEVICE.sub(r"\1_", stem) or "track"


def clock(seconds: float) -> str:
    """``h:mm:ss`` or ``m:ss``, rounded up to the second (a limit of 2.5 s reads 0:03)."""
    total = int(-(-seconds // 1))
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- worker process

def _worker_main(conn, max_minutes: float, threads: int, tmp_dir: str, phase=None) -> None:
    """Run jobs sent over ``conn`` one at a time; answer progress, done or failed messages.

    Temporary files go to ``tmp_dir``, which the server removes when it stops or kills this process
    (a killed process cannot remove them itself). ``phase`` (a shared integer, an index into ``PHASES``)
    is set as a job moves on: a shared value rather than a message, so that a job's first message still
    means its first chunk is separated.
    """
    # Ctrl+C in the terminal reaches the worker too: the server stops it (a worker started off the main
    # thread could not be started with it ignored, see children_ignore_ctrl_c).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tempfile.tempdir = tmp_dir
    os.environ["TMPDIR"] = tmp_dir  # for the programs it runs too
    import torch
    from tqdm import tqdm

    # tqdm's default lock is a multiprocessing one, which a worker killed by the server (a cancel, a stop)
    # never releases: Python would then warn of a leaked semaphore at exit. The worker's bars are its own.
    tqdm.set_lock(threading.RLock())
    torch.set_num_threads(threads)  # the workers share the cores
    cache: Dict[tuple, object] = {}
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        job_id, spec = message
        last = [0.0]

        def progress(fraction: float) -> None:
            if fraction - last[0] >= 0.01 or fraction >= 1.0:
                last[0] = fraction
                conn.send(("progress", job_id, fraction))

        def on_phase(name: str) -> None:
            if phase is not None:
                phase.value = PHASES.index(name)

        try:
            stems = run_job(spec, progress, cache, max_minutes, on_phase)
            conn.send(("done", job_id, stems))
        except OpenUnmixLikeError as exc:
            conn.send(("failed", job_id, str(exc).replace(spec["input"], spec["filename"])))
        except Exception as exc:  # the worker keeps serving; the message names the file
            conn.send(("failed", job_id, f"{spec['filename']}: unexpected {type(exc).__name__}: {exc}"))


def run_job(spec: dict, progress: Callable[[float], None], cache: dict, max_minutes: float,
            on_phase: Callable[[str], None] = lambda name: None) -> List[str]:
    """Separate one job's input into its ``stems/`` folder; return the stem names.

    ``cache`` keeps the last separator loaded (one, so a worker's memory stays that of one model).
    ``on_phase`` is told each of ``PHASES`` as the job reaches it.
    """
    from ..audio import info
    from ..cli.separate import build_parser, load_separator, separate_file
    from .preview import PREVIEW_DIR, build_preview

    argv = ["-", "--quiet", "--force", "--ext", spec["ext"]]
    argv += (["--mp3-bitrate", str(spec["bitrate"])] if spec["ext"] == "mp3" else ["--bits", str(spec["bits"])])
    if spec["model_arg"] is not None:
        argv += ["--model", spec["model_arg"]]
    if spec["targets"]:
        argv += ["--targets", *spec["targets"]]
    if spec["residual"]:
        argv += ["--residual", spec["residual"]]
    args = build_parser().parse_args(argv)
    key = (args.model, tuple(args.targets or ()), args.residual)
    if key not in cache:
        on_phase("loading")
        cache.clear()
        cache[key] = load_separator(args)
    separator = cache[key]
    path = Path(spec["input"])
    seconds = info(path).duration
    if seconds > max_minutes * 60:
        raise AudioError(f"{path}: lasts {clock(seconds)}, over this server's limit of {clock(max_minutes * 60)} "
                         "(umx-web --max-minutes); cut the file or restart the server with a higher limit")
    stems_dir = path.parent / "stems"
    names = list(separator.target_names)
    outputs = {name: stems_dir / f"{name}.{spec['ext']}" for name in names}

    def separating(fraction: float) -> None:
        if fraction >= 1.0:  # the last chunk: what is left is finishing the files
            on_phase("writing")
        progress(fraction)

    on_phase("separating")
    separate_file(path, separator, args, None, outputs, on_progress=separating)
    on_phase("writing")
    try:  # the player's peaks (and decoded copies) now, so that opening the job does not wait for them
        build_preview(path.parent, outputs, path)
    except Exception:  # built again when the page asks, which then says what went wrong
        shutil.rmtree(path.parent / PREVIEW_DIR, ignore_errors=True)
    return names


class _Worker:
    """One separation process, its temporary folder ``tmp_dir`` and the job it runs (if any)."""

    def __init__(self, context, max_minutes: float, threads: int, tmp_dir: Path):
        self.tmp_dir = tmp_dir
        self.conn, child = context.Pipe()
        self.phase = context.RawValue("b", 0)  # index into PHASES of its job's phase
        self.process = context.Process(target=_worker_main,
                                       args=(child, max_minutes, threads, str(tmp_dir), self.phase),
                                       daemon=True, name="umx-web-worker")
        with children_ignore_ctrl_c():
            self.process.start()
        child.close()
        self.job: Optional[str] = None

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


# ---------------------------------------------------------------- manager

class JobManager:
    """Owns the jobs folder, the queue and the worker processes.

    Args:
        jobs_dir: folder of the job folders (created).
        models: :func:`openunmix_like.web.models.discover_models` output: model name shown to users ->
            ``{"arg": argument of Separator.from_pretrained (None: bundled), "targets": [...]}``.
        workers: jobs separated at once, each in its own process.
        max_minutes: longest input accepted.
        max_upload_mb: largest upload accepted.
        keep_mb: total size of kept jobs; the oldest finished jobs are removed beyond it.
    """

    def __init__(self, jobs_dir: Path, models: Dict[str, dict], workers: int = 1,
                 max_minutes: float = 30.0, max_upload_mb: float = 500.0, keep_mb: float = 5000.0):
        self.jobs_dir = Path(jobs_dir)
        self.models = {name: {"arg": m["arg"], "targets": list(m["targets"])} for name, m in models.items()}
        self.nb_workers = workers
        self.max_minutes = max_minutes
        self.max_upload_mb = max_upload_mb
        self.keep_mb = keep_mb
        self._lock = threading.RLock()
        self.unfinished = 0  # jobs queued or running when the server stopped (stop), separated at the next start
        self._jobs: Dict[str, Job] = {}
        self._queue: Deque[str] = deque()
        self._file_locks: Dict[str, threading.Lock] = {}  # per job: building its zip or player preview
        self._previews: Dict[str, dict] = {}
        self._workers: List[_Worker] = []
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._context = multiprocessing.get_context("spawn")
        self._claim: Optional[contextlib.ExitStack] = None

    def claim(self) -> None:
        """Hold the jobs folder's lock file until :meth:`stop` (:meth:`start` takes it if not yet held): a
        second server on the folder would take its jobs, and remove its uploads and running jobs' files.

        Raises:
            JobError: another server holds the folder.
        """
        if self._claim is not None:
            return
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        claim = contextlib.ExitStack()
        try:
            claim.enter_context(held_lock(self.jobs_dir / LOCK_NAME, wait=False))
        except LockHeld as exc:
            who = f"another umx-web (pid {exc.pid})" if exc.pid else "another umx-web"
            raise JobError(f"--jobs-dir {self.jobs_dir}: used by {who}; stop it, or give this server another "
                           "--jobs-dir") from None
        self._claim = claim

    # ------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Load saved jobs (unfinished ones are queued again), start the workers and the dispatcher.

        What a server stopped mid-job left behind (stems of unfinished, failed or cancelled jobs, the
        workers' temporary files, uploads not yet stored) is removed first.
        """
        self.claim()
        shutil.rmtree(self.jobs_dir / TMP_DIR, ignore_errors=True)
        for kind in STAGING:  # uploads cut short when the server stopped
            for folder in self.jobs_dir.glob(f".{kind}-*"):
                shutil.rmtree(folder, ignore_errors=True)
        for path in sorted(self.jobs_dir.glob("*/job.json")):
            job = self._read(path)
            if job is None:
                continue
            if job.status not in FINISHED:
                job.status, job.progress = "queued", 0.0
            job.phase = None
            if job.status != "done":
                self._remove_outputs(job.id)
            self._jobs[job.id] = job
        for job in sorted(self._jobs.values(), key=lambda j: j.created):
            if job.status == "queued":
                self._queue.append(job.id)
        self._workers = [self._new_worker() for _ in range(self.nb_workers)]
        self._thread = threading.Thread(target=self._run, name="umx-web-dispatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the workers; running jobs are queued again at the next start."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self.unfinished = sum(job.status in ("queued", "running") for job in self._jobs.values())
        for worker in self._workers:
            worker.stop(kill=worker.job is not None)
        if self._claim is not None:
            self._claim.close()
            self._claim = None

    def _new_worker(self) -> _Worker:
        root = self.jobs_dir / TMP_DIR
        root.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix="worker-", dir=root))
        return _Worker(self._context, self.max_minutes, max(1, (os.cpu_count() or 1) // self.nb_workers), tmp_dir)

    def _read(self, path: Path) -> Optional[Job]:
        try:
            data = json.loads(path.read_text())
            job = Job(**data)
        except (OSError, ValueError, TypeError):
            return None  # a folder that is not one of ours, or damaged: left alone
        return job if JOB_ID.match(job.id) and path.parent.name == job.id else None

    def _save(self, job: Job) -> None:
        folder = self.jobs_dir / job.id
        if folder.is_dir():
            self._write_state(folder, job)

    @staticmethod
    def _write_state(folder: Path, job: Job) -> None:
        tmp = folder / ".job.json.tmp"
        state = dataclasses.asdict(job)
        del state["phase"]  # of a running worker only; and a server before it could not read the file
        tmp.write_text(json.dumps(state))
        os.replace(tmp, folder / "job.json")

    # ------------------------------------------------------------ requests

    def check_options(self, model: Optional[str], targets: Optional[List[str]], residual: Optional[str],
                      ext: str, bits: int, bitrate: Optional[int] = None) -> str:
        """Validate a request's options; return the model's name. Raises :class:`JobError`."""
        model = model or next(iter(self.models))
        if model not in self.models:
            raise JobError(f"unknown model {model!r}; choose one of {', '.join(self.models)}")
        for name in [*(targets or []), *([residual] if residual else [])]:
            if not STEM_NAME.match(name):
                raise JobError(f"bad stem name {name!r}: use letters, digits, '-' and '_'")
        offered = self.models[model]["targets"]
        twice = sorted({name for name in targets or [] if targets.count(name) > 1})
        if twice:
            raise JobError(f"target(s) {', '.join(twice)} asked for more than once; name each target once")
        for name in targets or []:
            if name not in offered:
                raise JobError(f"model {model!r} has no target {name!r}; choose from {', '.join(offered)}")
        if residual and residual in (targets or offered):
            raise JobError(f"residual {residual!r} is already a target; give the residual another name, "
                           "e.g. accompaniment")
        if ext == "mp3":
            if bitrate not in (None, *MP3_BITRATES):
                raise JobError(f"mp3 at {bitrate} kbit/s not offered; choose {', '.join(map(str, MP3_BITRATES))}")
        elif bitrate is not None:
            raise JobError(f"bitrate is for mp3, and the format asked is {ext}; leave it out")
        elif (ext, bits) not in FORMATS:
            raise JobError(f"format {ext} {bits} bit not offered; choose wav or flac, 16 or 24 bit, or mp3")
        return model

    def submit(self, filename: Optional[str], data: Union[BinaryIO, Path], model: Optional[str] = None,
               targets: Optional[List[str]] = None, residual: Optional[str] = None, ext: str = "wav",
               bits: int = 16, bitrate: Optional[int] = None) -> Job:
        """Store an upload as a new job and queue it; an upload over the size limit is a failed job.

        ``data`` is read in blocks, or, a file in a folder of :meth:`new_staging`, moved into the job.
        ``bits`` is for wav and flac; mp3 takes ``bitrate`` (kbit/s, ``MP3_DEFAULT_BITRATE`` unless given).
        """
        model = self.check_options(model, targets, residual, ext, bits, bitrate)
        if ext == "mp3":
            bitrate = bitrate or MP3_DEFAULT_BITRATE
        name = clean_filename(filename)
        suffix = Path(name).suffix.lower()
        job = Job(id=new_job_id(), filename=name, created=time.time(), model=model, targets=targets or None,
                  residual=residual or None, ext=ext, bits=bits, bitrate=bitrate,
                  input="input" + (suffix if SUFFIX.match(suffix) else ""))
        # The job is put together in a staging folder and renamed into place once whole: a server
        # stopped mid-upload (killed, power cut) leaves only staging, which the next start removes.
        staging = self.new_staging("job")
        limit = int(self.max_upload_mb * 1024 * 1024)
        try:
            if not self._store_upload(data, staging / job.input, limit):
                job.status = "failed"
                job.error = (f"{name}: larger than this server's upload limit of {self.max_upload_mb:g} MB "
                             "(umx-web --max-upload-mb); compress or cut the file, or raise the limit")
            self._write_state(staging, job)
            os.replace(staging, self.jobs_dir / job.id)
        except BaseException:  # e.g. a full disk: no half-stored job is left behind
            shutil.rmtree(staging, ignore_errors=True)
            raise
        with self._lock:
            self._jobs[job.id] = job
            if job.status == "queued":
                self._queue.append(job.id)
            else:
                self._enforce_size_limit(keep=job.id)
        return job

    def new_staging(self, kind: str) -> Path:
        """A new empty folder ``JOBS_DIR/.<kind>-*`` (``kind`` one of ``STAGING``) for an upload on its way in.

        Beside the job folders, so that it is renamed into one without copying; what a server
        stopped meanwhile leaves is removed at the next start.
        """
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=self.jobs_dir))

    @classmethod
    def _store_upload(cls, data: Union[BinaryIO, Path], dest: Path, limit: int) -> bool:
        """Move (a file on disk) or copy the upload to ``dest``; False, storing nothing, when over ``limit`` bytes."""
        if isinstance(data, Path):
            if data.stat().st_size > limit:
                return False
            os.replace(data, dest)
            return True
        if not cls._copy_upload(data, dest, limit):
            dest.unlink()
            return False
        return True

    @staticmethod
    def _copy_upload(data: BinaryIO, dest: Path, limit: int) -> bool:
        """Copy in blocks (memory stays bounded); False once more than ``limit`` bytes arrived."""
        size = 0
        with open(dest, "wb") as out:
            while True:
                block = data.read(COPY_BLOCK)
                if not block:
                    return True
                size += len(block)
                if size > limit:
                    return False
                out.write(block)

    def get(self, job_id: str) -> Optional[Job]:
        with self._lock:
            job = self._jobs.get(job_id) if JOB_ID.match(job_id or "") else None
            return dataclasses.replace(job) if job is not None else None

    def list(self) -> List[Job]:
        with self._lock:
            return [dataclasses.replace(j) for j in sorted(self._jobs.values(), key=lambda j: j.created)]

    def cancel_or_delete(self, job_id: str) -> Optional[str]:
        """Cancel a queued or running job; remove a finished one. Returns ``cancelled``/``deleted``/None."""
        with self._lock:
            job = self._jobs.get(job_id) if JOB_ID.match(job_id or "") else None
            if job is None:
                return None
            if job.status in FINISHED:
                self._remove(job_id)
                return "deleted"
            if job_id in self._queue:
                self._queue.remove(job_id)
            job.status, job.phase = "cancelled", None
            self._save(job)
            self._enforce_size_limit(keep=job_id)
            # A running job's worker is killed by the dispatcher thread, which owns the workers; what
            # it wrote is removed once it stops writing (_replace, _handle).
            return "cancelled"

    def _remove(self, job_id: str) -> None:
        del self._jobs[job_id]
        self._file_locks.pop(job_id, None)
        self._previews.pop(job_id, None)
        shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)

    def _remove_outputs(self, job_id: str) -> None:
        """What a job's separation wrote: its stems and the player's preview of them."""
        from .preview import PREVIEW_DIR

        for name in ("stems", PREVIEW_DIR):
            shutil.rmtree(self.jobs_dir / job_id / name, ignore_errors=True)

    def stem_path(self, job_id: str, name: str) -> Optional[Path]:
        """The file of a finished job's stem ``name`` (``vocals`` or ``vocals.wav``), else None."""
        job = self.get(job_id)
        if job is None or job.status != "done":
            return None
        stem, dot, ext = name.partition(".")
        if stem not in job.stems or (dot and ext != job.ext):
            return None
        path = self.jobs_dir / job.id / "stems" / f"{stem}.{job.ext}"
        return path if path.is_file() else None

    def input_path(self, job_id: str) -> Optional[Path]:
        job = self.get(job_id)
        if job is None:
            return None
        path = self.jobs_dir / job.id / job.input
        return path if path.is_file() else None

    def zip_path(self, job_id: str) -> Optional[Path]:
        """A zip of a finished job's stems (stored, not compressed: audio barely compresses), built once.

        Requests for the same zip wait for the one that builds it; None once the job is gone.
        """
        job = self.get(job_id)
        if job is None or job.status != "done":
            return None
        folder = self.jobs_dir / job.id
        path = folder / "stems.zip"
        with self._lock:
            lock = self._file_locks.setdefault(job.id, threading.Lock())
        with lock:
            if path.is_file():
                return path
            tmp = folder / ".stems.zip.tmp"
            track = track_name(job.filename)
            try:
                with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
                    for stem in job.stems:
                        archive.write(folder / "stems" / f"{stem}.{job.ext}", f"{track}/{stem}.{job.ext}")
                os.replace(tmp, path)
            except OSError:
                tmp.unlink(missing_ok=True)
                if self.get(job.id) is None:
                    return None  # deleted meanwhile
                raise
        return path

    def _preview(self, job_id: str) -> Optional[tuple]:
        """``(job folder, preview info)`` of a finished job, the info made at the first request
        (requests made meanwhile wait for it) and then kept in memory; None once the job is gone."""
        from .preview import build_preview

        job = self.get(job_id)
        if job is None or job.status != "done":
            return None
        folder = self.jobs_dir / job.id
        with self._lock:
            lock = self._file_locks.setdefault(job.id, threading.Lock())
        with lock:
            info = self._previews.get(job.id)
            if info is not None and not all((folder / t["file"]).is_file() for t in info["tracks"]):
                info = None  # its files were removed from disk meanwhile: made again
            if info is None:
                try:
                    info = build_preview(folder, {s: folder / "stems" / f"{s}.{job.ext}" for s in job.stems},
                                         self.input_path(job.id))
                except (OSError, AudioError):
                    if self.get(job.id) is None:
                        return None  # deleted meanwhile
                    raise
                with self._lock:
                    if job.id in self._jobs:
                        self._previews[job.id] = info
        return folder, info

    def preview_info(self, job_id: str) -> Optional[dict]:
        """What the page's player needs of a finished job (see :func:`~openunmix_like.web.preview.build_preview`),
        without the files behind it; None for an unknown or unfinished job.

        Raises:
            AudioError: a stem cannot be read.
        """
        found = self._preview(job_id)
        if found is None:
            return None
        info = dict(found[1])
        info["tracks"] = [{k: v for k, v in track.items() if k != "file"} for track in info["tracks"]]
        return info

    def preview_pcm(self, job_id: str, track: str, start: int, frames: int) -> Optional[bytes]:
        """Frames ``start`` to ``start + frames`` of one track of a finished job's preview as interleaved
        16-bit PCM (fewer at its end, none past it); None for an unknown job or track.

        Raises:
            JobError: a negative start, or frames not from 1 to ``preview.MAX_FRAMES``.
        """
        from .preview import MAX_FRAMES, read_pcm

        if start < 0 or not 0 < frames <= MAX_FRAMES:
            raise JobError(f"ask for 1 to {MAX_FRAMES} frames from frame 0 or later")
        found = self._preview(job_id)
        if found is None:
            return None
        folder, info = found
        files = {t["name"]: t["file"] for t in info["tracks"]}
        if track not in files:
            return None
        try:
            return read_pcm(folder / files[track], start, frames)
        except Exception:
            if self.get(job_id) is None:
                return None  # deleted while reading
            raise

    # ------------------------------------------------------------ dispatcher thread

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception:  # the dispatcher must outlive any one job's trouble
                traceback.print_exc()
                time.sleep(0.5)

    def _step(self) -> None:
        """Hand queued jobs to idle workers, wait up to 0.2 s for messages, handle them and dead workers."""
        self._dispatch()
        wait([w.conn for w in self._workers] + [w.process.sentinel for w in self._workers], timeout=0.2)
        for index, worker in enumerate(list(self._workers)):
            self._drain(worker)
            if not worker.process.is_alive():
                self._replace(index, worker, "the worker process died (out of memory?); try a shorter file")
        self._kill_cancelled()

    def _dispatch(self) -> None:
        with self._lock:
            for worker in self._workers:
                if worker.job is None and self._queue:
                    job = self._jobs[self._queue.popleft()]
                    folder = self.jobs_dir / job.id
                    if job.model not in self.models:
                        self._finish(job, "failed", error=f"{job.filename}: model {job.model!r} is not "
                                                          "offered by this server any more; restart umx-web with "
                                                          "--model naming that model or its folder, or upload "
                                                          "the song again and choose another model")
                        continue
                    spec = {"input": str(folder / job.input), "filename": job.filename, "ext": job.ext,
                            "bits": job.bits, "bitrate": job.bitrate, "model_arg": self.models[job.model]["arg"],
                            "targets": job.targets, "residual": job.residual}
                    worker.phase.value = PHASES.index("loading")  # until the worker says otherwise
                    try:
                        worker.conn.send((job.id, spec))
                    except OSError:  # the worker died meanwhile: the job waits for its replacement
                        self._queue.appendleft(job.id)
                        continue
                    job.status, job.progress, job.phase = "running", 0.0, "loading"
                    self._save(job)
                    worker.job = job.id

    def _drain(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                kind, job_id, value = worker.conn.recv()
                self._handle(worker, kind, job_id, value)
        except (EOFError, OSError):
            pass
        self._note_phase(worker)

    def _note_phase(self, worker: _Worker) -> None:
        """Give the worker's running job the phase the worker last set."""
        with self._lock:
            job = self._jobs.get(worker.job) if worker.job else None
            if job is not None and job.status == "running":
                job.phase = PHASES[min(max(worker.phase.value, 0), len(PHASES) - 1)]

    def _handle(self, worker: _Worker, kind: str, job_id: str, value) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if kind != "progress":
                worker.job = None
            if job is None or job.status != "running":
                if kind != "progress":  # the worker finished a job cancelled or deleted meanwhile
                    self._discard_output(job_id)
                return
            if kind == "progress":
                job.progress = float(value)
            elif kind == "done":
                self._finish(job, "done", stems=list(value))
            else:
                self._finish(job, "failed", error=str(value))

    def _finish(self, job: Job, status: str, stems: Optional[List[str]] = None, error: Optional[str] = None):
        """Give ``job`` its final status (lock held); only a done job keeps stems. Applies ``keep_mb``."""
        job.status, job.stems, job.error, job.phase = status, stems or [], error, None
        job.progress = 1.0 if status == "done" else job.progress
        if status != "done":
            self._remove_outputs(job.id)
        self._save(job)
        self._enforce_size_limit(keep=job.id)

    def _discard_output(self, job_id: str) -> None:
        """Remove what a worker wrote for a job no longer running: its stems, or all of a deleted job's folder."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)  # written again after the delete
            elif job.status != "done":
                self._remove_outputs(job_id)

    def _replace(self, index: int, worker: _Worker, error: Optional[str]) -> None:
        job_id = worker.job
        worker.stop(kill=True)
        self._workers[index] = self._new_worker()
        with self._lock:
            job = self._jobs.get(job_id) if job_id else None
            if job is not None and job.status == "running" and error:
                self._finish(job, "failed", error=f"{job.filename}: {error}")
            elif job_id:
                self._discard_output(job_id)

    def _kill_cancelled(self) -> None:
        for index, worker in enumerate(list(self._workers)):
            with self._lock:
                job = self._jobs.get(worker.job) if worker.job else None
                gone = worker.job is not None and (job is None or job.status != "running")
            if gone:
                self._replace(index, worker, None)

    def _enforce_size_limit(self, keep: str) -> None:
        """Remove the oldest finished jobs until the kept results fit ``keep_mb`` (never ``keep``)."""
        limit = self.keep_mb * 1024 * 1024
        with self._lock:
            finished = sorted((j for j in self._jobs.values() if j.status in FINISHED), key=lambda j: j.created)
            sizes = {j.id: folder_size(self.jobs_dir / j.id) for j in finished}
            total = sum(sizes.values())
            for job in finished:
                if total <= limit:
                    break
                if job.id == keep:
                    continue
                total -= sizes[job.id]
                self._remove(job.id)
