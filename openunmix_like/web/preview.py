"""What the page's player streams: a finished job's stems and mixture as short runs of PCM, and waveform peaks.

The player holds only the few seconds around the play head, whatever the song's length: it asks for
``CHUNK_SECONDS`` at a time as 16-bit PCM (:func:`read_pcm`) and draws waveforms from
``PEAK_BUCKETS`` peaks per track computed here once (:func:`build_preview`). Every track is served
at the rate and channel count of the first stem, so the page plays them on one clock. A track that
libsndfile cannot read at that rate and channel count (the upload, when it is m4a or at another
rate) is decoded once by ffmpeg into a FLAC file in the job's ``preview/`` folder.

This module imports no web framework (:mod:`openunmix_like.web.jobs` calls it, under a lock per job).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..audio import _ffmpeg_binary, _ffprobe, sf_path
from ..errors import AudioError
from ..fileio import new_partial

PREVIEW_DIR = "preview"
MIXTURE, MIXTURE_ELSE = "mixture", "upload"  # the upload's track
INFO_NAME = "info.json"
PEAK_BUCKETS = 2000  # per track: finer than any waveform drawn on the page
BLOCK_FRAMES = 1 << 17
MAX_FRAMES = 1 << 22  # one request's frames: 95 s at 44.1 kHz, 5.9 s at 705.6 kHz
CHUNK_SECONDS = 10  # the chunk suggested to players, at most MAX_FRAMES
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # libsndfile reads these as integers unscaled: read as floats
FFMPEG_TIMEOUT_S = 600


def readable(path: Path, rate: Optional[int] = None, channels: Optional[int] = None) -> bool:
    """Whether libsndfile reads ``path`` (at ``rate`` Hz with ``channels`` channels, when given)."""
    import soundfile as sf

    try:
        info = sf.info(sf_path(path))
    except Exception:
        return False
    return (rate is None or info.samplerate == rate) and (channels is None or info.channels == channels)


def decode_to_flac(source: Path, target: Path, rate: int, channels: int) -> None:
    """``source`` decoded by ffmpeg to 16-bit FLAC at ``rate`` Hz and ``channels`` channels, written atomically.

    Raises:
        AudioError: no ffmpeg, or it cannot decode ``source`` (its last line of output says why).
    """
    partial = new_partial(target, ".flac")
    cmd = [_ffmpeg_binary("ffmpeg", "decode this upload for the player"), "-nostdin", "-v", "error", "-y",
           "-i", b"file:" + os.fsencode(source), "-map", "0:a:0", "-vn", "-ar", str(rate), "-ac", str(channels),
           "-c:a", "flac", "-sample_fmt", "s16", "-f", "flac", b"file:" + os.fsencode(partial)]
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=FFMPEG_TIMEOUT_S)
        if done.returncode != 0:
            said = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
            raise AudioError(f"{source.name}: cannot decode ({said[-1].strip() if said else 'ffmpeg failed'})")
        os.replace(partial, target)
    except subprocess.TimeoutExpired:
        raise AudioError(f"{source.name}: decoding took over {FFMPEG_TIMEOUT_S} s") from None
    finally:
        partial.unlink(missing_ok=True)


def peaks_of(path: Path, buckets: int = PEAK_BUCKETS) -> List[float]:
    """Lowest and highest sample of the channels' mean in each of ``buckets`` equal spans of the file.

    Returns ``[lo_0, hi_0, lo_1, hi_1, ...]`` in [-1, 1], rounded to 4 decimals; spans past the end (a
    file of fewer frames than buckets) are 0. Reads the file in 16-bit blocks: memory does not grow
    with its length (about 0.1 s for a 10-minute stereo wav).
    """
    import soundfile as sf

    lo = np.zeros(buckets, np.int32)
    hi = np.zeros(buckets, np.int32)
    with sf.SoundFile(sf_path(path)) as f:
        total, channels = f.frames, f.channels
        # Frame i belongs to bucket i * buckets // total; bucket b's first frame:
        first = -(-np.arange(buckets + 1, dtype=np.int64) * total // buckets)
        start = 0
        for block in _int16_blocks(f):
            mono = block[:, 0].astype(np.int32)
            for c in range(1, channels):  # faster than block.sum(axis=1), which walks the rows
                mono += block[:, c]
            end = start + len(mono)
            b0, b1 = start * buckets // total, (end - 1) * buckets // total
            cuts = np.concatenate([[0], first[b0 + 1 : b1 + 1] - start])
            lo[b0 : b1 + 1] = np.minimum(lo[b0 : b1 + 1], np.minimum.reduceat(mono, cuts))
            hi[b0 : b1 + 1] = np.maximum(hi[b0 : b1 + 1], np.maximum.reduceat(mono, cuts))
            start = end
    empty = first[1:] == first[:-1]  # buckets no frame falls in (files shorter than ``buckets`` frames)
    lo[empty] = hi[empty] = 0
    scale = 1.0 / (32768 * max(channels, 1))
    pairs = np.stack([lo, hi], axis=1).reshape(-1) * scale
    return [round(float(v), 4) for v in pairs]


def build_preview(folder: Path, stems: Dict[str, Path], mixture: Optional[Path]) -> dict:
    """The player's description of a finished job, made once and kept in ``folder/preview/info.json``.

    Args:
        folder: the job's folder.
        stems: stem name -> file, in the separator's order.
        mixture: the upload, or None.

    Returns:
        ``{"rate", "channels", "chunk_frames" (a suggestion: ``CHUNK_SECONDS``, at most ``MAX_FRAMES``, what
        one request may ask for), "tracks": [{"name", "frames", "peaks", "mixture"}], "mixture_error"}``; the
        mixture is the last track, absent when it cannot be decoded (``mixture_error`` then says why). A kept
        ``info.json`` naming a file that is gone is made again.

    Raises:
        AudioError: a stem cannot be read.
    """
    import soundfile as sf

    preview = folder / PREVIEW_DIR
    info_path = preview / INFO_NAME
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        # Made again when a file it names is gone (a decoded copy deleted by hand, say).
        if all((folder / track["file"]).is_file() for track in info["tracks"]):
            info["chunk_frames"] = min(info["chunk_frames"], MAX_FRAMES)  # made before that limit was heeded
            return info
    preview.mkdir(exist_ok=True)
    first = next(iter(stems.values()))
    reference = _playable(first, preview / f"stem-{next(iter(stems))}.flac", None, None)
    head = sf.info(sf_path(reference))
    rate, channels = int(head.samplerate), int(head.channels)
    sources = {name: _playable(path, preview / f"stem-{name}.flac", rate, channels) for name, path in stems.items()}
    tracks = [{"name": name, "mixture": False, "file": os.path.relpath(path, folder)} for name, path in sources.items()]
    mixture_error = None
    if mixture is not None:
        try:
            path = _playable(mixture, preview / "mixture.flac", rate, channels)
            name = MIXTURE if MIXTURE not in stems else MIXTURE_ELSE  # a residual may be named "mixture"
            tracks.append({"name": name, "mixture": True, "file": os.path.relpath(path, folder)})
        except AudioError as exc:
            mixture_error = str(exc)
    else:
        mixture_error = "the upload is gone"
    for track in tracks:
        path = folder / track["file"]
        track["frames"] = int(sf.info(sf_path(path)).frames)
        track["peaks"] = peaks_of(path)
    info = {"rate": rate, "channels": channels, "chunk_frames": min(CHUNK_SECONDS * rate, MAX_FRAMES), "tracks": tracks,
            "mixture_error": mixture_error}
    partial = new_partial(info_path, ".json")
    try:
        partial.write_text(json.dumps(info))
        os.replace(partial, info_path)
    finally:
        partial.unlink(missing_ok=True)
    return info


def _playable(path: Path, decoded: Path, rate: Optional[int], channels: Optional[int]) -> Path:
    """``path`` if libsndfile reads it as asked, else its decoded copy ``decoded`` (made if missing)."""
    if readable(path, rate, channels):
        return path
    if not decoded.is_file():
        if rate is None:  # the first stem sets the rate: keep its own (ffprobe reads it without decoding)
            found = _ffprobe(path)
            rate, channels = int(found.sample_rate), int(found.nb_channels)
        decode_to_flac(path, decoded, rate, channels)
    return decoded


def read_pcm(path: Path, start: int, frames: int) -> bytes:
    """Frames ``start`` to ``start + frames`` of ``path`` (fewer at its end) as interleaved 16-bit little-endian PCM."""
    import soundfile as sf

    with sf.SoundFile(sf_path(path)) as f:
        if start >= f.frames:
            return b""
        f.seek(start)
        count = min(frames, f.frames - start)
        if f.subtype in FLOAT_SUBTYPES:
            data = _to_int16(f.read(count, dtype="float32", always_2d=True))
        else:
            data = f.read(count, dtype="int16", always_2d=True)
    return data.astype("<i2", copy=False).tobytes()


def _to_int16(block: np.ndarray) -> np.ndarray:
    """Float samples (full scale at 1.0) as 16-bit ones, those beyond full scale clipped."""
    return np.clip(np.rint(block * 32768.0), -32768, 32767).astype(np.int16)


def _int16_blocks(f):
    """The open file ``f``'s blocks of ``BLOCK_FRAMES`` as 16-bit samples, ``(frames, channels)``.

    libsndfile reads a float file (a 32-bit float wav, as DAWs export) as integers without scaling them,
    so that almost all of it reads as 0: such a file is read as floats and converted here.
    """
    if f.subtype not in FLOAT_SUBTYPES:
        yield from f.blocks(BLOCK_FRAMES, dtype="int16", always_2d=True)
        return
    for block in f.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True):
        yield _to_int16(block)
