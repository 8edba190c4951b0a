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

from .lanes import nb_lanes, run_in_lanes


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
    # Autograd cannot go back through estimates overwritten in place: collect new ones instead.
    in_place = not _tracks_grad(y, mix_stft)
    y = y.clone() if in_place else y
    for _ in range(iterations):
        v, r = _source_model(y, eps)
        parts = []
        for start in range(0, nb_frames, batch_size):
            t = slice(start, start + batch_size)
            v_t = v[t].to(mix_stft.dtype)
            cxx = torch.einsum("tfj,fcdj->tfcd", v_t, r) + regularization
            # Every source's filter is v_j R_j Cxx^-1 applied to x: share Cxx^-1 x.
            z = torch.einsum("tfcd,tfd->tfc", invert_hermitian(cxx, eps), mix_stft[t])
            part = v_t[:, :, None, :] * torch.einsum("fcej,tfe->tfcj", r, z)
            if in_place:
                y[t] = part
            else:
                parts.append(part)
        if not in_place:
            y = torch.cat(parts, dim=0)
    return y


def _tracks_grad(*tensors: Tensor) -> bool:
    """Whether autograd records operations on any of ``tensors``: then the filters avoid writing
    into buffers and overwriting in place, which it cannot differentiate."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


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
        iterations: EM iterations; 0 returns the initial estimates. Any number
            of sources works, one included (no residual needed).
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
        complex ``(nb_frames, nb_bins, nb_channels, nb_sources [+1])``, in the higher
        precision of the two inputs (single at least).
    """
    targets_spectrograms, mix_stft = _same_precision(targets_spectrograms, mix_stft)
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
    # One source runs the EM too, as in the reference and norbert: its filter
    # v R (v R + eps^0.5 I)^-1 is close to the identity where the estimate is
    # well above the regulariser, so the result is close to the mixture there.
    max_abs = max(1.0, float(mix_stft.detach().abs().max()) / scale_factor)
    y = expectation_maximization(y / max_abs, mix_stft / max_abs, iterations, eps=eps)
    return y * max_abs


_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _same_precision(spectrograms: Tensor, mix_stft: Tensor) -> Tuple[Tensor, Tensor]:
    """Both inputs in the higher of their precisions, at least single (no copy when they agree).

    Raises:
        TypeError: ``mix_stft`` is not complex (the reference's ``(..., 2)`` real layout included) or
            ``spectrograms`` is not real.
    """
    if not mix_stft.is_complex():
        raise TypeError(f"mix_stft must be a complex STFT, got {mix_stft.dtype} {tuple(mix_stft.shape)}; from the "
                        "reference package's (..., 2) real layout use torch.view_as_complex")
    if spectrograms.is_complex() or not spectrograms.is_floating_point():
        raise TypeError(f"spectrograms must be real magnitudes, got {spectrograms.dtype}; pass their abs()")
    real = torch.promote_types(torch.promote_types(spectrograms.dtype, mix_stft.real.dtype), torch.float32)
    return spectrograms.to(real), mix_stft.to(_COMPLEX_OF[real])


def window_bounds(nb_frames: int, win_len: int, win_offset: int = 0) -> List[Tuple[int, int]]:
    """``(start, end)`` frames of the filter windows: cut where ``frame + win_offset`` is a multiple of ``win_len``."""
    first = (-win_offset) % win_len or win_len
    cuts = [0] + list(range(first, nb_frames, win_len)) + [nb_frames]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


CPU_BLOCK_BINS = 128  # at most this many frequency bins per block on the CPU, where small blocks stay in cache


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
    block_bins: Optional[int] = None,
    out: Optional[Tensor] = None,
) -> Tensor:
    """:func:`wiener` in the STFT layout, with a fast path for stereo.

    The result equals :func:`wiener`'s (up to float rounding). For two channels
    the EM runs on real and imaginary planes with the closed-form inverse of
    the Hermitian 2x2 mixture covariance, one block of at most ``block_bins``
    frequency bins at a time (bins are independent given a window, and small
    blocks stay in cache); other channel counts, and inputs autograd tracks
    (whose gradients the buffers written here would not carry), use :func:`wiener`.

    Args:
        spectrograms: magnitudes ``(nb_sources, {1, nb_channels}, nb_bins, nb_frames)``.
        mix_stft: complex ``(nb_channels, nb_bins, nb_frames)``.
        iterations, softmask, residual, scale_factor, eps, win_len, win_offset: see :func:`wiener`.
        block_bins: at most this many frequency bins processed together (blocks of nearly
            equal size); ``None``: 128 on the CPU (a block's planes stay in cache), all of
            them on a GPU (fewer, larger kernels).
        out: optional real buffer ``(nb_sources [+1], 2, >= nb_frames, nb_bins, 2)``
            to write stereo results into (reused across calls to avoid allocations).

    Returns:
        complex ``(nb_sources [+1], nb_channels, nb_bins, nb_frames)``, frame-major in memory, in
        the higher precision of the two inputs (single at least).
    """
    spectrograms, mix_stft = _same_precision(spectrograms, mix_stft)
    nb_channels, nb_bins, nb_frames = mix_stft.shape
    if nb_channels != 2 or _tracks_grad(spectrograms, mix_stft):
        y = wiener(spectrograms.permute(3, 2, 1, 0), mix_stft.permute(2, 1, 0), iterations, softmask,
                   residual, scale_factor, eps, win_len, win_offset)
        return y.permute(3, 2, 1, 0)
    nb_sources = spectrograms.shape[0] + int(residual)
    # Work frame-major, (..., frames, bins): torch.stft's memory order, so reads, writes and
    # the inverse STFT run along contiguous bins.
    if out is None:
        out = torch.empty((nb_sources, 2, nb_frames, nb_bins, 2), dtype=spectrograms.dtype, device=mix_stft.device)
    out = out[:, :, :nb_frames]
    spec_tf = spectrograms.transpose(-1, -2)
    mix_re, mix_im = mix_stft.real.transpose(-1, -2), mix_stft.imag.transpose(-1, -2)
    windows = window_bounds(nb_frames, win_len, win_offset) if win_len else [(0, nb_frames)]
    if block_bins is None:
        block_bins = nb_bins if mix_stft.is_cuda else CPU_BLOCK_BINS
    blocks = _bin_blocks(nb_bins, block_bins)
    lanes = nb_lanes(len(blocks)) if mix_stft.device.type == "cpu" else 1
    if iterations:
        # Every block goes from its initial estimates through EM in four contiguous planes
        # (J, T, F), small enough to stay in cache, and is written out once: the planes of
        # ``out`` interleave real and imaginary parts, a stride that slows every operation.
        # One set of planes per lane: block k runs in lane k % lanes.
        longest = max(b - a for a, b in windows) * max(f.stop - f.start for f in blocks)
        scratch = torch.empty((lanes, 2, 2, nb_sources * longest), dtype=out.dtype, device=out.device)
    for a, b in windows:
        m2 = 1.0
        if iterations:
            # EM on (y, x) / m, times m, equals EM on (y, x) with the regulariser and weight
            # epsilon scaled by m^2: no array needs rescaling. m comes from the window's peak.
            peak_power = float(torch.view_as_real(mix_stft[..., a:b]).square().sum(dim=-1).max())
            m2 = max(1.0, peak_power ** 0.5 / scale_factor) ** 2

        def block(k: int) -> None:
            fs = blocks[k]
            x = [(mix_re[c][..., a:b, fs], mix_im[c][..., a:b, fs]) for c in range(2)]
            spec = [spec_tf[:, min(c, spec_tf.shape[1] - 1)][..., a:b, fs] for c in range(2)]
            views = [(out[:, c, a:b, fs, 0], out[:, c, a:b, fs, 1]) for c in range(2)]
            planes = None
            if iterations:
                shape = (nb_sources, b - a, fs.stop - fs.start)
                n = shape[0] * shape[1] * shape[2]
                own = scratch[k % lanes]
                planes = [(own[c, 0, :n].view(shape), own[c, 1, :n].view(shape)) for c in range(2)]
            _stereo_block(spec, x, views, planes, iterations, softmask, residual, eps, m2)

        # Blocks are independent and each is many small passes that a second intra-op thread
        # barely speeds up: on the CPU they run in lanes of one thread each (same values).
        run_in_lanes(block, range(len(blocks)), lanes)
    return torch.view_as_complex(out).transpose(2, 3)


def _bin_blocks(nb_bins: int, block_bins: int) -> List[slice]:
    """At most ``block_bins`` bins a block, blocks of nearly equal size (2049 bins: 17 of
    120-121, not 16 of 128 and one of 1)."""
    nb_blocks = -(-nb_bins // block_bins)
    edges = [round(k * nb_bins / nb_blocks) for k in range(nb_blocks + 1)]
    return [slice(f0, f1) for f0, f1 in zip(edges[:-1], edges[1:])]


def _stereo_block(spec, x, views, planes, iterations, softmask, residual, eps, m2) -> None:
    """Initial estimates and EM of one block of bins of one window, written into ``views``.

    Args:
        spec: per channel, magnitudes ``(J, T, F)``.
        x: per channel, mixture ``(real, imag)`` planes ``(T, F)``.
        views: per channel, ``(real, imag)`` output planes ``(J [+1], T, F)``.
        planes: the same in contiguous scratch, for the iterations before the last.
        m2: the squared scale of the window (see :func:`wiener_fast`).
    """
    if not iterations:
        _initial_block(spec, x, softmask, residual, eps, views)
        return
    x = [(x_re.contiguous(), x_im.contiguous()) for x_re, x_im in x]
    if softmask or residual:
        _initial_block(spec, x, softmask, residual, eps, planes)
        y, done = planes, 0
    else:
        # Magnitudes with the mixture's phase: the first iteration's statistics follow
        # from the magnitudes and the phase alone, without writing the estimates.
        stats = _statistics_from_magnitudes(spec, _unit_phasors(x), m2 * eps)
        y, done = _stereo_filter(stats, x, m2 * eps ** 0.5, into=views if iterations == 1 else planes), 1
    for it in range(done, iterations):
        y = _stereo_em_step(y, x, m2 * eps, m2 * eps ** 0.5, into=views if it + 1 == iterations else None)


def _initial_block(spec, x, softmask, residual, eps, into) -> None:
    """Write the initial estimates of one block into ``into``.

    Args:
        spec: per channel, magnitudes ``(J, T, F)``.
        x: per channel, mixture ``(real, imag)`` planes ``(T, F)``.
        into: per channel, ``(real, imag)`` output planes ``(J [+1], T, F)``.
    """
    nb_targets = spec[0].shape[0]
    phase = None if softmask else _unit_phasors(x)
    for c, ((x_re, x_im), (o_re, o_im)) in enumerate(zip(x, into)):
        if softmask:
            mask = spec[c] / (eps + spec[c].sum(dim=0))
            torch.mul(mask, x_re, out=o_re[:nb_targets])
            torch.mul(mask, x_im, out=o_im[:nb_targets])
        else:
            torch.mul(spec[c], phase[c][0], out=o_re[:nb_targets])
            torch.mul(spec[c], phase[c][1], out=o_im[:nb_targets])
        if residual:
            torch.sub(x_re, o_re[:nb_targets].sum(dim=0), out=o_re[nb_targets])
            torch.sub(x_im, o_im[:nb_targets].sum(dim=0), out=o_im[nb_targets])


def _unit_phasors(x):
    """Per channel, the mixture's phase as ``(real, imag)`` planes ``(T, F)`` of modulus 1.

    ``angle(0)`` is 0: a silent bin gets phase 1, as with :func:`mixture_phase`.
    """
    phase = []
    for x_re, x_im in x:
        mag = x_re.square().addcmul_(x_im, x_im).sqrt_()
        silent = (mag == 0).to(mag.dtype)
        inv = (mag + silent).reciprocal_()
        phase.append(((x_re * inv).add_(silent), x_im * inv))
    return phase


def _stereo_em_step(y, x, weight_eps, reg, into=None):
    """One EM iteration on per-channel ``(real, imag)`` planes ``(J, T, F)``.

    ``weight_eps`` regularises the covariance weights and ``reg`` is added to the
    mixture covariance's diagonal. With ``into`` (same structure as ``y``), the
    new estimates are written there.
    """
    (y0_re, y0_im), (y1_re, y1_im) = y
    p0 = (y0_re * y0_re).addcmul_(y0_im, y0_im)
    p1 = (y1_re * y1_re).addcmul_(y1_im, y1_im)
    v = (p0 + p1).mul_(0.5)  # (J, T, F)
    inv_weight = 1.0 / (weight_eps + v.sum(dim=-2, keepdim=True))
    # Spatial covariance R = [[r00, r01], [conj(r01), r11]] per source and bin, over the frames.
    r00 = p0.sum(dim=-2, keepdim=True).mul_(inv_weight)
    r11 = p1.sum(dim=-2, keepdim=True).mul_(inv_weight)
    r01_re = (y0_re * y1_re).addcmul_(y0_im, y1_im).sum(dim=-2, keepdim=True).mul_(inv_weight)
    r01_im = (y0_im * y1_re).addcmul_(y0_re, y1_im, value=-1).sum(dim=-2, keepdim=True).mul_(inv_weight)
    return _stereo_filter((v, r00, r11, r01_re, r01_im), x, reg, into)


def _statistics_from_magnitudes(spec, phase, weight_eps):
    """What :func:`_stereo_em_step` computes from estimates ``y_jc = s_jc u_c`` (magnitudes
    ``s`` with the mixture's unit phasors ``u``), from ``s`` and ``u`` alone: ``|y_jc|^2 =
    s_jc^2`` and ``y_j0 conj(y_j1) = s_j0 s_j1 u_0 conj(u_1)``, the phase term shared by
    all sources. Equal up to float rounding, in half the passes over ``(J, T, F)`` planes.

    Args:
        spec: per channel, magnitudes ``(J, T, F)``.
        phase: from :func:`_unit_phasors`.
    """
    (u0_re, u0_im), (u1_re, u1_im) = phase
    p0, p1 = spec[0] * spec[0], spec[1] * spec[1]
    v = (p0 + p1).mul_(0.5)
    inv_weight = 1.0 / (weight_eps + v.sum(dim=-2, keepdim=True))
    r00 = p0.sum(dim=-2, keepdim=True).mul_(inv_weight)
    r11 = p1.sum(dim=-2, keepdim=True).mul_(inv_weight)
    both = spec[0] * spec[1]
    cross_re = (u0_re * u1_re).addcmul_(u0_im, u1_im)
    cross_im = (u0_im * u1_re).addcmul_(u0_re, u1_im, value=-1)
    r01_re = (both * cross_re).sum(dim=-2, keepdim=True).mul_(inv_weight)
    r01_im = both.mul_(cross_im).sum(dim=-2, keepdim=True).mul_(inv_weight)
    return v, r00, r11, r01_re, r01_im


def _stereo_filter(stats, x, reg, into=None):
    """The filtering half of an EM iteration: from the sources' statistics ``(v, r00, r11,
    r01_re, r01_im)``, the estimates ``v_j R_j Cxx^-1 x`` as per-channel ``(real, imag)``
    planes, written into ``into`` if given."""
    v, r00, r11, r01_re, r01_im = stats
    (x0_re, x0_im), (x1_re, x1_im) = x
    # Mixture covariance Cxx = sum_j v_j R_j + reg I (Hermitian: real diagonal).
    c00 = (r00 * v).sum(dim=0).add_(reg)
    c11 = (r11 * v).sum(dim=0).add_(reg)
    c01_re = (r01_re * v).sum(dim=0)
    c01_im = (r01_im * v).sum(dim=0)
    inv_det = (c00 * c11).addcmul_(c01_re, c01_re, value=-1).addcmul_(c01_im, c01_im, value=-1).reciprocal_()
    # z = Cxx^-1 x, shared by all sources.
    z0_re = (c11 * x0_re).addcmul_(c01_re, x1_re, value=-1).addcmul_(c01_im, x1_im).mul_(inv_det)
    z0_im = (c11 * x0_im).addcmul_(c01_re, x1_im, value=-1).addcmul_(c01_im, x1_re, value=-1).mul_(inv_det)
    z1_re = (c00 * x1_re).addcmul_(c01_re, x0_re, value=-1).addcmul_(c01_im, x0_im, value=-1).mul_(inv_det)
    z1_im = (c00 * x1_im).addcmul_(c01_re, x0_im, value=-1).addcmul_(c01_im, x0_re).mul_(inv_det)
    # y_j = v_j R_j z
    new = [
        ((r00 * z0_re).addcmul_(r01_re, z1_re).addcmul_(r01_im, z1_im, value=-1),
         (r00 * z0_im).addcmul_(r01_re, z1_im).addcmul_(r01_im, z1_re)),
        ((r01_re * z0_re).addcmul_(r01_im, z0_im).addcmul_(r11, z1_re),
         (r01_re * z0_im).addcmul_(r01_im, z0_re, value=-1).addcmul_(r11, z1_im)),
    ]
    if into is None:
        return [(v * n_re, v * n_im) for n_re, n_im in new]
    for (n_re, n_im), (o_re, o_im) in zip(new, into):
        torch.mul(v, n_re, out=o_re)
        torch.mul(v, n_im, out=o_im)
    return into
