"""Separating whole tracks of any length, at any sample rate.

Long inputs are cut into overlapping segments that are separated one after the
other and cross-faded with complementary raised-cosine ramps, so memory does
not grow with the track's length. Each segment is resampled to the model's rate
and back, so the track itself is never resampled as a whole.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from .separator import Separator, aggregate_estimates

DEFAULT_SEGMENT = 30.0
DEFAULT_OVERLAP = 2.0


def segment_bounds(nb_timesteps: int, segment: int, overlap: int) -> list:
    """``(start, end)`` of overlapping segments covering ``nb_timesteps`` samples.

    Consecutive segments overlap by exactly ``overlap`` samples; the last one is
    longer than ``overlap``.
    """
    if segment <= 0 or nb_timesteps <= segment:
        return [(0, nb_timesteps)]
    if not 0 <= overlap < segment:
        raise ValueError(f"overlap ({overlap} samples) must be shorter than a segment ({segment})")
    step = segment - overlap
    bounds, start = [], 0
    while True:
        end = min(start + segment, nb_timesteps)
        bounds.append((start, end))
        if end == nb_timesteps:
            return bounds
        start += step


def crossfade_ramp(length: int, dtype=torch.float32) -> Tensor:
    """Fade-in weights over ``length`` samples; ``1 - ramp`` is the matching fade-out."""
    t = (torch.arange(length, dtype=torch.float64) + 0.5) / max(length, 1)
    return torch.sin(0.5 * math.pi * t).square().to(dtype)


def _separate_segment(separator: Separator, audio: Tensor, rate: float) -> Tensor:
    """``(nb_channels, n)`` at ``rate`` -> ``(nb_targets, nb_channels, n)`` at ``rate``."""
    from .audio import resample

    device = next(separator.parameters()).device
    model_rate = separator.sample_rate
    x = resample(audio, rate, model_rate)
    est = separator(x[None].to(device))[0].cpu()
    est = resample(est, model_rate, rate)
    n = audio.shape[-1]
    if est.shape[-1] < n:
        est = torch.nn.functional.pad(est, (0, n - est.shape[-1]))
    return est[..., :n]


def iter_separate(
    separator: Separator,
    audio: Tensor,
    sample_rate: float,
    segment: Optional[float] = DEFAULT_SEGMENT,
    overlap: float = DEFAULT_OVERLAP,
    progress: bool = False,
    desc: Optional[str] = None,
) -> Iterator[Tensor]:
    """Separate ``audio`` segment by segment, yielding finished consecutive chunks.

    Args:
        separator: a :class:`Separator` (any device).
        audio: ``(nb_channels, nb_timesteps)`` at ``sample_rate``.
        sample_rate: the audio's rate; chunks come out at the same rate.
        segment: segment length in seconds; ``None`` or 0 separates in one go.
        overlap: cross-fade length in seconds between segments.
        progress: show a tqdm bar (seconds of audio done).

    Yields:
        ``(nb_targets, nb_channels, n)`` chunks whose concatenation along the
        last axis is the separated track.
    """
    from tqdm import tqdm

    nb_timesteps = audio.shape[-1]
    seg = int(round((segment or 0) * sample_rate))
    ov = int(round(overlap * sample_rate)) if seg else 0
    bounds = segment_bounds(nb_timesteps, seg, min(ov, seg - 1) if seg else 0)
    pending = None
    with torch.inference_mode(), tqdm(
        total=round(nb_timesteps / sample_rate, 2), unit="s", desc=desc, disable=not progress, leave=False
    ) as bar:
        for k, (start, end) in enumerate(bounds):
            est = _separate_segment(separator, audio[:, start:end], sample_rate)
            if pending is not None:
                ramp = crossfade_ramp(pending.shape[-1], est.dtype)
                est[..., : pending.shape[-1]] = pending * (1 - ramp) + est[..., : pending.shape[-1]] * ramp
            if k + 1 < len(bounds):
                keep = bounds[k + 1][0] - start
                pending = est[..., keep:].clone()
                est = est[..., :keep]
            bar.update(round(est.shape[-1] / sample_rate, 2))
            yield est


def separate_tensor(
    separator: Separator,
    audio: Tensor,
    sample_rate: float,
    segment: Optional[float] = DEFAULT_SEGMENT,
    overlap: float = DEFAULT_OVERLAP,
    progress: bool = False,
) -> Tensor:
    """Separate one track held in memory: ``(nb_channels, nb_timesteps)`` ->
    ``(nb_targets, nb_channels, nb_timesteps)`` at the same rate."""
    chunks = list(iter_separate(separator, audio, sample_rate, segment, overlap, progress))
    return torch.cat(chunks, dim=-1)


def separate(
    audio: Tensor,
    sample_rate: float,
    model: Union[str, Path, Separator, None] = None,
    targets: Optional[Sequence[str]] = None,
    niter: int = 1,
    residual: Optional[str] = None,
    softmask: bool = False,
    wiener_win_len: Optional[int] = 300,
    aggregate: Optional[Mapping[str, Sequence[str]]] = None,
    segment: Optional[float] = DEFAULT_SEGMENT,
    overlap: float = DEFAULT_OVERLAP,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
) -> Dict[str, Tensor]:
    """Separate audio in one call.

    Args:
        audio: ``(nb_timesteps,)``, ``(nb_channels, nb_timesteps)`` or
            ``(nb_samples, nb_channels, nb_timesteps)`` at ``sample_rate``.
        sample_rate: the audio's rate in Hz; estimates come back at this rate.
        model: a :class:`Separator`, a model name or folder, or ``None`` for
            the bundled model (the separator options below then apply).
        targets, niter, residual, softmask, wiener_win_len: see :class:`Separator`.
        aggregate: sum groups of targets, see :meth:`Separator.to_dict`.
        segment, overlap: segmented processing in seconds (see :func:`iter_separate`).
        device: where to run a model loaded here.

    Returns:
        target name -> tensor shaped like ``audio``.

    Example:
        >>> stems = separate(torch.rand(2, 44100 * 5), 44100, model="my-model/")
        >>> stems["vocals"].shape
        torch.Size([2, 220500])
    """
    if not isinstance(model, Separator):
        model = Separator.from_pretrained(
            model, targets=targets, device=device, niter=niter, residual=residual,
            softmask=softmask, wiener_win_len=wiener_win_len, progress=progress,
        )
    shape = audio.shape
    if audio.dim() not in (1, 2, 3):
        raise ValueError(f"audio must have 1 to 3 dimensions, got shape {tuple(shape)}")
    batch = audio.reshape((-1,) + shape[-2:]) if audio.dim() == 3 else audio.reshape(1, -1, shape[-1])
    results = [separate_tensor(model, x, sample_rate, segment, overlap, progress) for x in batch.float()]
    stacked = torch.stack(results, dim=0)  # (nb_samples, nb_targets, nb_channels, nb_timesteps)
    named = {
        name: stacked[:, j].reshape(shape)
        for j, name in enumerate(model.target_names)
    }
    return aggregate_estimates(named, aggregate)
