"""Fast separation metrics for validation during training.

These are **not** BSSEval: no distortion filters, no framing. They are cheap
enough to run every few epochs; use ``umx-evaluate`` (museval, BSSEval v4) for
numbers comparable with published results.
"""
from __future__ import annotations

import torch
from torch import Tensor


def sdr_mdx(reference: Tensor, estimate: Tensor, eps: float = 1e-7) -> float:
    """Full-track SDR of the Music Demixing Challenge, in dB.

    ``10 log10((sum s^2 + eps) / (sum (s - s_hat)^2 + eps))`` over all channels
    and samples of one track and target.
    """
    reference, estimate = reference.double(), estimate.double()
    num = reference.square().sum() + eps
    den = (reference - estimate).square().sum() + eps
    return float(10 * torch.log10(num / den))


def si_sdr(reference: Tensor, estimate: Tensor, eps: float = 1e-8) -> float:
    """Scale-invariant SDR in dB, channels concatenated into one signal.

    The reference is scaled by the projection of the estimate onto it,
    ``alpha = <s_hat, s> / <s, s>``; then ``10 log10(|alpha s|^2 / |alpha s - s_hat|^2)``.
    """
    s, s_hat = reference.double().flatten(), estimate.double().flatten()
    alpha = (s_hat @ s) / (s @ s + eps)
    target = alpha * s
    return float(10 * torch.log10((target.square().sum() + eps) / ((target - s_hat).square().sum() + eps)))
