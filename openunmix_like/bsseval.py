"""BSSEval v4 (SiSEC 2018) in memory flat in the track's length: museval's scores, computed another way.

museval's ``evaluate(..., mode="v4")`` takes the FFT of every reference and estimate channel over the
whole track, padded to the next power of two, in complex128, and inverts the products of every pair of
them at full length: several GB for a song, doubling past 3.2, 6.3 and 12.7 minutes, and most of its time.
The v4 distortion filters only need the correlations of those signals at lags below ``filters_len``
(512), so here they are summed block by block, and the inverse FFTs are taken once, of the summed
spectra. The filters are then solved from the same Gram matrix as museval's (one LU factorisation shared
by the estimates), and each window is projected with the filters' spectra computed once per track.

Everything else follows museval step by step: the windows (cut as museval's ``Framing`` cuts them), the
windows skipped (NaN) where a reference or an estimate is silent, the decomposition into target, spatial
distortion, interference and artefacts, and the four ratios. The results differ from museval's by
rounding: SDR by 1e-14 dB, ISR, SIR and SAR by up to 1e-5 dB on music (``scripts/compare_scoring_musdb.py``),
and within museval's own rounding spread where a source's channels are identical (see :func:`_solve`;
``tests/test_bsseval.py`` compares them on MUSDB18 excerpts and on synthetic edge cases). As in museval,
every reference and estimate must be non-silent (channels not summing to zero everywhere).
"""

from typing import List, Tuple

import numpy as np
import scipy.fft
from scipy.linalg import toeplitz

FILTERS_LEN = 512
BLOCK = 1 << 14  # FFT size of the correlation blocks: each takes BLOCK - FILTERS_LEN + 1 new samples


def bss_eval_v4(references: np.ndarray, estimates: np.ndarray, window: int, hop: int,
                filters_len: int = FILTERS_LEN) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """SDR, ISR, SIR and SAR per source and window, as ``museval.evaluate(references, estimates, window, hop)``.

    Args:
        references, estimates: ``(nb_sources, nb_samples, nb_channels)`` (museval's layout), or sequences of
            ``(nb_samples, nb_channels)`` arrays, estimate ``j`` scored against reference ``j`` (no
            permutation). Whatever their dtype, the arithmetic is float64, a block at a time: float32 inputs
            give the scores of their float64 copies, without the copies.
        window, hop: in samples; a window as long as the signal or longer gives one window, the whole signal.

    Returns:
        Four ``(nb_sources, nb_windows)`` arrays of dB; NaN in windows where any reference or estimate is
        silent, inf where a distortion term is exactly zero.

    Raises:
        ValueError: shapes that differ, or a silent (all-zero) reference or estimate, which museval refuses too.
    """
    refs, ests = [np.asarray(r) for r in references], [np.asarray(e) for e in estimates]
    shapes = {x.shape for x in refs + ests}
    if not refs or len(refs) != len(ests) or len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"references {[r.shape for r in refs]} and estimates {[e.shape for e in ests]}: give the "
                         "same number of (nb_samples, nb_channels) arrays, all of the same shape")
    if any(silent(x) for x in refs + ests):
        raise ValueError("every reference and estimate must be non-silent: its channels sum to 0 everywhere")
    nsrc, nsampl = len(refs), len(refs[0])
    filters, own_filters = _distortion_filters(refs, ests, filters_len)

    starts = list(range(0, nsampl - window + 1, hop)) if window < nsampl else [0]
    scores = np.full((4, nsrc, len(starts)), np.nan)
    spectra = {}  # window length -> the filters' spectra at that FFT size
    for t, start in enumerate(starts):
        stop = min(start + window, nsampl)
        ref, est = _block(refs, start, stop), _block(ests, start, stop)
        if any(silent(x) for x in ref) or any(silent(x) for x in est):
            continue
        length = stop - start
        if length not in spectra:
            n_fft = scipy.fft.next_fast_len(length + filters_len - 1, real=True)
            spectra[length] = (n_fft, scipy.fft.rfft(filters, n=n_fft, axis=-2),
                               scipy.fft.rfft(own_filters, n=n_fft, axis=-2))
        n_fft, all_f, own_f = spectra[length]
        ref_f = scipy.fft.rfft(ref, n=n_fft, axis=1)  # (source, frequency, channel)
        out = length + filters_len - 1
        for j in range(nsrc):
            # Filters are (estimate, source, in channel, frequency, out channel): sum over source and in channel.
            projected = scipy.fft.irfft(np.einsum("sfc,scfd->fd", ref_f, all_f[j]), n=n_fft, axis=0)[:out]
            projected_own = scipy.fft.irfft(np.einsum("fc,cfd->fd", ref_f[j], own_f[j]), n=n_fft, axis=0)[:out]
            scores[:, j, t] = _criteria(ref[j], est[j], projected_own, projected)
    return scores[0], scores[1], scores[2], scores[3]


def silent(source: np.ndarray, block: int = 1 << 16) -> bool:
    """Whether museval takes ``(nb_samples, nb_channels)`` audio for silent: its channels sum to 0 at every
    sample, in float64 (looked at a block at a time: the sums of a whole track would take memory that grows
    with it)."""
    return not any(np.any(source[start:start + block].sum(axis=1, dtype=np.float64))
                   for start in range(0, len(source), block))


def _block(sources: List[np.ndarray], start: int, stop: int) -> np.ndarray:
    """Samples ``start:stop`` of every source as one float64 ``(nb_sources, length, nb_channels)`` array."""
    return np.stack([x[start:stop] for x in sources]).astype(np.float64, copy=False)


def _distortion_filters(refs: List[np.ndarray], ests: List[np.ndarray],
                        filters_len: int) -> Tuple[np.ndarray, np.ndarray]:
    """museval's time-invariant v4 filters: each estimate projected on every reference's delays, and on its own.

    Returns ``(nb_estimates, nb_sources, nb_channels, filters_len, nb_channels)`` and
    ``(nb_estimates, nb_channels, filters_len, nb_channels)``.
    """
    nsrc, nchan = len(refs), refs[0].shape[1]
    size = nsrc * nchan * filters_len
    corr = _correlations(refs, ests, filters_len)  # (ref channel, any channel, lag)
    nref = nsrc * nchan
    gram = np.empty((size, size))
    for p in range(nref):  # row block p, column block q: <reference p delayed by a, reference q delayed by b>
        for q in range(p, nref):
            block = toeplitz(corr[p, q], corr[q, p])
            gram[p * filters_len:(p + 1) * filters_len, q * filters_len:(q + 1) * filters_len] = block
            gram[q * filters_len:(q + 1) * filters_len, p * filters_len:(p + 1) * filters_len] = block.T
    gram[np.diag_indices(size)] += np.finfo(float).eps
    # <reference channel delayed by k, estimate channel>, rows ordered as the Gram matrix's.
    cross = corr[:, nref:].reshape(nref, nsrc, nchan, filters_len).transpose(1, 0, 3, 2)
    cross = cross.reshape(nsrc, size, nchan)

    filters = _solve(gram, cross).reshape(nsrc, nsrc, nchan, filters_len, nchan)
    own = np.empty((nsrc, nchan, filters_len, nchan))
    span = nchan * filters_len
    for j in range(nsrc):
        rows = slice(j * span, (j + 1) * span)
        own[j] = _solve(gram[rows, rows], cross[j:j + 1, rows]).reshape(nchan, filters_len, nchan)
    return filters, own


def _correlations(refs: List[np.ndarray], ests: List[np.ndarray], filters_len: int) -> np.ndarray:
    """``out[p, q, d] = sum_n x_p[n] x_q[n + d]`` for ``d < filters_len``, ``x_p`` the reference channels and
    ``x_q`` the reference then estimate channels, with zeros past the end.

    Summed over blocks of ``BLOCK - filters_len + 1`` samples in the frequency domain (each block's
    products need no wrap-around at these lags), then inverted once.
    """
    nsampl, nchan = refs[0].shape
    nref = len(refs) * nchan
    n_fft = max(BLOCK, scipy.fft.next_fast_len(2 * filters_len, real=True))
    step = n_fft - filters_len + 1
    total = np.zeros((nref, 2 * nref, n_fft // 2 + 1), dtype=np.complex128)
    for start in range(0, nsampl, step):
        ahead = _block(refs + ests, start, start + n_fft)
        ahead = scipy.fft.rfft(ahead.transpose(0, 2, 1).reshape(2 * nref, -1), n=n_fft, axis=1)
        head = _block(refs, start, start + step).transpose(0, 2, 1).reshape(nref, -1)
        head = scipy.fft.rfft(head, n=n_fft, axis=1)
        total += np.conj(head)[:, None, :] * ahead[None, :, :]
    return scipy.fft.irfft(total, n=n_fft, axis=2)[..., :filters_len]


def _solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``gram^-1 rhs[k]`` for each right-hand side ``(k, n, m)``, as museval solves it: numpy's LU, one
    factorisation for all of them.

    A source whose channels are identical (a mono bass in a stereo mix) makes ``gram`` singular but for
    museval's epsilon, and museval's ISR, SIR and SAR then depend on rounding: on such a MUSDB18 excerpt,
    perturbing its input by one part in 1e15 moved its SIR by up to 7 dB (SDR does not use the projection).
    Where numpy's LU meets an exact zero there, a ridge of 1e-14 of the mean diagonal replaces the epsilon
    (museval's least-squares fallback takes a minute at this size, and fails on numpy 2).
    """
    count, size, width = rhs.shape
    stacked = rhs.transpose(1, 0, 2).reshape(size, count * width)
    try:
        solved = np.linalg.solve(gram, stacked)
    except np.linalg.LinAlgError:
        ridge = 100 * np.finfo(float).eps * np.mean(np.diag(gram))
        solved = np.linalg.solve(gram + ridge * np.eye(size), stacked)
    return solved.reshape(size, count, width).transpose(1, 0, 2)


def _criteria(ref: np.ndarray, est: np.ndarray, projected_own: np.ndarray,
              projected: np.ndarray) -> Tuple[float, float, float, float]:
    """SDR, ISR, SIR, SAR of one window from its projections, with museval's arithmetic."""
    s_true = np.zeros_like(projected)
    s_true[:len(ref)] = ref
    e_spat = projected_own - s_true
    e_interf = projected - s_true - e_spat
    e_artif = -s_true - e_spat - e_interf
    e_artif[:len(est)] += est
    energy = np.sum(s_true ** 2)
    return (_db(energy, np.sum((e_spat + e_interf + e_artif) ** 2)),
            _db(energy, np.sum(e_spat ** 2)),
            _db(np.sum((s_true + e_spat) ** 2), np.sum(e_interf ** 2)),
            _db(np.sum((s_true + e_spat + e_interf) ** 2), np.sum(e_artif ** 2)))


def _db(num: float, den: float) -> float:
    return np.inf if den == 0 else 10 * np.log10(num / den)
