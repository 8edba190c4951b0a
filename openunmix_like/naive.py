"""A straightforward implementation of the separator's math, to check the fast paths against.

``torch.stft`` -> per-target models -> :func:`openunmix_like.filtering.wiener`
(norbert's formulation: complex tensors, explicit covariance matrices) over
whole filter windows -> ``torch.istft``. Used by the tests and the benchmark;
not meant for real use (slower and more memory-hungry).
"""
import torch

from . import filtering
from .separator import Separator


def separate_naive(sep: Separator, audio: torch.Tensor) -> torch.Tensor:
    """torch.stft -> models -> norbert-style wiener() on whole windows -> torch.istft."""
    window = torch.hann_window(sep.n_fft, dtype=audio.dtype)
    flat = audio.reshape(-1, audio.shape[-1])
    spec = torch.stft(flat, sep.n_fft, sep.n_hop, window=window, center=True, pad_mode="reflect",
                      return_complex=True).reshape(audio.shape[:2] + (sep.n_fft // 2 + 1, -1))
    mag = spec.abs()
    estimates = [m(mag) for m in sep.target_models.values()]  # each (S, C, F, T)
    out = []
    for i in range(audio.shape[0]):
        v = torch.stack([e[i] for e in estimates], dim=-1).permute(2, 1, 0, 3)  # (T, F, C, J)
        residual = sep.residual is not None or (sep.niter > 0 and len(estimates) == 1)
        y = filtering.wiener(v, spec[i].permute(2, 1, 0), sep.niter, sep.softmask, residual,
                             win_len=sep.wiener_win_len)
        y = y[..., : len(estimates) + (sep.residual is not None)].permute(3, 2, 1, 0)  # (J, C, F, T)
        rec = torch.istft(y.reshape(-1, *y.shape[-2:]), sep.n_fft, sep.n_hop, window=window,
                          length=audio.shape[-1])
        out.append(rec.reshape(y.shape[0], y.shape[1], -1))
    return torch.stack(out)
