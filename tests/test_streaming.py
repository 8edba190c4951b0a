"""StreamingSeparator: block-by-block separation with causal models equals the whole-signal Separator."""
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import make_models, music_like, tiny
from openunmix_like import ModelError, Separator, StreamingSeparator, filtering
from openunmix_like.streaming import lstm_steps

ROOT = Path(__file__).resolve().parents[1]
N_FFT, N_HOP = 512, 128


def causal_separator(targets=("vocals", "drums", "bass", "other"), nb_channels=2, n_fft=N_FFT, n_hop=N_HOP, **kw):
    models = make_models(targets, n_fft=n_fft, nb_channels=nb_channels, unidirectional=True)
    return Separator(models, n_fft=n_fft, n_hop=n_hop, nb_channels=nb_channels, **dict({"niter": 0}, **kw)).freeze()


def signal(nb_timesteps, channels=2, seed=0):
    seconds = nb_timesteps / 44100 + 0.01
    return torch.from_numpy(music_like(seconds, 44100, channels, seed=seed))[:, :nb_timesteps].contiguous()


def streamed(streamer, audio, sizes):
    """Feed ``audio`` in blocks of ``sizes`` (cycled), checking after each block that exactly
    ``latency`` samples are held back; returns the concatenated output with the flush."""
    outputs, position, k = [], 0, 0
    while position < audio.shape[-1]:
        size = sizes[k % len(sizes)]
        outputs.append(streamer.process(audio[:, position:position + size]))
        position, k = min(position + size, audio.shape[-1]), k + 1
        assert sum(o.shape[-1] for o in outputs) == max(0, position - streamer.latency)
    outputs.append(streamer.flush())
    return torch.cat(outputs, dim=-1)


def assert_close(got, want, tolerance=1e-5):
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= tolerance * float(want.abs().max())


def random_sizes(seed, high=2000, count=200):
    return [int(n) for n in np.random.default_rng(seed).integers(1, high, size=count)]


# ---------------------------------------------------------------- equal to the whole signal

@pytest.mark.parametrize("nb_timesteps, sizes", [
    (1500, [1]),                                  # one sample at a time
    (20000, [7, 129, 33, 1001]),                  # odd sizes, off the hop grid
    (20000, random_sizes(1)),
    (20000, [20000]),                             # one block
    (20000, [N_HOP]),                             # on the hop grid
])
def test_stream_equals_whole_signal(nb_timesteps, sizes):
    sep = causal_separator()
    audio = signal(nb_timesteps)
    assert_close(streamed(StreamingSeparator(sep), audio, sizes), sep(audio[None])[0])


@pytest.mark.parametrize("nb_timesteps", [1, 100, N_FFT // 2, N_FFT // 2 + 1, N_FFT - 1, N_FFT, N_FFT + 1, 777])
def test_streams_shorter_than_a_frame_or_two(nb_timesteps):
    """The separator zero-pads inputs shorter than n_fft; its first frame's reflection needs n_fft // 2 + 1 samples."""
    sep = causal_separator()
    audio = signal(nb_timesteps, seed=nb_timesteps)
    for sizes in ([100], [nb_timesteps]):
        assert_close(streamed(StreamingSeparator(sep), audio, sizes), sep(audio[None])[0])


@pytest.mark.parametrize("n_fft, n_hop, nb_timesteps", [(256, 200, 3000), (255, 64, 3000), (300, 299, 3200)])
def test_other_stft_settings(n_fft, n_hop, nb_timesteps):
    """A hop over n_fft // 2 (the end's reflection needs samples no frame keeps), an odd n_fft, and a hop
    so long that the last samples lie under no frame (3200 % 299 > 300 // 2: zeros, as offline)."""
    sep = causal_separator(n_fft=n_fft, n_hop=n_hop)
    audio = signal(nb_timesteps, seed=n_fft)
    assert_close(streamed(StreamingSeparator(sep), audio, random_sizes(2, high=400)), sep(audio[None])[0])


@pytest.mark.parametrize("model_channels, input_channels", [(2, 1), (2, 3), (1, 1), (1, 2)])
def test_channels_as_the_separator_handles_them(model_channels, input_channels):
    """Mono input into stereo models (downmixed filter), pairs plus a last mono channel, mono models."""
    sep = causal_separator(nb_channels=model_channels)
    audio = signal(6000, channels=input_channels, seed=3)
    out = streamed(StreamingSeparator(sep), audio, random_sizes(3, high=700))
    assert out.shape == (4, input_channels, 6000)
    assert_close(out, sep(audio[None])[0])


def test_softmask_residual_and_a_subset_of_targets():
    sep = causal_separator(("drums", "vocals"), softmask=True, residual="accompaniment")
    streamer = StreamingSeparator(sep)
    assert streamer.target_names == ["drums", "vocals", "accompaniment"]
    audio = signal(8000, seed=4)
    out = streamed(streamer, audio, random_sizes(4, high=900))
    assert_close(out, sep(audio[None])[0])
    # Ratio masks and the residual add up to the mixture.
    assert_close(out.sum(dim=0), audio)


def test_lstm_steps_equal_nn_lstm_with_the_state_carried():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(16, 16, num_layers=3).eval()
    x = torch.randn(25, 2, 16)
    with torch.no_grad():
        want, (h, c) = lstm(x)
        first, state = lstm_steps(lstm, x[:7])
        second, (h2, c2) = lstm_steps(lstm, x[7:], state)
    for got, ref in ((torch.cat([first, second]), want), (h2, h), (c2, c)):
        assert torch.allclose(got, ref, atol=1e-6)


def test_bf16_products_stream_close_to_the_offline_bf16_separator():
    """Not exact: bfloat16 products round differently frame by frame (the cell state stays float32)."""
    sep = causal_separator(precision="bf16")
    audio = signal(6000, seed=5)
    assert_close(streamed(StreamingSeparator(sep), audio, [1000]), sep(audio[None])[0], tolerance=1e-3)  # 1e-4 here


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stream_equals_cpu_separator():
    sep = causal_separator()
    audio = signal(10000, seed=6)
    out = streamed(StreamingSeparator(causal_separator().to("cuda")), audio.cuda(), random_sizes(6))
    assert out.is_cuda
    assert_close(out.cpu(), sep(audio[None])[0], tolerance=1e-4)


# ---------------------------------------------------------------- causal EM: covariances from the frames so far

def causal_em_reference(y, mix_stft, iterations, forget, eps=1e-10, scale_factor=10.0):
    """All frames at once: every frame's sums over the frames up to it, weighted forget ** age through a
    (frames x frames) matrix, and a linear solve where the streamer inverts; y (J, C, F, T), mix_stft (C, F, T)."""
    nb_channels, nb_frames = mix_stft.shape[0], mix_stft.shape[-1]
    age = (torch.arange(nb_frames)[:, None] - torch.arange(nb_frames)[None, :]).double()
    weights = torch.where(age >= 0, forget ** age.clamp_min(0), 0.0)  # (t, t'), float64 like the inputs
    m2 = (mix_stft.abs().amax(dim=(0, 1)).cummax(0).values / scale_factor).clamp_min(1.0).square()  # (t,)
    x = mix_stft.permute(2, 1, 0)  # (t, f, c)
    for _ in range(iterations):
        yt = y.permute(3, 2, 1, 0)  # (t, f, c, j)
        v = yt.abs().square().mean(dim=2)  # (t, f, j)
        sums = torch.einsum("st,tfcj,tfdj->sfcdj", weights.to(yt.dtype), yt, yt.conj())
        r = sums / (eps * m2[:, None, None] + torch.einsum("st,tfj->sfj", weights, v))[:, :, None, None, :]
        eye = torch.eye(nb_channels, dtype=r.dtype)
        cxx = torch.einsum("tfj,tfcdj->tfcd", v.to(r.dtype), r) + eps ** 0.5 * m2[:, None, None, None] * eye
        z = torch.linalg.solve(cxx, x)
        y = (v[:, :, None, :] * torch.einsum("tfcdj,tfd->tfcj", r, z)).permute(3, 2, 1, 0)
    return y


@pytest.mark.parametrize("targets, nb_channels, iterations, win", [
    (("vocals", "drums"), 2, 2, 20),
    (("vocals",), 2, 1, None),       # one target: a hidden residual, as offline; all frames alike
    (("speech", "noise"), 1, 1, 8),  # a mono model on a stereo stream
])
def test_causal_em_equals_a_batch_reference(targets, nb_channels, iterations, win):
    # In float64: a mono model gives both channels the mixture's phase, so the first frames' mixture
    # covariance is nearly singular, and float32 rounding would differ by 1e-3 between two ways of inverting it.
    sep = causal_separator(targets, nb_channels=nb_channels, wiener_win_len=win).double()
    audio = signal(6000, seed=14).double()
    streamer = StreamingSeparator(sep, causal_em=iterations)
    out = streamed(streamer, audio, random_sizes(14, high=700))
    with torch.no_grad():
        mix_stft = sep.stft(audio)
        spec = torch.stack([m(sep.complexnorm(mix_stft[None]))[0] for m in sep.target_models.values()])
        y = filtering.wiener_fast(spec, mix_stft, iterations=0, residual=len(targets) == 1)
        y = causal_em_reference(y, mix_stft, iterations, 1 - 1 / win if win else 1.0)
        want = sep.istft(y[:len(targets)], length=audio.shape[-1])
    assert_close(out, want, tolerance=1e-9)
    exact = streamed(StreamingSeparator(sep), audio, [1000])  # it does filter: not the per-frame filter
    assert float((out - exact).abs().max()) > 1e-3 * float(exact.abs().max())


def test_causal_em_setting_is_checked():
    with pytest.raises(ValueError, match="causal_em must be a whole number"):
        StreamingSeparator(causal_separator(), causal_em=-1)


# ---------------------------------------------------------------- the stream's life

def test_latency_shapes_and_dtypes():
    sep = causal_separator()
    streamer = StreamingSeparator(sep, sample_rate=44100)
    assert streamer.latency == N_FFT - 1 and streamer.sample_rate == 44100
    out = streamer.process(signal(N_FFT - 1).double())  # converted to the separator's float32
    assert out.shape == (4, 2, 0) and out.dtype == torch.float32
    out = streamer.process(signal(10))
    assert out.shape == (4, 2, 10) and out.dtype == torch.float32
    assert streamer.process(torch.zeros(2, 0)).shape == (4, 2, 0)
    assert streamer.flush().shape == (4, 2, N_FFT - 1)
    double = StreamingSeparator(causal_separator().double())
    assert double.process(signal(600)).dtype == torch.float64


def test_flush_of_an_empty_stream_and_twice():
    streamer = StreamingSeparator(causal_separator())
    assert streamer.flush().shape == (4, 2, 0)
    assert streamer.flush().shape == (4, 2, 0)
    assert StreamingSeparator(causal_separator(), nb_channels=3).flush().shape == (4, 3, 0)
    streamer = StreamingSeparator(causal_separator())
    streamer.process(signal(2000))
    assert streamer.flush().shape == (4, 2, N_FFT - 1)
    assert streamer.flush().shape == (4, 2, 0)
    with pytest.raises(RuntimeError, match=r"flushed; call reset\(\)"):
        streamer.process(signal(10))


def test_reset_starts_a_new_stream():
    sep = causal_separator()
    first, second = signal(5000, seed=7), signal(4000, channels=1, seed=8)
    streamer = StreamingSeparator(sep)
    streamer.process(first)  # half a stream, then another one with another channel count
    streamer.reset()
    assert_close(streamed(streamer, second, [300]), sep(second[None])[0])
    streamer.reset()
    assert_close(streamed(streamer, first, [300]), sep(first[None])[0])


def test_two_streams_of_one_separator_keep_their_own_state():
    sep = causal_separator()
    a, b = signal(7000, seed=9), signal(7000, seed=10)
    one, two = StreamingSeparator(sep), StreamingSeparator(sep)
    outputs = {1: [], 2: []}
    for start in range(0, 7000, 450):  # interleaved
        outputs[1].append(one.process(a[:, start:start + 450]))
        outputs[2].append(two.process(b[:, start:start + 450]))
    assert_close(torch.cat(outputs[1] + [one.flush()], dim=-1), sep(a[None])[0])
    assert_close(torch.cat(outputs[2] + [two.flush()], dim=-1), sep(b[None])[0])


def test_stream_helper_and_no_change_to_the_callers_blocks():
    sep = causal_separator()
    audio = signal(3000, seed=11)
    kept = audio.clone()
    out = torch.cat(list(StreamingSeparator(sep).stream(audio.split(250, dim=-1))), dim=-1)
    assert_close(out, sep(audio[None])[0])
    assert torch.equal(audio, kept)


# ---------------------------------------------------------------- refusals, one line each

def one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_bidirectional_models_are_refused():
    sep = Separator(make_models(n_fft=N_FFT), n_fft=N_FFT, n_hop=N_HOP, niter=0).freeze()
    with pytest.raises(ModelError) as excinfo:
        StreamingSeparator(sep)
    message = one_line(excinfo)
    assert "'vocals' has a bidirectional LSTM" in message and "umx-train --unidirectional" in message


@pytest.mark.parametrize("arch", ["unet2d", "unet1d", "tfattn"])
def test_other_architectures_are_refused(arch):
    sep = Separator({"vocals": tiny(arch)}, n_fft=N_FFT, n_hop=N_HOP, niter=0).freeze()
    with pytest.raises(ModelError) as excinfo:
        StreamingSeparator(sep)
    assert f"'vocals' is a {arch} model" in one_line(excinfo)


def test_em_iterations_are_refused():
    sep = causal_separator(niter=1)
    with pytest.raises(ValueError) as excinfo:
        StreamingSeparator(sep)
    assert re.search(r"niter=1: .*cannot stream; use niter=0", one_line(excinfo))


def test_training_mode_is_refused():
    sep = causal_separator()
    sep.target_models["drums"].train()
    with pytest.raises(ValueError, match=r"'drums' is in training mode .* separator.freeze\(\)"):
        StreamingSeparator(sep)


def test_other_rates_and_bad_blocks_are_refused():
    sep = causal_separator()
    with pytest.raises(ValueError, match="input at 48000 Hz but the models run at 44100 Hz"):
        StreamingSeparator(sep, sample_rate=48000)
    streamer = StreamingSeparator(sep)
    with pytest.raises(TypeError, match=r"torch.from_numpy\(array.T\)"):
        streamer.process(np.zeros((2, 10), dtype=np.float32))
    with pytest.raises(TypeError, match="dtype torch.int16"):
        streamer.process(torch.zeros(2, 10, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"\(nb_channels, n\)"):
        streamer.process(torch.zeros(10))
    with pytest.raises(ValueError, match="NaN or infinite"):
        streamer.process(torch.full((2, 10), float("nan")))
    streamer.process(torch.zeros(2, 10))
    with pytest.raises(ValueError, match="block has 1 channel.* this stream has 2; call reset"):
        streamer.process(torch.zeros(1, 10))


def test_from_pretrained_folder_and_refusals(model_dir, tmp_path):
    folder = model_dir("causal", unidirectional=True)
    streamer = StreamingSeparator.from_pretrained(folder, targets=["bass", "vocals"], residual="rest", precision="fp32")
    assert streamer.target_names == ["bass", "vocals", "rest"] and streamer.separator.niter == 0
    audio = signal(3000, seed=12)
    want = Separator.from_pretrained(folder, targets=["bass", "vocals"], residual="rest", niter=0, precision="fp32")
    assert_close(streamed(streamer, audio, [700]), want(audio[None])[0])

    with pytest.raises(ModelError) as excinfo:
        StreamingSeparator.from_pretrained("umxhq")  # refused before any download
    assert "model 'umxhq' has bidirectional LSTMs" in one_line(excinfo)
    with pytest.raises(ModelError) as excinfo:
        StreamingSeparator.from_pretrained(None)
    assert one_line(excinfo).startswith("the bundled model: target ")
    with pytest.raises(ModelError, match=r"model '.*bidirectional': target 'vocals' has a bidirectional LSTM"):
        StreamingSeparator.from_pretrained(model_dir("bidirectional"))
    with pytest.raises(ValueError, match="niter=2"):
        StreamingSeparator.from_pretrained(folder, niter=2)


# ---------------------------------------------------------------- the documented example

def test_inference_md_streaming_example_runs_as_written(model_dir, tmp_path, monkeypatch):
    """The ```python streaming block of docs/inference.md, with a causal model folder for "my-causal-model"."""
    blocks = re.findall(r"^```python streaming\n(.*?)^```", (ROOT / "docs" / "inference.md").read_text(),
                        flags=re.S | re.M)
    assert len(blocks) == 1
    folder = model_dir("my-causal-model", unidirectional=True)
    monkeypatch.chdir(tmp_path)
    song = music_like(1.5, 44100, 2, seed=13)
    sf.write("song.wav", song.T, 44100, subtype="FLOAT")
    exec(compile(blocks[0], "<docs/inference.md>", "exec"), {})  # noqa: S102 - our own docs
    want = Separator.from_pretrained(folder, niter=0, precision="fp32")(torch.from_numpy(song)[None])[0]
    for name, estimate in zip(["vocals", "drums", "bass", "other"], want):
        stem, rate = sf.read(f"stems/{name}.wav", dtype="float32", always_2d=True)
        assert rate == 44100
        assert_close(torch.from_numpy(stem.T.copy()), estimate)
