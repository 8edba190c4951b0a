"""An engineer learns a processing chain from aligned raw/processed pairs, then applies it.

The chain is a static equaliser (a low cut, +6 dB above 2 kHz, +2 dB of gain): a tiny model learns it in
seconds from 20 generated pairs, and what each inference setting makes of a new raw file is measured against
the truly processed file (docs/inference.md, "Models that process their input").
"""
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from openunmix_like import Separator, separate
from openunmix_like.cli.separate import main as separate_main
from openunmix_like.cli.train import main as train_main

RATE = 16000
DOCS = Path(__file__).resolve().parents[1] / "docs" / "inference.md"
LOUDER = "estimates more than its input holds"
SOFTMASK = "softmask with one target"
TRAIN = ["--dataset", "aligned", "--input-file", "raw", "--output-file", "mixed", "--target", "mixed",
         "--sample-rate", str(RATE), "--nfft", "512", "--nhop", "128", "--hidden-size", "16", "--bandwidth", "8000",
         "--seq-dur", "1.0", "--batch-size", "8", "--epochs", "25", "--lr", "0.02", "--device", "cpu", "--quiet"]


def raw_take(seconds, channels, seed):
    """Decaying harmonic notes and noise bursts, ``(channels, n)`` float64 peaking at 0.4."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    out = np.zeros((channels, t.size))
    for _ in range(10):
        f0, onset = rng.uniform(80, 700), rng.uniform(0, seconds)
        env = np.where(t >= onset, np.exp(-(t - onset) * 3), 0)
        tone = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 8) if f0 * k < RATE / 2)
        out += tone * env * rng.uniform(0.2, 1.0, size=(channels, 1))
    for _ in range(6):
        onset = rng.uniform(0, seconds)
        out += 0.6 * rng.standard_normal((channels, t.size)) * np.where(t >= onset, np.exp(-(t - onset) * 12), 0)
    out += 0.01 * rng.standard_normal((channels, t.size))
    return 0.4 * out / np.abs(out).max()


def chain(x):
    """The processing to learn: zero-phase low cut below 150 Hz, +6 dB shelf above 2 kHz, +2 dB gain."""
    f = np.maximum(np.fft.rfftfreq(x.shape[-1], 1 / RATE), 1e-3)
    gain = 10 ** (2 / 20) / np.sqrt(1 + (150 / f) ** 8) * (1 + (10 ** (6 / 20) - 1) / (1 + (2000 / f) ** 4))
    return np.fft.irfft(np.fft.rfft(x, axis=-1) * gain, n=x.shape[-1], axis=-1)


def snr(estimate, reference):
    estimate, reference = np.asarray(estimate, np.float64), np.asarray(reference, np.float64)
    return 10 * np.log10(np.square(reference).sum() / np.square(reference - estimate).sum())


def write_pairs(root: Path, channels: int, odd_pair: bool = False) -> Path:
    """``train/raw``, ``train/mixed`` and ``valid/...`` of matching names; with ``odd_pair`` the first
    processed file is stereo at 22.05 kHz (the pair differs in rate and channels)."""
    from scipy.signal import resample_poly

    for split, count, base in (("train", 20, 0), ("valid", 2, 1000)):
        for k in range(count):
            raw = raw_take(3.0, channels, base + k)
            mixed, rate = chain(raw), RATE
            if odd_pair and split == "train" and k == 0:
                mixed, rate = np.repeat(resample_poly(mixed, 441, 320, axis=-1), 2, axis=0), 22050
            for name, audio, r in (("raw", raw, RATE), ("mixed", mixed, rate)):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                sf.write(root / split / name / f"take{k:02d}.wav", audio.T.astype(np.float32), r, subtype="FLOAT")
    return root


@pytest.fixture(scope="module")
def stereo_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("eq")
    write_pairs(root / "data", 2)
    assert train_main([*TRAIN, "--root", str(root / "data"), "--output", str(root / "model")]) == 0
    raw = raw_take(4.0, 2, 5000)
    sf.write(root / "new.wav", raw.T.astype(np.float32), RATE, subtype="FLOAT")
    return root / "model", root / "new.wav", raw.astype(np.float32), chain(raw)


@pytest.fixture(scope="module")
def mono_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("eq-mono")
    write_pairs(root / "data", 1, odd_pair=True)
    assert train_main([*TRAIN, "--root", str(root / "data"), "--output", str(root / "my-mix-model"),
                       "--nb-channels", "1"]) == 0
    return root / "my-mix-model"


def applied(model, raw, **wiener):
    separator = Separator.from_pretrained(model, precision="fp32", **wiener)
    return separate(torch.from_numpy(raw), RATE, model=separator)["mixed"].numpy()


def louder_reports(caplog):
    return [r for r in caplog.records if r.name == "openunmix_like.separator" and LOUDER in r.getMessage()]


def test_the_model_folder_records_what_inference_needs(stereo_model):
    model, *_ = stereo_model
    record = json.loads((model / "separator.json").read_text())
    assert (record["sample_rate"], record["nfft"], record["nhop"], record["nb_channels"], record["targets"]) == \
        (RATE, 512, 128, 2, ["mixed"])
    separator = Separator.from_pretrained(model)
    assert (separator.sample_rate, separator.n_fft, separator.n_hop, separator.nb_channels) == (RATE, 512, 128, 2)
    assert separator.target_names == ["mixed"]


def test_niter_0_applies_the_learnt_chain_and_the_filter_settings_do_not(stereo_model, tmp_path):
    """The rows of docs/inference.md's table: only niter 0 without softmask keeps the learnt boost."""
    model, path, raw, truth = stereo_model
    untouched = snr(raw, truth)  # about 7 dB
    assert separate_main([str(path), "--model", str(model), "--niter", "0", "--outdir", str(tmp_path / "n0"),
                          "--bits", "32", "--clip", "none", "--precision", "fp32", "--quiet"]) == 0
    written, rate = sf.read(tmp_path / "n0" / "new" / "mixed.wav", dtype="float32", always_2d=True)
    assert rate == RATE and written.shape == raw.T.shape
    assert snr(written.T, truth) > untouched + 10  # 23.8 dB
    assert np.abs(written.T - applied(model, raw, niter=0)).max() < 1e-6  # umx-separate == Separator
    for em in (1, 2):  # EM against a hidden residual: at most the input, the boost is lost
        out = applied(model, raw, niter=em)
        assert snr(out, truth) < untouched + 1  # 6.4, 7.2 dB
        assert np.square(out).sum() < np.square(raw).sum() < np.square(truth).sum()
    assert snr(applied(model, raw, niter=0, residual="rest"), truth) > untouched + 10
    for em in (0, 1):  # a ratio mask of one source is the input
        assert snr(applied(model, raw, niter=em, softmask=True), raw) > 25


def test_em_reports_once_that_it_drops_a_one_target_estimate_louder_than_the_input(stereo_model, tmp_path, caplog):
    model, path, raw, _ = stereo_model
    caplog.set_level(logging.WARNING, logger="openunmix_like.separator")
    assert separate_main([str(path), "--model", str(model), "--niter", "1", "--outdir", str(tmp_path / "out"),
                          "--quiet"]) == 0
    reports = louder_reports(caplog)
    assert len(reports) == 1
    assert re.search(r"target 'mixed' estimates more than its input holds \(by \d+% of the input's energy\), "
                     r"which the Wiener filter's EM \(niter=1\) drops.*niter=0 and no softmask \(umx-separate "
                     r"--niter 0, or \"niter\": 0 in the model folder's separator.json, as umx-train --dataset "
                     r"aligned writes it\)$", reports[0].getMessage())
    caplog.clear()
    separator = Separator.from_pretrained(model, niter=2)
    audio = torch.from_numpy(raw)[None]
    with torch.no_grad():
        separator(audio)
        separator(audio)
    assert len(louder_reports(caplog)) == 1  # once per separator, not per segment
    caplog.clear()
    separate(torch.from_numpy(raw), RATE, model=str(model), niter=0)
    separate(torch.from_numpy(raw), RATE, model=str(model), niter=1, residual="rest")  # asked for: separation
    assert not louder_reports(caplog)


class Gain(nn.Module):
    """A magnitude model that scales its input."""

    domain = "magnitude"

    def __init__(self, gain, nb_channels=2):
        super().__init__()
        self.gain, self.nb_bins, self.nb_channels = gain, 257, nb_channels

    def forward(self, x):
        return self.gain * x


@pytest.mark.parametrize("nb_channels", [1, 2])
def test_a_separation_models_overshoot_is_not_reported(caplog, nb_channels):
    caplog.set_level(logging.WARNING, logger="openunmix_like.separator")
    audio = torch.from_numpy(raw_take(1.0, 2, 3).astype(np.float32))[None]
    with torch.no_grad():
        Separator({"t": Gain(1.04, nb_channels)}, n_fft=512, n_hop=128, nb_channels=nb_channels)(audio)
        Separator({"t": Gain(0.5, nb_channels)}, n_fft=512, n_hop=128, nb_channels=nb_channels)(audio)
        Separator({"a": Gain(2.0), "b": Gain(2.0)}, n_fft=512, n_hop=128)(audio)  # several targets: EM shares
    assert not louder_reports(caplog)
    with torch.no_grad():  # a mono model is compared with the mean magnitude it saw
        Separator({"t": Gain(1.2, nb_channels)}, n_fft=512, n_hop=128, nb_channels=nb_channels)(audio)
    assert len(louder_reports(caplog)) == 1


def test_softmask_with_one_target_is_reported(caplog):
    caplog.set_level(logging.WARNING, logger="openunmix_like.separator")
    audio = torch.from_numpy(raw_take(1.0, 2, 4).astype(np.float32))[None]
    for options in (dict(niter=0), dict(niter=1), dict(niter=0, residual="rest")):
        caplog.clear()
        separator = Separator({"t": Gain(2.0)}, n_fft=512, n_hop=128, softmask=True, **options)
        messages = [r.getMessage() for r in caplog.records if r.name == "openunmix_like.separator"]
        assert len(messages) == 1 and messages[0].startswith("softmask with one target ('t'): the ratio mask")
        with torch.no_grad():  # what the message says
            assert snr(separator(audio)[0, 0], audio[0]) > (60 if options["niter"] == 0 else 25)
    caplog.clear()
    Separator({"a": Gain(2.0), "b": Gain(1.0)}, n_fft=512, n_hop=128, softmask=True)
    assert not [r for r in caplog.records if SOFTMASK in r.getMessage()]


def test_a_mono_model_on_a_stereo_file_and_the_documented_per_channel_recipe(mono_model, tmp_path, monkeypatch):
    """Trained with one pair of another rate and channel count; applied to a stereo file whose right
    channel is 10 dB quieter: the stereo path gives both channels one estimate, the documented recipe
    processes each channel alone."""
    left, right = raw_take(4.0, 1, 7000), 0.3 * raw_take(4.0, 1, 7001)
    raw = np.concatenate([left, right]).astype(np.float32)
    truth = chain(raw)
    work = tmp_path / "work"
    work.mkdir()
    sf.write(work / "take.wav", raw.T, RATE, subtype="FLOAT")
    (work / "my-mix-model").symlink_to(mono_model, target_is_directory=True)
    both = applied(mono_model, raw, niter=0)
    assert both.shape == raw.shape
    block = re.search(r"^```python processing\n(.*?)^```", DOCS.read_text(), flags=re.S | re.M).group(1)
    monkeypatch.chdir(work)
    exec(compile(block, str(DOCS), "exec"), {})  # noqa: S102 - our own docs
    each, rate = sf.read(work / "take-mixed.wav", dtype="float32", always_2d=True)
    assert rate == RATE and each.T.shape == raw.shape
    for c in range(2):
        assert snr(each.T[c], truth[c]) > snr(both[c], truth[c]) + 3
    assert snr(each.T[0], truth[0]) > snr(raw[0], truth[0]) + 10
    assert snr(both[1], truth[1]) < snr(raw[1], truth[1])  # the limitation the docs describe
