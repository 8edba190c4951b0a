"""Writing a track's stems as they are separated, without ever leaving partial files.

Chunks are appended to hidden float32 files beside the final outputs; when the
track is done, a second pass applies the clipping policy (which needs the
track's peak) and encodes each stem to its final format beside its output path;
only when every stem is encoded are they renamed into place. Until then no
output path is touched (files of an earlier run stay as they were), and on any
failure the hidden files are removed; hidden files that a killed run left are
removed by the next run writing the same outputs (see :mod:`openunmix_like.fileio`).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Dict, Mapping

import numpy as np
from torch import Tensor

from .audio import sf_path, subtype_for
from .errors import AudioError
from .fileio import new_partial

CLIP_MODES = ("rescale", "clamp", "none")
BLOCK = 1 << 18
FLAC_MAX_CHANNELS = 8


class StemWriter:
    """Streams named stems of one track into audio files.

    Args:
        paths: stem name -> final output path.
        sample_rate: rate of the written files.
        nb_channels: channels of every stem.
        ext: ``wav`` or ``flac``.
        bits: 16, 24 or 32 (32 is float, wav only).
        clip: ``rescale`` (one gain for all stems of the track so the loudest
            peak is at most 1 and the stems still sum to the mixture), ``clamp``
            (cut samples to [-1, 1]) or ``none`` (as computed; integer formats
            still cannot hold values beyond [-1, 1] and clip them).
    """

    def __init__(self, paths: Mapping[str, Path], sample_rate: int, nb_channels: int,
                 ext: str = "wav", bits: int = 16, clip: str = "rescale"):
        if clip not in CLIP_MODES:
            raise ValueError(f"clip must be one of {CLIP_MODES}, got {clip!r}")
        self.subtype = subtype_for(ext, bits)
        self.format = ext.upper()
        self.paths = dict(paths)
        if self.format == "FLAC" and nb_channels > FLAC_MAX_CHANNELS:
            raise AudioError(f"{next(iter(self.paths.values()), 'output')}: FLAC holds at most "
                             f"{FLAC_MAX_CHANNELS} channels, this track has {nb_channels}; write wav instead")
        self.sample_rate = int(sample_rate)
        self.nb_channels = nb_channels
        self.clip = clip
        self.peak = 0.0
        self._files: Dict[str, object] = {}
        self._tmp: Dict[str, Path] = {}  # float32 chunks as they come
        self._encoded: Dict[str, Path] = {}  # the final format, until renamed into place
        self._done: list = []
        self._created_dirs: list = []

    def __enter__(self) -> "StemWriter":
        import soundfile as sf

        try:
            for name, path in self.paths.items():
                self._make_parents(path.parent)
                # Also removes what a killed run left here (their names carry a dead process id).
                tmp = self._tmp[name] = new_partial(path, ".wav")
                self._files[name] = sf.SoundFile(sf_path(tmp), "w", self.sample_rate, self.nb_channels,
                                                 subtype="FLOAT", format="RF64")
        except Exception as exc:
            self._cleanup()
            self._remove_created_dirs()
            raise _as_audio_error(exc, next(iter(self.paths.values()))) from exc
        return self

    def _make_parents(self, folder: Path) -> None:
        missing = [p for p in [folder, *folder.parents] if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        self._created_dirs.extend(missing)  # deepest first

    def write(self, chunks: Mapping[str, Tensor]) -> None:
        """Append ``(nb_channels, n)`` chunks, one per stem."""
        for name, chunk in chunks.items():
            data = chunk.detach().cpu().numpy().T
            peak = float(np.abs(data).max(initial=0.0))
            if not np.isfinite(peak):
                raise AudioError(f"{self.paths[name]}: the separation gave NaN or infinite samples (is the input "
                                 "far beyond full scale?); nothing was written, normalise the input")
            self.peak = max(self.peak, peak)
            try:
                self._files[name].write(data)
            except Exception as exc:
                raise _as_audio_error(exc, self.paths[name]) from exc

    def finish(self) -> None:
        """Encode every stem beside its final path, then rename them all into place (each rename is atomic)."""
        import soundfile as sf

        for f in self._files.values():
            f.close()
        gain = 1.0 / self.peak if self.clip == "rescale" and self.peak > 1.0 else 1.0
        for name, path in self.paths.items():
            try:
                tmp = self._encoded[name] = new_partial(path, f".{self.format.lower()}")
                with sf.SoundFile(sf_path(self._tmp[name])) as src, sf.SoundFile(
                    sf_path(tmp), "w", self.sample_rate, self.nb_channels, subtype=self.subtype, format=self.format
                ) as dst:
                    for block in src.blocks(BLOCK, dtype="float32", always_2d=True):
                        block = block * gain if gain != 1.0 else block
                        if self.clip != "none" or self.subtype != "FLOAT":
                            np.clip(block, -1.0, 1.0, out=block)
                        dst.write(block)
            except Exception as exc:
                raise _as_audio_error(exc, path) from exc
        # Every stem is encoded: only now are the outputs (and what an earlier run left there) replaced.
        for name, path in self.paths.items():
            try:
                os.replace(self._encoded[name], path)
            except OSError as exc:
                raise _as_audio_error(exc, path) from exc
            del self._encoded[name]
            self._done.append(path)

    def _cleanup(self) -> None:
        for f in self._files.values():
            with contextlib.suppress(Exception):
                f.close()
        for tmp in [*self._tmp.values(), *self._encoded.values()]:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _remove_created_dirs(self) -> None:
        for folder in self._created_dirs:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty

    def __exit__(self, exc_type, exc, tb) -> None:
        self._cleanup()
        if exc_type is not None:
            # A failed track leaves none of its outputs behind.
            for path in self._done:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            self._remove_created_dirs()


def _as_audio_error(exc: Exception, path: Path) -> AudioError:
    if isinstance(exc, AudioError):
        return AudioError(str(exc))
    if isinstance(exc, OSError) and exc.errno == 28:
        return AudioError(f"{path}: disk full while writing; free space and run again")
    return AudioError(f"{path}: cannot write ({exc}); check the output folder is writable")
