"""Multichannel Wiener filtering of magnitude estimates.

Given the mixture STFT and non-negative spectrogram estimates for each source,
builds complex source estimates whose sum is close to the mixture, then refines
them with the expectation-maximisation (EM) scheme of norbert: each iteration
re-estimates every source's power spectral density ``v`` and spatial covariance
``R`` from the current estimates and filters the mixture again.

Shapes (frame-major, like norbert):

- mixture STFT ``mix_stft``: complex ``(nb_frames, nb_bins, nb_channels)``
- spectrograms ``v``: real ``(nb_frames, nb_bins, {1, nb_channels}, nb_sources)``
- estimates: complex ``(nb_frames, nb_bins, nb_channels, nb_sources)``

Only torch is used; float32/complex64 inputs stay single precision and
float64/complex128 inputs stay double.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor


def softmask(spectrograms: Tensor, mix_stft: Tensor, eps: float = 1e-10) -> Tensor:
    """Ratio-mask the mixture with each source's share of the summed spectrograms.

    Args:
        spectrograms: ``(nb_frames, nb_bins, {1, nb_channels}, nb_sources)``.
        mix_stft: complex ``(nb_frames, nb_bins, nb_channels)``.

    Returns:
        complex ``(nb_frames, nb_bins, nb_channels, nb_sources)``.
    """
    total = spectrograms.sum(dim=-1, keepdim=True)
    return mix_stft[..., None] * (spectrograms / (eps + total))


_softmask = softmask  # `wiener` has an argument of the same name


def mixture_phase(spectrograms: Tensor, mix_stft: Tensor) -> Tensor:
    """Give each magnitude estimate the mixture's phase (same shapes as :func:`softmask`)."""
    phase = torch.polar(torch.ones_like(mix_stft.real), mix_stft.angle())
    return spectrograms * phase[..., None]


def invert_hermitian(m: Tensor, eps: float = 1e-10) -> Tensor:
    """Inverse of each ``(nb_channels, nb_channels)`` matrix in the last two axes.

    One and two channels use closed forms (no LAPACK call per matrix); more
    channels fall back to :func:`torch.linalg.inv`.
    """
    nb_channels = m.shape[-1]
    if nb_channels == 1:
        return 1.0 / (m + eps)
    if nb_channels == 2:
        a, b = m[..., 0, 0], m[..., 0, 1]
        c, d = m[..., 1, 0], m[..., 1, 1]
        inv_det = 1.0 / (a * d - b * c)
        row0 = torch.stack((d * inv_det, -b * inv_det), dim=-1)
        row1 = torch.stack((-c * inv_det, a * inv_det), dim=-1)
        return torch.stack((row0, row1), dim=-2)
    return torch.linalg.inv(m)


def _source_model(y: Tensor, eps: float):
    """Power spectral densities ``(T, F, J)`` and spatial covariances ``(F, C, C, J)``."""
    v = (y.real.square() + y.imag.square()).mean(dim=2)
    weight = eps + v.sum(dim=0)
    r = torch.einsum("tfcj,tfdj->fcdj", y, y.conj())
    return v, r / weight[:, None, None, :]


def expectation_maximization(
    y: Tensor,
    mix_stft: Tensor,
    iterations: int = 2,
    eps: float = 1e-10,
    batch_size: int = 200,
) -> Tensor:
    """Refine source estimates with EM iterations of the local Gaussian model.

    Args:
        y: initial estimates, complex ``(nb_frames, nb_bins, nb_channels, nb_sources)``.
        mix_stft: complex ``(nb_frames, nb_bins, nb_channels)``.
        iterations: EM iterations.
        eps: regularisation of the mixture covariance and of the weights.
        batch_size: frames filtered at once (bounds memory, not results).

    Returns:
        refined estimates, same shape as ``y`` (a new tensor).
    """
    nb_frames, _, nb_channels = mix_stft.shape
    eye = torch.eye(nb_channels, dtype=mix_stft.dtype, device=mix_stft.device)
    regularization = eps ** 0.5 * eye
    y = y.clone()
    for _ in range(iterations):
        v, r = _source_model(y, eps)
        for start in range(0, nb_frames, batch_size):
            t = slice(start, start + batch_size)
            v_t = v[t].to(mix_stft.dtype)
            cxx = torch.einsum("tfj,fcdj->tfcd", v_t, r) + regularization
            # Every source's filter is v_j R_j Cxx^-1 applied to x: share Cxx^-1 x.
            z = torch.einsum("tfcd,tfd->tfc", invert_hermitian(cxx, eps), mix_stft[t])
            y[t] = v_t[:, :, None, :] * torch.einsum("fcej,tfe->tfcj", r, z)
    return y


def wiener(
    targets_spectrograms: Tensor,
    mix_stft: Tensor,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    scale_factor: float = 10.0,
    eps: float = 1e-10,
    win_len: Optional[int] = None,
    win_offset: int = 0,
) -> Tensor:
    """Wiener-filter the mixture with magnitude estimates of the sources.

    Args:
        targets_spectrograms: magnitudes ``(nb_frames, nb_bins, {1, nb_channels}, nb_sources)``.
        mix_stft: complex ``(nb_frames, nb_bins, nb_channels)``.
        iterations: EM iterations; 0 returns the initial estimates.
        softmask: start from ratio masks instead of magnitudes with the mixture phase.
        residual: add one source, the mixture minus the sum of the initial estimates.
        scale_factor: the mixture is scaled so its peak is at most this value
            during EM, for numerical stability.
        eps: regulariser.
        win_len: filter consecutive windows of this many frames independently
            (sources may move over time; bounds memory); ``None`` is one window.
        win_offset: index of the first frame on a global frame grid; windows
            start where that index is a multiple of ``win_len``, so segments of
            a long signal are filtered in the same windows as the whole signal.

    Returns:
        complex ``(nb_frames, nb_bins, nb_channels, nb_sources [+1])``.
    """
    if win_len:
        bounds = window_bounds(mix_stft.shape[0], win_len, win_offset)
        if len(bounds) > 1:
            parts = [
                wiener(targets_spectrograms[a:b], mix_stft[a:b], iterations, softmask, residual, scale_factor, eps)
                for a, b in bounds
            ]
            return torch.cat(parts, dim=0)

    if softmask:
        y = _softmask(targets_spectrograms, mix_stft, eps)
    else:
        y = mixture_phase(targets_spectrograms, mix_stft)
    if residual:
        y = torch.cat([y, mix_stft[..., None] - y.sum(dim=-1, keepdim=True)], dim=-1)
    if iterations == 0:
        return y
    if y.shape[-1] < 2:
        raise ValueError("EM needs at least two sources: add a residual or set iterations=0")
    max_abs = max(1.0, float(mix_stft.abs().max()) / scale_factor)
    y = expectation_maximization(y / max_abs, mix_stft / max_abs, iterations, eps=eps)
    return y * max_abs


def window_bounds(nb_frames: int, win_len: int, win_offset: int = 0) -> List[Tuple[int, int]]:
    """``(start, end)`` frames of the filter windows: cut where ``frame + win_offset`` is a multiple of ``win_len``."""
    first = (-win_offset) % win_len or win_len
    cuts = [0] + list(range(first, nb_frames, win_len)) + [nb_frames]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def wiener_fast(
    spectrograms: Tensor,
    mix_stft: Tensor,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    scale_factor: float = 10.0,
    eps: float = 1e-10,
    win_len: Optional[int] = None,
    win_offset: int = 0,
    block_bins: int = 128,
    out: Optional[Tensor] = None,
) -> Tensor:
    """:func:`wiener` in the STFT layout, with a fast path for stereo.

    The result equals :func:`wiener`'s (up to float rounding). For two channels
    the EM runs on real and imaginary planes with the closed-form inverse of
    the Hermitian 2x2 mixture covariance, one block of ``block_bins`` frequency
    bins at a time (bins are independent given a window, and small blocks stay
    in cache); other channel counts use :func:`wiener`.

    Args:
        spectrograms: magnitudes ``(nb_sources, {1, nb_channels}, nb_bins, nb_frames)``.
        mix_stft: complex ``(nb_channels, nb_bins, nb_frames)``.
        iterations, softmask, residual, scale_factor, eps, win_len, win_offset: see :func:`wiener`.
        block_bins: frequency bins processed together.
        out: optional real buffer ``(nb_sources [+1], 2, >= nb_frames, nb_bins, 2)``
            to write stereo results into (reused across calls to avoid allocations).

    Returns:
        complex ``(nb_sources [+1], nb_channels, nb_bins, nb_frames)``, frame-major in memory.
    """
    nb_channels, nb_bins, nb_frames = mix_stft.shape
    if nb_channels != 2:
        y = wiener(spectrograms.permute(3, 2, 1, 0), mix_stft.permute(2, 1, 0), iterations, softmask,
                   residual, scale_factor, eps, win_len, win_offset)
        return y.permute(3, 2, 1, 0)
    nb_sources = spectrograms.shape[0] + int(residual)
    # Frame-major memory (like torch.stft's output), so the inverse STFT reads it without a transposing copy.
    if out is None:
        out = torch.empty((nb_sources, 2, nb_frames, nb_bins, 2), dtype=spectrograms.dtype, device=mix_stft.device)
    out = out[:, :, :nb_frames].transpose(2, 3)
    mix_re, mix_im = mix_stft.real, mix_stft.imag
    windows = window_bounds(nb_frames, win_len, win_offset) if win_len else [(0, nb_frames)]
    for a, b in windows:
        max_abs = 1.0
        if iterations:
            max_abs = max(1.0, float(mix_stft[..., a:b].abs().max()) / scale_factor)
        for f in range(0, nb_bins, block_bins):
            block = (..., slice(f, f + block_bins), slice(a, b))
            x = [(mix_re[c][block], mix_im[c][block]) for c in range(2)]
            spec = [spectrograms[:, min(c, spectrograms.shape[1] - 1)][block] for c in range(2)]
            y = _stereo_block(spec, x, iterations, softmask, residual, max_abs, eps)
            for c in range(2):
                out[:, c, f : f + block_bins, a:b, 0] = y[c][0]
                out[:, c, f : f + block_bins, a:b, 1] = y[c][1]
    return torch.view_as_complex(out)


def _stereo_block(spec, x, iterations, softmask, residual, max_abs, eps):
    """Initial estimates and EM for one block of bins and frames.

    Args:
        spec: per channel, magnitudes ``(J, F, T)``.
        x: per channel, mixture ``(real, imag)`` planes ``(F, T)``.

    Returns:
        per channel, estimate ``(real, imag)`` planes ``(J', F, T)``.
    """
    if softmask:
        y = []
        for c in range(2):
            mask = spec[c] / (eps + spec[c].sum(dim=0))
            y.append((mask * x[c][0], mask * x[c][1]))
    else:
        y = []
        for c, (x_re, x_im) in enumerate(x):
            mag = torch.sqrt(x_re.square() + x_im.square())
            silent = (mag == 0).to(mag.dtype)
            # angle(0) is 0: a silent bin gets phase 1, as with the mixture-phase definition.
            inv = 1.0 / (mag + silent)
            y.append((spec[c] * (x_re * inv + silent), spec[c] * (x_im * inv)))
    if residual:
        y = [(torch.cat([y_re, (x_re - y_re.sum(dim=0))[None]]), torch.cat([y_im, (x_im - y_im.sum(dim=0))[None]]))
             for (y_re, y_im), (x_re, x_im) in zip(y, x)]
    if iterations == 0:
        return y
    x = [(x_re / max_abs, x_im / max_abs) for x_re, x_im in x]
    y = [(y_re / max_abs, y_im / max_abs) for y_re, y_im in y]
    for _ in range(iterations):
        y = _stereo_em_step(y, x, eps)
    return [(y_re * max_abs, y_im * max_abs) for y_re, y_im in y]


def _stereo_em_step(y, x, eps):
    """One EM iteration on per-channel planes (see :func:`_stereo_block`)."""
    (y0_re, y0_im), (y1_re, y1_im) = y
    (x0_re, x0_im), (x1_re, x1_im) = x
    p0 = y0_re.square() + y0_im.square()
    p1 = y1_re.square() + y1_im.square()
    v = 0.5 * (p0 + p1)  # (J, F, T)
    inv_weight = 1.0 / (eps + v.sum(dim=-1, keepdim=True))
    # Spatial covariance R = [[r00, r01], [conj(r01), r11]] per source and bin.
    r00 = p0.sum(dim=-1, keepdim=True) * inv_weight
    r11 = p1.sum(dim=-1, keepdim=True) * inv_weight
    r01_re = (y0_re * y1_re + y0_im * y1_im).sum(dim=-1, keepdim=True) * inv_weight
    r01_im = (y0_im * y1_re - y0_re * y1_im).sum(dim=-1, keepdim=True) * inv_weight
    # Mixture covariance Cxx = sum_j v_j R_j + sqrt(eps) I (Hermitian: real diagonal).
    reg = eps ** 0.5
    c00 = (r00 * v).sum(dim=0) + reg
    c11 = (r11 * v).sum(dim=0) + reg
    c01_re = (r01_re * v).sum(dim=0)
    c01_im = (r01_im * v).sum(dim=0)
    inv_det = 1.0 / (c00 * c11 - c01_re.square() - c01_im.square())
    # z = Cxx^-1 x, shared by all sources.
    z0_re = (c11 * x0_re - c01_re * x1_re + c01_im * x1_im) * inv_det
    z0_im = (c11 * x0_im - c01_re * x1_im - c01_im * x1_re) * inv_det
    z1_re = (c00 * x1_re - c01_re * x0_re - c01_im * x0_im) * inv_det
    z1_im = (c00 * x1_im - c01_re * x0_im + c01_im * x0_re) * inv_det
    # y_j = v_j R_j z
    return [
        (v * (r00 * z0_re + r01_re * z1_re - r01_im * z1_im), v * (r00 * z0_im + r01_re * z1_im + r01_im * z1_re)),
        (v * (r01_re * z0_re + r01_im * z0_im + r11 * z1_re), v * (r01_re * z0_im - r01_im * z0_re + r11 * z1_im)),
    ]
