"""On the CPU, without autograd, the separator works a few megabytes at a time (fresh
spectrogram-sized blocks would page-fault on every call): these paths equal one-pass ones."""
import copy

import pytest
import torch
from torch import nn

from helpers import make_models, music_like
from openunmix_like import Separator, transforms
from openunmix_like.architectures import umx
from openunmix_like.transforms import ISTFT, STFT, ComplexNorm


def torch_stft(audio, n_fft, n_hop, center=True, pad_mode="reflect"):
    flat = audio.reshape(-1, audio.shape[-1])
    window = torch.hann_window(n_fft, periodic=True, dtype=audio.dtype)
    spec = torch.stft(flat, n_fft, n_hop, window=window, center=center, pad_mode=pad_mode, return_complex=True)
    return spec.reshape(audio.shape[:-1] + spec.shape[-2:])


@pytest.mark.parametrize("n_fft,n_hop,center,pad_mode,dtype", [
    (512, 128, True, "reflect", torch.float32), (400, 160, True, "constant", torch.float32),
    (512, 200, False, "reflect", torch.float32), (512, 128, True, "reflect", torch.float64),
])
def test_stft_in_chunks_equals_torch_stft(monkeypatch, n_fft, n_hop, center, pad_mode, dtype):
    audio = torch.from_numpy(music_like(1.3, 16000, seed=1)).to(dtype)[None].repeat(3, 1, 1)
    # 6 signals of n_fft samples a frame: 7 frames a chunk, the last chunk a partial one.
    monkeypatch.setattr(transforms, "CPU_CHUNK_BYTES", 6 * n_fft * audio.element_size() * 7)
    stft = STFT(n_fft, n_hop, center=center, pad_mode=pad_mode)
    with torch.inference_mode():
        chunked = stft(audio)
    expected = torch_stft(audio, n_fft, n_hop, center, pad_mode)
    assert chunked.shape[-1] % 7 and chunked.shape[-1] > 14
    assert chunked.dtype == expected.dtype and chunked.stride() == expected.stride()
    assert torch.allclose(chunked, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))
    mag = ComplexNorm()(chunked)
    assert torch.equal(mag, chunked.abs())
    assert torch.allclose(ComplexNorm(mono=True)(chunked), chunked.abs().mean(dim=1, keepdim=True))


def test_stft_with_autograd_still_has_gradients(monkeypatch):
    monkeypatch.setattr(transforms, "CPU_CHUNK_BYTES", 1 << 12)
    audio = torch.randn(1, 2, 8000, requires_grad=True)
    ComplexNorm()(STFT(512, 128)(audio)).sum().backward()
    assert audio.grad is not None and audio.grad.abs().sum() > 0


@pytest.mark.parametrize("n_fft,n_hop", [(512, 128), (400, 160)])
def test_inverse_stft_in_chunks_equals_one_pass_and_torch(monkeypatch, n_fft, n_hop):
    audio = torch.from_numpy(music_like(1.5, 16000, seed=2))[None].repeat(3, 1, 1)
    spec = torch_stft(audio, n_fft, n_hop)
    monkeypatch.setattr(transforms, "CPU_CHUNK_BYTES", 1 << 40)
    whole = ISTFT(n_fft, n_hop)(spec, length=audio.shape[-1])
    # 6 signals of n_fft float32 samples a frame: a few frames per chunk, the last one shorter.
    monkeypatch.setattr(transforms, "CPU_CHUNK_BYTES", 6 * n_fft * 4 * 7)
    chunked = ISTFT(n_fft, n_hop)(spec, length=audio.shape[-1])
    assert spec.shape[-1] % 7  # the last chunk is a partial one
    assert float((chunked - whole).abs().max()) <= 1e-6 * float(whole.abs().max())
    assert torch.allclose(chunked, audio, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_encoded_in_chunks_and_decoded_in_windows_equals_forward(monkeypatch, dtype):
    model = make_models(("vocals",), hidden_size=16)["vocals"].cast_products(dtype)
    mag = torch.rand(2, 2, 257, 40) * 3
    with torch.inference_mode():
        whole = model(mag)
        # 2 samples x 2 channels x 128 bins of float32 a frame: 3 frames a chunk.
        monkeypatch.setattr(transforms, "CPU_CHUNK_BYTES", 2 * 2 * 128 * 4 * 3)
        mix = mag.permute(3, 0, 1, 2)
        features = model.encode(mix)
        windows = torch.cat([model.decode(features[a : a + 11], mix[a : a + 11]) for a in range(0, 40, 11)])
    assert features.shape == (40, 2, 32) and features.dtype == dtype
    assert windows.dtype == torch.float32
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    assert torch.allclose(windows.permute(1, 2, 3, 0), whole, rtol=0, atol=tolerance * float(whole.abs().max()))
    with torch.enable_grad():  # training: one pass, the same values
        plain = model(mag.requires_grad_()).detach()
    assert torch.allclose(plain, whole, rtol=0, atol=tolerance * float(whole.abs().max()))


class Opaque(nn.Module):
    """A model the separator knows nothing about: it runs whole, as any architecture does."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("channels,samples", [(2, 2), (1, 1), (3, 1)])
def test_separator_decoding_window_by_window_equals_whole_models(monkeypatch, precision, channels, samples):
    models = make_models(n_fft=512)
    on_demand = Separator(models, n_fft=512, n_hop=128, wiener_win_len=13, precision=precision).freeze()
    opaque = {name: Opaque(copy.deepcopy(m).cast_products(torch.bfloat16) if precision == "bf16" else m)
              for name, m in models.items()}
    whole = Separator(opaque, n_fft=512, n_hop=128, wiener_win_len=13, precision="fp32").freeze()
    audio = torch.stack([torch.from_numpy(music_like(0.8, 16000, channels=max(channels, 2), seed=3 + k))[:channels]
                         for k in range(samples)])
    with torch.inference_mode():
        expected = whole(audio, frame_offset=[5 * k for k in range(samples)])
        # On demand means on demand: the models' whole-signal forward is never called.
        monkeypatch.setattr(umx.OpenUnmix, "forward", lambda *a: pytest.fail("forward called"))
        got = on_demand(audio, frame_offset=[5 * k for k in range(samples)])
    assert got.shape == expected.shape == (samples, 4, channels, audio.shape[-1])
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
