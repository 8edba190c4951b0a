"""Augmentations for training.

Source augmentations are module-level functions ``f(audio, rng) -> audio`` on
one source ``(nb_channels, nb_timesteps)``, applied by the data sets before the
sources are summed into the mixture, with the randomness drawn from the
``random.Random`` the data set passes in, so data-loader worker processes can
pickle them and results do not depend on global random state. They keep the
shape of the source.

Batch augmentations (spectrogram masking and mixup) act on a batch
of mixtures and targets together, ``(x, y, generator) -> (x, y)`` with
``(nb_samples, nb_channels, nb_timesteps)`` tensors, in the training step: a
spectrogram mask must hide the same bins and frames of the mixture and the
target, and mixup blends two examples' mixtures and targets with one weight, so
the mixture stays the sum of its sources. Their randomness comes from the
``torch.Generator`` the trainer owns.
"""
from __future__ import annotations

import math
import random
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from .audio import conform_channels
from .losses import TrainingSTFT
from .transforms import STFT

Augmentation = Callable[[Tensor, random.Random], Tensor]


def gain(audio: Tensor, rng: random.Random, low: float = 0.25, high: float = 1.25) -> Tensor:
    """Scale by a gain drawn uniformly from ``[low, high)``."""
    return audio * rng.uniform(low, high)


def channelswap(audio: Tensor, rng: random.Random) -> Tensor:
    """Swap left and right with probability 1/2 (stereo only)."""
    if audio.shape[0] == 2 and rng.random() < 0.5:
        return audio.flip(0)
    return audio


def force_stereo(audio: Tensor, rng: random.Random) -> Tensor:
    """Mono becomes two identical channels; more than two keep the first two."""
    return conform_channels(audio, 2)


def volume(audio: Tensor, rng: random.Random) -> Tensor:
    """Scale by a gain drawn uniformly from ``[0.7, 1.3)``."""
    return gain(audio, rng, 0.7, 1.3)


def fit_length(audio: Tensor, length: int) -> Tensor:
    """Cut or zero-pad the last axis to ``length`` samples."""
    if audio.shape[-1] >= length:
        return audio[..., :length]
    return torch.nn.functional.pad(audio, (0, length - audio.shape[-1]))


def phase_vocoder(audio: Tensor, rate: float, n_fft: int = 1024, n_hop: int = 256) -> Tensor:
    """Play ``(nb_channels, nb_timesteps)`` ``rate`` times faster without changing its pitch.

    Output frame ``k`` takes the magnitude interpolated at analysis frame
    ``k * rate`` and advances the phase of every bin by the advance measured
    there (its bin frequency plus the wrapped deviation from it).

    Returns:
        ``(nb_channels, round(nb_timesteps / rate))``.
    """
    stft = STFT(n_fft, n_hop, pad_mode="constant")
    spec = stft(audio)
    nb_bins, nb_frames = spec.shape[-2:]
    length = int(round(audio.shape[-1] / rate))
    if nb_frames < 2:
        return fit_length(audio, length)
    # On the audio's device: a source held on a GPU (--preload) stays there, and CPU index
    # weights or bin frequencies would not combine with its spectrogram.
    steps = torch.arange(0, nb_frames - 1, rate, dtype=torch.float64, device=audio.device)
    index = steps.floor().long()
    frac = (steps - index).to(audio.dtype)
    mag = spec.abs()
    mag = mag[..., index] * (1 - frac) + mag[..., index + 1] * frac
    omega = (2 * math.pi * n_hop / n_fft) * torch.arange(nb_bins, dtype=audio.dtype, device=audio.device)[:, None]
    angle = spec.angle()
    deviation = angle[..., 1:] - angle[..., :-1] - omega
    deviation = deviation - 2 * math.pi * torch.round(deviation / (2 * math.pi))
    advance = (omega + deviation)[..., index]
    phase = torch.cat([angle[..., :1], angle[..., :1] + advance[..., :-1].cumsum(dim=-1)], dim=-1)
    return stft.inverse(torch.polar(mag, phase), length)


def timestretch(audio: Tensor, rng: random.Random, low: float = 0.9, high: float = 1.1) -> Tensor:
    """Change the tempo by a factor drawn from ``[low, high]``, keeping the pitch.

    The shape is kept: a slowed-down source is cut at the excerpt's length, a
    sped-up one ends with silence (the excerpt holds no more audio).
    """
    return fit_length(phase_vocoder(audio, rng.uniform(low, high)), audio.shape[-1])


def pitchshift(audio: Tensor, rng: random.Random, semitones: float = 2.0) -> Tensor:
    """Shift the pitch by up to ``semitones`` either way, keeping the tempo and the shape.

    Stretches the source to ``factor`` times its length, then resamples it back:
    played in the original time, every frequency is ``factor`` times higher.
    """
    from .audio import resample

    factor = 2.0 ** (rng.uniform(-semitones, semitones) / 12.0)
    stretched = phase_vocoder(audio, 1.0 / factor)
    # resample works in NumPy and returns a CPU tensor: back to the source's device.
    shifted = resample(stretched, stretched.shape[-1], audio.shape[-1]).to(audio.device)
    return fit_length(shifted, audio.shape[-1])


AUGMENTATIONS: Dict[str, Augmentation] = {"gain": gain, "channelswap": channelswap, "force_stereo": force_stereo,
                                          "volume": volume, "timestretch": timestretch, "pitchshift": pitchshift}


class Compose:
    """Apply augmentations in order (picklable, unlike a lambda chain)."""

    def __init__(self, functions: Sequence[Augmentation] = ()):
        self.functions: List[Augmentation] = list(functions)

    def __call__(self, audio: Tensor, rng: random.Random) -> Tensor:
        for f in self.functions:
            audio = f(audio, rng)
        return audio

    @classmethod
    def from_names(cls, names: Sequence[str]) -> "Compose":
        unknown = [n for n in names if n not in AUGMENTATIONS]
        if unknown:
            batch = [n for n in unknown if n in BATCH_AUGMENTATIONS]
            hint = f" ({', '.join(batch)} act on training batches: see BatchCompose)" if batch else ""
            raise ValueError(f"unknown augmentation(s) {unknown}; choose from {', '.join(AUGMENTATIONS)}{hint}")
        return cls([AUGMENTATIONS[n] for n in names])


# ---------------------------------------------------------------- batch augmentations

Pair = Tuple[Tensor, Tensor]


def _uniform_int(high: int, generator: torch.Generator) -> int:
    """An integer drawn uniformly from ``0 .. high`` (inclusive)."""
    return int(torch.randint(0, high + 1, (1,), generator=generator))


class SpectrogramMask:
    """Zero a random band of bins or span of frames in mixture and target alike (SpecAugment).

    Both go through the training STFT (``n_fft``, ``n_hop``), every example gets
    its own band (``axis="freq"``, up to ``max_width`` bins) or span
    (``axis="time"``, up to ``max_width`` frames), and the inverse STFT brings
    them back to waveforms, so any model and any loss sees the masked signals.
    """

    def __init__(self, axis: str, max_width: int, n_fft: int, n_hop: int):
        if axis not in ("freq", "time"):
            raise ValueError(f"axis must be 'freq' or 'time', got {axis!r}")
        self.axis, self.max_width, self.n_fft, self.n_hop = axis, max_width, n_fft, n_hop

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Pair:
        stft = TrainingSTFT(self.n_fft, self.n_hop)  # the STFT the training step takes: any length works
        both = torch.stack([x, y])  # (2, nb_samples, nb_channels, nb_timesteps)
        spec = stft(both)
        size = spec.shape[-2] if self.axis == "freq" else spec.shape[-1]
        keep = torch.ones(both.shape[1], size, dtype=x.dtype, device=x.device)
        for i in range(both.shape[1]):
            width = _uniform_int(min(self.max_width, size), generator)
            start = _uniform_int(size - width, generator)
            keep[i, start : start + width] = 0
        keep = keep[None, :, None, :, None] if self.axis == "freq" else keep[None, :, None, None, :]
        out = stft.inverse(spec * keep, x.shape[-1])
        return out[0], out[1]


def freqmask(n_fft: int, n_hop: int) -> SpectrogramMask:
    """Frequency masking of up to 80 bins."""
    return SpectrogramMask("freq", 80, n_fft, n_hop)


def timemask(n_fft: int, n_hop: int) -> SpectrogramMask:
    """Time masking of up to 40 frames."""
    return SpectrogramMask("time", 40, n_fft, n_hop)


def derangement(n: int, generator: torch.Generator) -> List[int]:
    """A random ``partner[i] != i`` for every ``i`` of ``range(n)`` (``n >= 2``): each example is paired with
    the next one in a random cyclic order, so no example is ever blended with itself."""
    order = torch.randperm(n, generator=generator).tolist()
    partner = [0] * n
    for k, i in enumerate(order):
        partner[i] = order[(k + 1) % n]
    return partner


class Mixup:
    """Blend examples of a batch with others from the same batch: with probability ``prob`` an example
    becomes ``lam * own + (1 - lam) * other``, mixture and target alike, ``lam ~ Beta(alpha, alpha)``,
    where ``other`` is always another example (:func:`derangement`)."""

    def __init__(self, alpha: float = 0.4, prob: float = 0.5):
        self.alpha, self.prob = alpha, prob

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Pair:
        nb_samples = x.shape[0]
        if nb_samples < 2:
            return x, y
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        partner = derangement(nb_samples, generator)
        weights = [rng.betavariate(self.alpha, self.alpha) if rng.random() < self.prob else 1.0
                   for _ in range(nb_samples)]
        lam = torch.tensor(weights, dtype=x.dtype, device=x.device)[:, None, None]
        return lam * x + (1 - lam) * x[partner], lam * y + (1 - lam) * y[partner]


def mixup(n_fft: int, n_hop: int) -> Mixup:
    """Mixup with ``alpha=0.4`` on half of the examples (the weight drawn from ``Beta(alpha, alpha)``)."""
    return Mixup()


BATCH_AUGMENTATIONS: Dict[str, Callable[[int, int], Callable]] = {
    "freqmask": freqmask, "timemask": timemask, "mixup": mixup,
}


class BatchCompose:
    """Apply batch augmentations in order (picklable)."""

    def __init__(self, functions: Sequence[Callable[[Tensor, Tensor, torch.Generator], Pair]] = ()):
        self.functions = list(functions)

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Pair:
        for f in self.functions:
            x, y = f(x, y, generator)
        return x, y

    def __bool__(self) -> bool:
        return bool(self.functions)

    @classmethod
    def from_names(cls, names: Sequence[str], n_fft: int, n_hop: int) -> "BatchCompose":
        unknown = [n for n in names if n not in BATCH_AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown batch augmentation(s) {unknown}; choose from {', '.join(BATCH_AUGMENTATIONS)}")
        return cls([BATCH_AUGMENTATIONS[n](n_fft, n_hop) for n in names])


def split_names(names: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Separate ``--source-augmentations`` into source-level and batch-level names (order kept).

    Raises:
        ValueError: a name that is neither, listing all.
    """
    unknown = [n for n in names if n not in AUGMENTATIONS and n not in BATCH_AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; choose from "
                         f"{', '.join(list(AUGMENTATIONS) + list(BATCH_AUGMENTATIONS))}")
    return [n for n in names if n in AUGMENTATIONS], [n for n in names if n in BATCH_AUGMENTATIONS]
