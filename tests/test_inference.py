import pytest
import torch

from helpers import make_models, music_like
from openunmix_like import Separator, separate
from openunmix_like.inference import crossfade_ramp, iter_separate, plan_segments, separate_tensor


def realistic_separator(niter=1):
    """Published STFT settings (4096/1024, 300-frame Wiener windows), small LSTM."""
    return Separator(make_models(n_fft=4096, hidden_size=32, max_bin=1487, seed=1), niter=niter).freeze()


def test_plan_covers_track_on_frame_grid():
    rate, hop, win = 44100, 1024, 300
    n = 44100 * 200 + 123
    plan = plan_segments(n, rate, rate, hop, win, segment=30.0, overlap=2.0)
    assert plan[0].start == 0 and plan[-1].end == n
    assert [p.core_end for p in plan[:-1]] == [p.core_start for p in plan[1:]]
    for p in plan:
        assert p.start % hop == 0 and p.frame_offset == p.start // hop
        assert p.core_start % (hop * win) == 0
        assert p.start <= p.core_start < p.core_end <= p.end
    assert max(p.end - p.start for p in plan) <= 33 * rate


def test_short_track_is_one_segment():
    assert len(plan_segments(1000, 44100, 44100, 1024, 300, 30.0, 2.0)) == 1
    assert len(plan_segments(10**7, 44100, 44100, 1024, 300, None, 2.0)) == 1


def test_crossfade_ramps_are_complementary():
    ramp = crossfade_ramp(100)
    assert torch.all(ramp[1:] >= ramp[:-1]) and ramp[0] < 0.01 and ramp[-1] > 0.99
    assert torch.allclose(ramp + ramp.flip(0), torch.ones(100))


@pytest.mark.slow
@pytest.mark.parametrize("niter", [0, 1])
def test_segmented_equals_whole_track_within_30db(niter):
    """60 s of audio: segment-wise result vs. one pass over the whole track."""
    sep = realistic_separator(niter)
    audio = torch.from_numpy(music_like(60.0, seed=3))
    whole = separate_tensor(sep, audio, 44100, segment=None)
    parts = separate_tensor(sep, audio, 44100, segment=20.0, overlap=2.0)
    assert parts.shape == whole.shape == (4, 2, audio.shape[-1])
    ratio_db = 10 * torch.log10((parts - whole).square().sum() / whole.square().sum())
    assert ratio_db < -30, ratio_db


def test_separate_api_shapes_and_rates():
    sep = Separator(make_models(), n_fft=512, n_hop=128).freeze()
    audio48 = torch.from_numpy(music_like(2.0, rate=48000))
    stems = separate(audio48, 48000, model=sep)
    assert list(stems) == ["vocals", "drums", "bass", "other"]
    assert all(s.shape == audio48.shape for s in stems.values())
    mono = separate(audio48[0], 48000, model=sep, aggregate={"all": ["vocals", "drums", "bass", "other"]})
    assert list(mono) == ["all"] and mono["all"].shape == audio48[0].shape
    batch = separate(audio48[None].repeat(2, 1, 1), 48000, model=sep)
    assert batch["vocals"].shape == (2, 2, 96000)
    assert torch.allclose(batch["vocals"][1], stems["vocals"], atol=1e-5)


def test_separate_api_loads_by_path(model_dir):
    stems = separate(torch.from_numpy(music_like(1.0)), 44100, model=model_dir(), targets=["bass"], niter=0)
    assert list(stems) == ["bass"]


def test_streaming_from_file_equals_in_memory(wav_file):
    from openunmix_like.audio import AudioSource, load

    sep = Separator(make_models(), n_fft=512, n_hop=128).freeze()
    path = wav_file("s.wav", seconds=6.0)
    audio, rate = load(path)
    in_memory = separate_tensor(sep, audio, rate, segment=2.0, overlap=0.5)
    with AudioSource(path) as source:
        streamed = torch.cat(list(iter_separate(sep, source, rate, segment=2.0, overlap=0.5)), dim=-1)
    assert torch.equal(streamed, in_memory)


@pytest.mark.parametrize("out_rate", [22050, 44100])
def test_segments_across_rates(out_rate):
    """22.05 kHz input, output at the input's or the model's rate, segmented vs whole."""
    sep = Separator(make_models(), n_fft=512, n_hop=128).freeze()
    audio = torch.from_numpy(music_like(8.0, rate=22050, seed=4))
    whole = torch.cat(list(iter_separate(sep, audio, 22050, segment=None, out_rate=out_rate)), dim=-1)
    parts = torch.cat(list(iter_separate(sep, audio, 22050, segment=2.0, overlap=0.5, out_rate=out_rate)), dim=-1)
    assert whole.shape == parts.shape == (4, 2, 8 * out_rate)
    assert 10 * torch.log10((parts - whole).square().sum() / whole.square().sum()) < -30


@pytest.mark.parametrize("seconds,rate", [(40.99, 44100), (10.3, 22050)])
def test_progress_counts_whole_seconds_and_ends_on_the_total(monkeypatch, seconds, rate):
    import io
    import re

    import tqdm

    bars = []

    class Recorded(tqdm.tqdm):
        def __init__(self, *args, **kw):
            self.text = io.StringIO()
            super().__init__(*args, **dict(kw, file=self.text))
            bars.append(self)

    monkeypatch.setattr(tqdm, "tqdm", Recorded)
    sep = Separator(make_models(("vocals",), n_fft=512, hidden_size=8), n_fft=512, n_hop=128, niter=0).freeze()
    audio = torch.randn(2, int(seconds * rate)) * 0.1
    chunks = list(iter_separate(sep, audio, rate, segment=3.0, overlap=0.5, progress=True))
    assert len(chunks) > 3 and sum(c.shape[-1] for c in chunks) == audio.shape[-1]
    (bar,) = bars
    total = round(seconds)
    assert bar.total == total and bar.n == total and isinstance(bar.n, int)
    shown = re.findall(r"([0-9.]+)/([0-9.]+)s?", bar.text.getvalue())
    assert shown and shown[-1] == (str(total), str(total))  # the last thing displayed is the total
    assert all("." not in n for n, _ in shown)  # whole seconds, never 110.92999999999999
