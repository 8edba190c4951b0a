"""The level a track is separated at.

The models see magnitudes, and a model fitted on songs around one level separates a song
mastered 12 dB quieter worse, not merely quieter (on the bundled model, 0.8 dB of SDR lost at
-12 dB, 1.5 dB at -20 dB: ``docs/inference.md``). Level matching turns a track more than
:data:`TOLERANCE_DB` from the level its model was trained at to within that of it before
separating, and turns the stems back by the same gain, so they come out at the input's level and
still add up to it. Tracks within the model's usual range are separated as they are: turning
every track to exactly the model's level cost 0.04 dB at the validation excerpts' own levels.

A track's level is the median of the RMS levels of its one-second blocks, leaving out blocks
below :data:`GATE_DB` (digital silence, a fade's tail): a quiet intro or a long silence does not
make a loud song count as quiet, and the median of seconds is measured in one pass with memory
independent of the length.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .audio import TensorSource

GATE_DB = -70.0  # blocks quieter than this are silence, not the song's level
BLOCK_SECONDS = 1.0
READ_BLOCKS = 10  # blocks read at once while measuring (float64 squares of 10 s: 7 MB a channel)
LEVEL_RANGE = (-60.0, 0.0)  # levels a model may ask for (dBFS RMS)
TOLERANCE_DB = 3.0  # tracks within this of the model's level are left as they are (most training mixtures are)


def block_powers(audio: Tensor, rate: float, whole_track: bool = True) -> Tensor:
    """Mean square of each one-second block of ``(nb_channels, n)`` audio (channels averaged), float64.

    A last block shorter than half a block is left out (it would weigh a fraction of a second as
    a second), unless it is all of a track (``whole_track``) there is.
    """
    size = max(1, int(round(BLOCK_SECONDS * rate)))
    squares = audio.detach().to(torch.float64).square().mean(dim=0)
    whole = squares.shape[-1] // size
    powers = squares[: whole * size].reshape(whole, size).mean(dim=1)
    rest = squares[whole * size:]
    if rest.numel() and (2 * rest.numel() >= size or (whole == 0 and whole_track)):
        powers = torch.cat([powers, rest.mean().reshape(1)])
    return powers


def level_of(powers: Tensor) -> Optional[float]:
    """The level (dBFS RMS) of blocks with mean squares ``powers``: the median of those above the gate,
    ``None`` when all are below it (a silent track has no level to match)."""
    db = 10 * torch.log10(powers.detach().cpu().clamp_min(1e-30))
    kept = db[db > GATE_DB]
    return float(np.median(kept.numpy())) if kept.numel() else None


def track_level(audio: Tensor, rate: float) -> Optional[float]:
    """The level of a ``(nb_channels, n)`` track held in memory (dBFS RMS; ``None`` for silence), measured
    a few seconds at a time too."""
    return source_level(TensorSource(audio), rate)


def source_level(source, rate: float) -> Optional[float]:
    """The level of a track read through ``source.read(start, stop)`` (``source.nb_frames`` long),
    :data:`READ_BLOCKS` blocks at a time."""
    step = max(1, int(round(BLOCK_SECONDS * rate))) * READ_BLOCKS
    powers = [block_powers(source.read(start, min(start + step, source.nb_frames)), rate,
                           whole_track=start == 0)
              for start in range(0, source.nb_frames, step)]
    return level_of(torch.cat(powers))


def matching_gain(level: Optional[float], target: Optional[float], tolerance: Optional[float] = None) -> float:
    """The gain that brings a track at ``level`` to within ``tolerance`` dB of ``target`` (default
    :data:`TOLERANCE_DB`): 1 for a track already there, or when either level is ``None``."""
    if level is None or target is None:
        return 1.0
    tolerance = TOLERANCE_DB if tolerance is None else tolerance
    wanted = min(max(level, target - tolerance), target + tolerance)
    return 10 ** ((wanted - level) / 20)


def check_input_level(value) -> Optional[float]:
    """``None`` (no matching) or a level in :data:`LEVEL_RANGE`, as a float.

    Raises:
        ValueError: one line saying what is accepted.
    """
    if value is None:
        return None
    try:
        level = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        level = None
    if level is None or not math.isfinite(level) or not LEVEL_RANGE[0] <= level <= LEVEL_RANGE[1]:
        raise ValueError(f"input_level must be a level in dBFS RMS from {LEVEL_RANGE[0]:g} to {LEVEL_RANGE[1]:g} "
                         f"(the bundled model's is -16.5), or None to separate tracks at their own level; "
                         f"got {value!r}")
    return level
