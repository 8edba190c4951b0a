"""Training losses, their weighted sums, and the step that feeds them.

Each loss compares an estimate with its reference in one domain:

- magnitude: ``mse`` (Open-Unmix) and ``l1`` (the L1,1 loss on the masked
  magnitude of Jansson et al., ISMIR 2017, as a mean), on
  ``(nb_samples, nb_channels, nb_bins, nb_frames)`` magnitudes of the training STFT;
- waveform: ``mrstft`` (multi-resolution STFT loss), ``sisdr``
  (negative scale-invariant SDR in dB), ``sdr`` (negative SDR in dB over 1 s frames,
  the frames BSSEval v4 scores) and ``wavl1`` (L1 on the samples), on
  ``(nb_samples, nb_channels, nb_timesteps)`` audio.

:func:`parse_loss` reads weighted sums such as ``l1+0.5*mrstft``.
:class:`Objective` brings a model's output into the domains its loss needs:
magnitude estimates through the inverse STFT with the mixture's phase, complex
estimates through their own inverse STFT, waveforms through the STFT.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .architectures import COMPLEX, MAGNITUDE, WAVEFORM
from .transforms import STFT, ComplexNorm

# Resolutions of the multi-resolution STFT loss: (n_fft, n_hop), hops a quarter of the size.
MRSTFT_RESOLUTIONS: Tuple[Tuple[int, int], ...] = ((2048, 512), (1024, 256), (512, 128))
# The framewise SDR loss: BSSEval v4's 1 s window at 44.1 kHz and a soft cap on each frame's SDR.
SDR_FRAME = 44100
SDR_CAP_DB = 30.0
# Mean square below -100 dB: a silent reference, left out of SDRs (the sdr loss's frames,
# umx-train's validation SDR), where its score is undefined and would swamp the mean.
SILENT_POWER = 1e-10


class TrainingSTFT(STFT):
    """The training STFT: reflect padding, as the separator's, except for signals of ``n_fft // 2``
    samples or fewer, which cannot be reflected and are zero-padded (as the input statistics do),
    so that excerpts and validation files shorter than half a window still train and validate."""

    def __init__(self, n_fft: int, n_hop: int):
        super().__init__(n_fft, n_hop)
        self.short = STFT(n_fft, n_hop, pad_mode="constant")

    def forward(self, audio: Tensor) -> Tensor:
        if audio.shape[-1] <= self.n_fft // 2:
            return self.short(audio)
        return super().forward(audio)


def mse(estimate: Tensor, reference: Tensor) -> Tensor:
    """Mean squared error (Open-Unmix's magnitude loss)."""
    return nn.functional.mse_loss(estimate, reference)


def l1(estimate: Tensor, reference: Tensor) -> Tensor:
    """Mean absolute error; on magnitudes of mask times mixture, the L1,1 mask loss of Jansson et al. (as a mean)."""
    return nn.functional.l1_loss(estimate, reference)


def stft_magnitude(audio: Tensor, n_fft: int, n_hop: int) -> Tensor:
    """Magnitude of the STFT of ``(..., nb_timesteps)``; zero-padded, so any length works."""
    return STFT(n_fft, n_hop, pad_mode="constant")(audio).abs()


def mrstft(estimate: Tensor, reference: Tensor,
           resolutions: Sequence[Tuple[int, int]] = MRSTFT_RESOLUTIONS, eps: float = 1e-5) -> Tensor:
    """Multi-resolution STFT loss: at each resolution the mean absolute difference of the
    magnitudes plus that of their logarithms (``log(m + eps)``), averaged over resolutions."""
    total = estimate.new_zeros(())
    for n_fft, n_hop in resolutions:
        est, ref = stft_magnitude(estimate, n_fft, n_hop), stft_magnitude(reference, n_fft, n_hop)
        total = total + (est - ref).abs().mean() + (torch.log(est + eps) - torch.log(ref + eps)).abs().mean()
    return total / len(resolutions)


def sisdr(estimate: Tensor, reference: Tensor, eps: float = 1e-8) -> Tensor:
    """Negative scale-invariant SDR in dB, per sample and channel, averaged.

    ``alpha = <s_hat, s> / <s, s>``, ``-10 log10(|alpha s|^2 / |alpha s - s_hat|^2)``.
    """
    dot = (estimate * reference).sum(dim=-1, keepdim=True)
    alpha = dot / (reference.square().sum(dim=-1, keepdim=True) + eps)
    target = alpha * reference
    ratio = (target.square().sum(dim=-1) + eps) / ((target - estimate).square().sum(dim=-1) + eps)
    return -10 * torch.log10(ratio).mean()


def framewise_sdr(estimate: Tensor, reference: Tensor, frame: int = SDR_FRAME, cap_db: float = SDR_CAP_DB,
                  silent: float = SILENT_POWER) -> Tensor:
    """Negative SDR in dB over frames of ``frame`` samples, averaged over the frames that count.

    Each frame's SDR takes all channels together, as BSSEval v4's framewise SDR does:
    ``10 log10(|s|^2 / (|s - s_hat|^2 + tau |s|^2))`` with ``tau = 10^(-cap_db / 10)``, so a
    frame scores at most ``cap_db`` and nearly perfect frames stop drawing the gradient to
    themselves. Frames whose reference has a mean square below ``silent`` are left out (BSSEval
    gives frames of digital silence no score; near-silent ones would dominate the mean); when
    every frame is silent the loss is 0. The signal is cut into
    ``max(1, n // frame)`` frames, the last one taking the remainder.
    """
    length = reference.shape[-1]
    count = max(1, length // frame)
    sizes = [frame] * (count - 1) + [length - frame * (count - 1)]
    # Mean squares per frame (all channels): their ratio is the frame's SDR, and they measure silence.
    ref_power, err_power = [], []
    for ref, est in zip(reference.split(sizes, dim=-1), estimate.split(sizes, dim=-1)):
        ref_power.append(ref.square().flatten(1).mean(dim=1))
        err_power.append((ref - est).square().flatten(1).mean(dim=1))
    ref_power, err_power = torch.stack(ref_power, dim=1), torch.stack(err_power, dim=1)  # (nb_samples, count)
    counted = (ref_power >= silent).to(ref_power.dtype)
    tau = 10.0 ** (-cap_db / 10.0)
    eps = 1e-20  # keeps silent frames finite (they are masked out, but NaN gradients would not be)
    sdr = 10 * torch.log10((ref_power + eps) / (err_power + tau * ref_power + eps))
    return -(sdr * counted).sum() / counted.sum().clamp_min(1.0)


LOSSES: Dict[str, Tuple[str, Callable[[Tensor, Tensor], Tensor]]] = {
    "mse": (MAGNITUDE, mse),
    "l1": (MAGNITUDE, l1),
    "mrstft": (WAVEFORM, mrstft),
    "sisdr": (WAVEFORM, sisdr),
    "sdr": (WAVEFORM, framewise_sdr),
    "wavl1": (WAVEFORM, l1),  # L1 of the samples
}
_TERM = re.compile(r"^\s*(?:(?P<weight>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[a-z0-9_]+)\s*$")


@dataclasses.dataclass(frozen=True)
class Loss:
    """A weighted sum of named losses, e.g. ``Loss(((1.0, "l1"), (0.5, "mrstft")))``."""

    terms: Tuple[Tuple[float, str], ...]

    @property
    def domains(self) -> set:
        """The domains (``magnitude``, ``waveform``) the terms compare in."""
        return {LOSSES[name][0] for _, name in self.terms}

    def __call__(self, estimates: Dict[str, Tensor], references: Dict[str, Tensor]) -> Tensor:
        """Args: domain -> estimate and domain -> reference, for every domain in :attr:`domains`."""
        total = None
        for weight, name in self.terms:
            domain, fn = LOSSES[name]
            value = fn(estimates[domain], references[domain])
            value = value if weight == 1.0 else weight * value
            total = value if total is None else total + value
        return total

    def __str__(self) -> str:
        return "+".join(name if w == 1.0 else f"{w:g}*{name}" for w, name in self.terms)


def parse_loss(text: str) -> Loss:
    """``"l1+0.5*mrstft"`` -> the weighted sum; every term is ``[WEIGHT*]NAME``.

    Raises:
        ValueError: an empty or malformed term, or an unknown name (the message lists the known ones).
    """
    terms = []
    for part in text.split("+"):
        match = _TERM.match(part)
        if not match:
            raise ValueError(f"--loss {text!r}: cannot read the term {part.strip()!r}; write terms as NAME or "
                             f"WEIGHT*NAME joined by '+', e.g. l1+0.5*mrstft")
        if match["name"] not in LOSSES:
            raise ValueError(f"--loss {text!r}: unknown loss {match['name']!r}; known: {', '.join(LOSSES)}")
        terms.append((float(match["weight"]) if match["weight"] else 1.0, match["name"]))
    return Loss(tuple(terms))


class Objective(nn.Module):
    """The loss of one model on a batch of mixture and target waveforms.

    Args:
        loss: what to compute.
        domain: the model's domain (``magnitude``, ``complex``, ``waveform``).
        n_fft, n_hop: the training STFT (also the magnitudes of the magnitude losses).
        mono: a mono model, trained on what the separator gives it from stereo audio:
            magnitude models the mean magnitude of the channels (the spectral downmix; their
            estimate filters every channel, as in separation), complex and waveform models the
            mean of the channels (the mixture and the target are downmixed before the loss).
    """

    def __init__(self, loss: Loss, domain: str, n_fft: int, n_hop: int, mono: bool = False):
        super().__init__()
        self.loss, self.domain, self.mono = loss, domain, mono
        self.stft = TrainingSTFT(n_fft, n_hop)
        self.norm = ComplexNorm(mono=mono)

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, mix_stft: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            x: mixtures ``(nb_samples, nb_channels, nb_timesteps)``.
            y: targets, same shape.
            mix_stft: ``self.stft(x)`` when the caller has it already (several models
                trained on the same mixtures share it).
        """
        needs = self.loss.domains
        if self.mono and self.domain != MAGNITUDE and x.shape[1] > 1:
            x, y = x.mean(dim=1, keepdim=True), y.mean(dim=1, keepdim=True)
            mix_stft = None if mix_stft is None else mix_stft.mean(dim=1, keepdim=True)
        estimates = self.estimates(model, x, needs, mix_stft)
        references = {}
        if MAGNITUDE in needs:
            with torch.no_grad():
                references[MAGNITUDE] = self.norm(self.stft(y))
        if WAVEFORM in needs:
            references[WAVEFORM] = y
        return self.loss(estimates, references)

    def estimates(self, model: nn.Module, x: Tensor, needs: set,
                  mix_stft: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """The model's estimate in every domain of ``needs``."""
        # Outputs in float32: under CUDA autocast the model may give float16, which the
        # complex and STFT operations below do not all take.
        length = x.shape[-1]
        out: Dict[str, Tensor] = {}
        if self.domain == WAVEFORM:
            out[WAVEFORM] = model(x).float()
            if MAGNITUDE in needs:
                out[MAGNITUDE] = self.norm(self.stft(out[WAVEFORM]))
            return out
        if mix_stft is None:
            with torch.no_grad():
                mix_stft = self.stft(x)
        if self.domain == COMPLEX:
            est = torch.view_as_complex(model(torch.view_as_real(mix_stft)).float().contiguous())
            out[MAGNITUDE] = est.abs()
        else:
            out[MAGNITUDE] = model(self.norm(mix_stft)).float()
            if WAVEFORM in needs:
                # The mixture's phase; a mono model's magnitude serves every channel.
                est = torch.polar(out[MAGNITUDE].expand_as(mix_stft.real), mix_stft.angle())
        if WAVEFORM in needs:
            out[WAVEFORM] = self.inverse(est, length)
        return out

    def inverse(self, spec: Tensor, length: int) -> Tensor:
        """Differentiable inverse STFT ``(..., nb_bins, nb_frames)`` -> ``(..., length)``."""
        return self.stft.inverse(spec, length)
