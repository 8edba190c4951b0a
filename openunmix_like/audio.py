"""Audio files in and out: decoding, channels, sample rates, encoding.

Reading uses soundfile (libsndfile: wav, flac, ogg, aiff, ...) and the
``ffmpeg`` program for everything else (m4a, mp4, the mixture stream of
``.stem.mp4``) and, when it is installed, for mp3, which libsndfile decodes
corrupt frames of into noise instead of failing. Resampling is polyphase filtering (scipy). Audio is a
float32 tensor ``(nb_channels, nb_timesteps)``.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Tuple, Union

import numpy as np

from .errors import AudioError, OpenUnmixLikeError
from .fileio import new_temporary, no_room_in_temporary_folder, temporary_folder

if TYPE_CHECKING:  # torch is imported where a tensor is made: decoding alone (the Ray engine's tasks) needs none
    from torch import Tensor

PathLike = Union[str, Path]
SUBTYPES = {("wav", 16): "PCM_16", ("wav", 24): "PCM_24", ("wav", 32): "FLOAT",
            ("flac", 16): "PCM_16", ("flac", 24): "PCM_24"}
# mp3 (MPEG-1, 2 and 2.5 layer III) holds these rates and at most two channels; encoded by ffmpeg's libmp3lame.
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
MP3_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)  # kbit/s, MPEG-1
MP3_DEFAULT_BITRATE = 320


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    nb_channels: int
    nb_frames: int

    @property
    def duration(self) -> float:
        return self.nb_frames / self.sample_rate


def info(path: PathLike) -> AudioInfo:
    """Rate, channels and length of an audio file, as :class:`AudioSource` decodes it.

    Raises:
        AudioError: missing, unreadable or not audio.
    """
    with AudioSource(path) as source:
        return AudioInfo(source.sample_rate, source.nb_channels, source.nb_frames)


# Formats decoded by ffmpeg even though libsndfile reads them: libsndfile's mp3
# decoder turns corrupt frames into noise without reporting an error.
FFMPEG_FIRST = {".mp3"}
# Shortfall (samples) tolerated between a header's length and the decoded audio.
LENGTH_TOLERANCE = 2048
# The same for what ffmpeg decodes: ffprobe's duration of an mp3 counts the encoder's delay
# and padding (up to about two frames of 1,152 samples) that the decoder trims.
FFMPEG_LENGTH_TOLERANCE = 4 * 1152
# Seconds decoded before an excerpt's start (and dropped), so that the decoder is warm at the start:
# mp3's bit reservoir reaches back up to 511 bytes, AAC needs the frame before, Opus 80 ms.
FFMPEG_PREROLL = 0.5
# Sample rates accepted, and the largest sample magnitude (audio is expected roughly in [-1, 1];
# far beyond, the spectrograms' powers overflow float32 and the stems come out NaN).
MIN_RATE, MAX_RATE = 1000, 768000
MAX_PEAK = 1e8


class TensorSource:
    """Audio held in memory, with the reading interface of :class:`AudioSource`."""

    def __init__(self, audio: Tensor):
        self.audio = audio
        self.nb_frames = audio.shape[-1]

    def read(self, start: int, stop: int) -> Tensor:
        return self.audio[..., start:stop]


class AudioSource:
    """Random access to (an excerpt of) an audio file, decoded block by block.

    Files soundfile reads are read in place (mp3 only without ffmpeg); anything
    else is first decoded by ffmpeg into a temporary float32 file (deleted on :meth:`close`), so memory
    does not depend on the file's length either way.

    Args:
        path: the file.
        start: offset in seconds.
        duration: seconds to expose; ``None`` up to the end.

    Raises:
        AudioError: naming the file, when it cannot be opened or holds no audio.

    Example:
        >>> with AudioSource("song.mp3", start=30, duration=10) as src:
        ...     block = src.read(0, src.sample_rate)  # first second, (nb_channels, n)
    """

    def __init__(self, path: PathLike, start: float = 0.0, duration: Optional[float] = None):
        import soundfile as sf

        self.path = _existing(path)
        self._tmp: Optional[Path] = None
        if self.path.stat().st_size == 0:
            raise AudioError(f"{self.path}: empty file (0 bytes); re-export or re-download it")
        opened = None
        if self.path.suffix.lower() not in FFMPEG_FIRST or not shutil.which("ffmpeg"):
            try:
                opened = sf.SoundFile(sf_path(self.path))
            except (RuntimeError, sf.LibsndfileError):
                opened = None
        if opened is not None:
            try:
                _check_header_length(self.path)
            except AudioError:
                opened.close()
                raise
            self._file = opened
            self._offset = int(round(start * self._file.samplerate))
        else:
            self._tmp, self._offset = _decode_with_ffmpeg(self.path, start, duration)  # after its pre-roll
            try:
                self._file = sf.SoundFile(sf_path(self._tmp))
            except BaseException:  # an interrupt too: the decoded copy must not outlive this
                self._tmp.unlink(missing_ok=True)
                raise
        try:
            self._describe(duration)
        except BaseException:
            self.close()
            raise

    def _describe(self, duration: Optional[float]) -> None:
        """Rate, channels, speakers and length of the open file; an AudioError when they cannot be separated."""
        self.sample_rate = int(self._file.samplerate)
        self.nb_channels = int(self._file.channels)
        # The speakers of a 5.1 or 7.1 file, for its stems (ffmpeg writes them into its decoded copy too).
        self.channel_map = channel_map(self._file)
        if not MIN_RATE <= self.sample_rate <= MAX_RATE:
            raise AudioError(f"{self.path}: sample rate {self.sample_rate} Hz is outside {MIN_RATE} to {MAX_RATE} Hz; "
                             "resample it (e.g. ffmpeg -i IN -ar 44100 OUT.wav)")
        available = max(0, self._file.frames - self._offset)
        wanted = available if duration is None else int(round(duration * self.sample_rate))
        self.nb_frames = min(available, wanted)
        if self.nb_frames <= 0:
            raise AudioError(f"{self.path}: no audio samples (empty file or start beyond its end)")

    def read(self, start: int, stop: int) -> Tensor:
        """Samples ``[start, stop)`` of the excerpt as a float32 ``(nb_channels, n)`` tensor."""
        import torch

        return torch.from_numpy(self.read_array(start, stop))

    def read_array(self, start: int, stop: int) -> np.ndarray:
        """:meth:`read` as a NumPy array."""
        import soundfile as sf

        stop = min(stop, self.nb_frames)
        try:
            self._file.seek(self._offset + start)
            data = self._file.read(frames=max(0, stop - start), dtype="float32", always_2d=True)
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise AudioError(f"{self.path}: cannot decode ({exc}); the file is truncated or corrupt, "
                             "re-export or re-download it") from exc
        missing = stop - start - data.shape[0]
        if missing > LENGTH_TOLERANCE:
            raise AudioError(f"{self.path}: truncated ({missing} samples announced by its header are missing); "
                             "re-export or re-download it")
        if missing > 0:  # compressed formats may announce a few samples more than they decode
            data = np.pad(data, ((0, missing), (0, 0)))
        peak = float(np.abs(data).max(initial=0.0))
        if not np.isfinite(peak):
            raise AudioError(f"{self.path}: holds NaN or infinite samples; repair or re-export the file")
        if peak > MAX_PEAK:
            raise AudioError(f"{self.path}: samples reach {peak:.3g}, audio is expected roughly in [-1, 1]; "
                             "normalise or re-export the file")
        return np.ascontiguousarray(data.T)

    def close(self) -> None:
        self._file.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __enter__(self) -> "AudioSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load(
    path: PathLike, start: float = 0.0, duration: Optional[float] = None
) -> Tuple[Tensor, int]:
    """Decode (part of) an audio file.

    Args:
        path: the file.
        start: offset in seconds.
        duration: seconds to read; ``None`` reads to the end.

    Returns:
        ``(nb_channels, nb_timesteps)`` float32 tensor and the file's sample rate.

    Raises:
        AudioError: naming the file, when it cannot be decoded or holds no audio.
    """
    with AudioSource(path, start, duration) as source:
        return source.read(0, source.nb_frames), source.sample_rate


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file; check the name and the folder it is in")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file; give the audio files in it")
    return path


def _ffmpeg_binary(name: str, needed_to: str = "decode this format") -> str:
    found = shutil.which(name)
    if not found:
        raise AudioError(f"{name} is needed to {needed_to}; install it (e.g. apt-get install ffmpeg)")
    return found


# What ffprobe says (at warning level) when a duration is its guess from the file's size and first
# bitrate, not a length the file states: raw ADTS AAC, and mp3s without a Xing/Info or VBRI header.
ESTIMATED_DURATION = "Estimating duration from bitrate"


def _ffprobe(path: Path) -> AudioInfo:
    """Rate, channels and the length the file states; ``nb_frames`` is 0 when it states none."""
    cmd = [_ffmpeg_binary("ffprobe"), "-v", "warning", "-select_streams", "a:0",
           "-show_entries", "stream=sample_rate,channels,duration", "-of", "json", str(path)]
    # errors="replace": ffprobe's messages quote the file's name, whose bytes need not be UTF-8.
    result = subprocess.run(cmd, capture_output=True, text=True, errors="replace", start_new_session=True)
    streams = json.loads(result.stdout or "{}").get("streams") if result.returncode == 0 else None
    if not streams:
        raise AudioError(f"{path}: not a readable audio file; convert it to wav/flac/mp3")
    s = streams[0]
    rate = int(s["sample_rate"])
    # A guessed duration is no evidence of truncation: a VBR mp3 without a Xing header whose first
    # frame is a silent intro's (32 kbit/s) is "announced" several times longer than it is.
    estimated = ESTIMATED_DURATION in (result.stderr or "")
    nb_frames = 0 if estimated else int(float(s.get("duration") or 0) * rate)
    return AudioInfo(rate, int(s["channels"]), nb_frames)


def _decode_with_ffmpeg(path: Path, start: float, duration: Optional[float]) -> Tuple[Path, int]:
    """Decode the first audio stream to a temporary float32 RF64 file; return its path and the number of
    pre-roll frames in it before sample ``round(start * rate)``.

    ffmpeg seeks (``-ss`` before ``-i``) to the exact sample, but the decoder starts there cold: mp3's
    bit reservoir and overlapping frames, AAC's and Opus's overlap need the frames before, and without
    them the excerpt's first 500-2,000 samples are wrong (a click, or silence). So decoding starts
    :data:`FFMPEG_PREROLL` seconds earlier and the caller skips those frames: the excerpt equals the same
    span of the whole file decoded, as a DAW plays it.
    """
    probe = _ffprobe(path)  # also a clear error for files that hold no audio stream
    rate = probe.sample_rate
    first = int(round(start * rate))
    preroll = min(first, math.ceil(FFMPEG_PREROLL * rate))
    cmd = [_ffmpeg_binary("ffmpeg"), "-nostdin", "-v", "error", "-xerror", "-y"]
    if first - preroll:
        cmd += ["-ss", f"{(first - preroll) / rate:.9f}"]
    cmd += ["-i", str(path)]
    wanted = None if duration is None else preroll + int(round(duration * rate))
    if wanted is not None:  # a little more than needed: AudioSource cuts the excerpt to the sample
        cmd += ["-t", f"{(wanted + rate // 10) / rate:.9f}"]
    channels = probe.nb_channels
    nb_bytes = (wanted if wanted is not None else max(0, probe.nb_frames - first + preroll)) * channels * 4
    tmp = _decoded_copy(path, nb_bytes)
    try:  # whatever happens before it is handed over (an interrupt too), the copy goes
        cmd += ["-map", "0:a:0", "-acodec", "pcm_f32le", "-rf64", "auto", "-f", "wav", str(tmp)]
        # In a session of its own, so that Ctrl+C in a terminal stops the program reading the file
        # (which then removes the file) rather than failing the decode.
        result = subprocess.run(cmd, capture_output=True, start_new_session=True)
        if result.returncode != 0:
            said = result.stderr.decode(errors="replace")
            if "No space left on device" in said:
                raise AudioError(f"{path}: cannot decode it: "
                                 f"{no_room_in_temporary_folder(tmp.parent, 'its decoded copy', nb_bytes)}")
            message = said.strip().splitlines()
            raise AudioError(f"{path}: cannot decode it, the file is corrupt or not audio "
                             f"({message[-1] if message else 'ffmpeg failed'}); re-export or re-download it")
        decoded = _frames_of(tmp)
        expected = probe.nb_frames - (first - preroll)  # negative when the file states no length
        if wanted is not None:
            expected = min(expected, wanted)
        if expected - decoded > max(FFMPEG_LENGTH_TOLERANCE, 0.01 * expected):
            raise AudioError(f"{path}: truncated (its header announces {probe.nb_frames / rate:.2f} s, "
                             f"{(first - preroll + decoded) / rate:.2f} s decode); re-export or re-download it")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, preroll


def decode_streams(path: Path, outputs: Dict[int, Path]) -> None:
    """Decode audio streams of one file (``outputs``: the stream's number among the file's audio streams,
    and the 16-bit wav to write it to) in one ffmpeg run; a ``.stem.mp4``'s five streams are decoded
    together rather than one ffmpeg run each, reading the file once.

    Each wav is written beside its path and renamed there when every stream is decoded, so a failure or
    an interrupt leaves no partial file and what was there before untouched.
    """
    from .fileio import new_partial, replace_file

    cmd = [_ffmpeg_binary("ffmpeg"), "-nostdin", "-v", "error", "-xerror", "-y", "-i", str(path)]
    partial: Dict[int, Path] = {}
    try:
        for stream, out in outputs.items():
            partial[stream] = new_partial(out, ".wav")
            cmd += ["-map", f"0:a:{stream}", "-c:a", "pcm_s16le", "-map_metadata", "-1", "-bitexact",
                    "-f", "wav", str(partial[stream])]
        result = subprocess.run(cmd, capture_output=True, start_new_session=True)
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip().splitlines()
            raise AudioError(f"{path}: cannot decode it ({message[-1] if message else 'ffmpeg failed'}); "
                             "re-download it")
        for stream, tmp in partial.items():
            replace_file(tmp, outputs[stream])
    finally:
        for tmp in partial.values():
            tmp.unlink(missing_ok=True)


def _decoded_copy(path: Path, nb_bytes: int) -> Path:
    """A new empty file in the temporary folder for ``path``'s decoded copy (``nb_bytes``, 0 when unknown);
    what killed runs left there is removed first."""
    try:
        return new_temporary(".wav")
    except OpenUnmixLikeError as exc:
        raise AudioError(f"{path}: cannot decode it: {exc}") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            problem = no_room_in_temporary_folder(temporary_folder(), "its decoded copy", nb_bytes)
        else:
            problem = (f"cannot write in the temporary folder {temporary_folder()} ({exc.strerror or exc}); "
                       "set TMPDIR to a folder with room")
        raise AudioError(f"{path}: cannot decode it: {problem}") from None


# libsndfile's commands for the speaker of each channel (SF_CHANNEL_MAP_* codes), which soundfile does not wrap.
_GET_CHANNEL_MAP, _SET_CHANNEL_MAP = 0x1100, 0x1101


def channel_map(f) -> Optional[Tuple[int, ...]]:
    """The speaker of each channel of an open ``soundfile.SoundFile``, when its header states them
    (WAVEX's channel mask, CAF, ...); None when it does not (plain wav, FLAC) or soundfile cannot say."""
    try:
        from soundfile import _ffi, _snd

        positions = _ffi.new("int[]", f.channels)
        found = _snd.sf_command(f._file, _GET_CHANNEL_MAP, positions, _ffi.sizeof(positions))
    except (AttributeError, ImportError, TypeError):  # another soundfile than the one measured (0.12-0.14)
        return None
    return tuple(positions) if found else None


def set_channel_map(f, positions) -> bool:
    """Give a ``soundfile.SoundFile`` open for writing these speakers (before it is closed); False if it cannot."""
    try:
        from soundfile import _ffi, _snd

        array = _ffi.new("int[]", list(positions))
        return bool(_snd.sf_command(f._file, _SET_CHANNEL_MAP, array, _ffi.sizeof(array)))
    except (AttributeError, ImportError, TypeError):
        return False


def _frames_of(path: Path) -> int:
    import soundfile as sf

    return int(sf.info(sf_path(path)).frames)


def sf_path(path: PathLike) -> Union[str, bytes]:
    """``path`` as soundfile should be given it: bytes on POSIX, so that names which are not
    valid UTF-8 (kept by Python as surrogates) open too."""
    return str(path) if os.name == "nt" else os.fsencode(path)


def _check_header_length(path: Path) -> None:
    """Refuse a file whose header announces more audio than the file holds.

    libsndfile reads such a file up to its end without a word; formats whose header
    states the audio's size are checked (by their first bytes, whatever the name):
    RIFF and RF64 wav, Sony Wave64, AIFF/AIFC and Sun/NeXT au.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
            announced, available = _riff_data(f, size, rf64=head[:4] == b"RF64")
        elif head[:4] == b"riff" and len(head) == 12:
            f.seek(0)
            announced, available = _w64_data(f, size)
        elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            announced, available = _iff_chunk(f, size, b"SSND", "big")
        elif head[:4] == b".snd" and len(head) == 12:
            offset = int.from_bytes(head[4:8], "big")
            announced = int.from_bytes(head[8:12], "big")
            available = size - offset
            if announced == 0xFFFFFFFF:  # "unknown": the audio runs to the end of the file
                return
        else:
            return
    if announced is not None and announced > available:
        raise AudioError(f"{path}: truncated ({announced - available} bytes of audio announced by its header are "
                         "missing); re-export or re-download it")


def _iff_chunk(f, size: int, wanted: bytes, order: str) -> Tuple[Optional[int], int]:
    """The announced size of chunk ``wanted`` after the current position, and the bytes after its
    header; ``(None, 0)`` when it is not found."""
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            return None, 0
        length = int.from_bytes(chunk[4:], order)
        if chunk[:4] == wanted:
            return length, size - f.tell()
        f.seek(length + (length & 1), 1)


def _riff_data(f, size: int, rf64: bool) -> Tuple[Optional[int], int]:
    if not rf64:
        announced, available = _iff_chunk(f, size, b"data", "little")
        return (None, 0) if announced in (0, 0xFFFFFFFF) else (announced, available)
    ds64 = f.read(36)  # the ds64 chunk comes first: id, size, RIFF size, data size, sample count
    if len(ds64) < 28 or ds64[:4] != b"ds64":
        return None, 0
    data_size = int.from_bytes(ds64[16:24], "little")
    f.seek(12 + 8 + int.from_bytes(ds64[4:8], "little"))
    announced, available = _iff_chunk(f, size, b"data", "little")
    if announced is None:
        return None, 0
    return (data_size if announced == 0xFFFFFFFF else announced), available


_W64_DATA = b"data\xf3\xac\xd3\x11\x8c\xd1\x00\xc0\x4f\x8e\xdb\x8a"


def _w64_data(f, size: int) -> Tuple[Optional[int], int]:
    f.seek(40)  # the riff GUID, the file's size and the wave GUID
    while True:
        header = f.read(24)
        if len(header) < 24:
            return None, 0
        length = int.from_bytes(header[16:], "little")  # includes this 24-byte header
        if header[:16] == _W64_DATA:
            return length - 24, size - f.tell()
        if length < 24:
            return None, 0
        f.seek(((length + 7) & ~7) - 24, 1)


def conform_channels(audio: Tensor, nb_channels: int) -> Tensor:
    """``(channels, time)`` to ``nb_channels``: mono to stereo by duplication, stereo to mono by
    averaging, extra channels dropped."""
    if audio.shape[0] == nb_channels:
        return audio
    if nb_channels == 1:
        return audio.mean(dim=0, keepdim=True)
    if audio.shape[0] == 1:
        return audio.expand(nb_channels, -1).clone()
    return audio[:nb_channels]


def resample(audio: Tensor, orig_rate: float, new_rate: float) -> Tensor:
    """Resample along the last axis with a polyphase anti-aliasing filter.

    Args:
        audio: ``(..., nb_timesteps)`` real tensor.

    Returns:
        ``(..., round(nb_timesteps * new_rate / orig_rate))``, same dtype.
    """
    if orig_rate == new_rate:
        return audio
    import torch
    from scipy.signal import resample_poly

    ratio = Fraction(float(new_rate) / float(orig_rate)).limit_denominator(1000)
    out = resample_poly(audio.detach().cpu().numpy(), ratio.numerator, ratio.denominator, axis=-1)
    length = int(round(audio.shape[-1] * float(new_rate) / float(orig_rate)))
    out = out[..., :length]
    if out.shape[-1] < length:
        out = np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])])
    return torch.from_numpy(np.ascontiguousarray(out)).to(audio.dtype)


def subtype_for(ext: str, bits: int) -> str:
    """soundfile subtype for an output format, or an AudioError naming the valid choices."""
    try:
        return SUBTYPES[(ext, bits)]
    except KeyError:
        valid = ", ".join(f"{e}/{b}" for e, b in SUBTYPES)
        raise AudioError(f"cannot write {ext} with {bits} bits; choose one of {valid}, or mp3 (sized by its "
                         "bitrate instead)") from None

