"""Fast separation metrics for validation during training.

These are **not** BSSEval: no distortion filters, no framing. They are cheap
enough to run every few epochs; use ``umx-evaluate`` (museval, BSSEval v4) for
numbers comparable with published results.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Tuple

import numpy as np

if TYPE_CHECKING:  # track_metrics needs no torch: umx-evaluate's scoring processes run it
    from torch import Tensor


def sdr_mdx(reference: Tensor, estimate: Tensor, eps: float = 1e-7) -> float:
    """Full-track SDR of the Music Demixing Challenge, in dB.

    ``10 log10((sum s^2 + eps) / (sum (s - s_hat)^2 + eps))`` over all channels
    and samples of one track and target.
    """
    import torch

    reference, estimate = reference.double(), estimate.double()
    num = reference.square().sum() + eps
    den = (reference - estimate).square().sum() + eps
    return float(10 * torch.log10(num / den))


def si_sdr(reference: Tensor, estimate: Tensor, eps: float = 1e-8) -> float:
    """Scale-invariant SDR in dB, channels concatenated into one signal.

    The reference is scaled by the projection of the estimate onto it,
    ``alpha = <s_hat, s> / <s, s>``; then ``10 log10(|alpha s|^2 / |alpha s - s_hat|^2)``.
    """
    import torch

    s, s_hat = reference.double().flatten(), estimate.double().flatten()
    alpha = (s_hat @ s) / (s @ s + eps)
    target = alpha * s
    return float(10 * torch.log10((target.square().sum() + eps) / ((target - s_hat).square().sum() + eps)))


def track_metrics(reference: np.ndarray, estimate: np.ndarray, block: int = 1 << 16) -> Tuple[float, float]:
    """:func:`sdr_mdx` and :func:`si_sdr` of two ``(nb_samples, nb_channels)`` arrays of any float dtype, summed
    in float64 a block of samples at a time (the whole track in float64 would take memory that grows with it).

    Equal to those functions up to the order of the sums.
    """
    def sums(*terms):
        total = np.zeros(len(terms))
        for start in range(0, len(reference), block):
            s = np.asarray(reference[start:start + block], dtype=np.float64)
            s_hat = np.asarray(estimate[start:start + block], dtype=np.float64)
            total += [np.sum(term(s, s_hat)) for term in terms]
        return total

    if np.shape(reference) != np.shape(estimate):
        raise ValueError(f"reference {np.shape(reference)} and estimate {np.shape(estimate)} differ in shape")
    energy, error, product = sums(lambda s, s_hat: np.square(s), lambda s, s_hat: np.square(s - s_hat), np.multiply)
    sdr = float(10 * np.log10((energy + 1e-7) / (error + 1e-7)))
    alpha = product / (energy + 1e-8)
    (distortion,) = sums(lambda s, s_hat: np.square(alpha * s - s_hat))
    si = float(10 * np.log10((alpha ** 2 * energy + 1e-8) / (distortion + 1e-8)))
    return sdr, si
