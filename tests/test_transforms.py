import pytest
import torch

from openunmix_like.transforms import ISTFT, STFT, ComplexNorm, nb_frames_for


@pytest.mark.parametrize("n_fft,n_hop", [(4096, 1024), (1024, 512), (512, 128)])
@pytest.mark.parametrize("length", [44100, 44100 + 333])
def test_round_trip_below_1e6_rms(n_fft, n_hop, length):
    torch.manual_seed(0)
    audio = torch.rand(2, 2, length) * 2 - 1
    spec = STFT(n_fft, n_hop)(audio)
    back = ISTFT(n_fft, n_hop)(spec, length=length)
    assert back.shape == audio.shape
    assert (back - audio).square().mean().sqrt() < 1e-6


def test_matches_published_conventions():
    """Periodic Hann, centred with reflect padding, unnormalised, one-sided."""
    audio = torch.randn(1, 2, 10000, dtype=torch.float64)
    spec = STFT(1024, 256)(audio)
    window = torch.hann_window(1024, periodic=True, dtype=torch.float64)
    ref = torch.stft(audio[0, 1], 1024, 256, window=window, center=True, pad_mode="reflect",
                     normalized=False, onesided=True, return_complex=True)
    assert spec.shape == (1, 2, 513, nb_frames_for(10000, 256))
    assert torch.allclose(spec[0, 1], ref)
    # Frame 3 is centred at sample 3 * 256: its DC bin is the windowed sum there.
    assert torch.isclose(spec[0, 1, 0, 3].real, (audio[0, 1, 768 - 512 : 768 + 512] * window).sum())


def test_window_is_not_in_state_dict():
    assert STFT().state_dict() == {} and ISTFT().state_dict() == {}


def test_complex_norm_mono_averages_magnitudes():
    spec = torch.randn(1, 2, 5, 3, dtype=torch.complex64)
    mono = ComplexNorm(mono=True)(spec)
    assert mono.shape == (1, 1, 5, 3)
    assert torch.allclose(mono[:, 0], spec.abs().mean(1))
    assert torch.equal(ComplexNorm()(spec), spec.abs())


def test_keeps_float64():
    audio = torch.randn(1, 1, 4000, dtype=torch.float64)
    spec = STFT(512, 128)(audio)
    assert spec.dtype == torch.complex128
    assert ISTFT(512, 128)(spec, length=4000).dtype == torch.float64
