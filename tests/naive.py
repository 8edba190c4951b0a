"""A straightforward implementation of the separator's math, to check the fast paths against.

:class:`openunmix_like.transforms.STFT` -> per-target models ->
:func:`openunmix_like.filtering.wiener` (norbert's formulation: complex tensors,
explicit covariance matrices) over whole filter windows -> ``torch.istft`` with
the same window. A test reference (and the benchmark's), not meant for real use:
slower and more memory-hungry.
"""
import torch

from openunmix_like import filtering
from openunmix_like.separator import Separator
from openunmix_like.transforms import STFT, _window_like


def separate_naive(sep: Separator, audio: torch.Tensor) -> torch.Tensor:
    """STFT -> models -> norbert-style wiener() on whole windows -> torch.istft."""
    stft = STFT(sep.n_fft, sep.n_hop).to(audio.device)
    window = _window_like(stft.window, audio.dtype)  # for torch.istft: the STFT's, in the audio's precision
    spec = stft(audio)  # (S, C, F, T)
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
