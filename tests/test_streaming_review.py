"""StreamingSeparator under a demanding user's use: reused input buffers and separators it cannot compute in."""
import pytest
import torch

from helpers import make_models, music_like
from openunmix_like import Separator, StreamingSeparator

N_FFT, N_HOP = 512, 128


def causal_separator(targets=("vocals", "drums"), nb_channels=2):
    models = make_models(targets, n_fft=N_FFT, nb_channels=nb_channels, unidirectional=True)
    return Separator(models, n_fft=N_FFT, n_hop=N_HOP, nb_channels=nb_channels, niter=0).freeze()


def signal(nb_timesteps, channels=2, seed=0):
    seconds = nb_timesteps / 44100 + 0.01
    return torch.from_numpy(music_like(seconds, 44100, channels, seed=seed))[:, :nb_timesteps].contiguous()


def test_a_reused_input_buffer_does_not_change_what_the_stream_holds():
    """An audio callback hands over the same buffer each time, refilled: the stream must copy what it keeps
    (here the first block, shorter than the n_fft // 2 + 1 samples the left reflection needs)."""
    sep = causal_separator()
    audio = signal(3000, seed=1)
    streamer, buffer, outputs = StreamingSeparator(sep), torch.empty(2, 100), []
    for start in range(0, 3000, 100):
        buffer.copy_(audio[:, start:start + 100])
        outputs.append(streamer.process(buffer))
    out, want = torch.cat(outputs + [streamer.flush()], dim=-1), sep(audio[None])[0]
    assert float((out - want).abs().max()) <= 1e-5 * float(want.abs().max())


def test_a_separator_in_float16_on_the_cpu_is_refused_in_one_line_and_the_stream_stays_usable():
    """The offline separator refuses it with a TypeError naming the fix; the stream failed inside the FFT."""
    sep = causal_separator().half()
    audio = signal(1000, seed=2)
    with pytest.raises(TypeError, match=r"computes in torch.float16.*separator.float\(\)") as excinfo:
        sep(audio[None])
    offline = str(excinfo.value)
    streamer = StreamingSeparator(sep)
    with pytest.raises(TypeError) as excinfo:
        streamer.process(audio)
    assert str(excinfo.value) == offline
    sep.float()
    want = sep(audio[None])[0]
    out = torch.cat([streamer.process(audio), streamer.flush()], dim=-1)  # nothing of the refused block was kept
    assert float((out - want).abs().max()) <= 1e-5 * float(want.abs().max())
