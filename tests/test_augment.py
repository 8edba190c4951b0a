"""Augmentations (volume, time stretch, pitch shift, spectrogram masking, mixup): shapes, pickling,
what they do to the signal, mixture consistency."""
import math
import pickle
import random

import pytest
import torch

from helpers import music_like
from openunmix_like import augment

RATE = 22050


def tone(freq, seconds=1.0, channels=2):
    t = torch.arange(int(seconds * RATE)) / RATE
    return torch.sin(2 * math.pi * freq * t).expand(channels, -1).clone()


def peak_frequency(audio):
    spectrum = torch.fft.rfft(audio[0] * torch.hann_window(audio.shape[-1]))
    return float(spectrum.abs().argmax()) * RATE / audio.shape[-1]


@pytest.mark.parametrize("name", ["gain", "channelswap", "force_stereo", "volume", "timestretch", "pitchshift"])
def test_source_augmentations_keep_shapes_pickle_and_follow_the_rng(name):
    audio = torch.from_numpy(music_like(0.7, RATE, 2))
    f = pickle.loads(pickle.dumps(augment.AUGMENTATIONS[name]))
    out = f(audio, random.Random(3))
    assert out.shape == audio.shape and out.dtype == audio.dtype and torch.isfinite(out).all()
    assert torch.equal(out, f(audio, random.Random(3)))
    chain = pickle.loads(pickle.dumps(augment.Compose.from_names([name, "gain"])))
    assert chain(audio, random.Random(1)).shape == audio.shape


def test_volume_range():
    audio = torch.ones(2, 10)
    gains = [float(augment.volume(audio, random.Random(s))[0, 0]) for s in range(200)]
    assert 0.7 <= min(gains) < 0.75 and 1.25 < max(gains) < 1.3


def test_phase_vocoder_changes_tempo_not_pitch():
    audio = tone(440.0)
    for rate in (0.9, 1.1):
        out = augment.phase_vocoder(audio, rate)
        assert out.shape[-1] == round(RATE / rate)
        assert peak_frequency(out) == pytest.approx(440.0, abs=2.0)
    # A burst at 0.5 s arrives at 0.5 / rate s.
    burst = torch.zeros(1, RATE)
    burst[:, RATE // 2 : RATE // 2 + 2205] = tone(1000.0, 0.1, 1)
    for rate in (0.9, 1.1):
        out = augment.phase_vocoder(burst, rate)
        start = int((out[0].abs() > 0.5).nonzero()[0]) / RATE
        assert start == pytest.approx(0.5 / rate, abs=0.02)


def test_timestretch_draws_from_0_9_to_1_1():
    audio = tone(440.0)
    lengths = []
    for seed in range(20):
        rate = random.Random(seed).uniform(0.9, 1.1)
        out = augment.timestretch(audio, random.Random(seed))
        assert out.shape == audio.shape
        # A sped-up source ends early (padded with silence), a slowed-down one fills the excerpt.
        silent = (out[0].abs() < 1e-3).flip(0).cumprod(0).sum().item()
        lengths.append((rate, silent))
    for rate, silent in lengths:
        expected = max(0, RATE - round(RATE / rate))
        assert abs(silent - expected) < 0.02 * RATE


def test_pitchshift_moves_the_pitch_by_up_to_two_semitones():
    audio = tone(440.0)
    for seed in range(5):
        semitones = random.Random(seed).uniform(-2, 2)
        out = augment.pitchshift(audio, random.Random(seed))
        assert out.shape == audio.shape
        assert peak_frequency(out) == pytest.approx(440.0 * 2 ** (semitones / 12), abs=3.0)


def test_batch_names_are_told_apart():
    assert augment.split_names(["gain", "mixup", "pitchshift", "freqmask"]) == (["gain", "pitchshift"],
                                                                                ["mixup", "freqmask"])
    with pytest.raises(ValueError, match="unknown augmentation.*reverse"):
        augment.split_names(["reverse"])
    with pytest.raises(ValueError, match="mixup act on training batches"):
        augment.Compose.from_names(["mixup"])


def batch(seed=0):
    y = torch.stack([torch.from_numpy(music_like(0.5, RATE, 2, seed=seed + k)) for k in range(3)]) * 0.5
    z = torch.stack([torch.from_numpy(music_like(0.5, RATE, 2, seed=seed + 10 + k)) for k in range(3)]) * 0.5
    return y + z, y, z


@pytest.mark.parametrize("name", ["freqmask", "timemask", "mixup"])
def test_batch_augmentations_keep_shapes_pickle_and_keep_the_mixture_a_sum(name):
    x, y, z = batch()
    f = pickle.loads(pickle.dumps(augment.BatchCompose.from_names([name], 512, 128)))
    out_x, out_y = f(x, y, torch.Generator().manual_seed(5))
    assert out_x.shape == x.shape and out_y.shape == y.shape
    assert not torch.allclose(out_x, x)
    # Linear and shared: the interferers get exactly what mixture and target got.
    out_z, _ = f(z, z, torch.Generator().manual_seed(5))
    assert torch.allclose(out_x - out_y, out_z, atol=1e-5)
    again = f(x, y, torch.Generator().manual_seed(5))
    assert torch.equal(again[0], out_x) and torch.equal(again[1], out_y)


@pytest.mark.parametrize("axis,limit", [("freq", 80), ("time", 40)])
def test_spectrogram_masks_hide_one_band_per_example(axis, limit):
    x, y, _ = batch()
    mask = augment.SpectrogramMask(axis, limit, 512, 128)
    out_x, out_y = mask(x, y, torch.Generator().manual_seed(2))
    stft = lambda a: torch.stft(a.reshape(-1, a.shape[-1]), 512, 128, window=torch.hann_window(512),  # noqa: E731
                                return_complex=True).abs().reshape(*a.shape[:-1], 257, -1)
    for out, ref in ((out_x, x), (out_y, y)):
        ratio = stft(out) / stft(ref).clamp_min(1e-6)
        # Energy along the masked axis, per example: a run of (nearly) removed bins or frames.
        profile = ratio.mean(dim=(1, 3) if axis == "freq" else (1, 2))
        for example in profile:
            removed = int((example < 0.2).sum())
            assert removed <= limit + 2
    widths = []
    for seed in range(30):
        out, _ = mask(x, y, torch.Generator().manual_seed(seed))
        ratio = (stft(out) / stft(x).clamp_min(1e-6)).mean(dim=(1, 3) if axis == "freq" else (1, 2))
        widths.append(int((ratio[0] < 0.2).sum()))
    assert max(widths) > limit // 2  # wide bands do occur


def test_mixup_blends_pairs_with_one_weight():
    x, y, _ = batch()
    out_x, out_y = augment.Mixup(alpha=0.4, prob=1.0)(x, y, torch.Generator().manual_seed(0))
    # Each output is lam * own + (1 - lam) * partner with 0 <= lam <= 1: solve for lam per example.
    for i in range(3):
        fits = []
        for j in range(3):
            d = x[i] - x[j]
            if j == i or d.abs().max() == 0:
                continue
            lam = float(((out_x[i] - x[j]) * d).sum() / (d * d).sum())
            fits.append((float((lam * x[i] + (1 - lam) * x[j] - out_x[i]).abs().max()), lam, j))
        err, lam, j = min(fits)
        assert err < 1e-5 and 0 <= lam <= 1
        assert torch.allclose(out_y[i], lam * y[i] + (1 - lam) * y[j], atol=1e-5)
    never = augment.Mixup(prob=0.0)(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(never[0], x) and torch.equal(never[1], y)
