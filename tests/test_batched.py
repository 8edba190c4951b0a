"""Batched segment inference: several segments through each model at once, same results as one at a time."""
import collections

import pytest
import torch

from helpers import make_models, music_like
from openunmix_like import Separator
from openunmix_like.cli.separate import main as separate_main
from openunmix_like.inference import iter_separate, plan_segments, separate_tensor


def separator(**kw):
    return Separator(make_models(n_fft=512), n_fft=512, n_hop=128, **kw).freeze()


def batch_sizes(monkeypatch):
    """Record the batch size of every Separator call."""
    seen = []
    forward = Separator.forward

    def spy(self, audio, frame_offset=0):
        seen.append(audio.shape[0])
        return forward(self, audio, frame_offset)

    monkeypatch.setattr(Separator, "forward", spy)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("rate", [44100, 32000])
@pytest.mark.parametrize("niter", [0, 1])
def test_batched_equals_one_segment_at_a_time(monkeypatch, rate, niter):
    sep = separator(niter=niter, wiener_win_len=50)
    audio = torch.from_numpy(music_like(40.0, rate, seed=3))
    one = separate_tensor(sep, audio, rate, segment=8, batch_segments=1)
    seen = batch_sizes(monkeypatch)
    for batch in (2, 3, 16):
        seen.clear()
        est = separate_tensor(sep, audio, rate, segment=8, batch_segments=batch)
        assert float((est - one).abs().max() / one.abs().max()) < 1e-5
        assert max(seen) > 1 and sum(seen) == len(plan_segments(audio.shape[-1], rate, 44100, 128, 50, 8, 2.0))


def test_a_batch_of_segments_keeps_each_segments_wiener_windows():
    # In float64, so that the EM's amplification of rounding differences between batch
    # sizes (in float32 up to 1e-4 of the peak on windows this short) does not hide a mix-up.
    sep = separator(niter=1, wiener_win_len=7).double()
    audio = torch.from_numpy(music_like(2.0, 44100, seed=4)).double()[None].repeat(2, 1, 1)
    together = sep(audio, frame_offset=[0, 3])
    first, second = sep(audio[:1], frame_offset=0)[0], sep(audio[1:], frame_offset=3)[0]
    peak = float(first.abs().max())
    assert float((together[0] - first).abs().max()) < 1e-10 * peak
    assert float((together[1] - second).abs().max()) < 1e-10 * peak
    assert float((first - second).abs().max()) > 1e-3 * peak  # the offsets do matter
    with pytest.raises(ValueError, match="3 frame offsets for 2 samples"):
        sep(audio, frame_offset=[0, 1, 2])


@pytest.mark.slow
def test_memory_holds_at_most_a_batch_of_segments(monkeypatch):
    sep = separator()
    audio = torch.from_numpy(music_like(60.0, 44100, seed=5))
    seen = batch_sizes(monkeypatch)
    chunks = iter_separate(sep, audio, 44100, segment=5, batch_segments=3)
    next(chunks)
    assert sum(seen) <= 3  # the first chunk needs only the first batch
    list(chunks)
    assert max(seen) <= 3
    with pytest.raises(ValueError, match="batch_segments must be at least 1"):
        next(iter_separate(sep, audio, 44100, segment=5, batch_segments=0))


@pytest.mark.slow
def test_cli_option(tmp_path, wav_file, model_dir):
    song = wav_file(seconds=12.0)
    folder = model_dir()
    outs = []
    for batch in ("1", "4"):
        out = tmp_path / f"out{batch}"
        assert separate_main([str(song), "--model", str(folder), "--outdir", str(out), "--segment", "3",
                              "--batch-segments", batch, "--bits", "32", "--quiet"]) == 0
        outs.append(out / "song" / "vocals.wav")
    import soundfile as sf

    a, b = sf.read(outs[0])[0], sf.read(outs[1])[0]
    assert abs(a - b).max() <= 1e-5 * abs(a).max()
    assert separate_main([str(song), "--model", str(folder), "--outdir", str(tmp_path / "x"),
                          "--batch-segments", "0", "--quiet"]) == 1


@pytest.mark.slow
def test_reading_ahead_and_writing_run_beside_the_separation(tmp_path, wav_file, model_dir, monkeypatch):
    import threading

    from openunmix_like.audio import AudioSource
    from openunmix_like.writer import StemWriter

    threads = {"read": set(), "write": set()}
    read, write = AudioSource.read, StemWriter.write

    def spy_read(self, start, stop):
        threads["read"].add(threading.current_thread().name)
        return read(self, start, stop)

    def spy_write(self, stems):
        threads["write"].add(threading.current_thread().name)
        return write(self, stems)

    monkeypatch.setattr(AudioSource, "read", spy_read)
    monkeypatch.setattr(StemWriter, "write", spy_write)
    song = wav_file(seconds=10.0)
    assert separate_main([str(song), "--model", str(model_dir()), "--outdir", str(tmp_path / "o"), "--segment", "2",
                          "--quiet"]) == 0
    main = threading.main_thread().name
    assert threads["read"] and main not in threads["read"]
    assert threads["write"] and main not in threads["write"]


@pytest.mark.parametrize("arch", ["umx", "unet2d", "unet1d", "tfattn"])
def test_bf16_models_stay_close_to_fp32_and_the_filter_stays_float32(arch):
    from openunmix_like.architectures import get

    torch.manual_seed(0)
    arch_ = get(arch)
    args = dict(nb_channels=2) if arch == "unet1d" else dict(nb_channels=2, nb_bins=257)
    if arch == "umx":
        args.update(hidden_size=16, max_bin=128)
    models = {t: arch_.build(**args).eval() for t in ("vocals", "drums")}
    audio = torch.from_numpy(music_like(2.0, 44100, seed=6))[None]
    fp32 = Separator(models, n_fft=512, n_hop=128).freeze()
    bf16 = Separator(models, n_fft=512, n_hop=128, precision="bf16").freeze()
    with torch.inference_mode():
        a, b = fp32(audio), bf16(audio)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert 0 < float((a - b).abs().max() / a.abs().max()) < 0.05  # bfloat16 keeps 8 bits of mantissa
    with pytest.raises(ValueError, match="precision 'fp16'"):
        Separator(models, n_fft=512, n_hop=128, precision="fp16")


@pytest.mark.slow
def test_segments_of_several_tracks_share_batches_and_each_track_equals_its_own_run(monkeypatch):
    from openunmix_like.inference import separate_tracks

    sep = separator(niter=1, wiener_win_len=50)
    # Lengths and rates differ; the middle segments of the two 44.1 kHz tracks have the same length.
    tracks = [(torch.from_numpy(music_like(seconds, rate, seed=seed)), rate)
              for seconds, rate, seed in ((9.0, 44100, 7), (7.0, 44100, 8), (6.0, 32000, 9), (1.5, 44100, 10))]
    alone = [separate_tensor(sep, audio, rate, segment=2, batch_segments=1) for audio, rate in tracks]
    seen = batch_sizes(monkeypatch)
    together = separate_tracks(sep, [a for a, _ in tracks], [r for _, r in tracks], segment=2, batch_segments=6)
    plans = [plan_segments(a.shape[-1], r, 44100, 128, 50, 2, 2.0) for a, r in tracks]
    assert sum(seen) == sum(len(p) for p in plans)
    alone_batches = sum(len({s.in_end - s.in_start for s in p}) for p in plans)
    assert len(seen) < alone_batches  # tracks share batches
    most_alike = max(collections.Counter(s.in_end - s.in_start for s in p).most_common(1)[0][1] for p in plans[:2])
    assert max(seen) > most_alike  # a batch larger than any one track fills
    for one, both, (audio, _) in zip(alone, together, tracks):
        assert both.shape == one.shape == (len(sep.target_names), 2, audio.shape[-1])
        assert float((both - one).abs().max() / one.abs().max()) < 1e-5
    # Output rates of their own, as for the model's rate (--keep-model-rate).
    resampled = separate_tracks(sep, [tracks[2][0]], [32000], segment=2, out_rates=[44100], batch_segments=2)[0]
    expected = torch.cat(list(iter_separate(sep, tracks[2][0], 32000, segment=2, out_rate=44100, batch_segments=1)), -1)
    assert resampled.shape == expected.shape
    assert float((resampled - expected).abs().max() / expected.abs().max()) < 1e-5
    with pytest.raises(ValueError, match="one sample rate"):
        separate_tracks(sep, [tracks[0][0]], [44100, 44100])
