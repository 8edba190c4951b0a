"""Writing a track's stems as they are separated, without ever leaving partial files.

Chunks are appended to hidden float32 files beside the final outputs; when the
track is done, a second pass applies the clipping policy (which needs the
track's peak) and encodes each stem to its final format beside its output path
(wav and flac by libsndfile, mp3 by ffmpeg's libmp3lame, fed through a pipe);
only when every stem is encoded are they renamed into place. Until then no
output path is touched (files of an earlier run stay as they were; if a rename
fails or an interrupt comes while renaming, the stems renamed before are removed
and the earlier files put back; without ``overwrite`` no file there is replaced),
and on any failure the hidden files are removed; hidden files that a killed run left are
removed by the next run writing the same outputs (see :mod:`openunmix_like.fileio`).
Runs in other processes that write the same outputs take turns renaming (a lock file,
``.umx-writing.lock`` in the folder the stems share), so that each track's stems are one run's.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .audio import MP3_DEFAULT_BITRATE, MP3_RATES, _ffmpeg_binary, set_channel_map, sf_path, subtype_for
from .errors import AudioError
from .fileio import FileInUse, held_lock, made_folders_removed_if_empty, new_partial, replace_file

if TYPE_CHECKING:  # writing takes NumPy arrays too, without torch (the Ray engine's write tasks)
    from torch import Tensor

CLIP_MODES = ("rescale", "clamp", "none")
BLOCK = 1 << 18
FLAC_MAX_CHANNELS = 8
MP3_MAX_CHANNELS = 2
# One track's stems are renamed into place at a time in this process, so that two runs writing the
# same outputs at once (two threads) leave one run's complete set, never a mix of both; other processes
# take turns through a lock file of this name in the folder the stems share.
_RENAMING = threading.Lock()
LOCK_NAME = ".umx-writing.lock"
# Free bytes below which a file system whose write failed is taken as full.
FULL_BELOW = 1 << 20


def format_problem(ext: str, sample_rate: int, nb_channels: int, python: bool = False) -> Optional[str]:
    """Why stems of this rate and channel count cannot be written as ``ext``, or None when they can;
    the remedy is spelled as ``umx-separate``'s options, or with ``python`` as ``separate_file``'s keywords."""
    wav, flac, rate = ("ext='wav'", "ext='flac'", "keep_model_rate=True") if python else \
        ("--ext wav", "--ext flac", "--keep-model-rate")
    if ext == "flac" and nb_channels > FLAC_MAX_CHANNELS:
        return f"{nb_channels} channels, and FLAC holds at most {FLAC_MAX_CHANNELS}; use {wav}"
    if ext == "mp3" and nb_channels > MP3_MAX_CHANNELS:
        return f"{nb_channels} channels, and mp3 holds at most {MP3_MAX_CHANNELS}; use {wav} or " \
               f"{flac if python else 'flac'}"
    if ext == "mp3" and sample_rate not in MP3_RATES:
        return (f"stems at {sample_rate} Hz, and mp3 holds only {', '.join(map(str, MP3_RATES))} Hz; "
                f"use {rate} (the model's rate) or {flac}")
    return None


class OutputExists(AudioError):
    """An output path that did not exist when the track started exists when its stems are renamed into place
    (another run or program wrote it meanwhile), and the writer was told not to overwrite: nothing was written."""

    def __init__(self, path: Path):
        super().__init__(f"{path}: exists (written while this track was being separated); nothing was written")
        self.path = path


class DiskFull(AudioError):
    """The file system of a stem's folder filled up while it was written; nothing was written."""


class EncoderStopped(AudioError):
    """The mp3 encoder (ffmpeg) was stopped by SIGINT or SIGTERM, not by a fault of the track: a Ctrl+C in a
    terminal reaches the whole process group, ffmpeg too, at times before the process writing the stems.
    Nothing was written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def _identity(path: Path) -> Optional[Tuple[int, int]]:
    """The file ``path`` names (device and inode, not followed through links), or None if there is none."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class StemWriter:
    """Streams named stems of one track into audio files.

    Args:
        paths: stem name -> final output path.
        sample_rate: rate of the written files.
        nb_channels: channels of every stem.
        ext: ``wav``, ``flac`` or ``mp3`` (needs the ffmpeg program).
        bits: 16, 24 or 32 (32 is float, wav only); ignored for mp3.
        bitrate: kbit/s of mp3 stems, constant, 320 if not given (libmp3lame lowers it to what the rate allows:
            at most 160 below 32 kHz, 64 below 16 kHz).
        clip: ``rescale`` (one gain for all stems of the track so the loudest
            peak is at most 1 and the stems still sum to the mixture), ``clamp``
            (cut samples to [-1, 1]) or ``none`` (as computed; integer formats
            still cannot hold values beyond [-1, 1] and clip them; neither can mp3).
        overwrite: replace files at the output paths (after moving them aside, so that they are put back if
            a rename fails); when False, a file there is an :class:`OutputExists` error and kept as it is,
            even one made after the writer started (the check and the rename are one atomic step).
        channel_map: the speaker of each channel (libsndfile's codes, :func:`openunmix_like.audio.channel_map`
            of the input): wav stems of more than two channels are then WAVEX files stating them, so that a
            5.1 input gives 5.1 stems rather than six channels of unknown layout.
    """

    def __init__(self, paths: Mapping[str, Path], sample_rate: int, nb_channels: int,
                 ext: str = "wav", bits: int = 16, clip: str = "rescale",
                 bitrate: Optional[int] = None, *, overwrite: bool = True,
                 channel_map: Optional[Sequence[int]] = None):
        if clip not in CLIP_MODES:
            raise ValueError(f"clip must be one of {CLIP_MODES}, got {clip!r}")
        self.subtype = None if ext == "mp3" else subtype_for(ext, bits)
        self.format = ext.upper()
        self.bitrate = int(bitrate or MP3_DEFAULT_BITRATE)
        self.paths = dict(paths)
        problem = format_problem(ext, int(sample_rate), nb_channels)
        if problem:
            raise AudioError(f"{next(iter(self.paths.values()), 'output')}: {problem}")
        self.sample_rate = int(sample_rate)
        self.nb_channels = nb_channels
        # Mono and stereo need no map; FLAC and mp3 imply theirs from the channel count.
        speakers = ext == "wav" and nb_channels > 2 and channel_map is not None and len(channel_map) == nb_channels
        self.channel_map = tuple(channel_map) if speakers else None
        self.clip = clip
        self.overwrite = overwrite
        self.peak = 0.0
        self._files: Dict[str, object] = {}
        self._tmp: Dict[str, Path] = {}  # float32 chunks as they come
        self._encoded: Dict[str, Path] = {}  # the final format, until renamed into place
        self._ours: Dict[Path, Optional[Tuple[int, int]]] = {}  # output -> the file this writer put there
        self._asides: list = []  # earlier outputs moved aside, removed once every new stem is in place
        self._committed = False
        self._folders = contextlib.ExitStack()  # removes the output folders this writer made, if left empty

    def __enter__(self) -> "StemWriter":
        import soundfile as sf

        self._folders.enter_context(made_folders_removed_if_empty(*(p.parent for p in self.paths.values())))
        try:
            for name, path in self.paths.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                # Also removes what a killed run left here (their names carry a dead process id).
                tmp = self._tmp[name] = new_partial(path, ".wav")
                self._files[name] = sf.SoundFile(sf_path(tmp), "w", self.sample_rate, self.nb_channels,
                                                 subtype="FLOAT", format="RF64")
        except BaseException as exc:  # KeyboardInterrupt too: __exit__ will not run, the partial files must go
            self._cleanup()
            self._folders.close()
            if not isinstance(exc, Exception):
                raise
            raise _as_audio_error(exc, next(iter(self.paths.values()))) from exc
        return self

    def write(self, chunks: Mapping[str, Union[Tensor, np.ndarray]]) -> None:
        """Append ``(nb_channels, n)`` chunks (tensors or arrays), one per stem."""
        for name, chunk in chunks.items():
            data = (chunk if isinstance(chunk, np.ndarray) else chunk.detach().cpu().numpy()).T
            peak = float(np.abs(data).max(initial=0.0))
            if not np.isfinite(peak):
                raise AudioError(f"{self.paths[name]}: the separation gave NaN or infinite samples (is the input "
                                 "far beyond full scale?); nothing was written, normalise the input")
            self.peak = max(self.peak, peak)
            try:
                self._files[name].write(data)
            except Exception as exc:
                raise _as_audio_error(exc, self.paths[name]) from exc

    @property
    def rescale_gain(self) -> float:
        """The gain ``clip="rescale"`` applies to every stem (1 when nothing peaks above full scale).
        Known once every chunk is written."""
        return 1.0 / self.peak if self.clip == "rescale" and self.peak > 1.0 else 1.0

    @property
    def rescaled_db(self) -> float:
        """How far :attr:`rescale_gain` turns every stem down, in dB (0 for none)."""
        return -20 * math.log10(self.rescale_gain)

    def lock_path(self) -> Path:
        """The lock file that runs writing these outputs take turns on: in the folder the stems share."""
        folders = {os.path.abspath(path.parent) for path in self.paths.values()}
        return Path(os.path.commonpath(sorted(folders))) / LOCK_NAME

    def finish(self, before: Optional[Callable[[], None]] = None, after: Optional[Callable[[], None]] = None) -> None:
        """Encode every stem beside its final path, then rename them all into place (each rename is atomic;
        if one fails, the stems already renamed are removed and the files they replaced put back).

        ``before`` and ``after`` run just before the first rename and once every stem is in place, while
        no other run renames stems into these outputs (a record of the stems is kept true that way).

        The stems are encoded side by side, one thread each (libsndfile and the pipes to ffmpeg
        release the GIL), since encoding mp3 or flac takes seconds per stem of a song.
        """
        for f in self._files.values():
            f.close()
        for name, path in self.paths.items():
            try:
                self._encoded[name] = new_partial(path, f".{self.format.lower()}")
            except Exception as exc:
                raise _as_audio_error(exc, path) from exc
        workers = max(1, min(len(self.paths), os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="umx-encode") as pool:
            encoding = [(path, pool.submit(self._encode, name, path)) for name, path in self.paths.items()]
            for path, future in encoding:  # the first stem's error, whatever finished first
                try:
                    future.result()
                except Exception as exc:
                    raise _as_audio_error(exc, path) from exc
        # Every stem is encoded: only now are the outputs replaced. What an earlier run left there is
        # first moved aside, so that a failure midway (a rename, or an interrupt anywhere in here) puts
        # every output back as it was; each file is told apart by its identity, not by where we got to.
        self._ours = {path: _identity(self._encoded[name]) for name, path in self.paths.items()}
        kept: Dict[Path, Tuple[Path, Optional[Tuple[int, int]]]] = {}
        path = None
        with _RENAMING, held_lock(self.lock_path()):
            try:
                if before is not None:
                    before()
                for name, path in self.paths.items():
                    if os.path.lexists(path):
                        if not self.overwrite:
                            raise OutputExists(path)
                        earlier = _identity(path)
                        kept[path] = (new_partial(path, ".kept"), earlier)
                        replace_file(path, kept[path][0], name=path)  # FileInUse: open in a player, on Windows
                    self._place(self._encoded[name], path)
                    del self._encoded[name]
            except BaseException as exc:
                self._put_back(kept)
                if isinstance(exc, OSError):
                    if path is None:  # before() failed, ahead of every stem: name the file it could not change
                        path = Path(os.fsdecode(exc.filename)) if exc.filename else self.lock_path()
                    raise _as_audio_error(exc, path) from exc
                raise
            self._committed = True  # the outputs are the new stems now, whatever happens next
            self._asides = [aside for aside, _ in kept.values()]
            if after is not None:
                after()
        for aside in self._asides:
            with contextlib.suppress(OSError):
                aside.unlink()
        self._asides = []

    def _place(self, encoded: Path, path: Path) -> None:
        """Rename a stem's encoded file to its output path; without ``overwrite``, never over a file there."""
        if self.overwrite:
            replace_file(encoded, path)
            return
        try:
            os.link(encoded, path)  # fails if anything is at path, atomically
        except FileExistsError:
            raise OutputExists(path) from None
        except OSError:  # a file system without hard links: checked just before instead
            if os.path.lexists(path):
                raise OutputExists(path) from None
            os.replace(encoded, path)
            return
        os.unlink(encoded)

    def _put_back(self, kept: Mapping[Path, Tuple[Path, Optional[Tuple[int, int]]]]) -> None:
        """Remove the stems renamed into place and return the earlier files moved aside for them."""
        for path, ours in self._ours.items():
            if ours is not None and _identity(path) == ours:
                with contextlib.suppress(OSError):
                    path.unlink()
        for path, (aside, earlier) in kept.items():
            with contextlib.suppress(OSError):
                if earlier is not None and _identity(aside) == earlier:
                    os.replace(aside, path)
                else:  # never moved aside: still an empty partial file
                    aside.unlink()
        self._ours = {}  # gone: a file made at those paths from now on is not this writer's

    def _encode(self, name: str, path: Path) -> None:
        """Apply the clipping policy to one stem's float32 chunks and encode them into its partial file."""
        import soundfile as sf

        gain = self.rescale_gain
        with sf.SoundFile(sf_path(self._tmp[name])) as src, self._open_encoded(self._encoded[name], path) as write:
            for block in src.blocks(BLOCK, dtype="float32", always_2d=True):
                block = block * gain if gain != 1.0 else block
                if self.clip != "none" or self.subtype != "FLOAT":
                    np.clip(block, -1.0, 1.0, out=block)
                write(block)

    @contextlib.contextmanager
    def _open_encoded(self, path: Path, named: Path):
        """A function writing ``(n, nb_channels)`` float32 blocks to ``path`` in the output format.

        ``named`` is the output the errors name (``path`` is its hidden partial file).
        """
        import soundfile as sf

        if self.format != "MP3":
            # Plain wav holds no speaker positions; WAVEX (the same data, a longer header) does.
            form = "WAVEX" if self.channel_map else self.format
            with sf.SoundFile(sf_path(path), "w", self.sample_rate, self.nb_channels, subtype=self.subtype,
                              format=form) as dst:
                if self.channel_map:
                    set_channel_map(dst, self.channel_map)
                yield dst.write
            return
        # "file:" keeps a name that starts with "-" or holds ":" a file name; bytes keep names that are not UTF-8.
        cmd = [_ffmpeg_binary("ffmpeg", "encode mp3"), "-nostdin", "-v", "error", "-y", "-f", "f32le",
               "-ar", str(self.sample_rate), "-ac", str(self.nb_channels), "-i", "pipe:0", "-c:a", "libmp3lame",
               "-b:a", f"{self.bitrate}k", "-f", "mp3", b"file:" + os.fsencode(path)]
        # A file, not a pipe: ffmpeg never blocks on what it says. Beside the stem, not in the temporary folder,
        # which may be unusable (a read-only container) while the output folder is writable; never seen by name.
        with tempfile.TemporaryFile(prefix=".umx-ffmpeg-", dir=path.parent) as errors:
            encoder = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
            stopped = False
            try:
                try:
                    yield lambda block: encoder.stdin.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
                    encoder.stdin.close()
                except BrokenPipeError:  # ffmpeg stopped reading; its own message says why
                    stopped = True
                code = encoder.wait()
            finally:
                if encoder.poll() is None:
                    encoder.kill()
                    encoder.wait()
            if code != 0 or stopped:
                errors.seek(0)
                said = [line for line in errors.read().decode(errors="replace").splitlines() if line.strip()]
                reason = said[-1].strip() if said else f"ffmpeg stopped with status {code}"
                if "No space left" in reason:
                    raise OSError(28, reason)
                # Killed by the signal, or (when it had time to) ffmpeg's "Exiting normally, received signal 2."
                caught = re.search(r"received signal (\d+)", reason)
                signum = -code if code < 0 else int(caught[1]) if caught else 0
                if signum in (signal.SIGINT, signal.SIGTERM):
                    raise EncoderStopped(f"{named}: cannot encode mp3 (ffmpeg was stopped by "
                                         f"{signal.Signals(signum).name}); nothing was written", signum)
                raise AudioError(f"{named}: cannot encode mp3 ({reason})")

    def _cleanup(self) -> None:
        for f in self._files.values():
            with contextlib.suppress(Exception):
                f.close()
        for tmp in [*self._tmp.values(), *self._encoded.values(), *self._asides]:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._cleanup()
        if exc_type is not None and not self._committed:
            # A failed track leaves none of its outputs behind (finish has put back what it replaced).
            self._put_back({})
        self._folders.close()  # after success they hold the stems, and stay


def _as_audio_error(exc: Exception, path: Path) -> AudioError:
    if isinstance(exc, EncoderStopped):
        return EncoderStopped(str(exc), exc.signum)
    if isinstance(exc, (AudioError, FileInUse)):
        return DiskFull(str(exc)) if isinstance(exc, DiskFull) else AudioError(str(exc))
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or _full(exc, path):
        return DiskFull(f"{path}: disk full while writing; free space and run again")
    return AudioError(f"{path}: cannot write ({exc}); check the output folder is writable")


def _full(exc: Exception, path: Path) -> bool:
    """Whether libsndfile's failure to write ``path`` is a full disk: it says only "System error." and keeps no
    errno, but the failed write leaves the folder's file system with (next to) no room."""
    import soundfile as sf

    if not isinstance(exc, (RuntimeError, sf.LibsndfileError)) or "System error" not in str(exc):
        return False
    try:
        return shutil.disk_usage(path.parent).free < FULL_BELOW
    except OSError:
        return False
