"""The optimised separator equals a straightforward implementation of the same math."""
import pytest
import torch

from helpers import make_models
from naive import separate_naive as straightforward
from openunmix_like import Separator


@pytest.mark.parametrize("niter,softmask,residual,win", [
    (0, False, None, 300), (1, False, None, 300), (2, True, None, 8), (1, False, "rest", 11), (1, True, None, None),
])
def test_separator_equals_straightforward(niter, softmask, residual, win):
    torch.manual_seed(0)
    sep = Separator(make_models(("vocals", "drums", "bass")), niter=niter, softmask=softmask,
                    residual=residual, wiener_win_len=win, n_fft=512, n_hop=128).freeze()
    audio = torch.randn(2, 2, 9000) * 0.3
    with torch.inference_mode():
        fast, slow = sep(audio), straightforward(sep, audio)
    assert fast.shape == slow.shape
    assert (fast - slow).abs().max() <= 1e-4 * slow.abs().max()


def test_one_frame_window_in_double_precision():
    """71 frames in windows of 7 leave a last window of one frame: a rank-one,
    ill-conditioned covariance, where only double precision agrees closely."""
    torch.manual_seed(0)
    sep = Separator(make_models(("vocals", "drums", "bass")), niter=2, softmask=True, wiener_win_len=7,
                    n_fft=512, n_hop=128).freeze().double()
    audio = torch.randn(2, 2, 9000, dtype=torch.float64) * 0.3
    with torch.inference_mode():
        fast, slow = sep(audio), straightforward(sep, audio)
    assert fast.dtype == torch.float64
    assert (fast - slow).abs().max() <= 1e-6 * slow.abs().max()


def test_single_target_equals_straightforward():
    sep = Separator(make_models(("vocals",)), niter=1, n_fft=512, n_hop=128).freeze()
    audio = torch.randn(1, 2, 7000)
    with torch.inference_mode():
        fast, slow = sep(audio), straightforward(sep, audio)
    assert (fast - slow).abs().max() <= 1e-4 * slow.abs().max()


def test_inverse_stft_equals_torch_istft():
    from openunmix_like.transforms import ISTFT, STFT

    for n_fft, hop in [(4096, 1024), (1000, 300)]:
        x = torch.randn(3, 2, 20000, dtype=torch.float64)
        spec = STFT(n_fft, hop)(x)
        ref = torch.istft(spec.reshape(-1, *spec.shape[-2:]), n_fft, hop,
                          window=torch.hann_window(n_fft, dtype=torch.float64), length=19000)
        assert torch.allclose(ISTFT(n_fft, hop)(spec, length=19000), ref.reshape(3, 2, -1), atol=1e-12)
