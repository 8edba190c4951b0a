"""What the design documents behind unet1d, unet2d, tfattn, their losses and augmentations, and the `aligned`
data set promise, as docs/architectures.md and docs/training.md state it: bad constructor arguments, any input
length, mixup's pairing, losses against independent computations, and aligned pairs that differ."""
import json
import logging
import math
import random

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from helpers import music_like, track_folders
from openunmix_like import Separator, augment, data
from openunmix_like.architectures import get
from openunmix_like.cli.export import main as export_main
from openunmix_like.cli.train import main as train_main
from openunmix_like.losses import LOSSES, Objective, mrstft, parse_loss

RATE = 22050
TRAIN = ["--nfft", "512", "--nhop", "128", "--batch-size", "2", "--seq-dur", "0.5", "--sample-rate", str(RATE),
         "--quiet", "--epochs", "1", "--device", "cpu"]


# ---------------------------------------------------------------- --arch-args values no model can use


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return track_folders(tmp_path_factory.mktemp("data"), tracks=1, seconds=1.0)


@pytest.mark.parametrize("arch,assignment,named", [
    ("unet1d", "stride=0", "stride"),
    ("unet1d", "nb_layers=0", "nb_layers"),
    ("unet1d", "hidden_size=0", "hidden_size"),
    ("unet1d", "kernel_size=2", "kernel_size"),
    ("unet1d", "nb_channels=3", "--nb-channels"),
    ("unet2d", "nb_layers=0", "nb_layers"),
    ("unet2d", "dropout=1.5", "dropout"),
    ("unet2d", "max_bin=300", "max_bin"),
    ("unet2d", "nb_bins=100", "--nfft"),
    ("tfattn", "window_size=0", "window_size"),
    ("tfattn", "patch_size=0", "patch_size"),
    ("tfattn", "num_heads=3,3,3,3", "num_heads"),
    ("tfattn", "mlp_ratio=nan", "mlp_ratio"),
    ("tfattn", "depths=", "depths"),
])
def test_arch_args_no_model_can_use_stop_in_one_line_naming_them(tmp_path, capsys, small_root, arch, assignment,
                                                                   named):
    out = tmp_path / "o"
    code = train_main(["--dataset", "trackfolder_fix", "--root", str(small_root), "--target-file", "vocals.wav",
                       "--interferer-files", "drums.wav", "--output", str(out), "--arch", arch,
                       "--arch-args", assignment, *TRAIN])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("umx-train: error:") and "\n" not in err and "Traceback" not in err, err
    assert named in err
    assert not out.exists()


@pytest.mark.parametrize("arch,kwargs,named", [
    ("unet1d", dict(stride=0), "stride"), ("unet1d", dict(nb_layers=0), "nb_layers"),
    ("unet2d", dict(nb_bins=513, nb_layers=0), "nb_layers"), ("tfattn", dict(window_size=0), "window_size"),
    ("tfattn", dict(hidden_size=6, num_heads=(4, 4, 4, 4)), "num_heads"),
])
def test_constructors_refuse_bad_arguments_by_name(arch, kwargs, named):
    with pytest.raises(ValueError, match=named):
        get(arch).build(**kwargs)


# ---------------------------------------------------------------- unet1d: any length


def test_unet1d_kernels_longer_than_twice_the_stride_take_any_length():
    torch.manual_seed(0)
    model = get("unet1d").build(nb_channels=1, hidden_size=2, nb_layers=3, kernel_size=12, stride=4).eval()
    for length in (1, 2, 5, 17, 63, 64, 65, 1001):
        x = torch.randn(2, 1, length)
        with torch.no_grad():
            y = model(x)
        assert y.shape == x.shape, length
        ratio = y / x
        assert torch.all((ratio >= 0) & (ratio <= 1 + 1e-6)), length  # still a mask on the input


def test_unet1d_mono_single_sample_is_finite():
    torch.manual_seed(0)
    model = get("unet1d").build(nb_channels=1, hidden_size=2, nb_layers=2).eval()
    with torch.no_grad():
        y = model(torch.full((1, 1, 1), 0.3))
    assert torch.isfinite(y).all() and 0 <= float(y) <= 0.3


# ---------------------------------------------------------------- losses against independent computations


def magnitudes(audio, n_fft, n_hop):
    """|STFT|, written out: centred with n_fft / 2 zeros each side, periodic Hann, one-sided."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    padded = np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(n_fft // 2, n_fft // 2)])
    count = 1 + (padded.shape[-1] - n_fft) // n_hop
    frames = np.stack([padded[..., t * n_hop : t * n_hop + n_fft] * window for t in range(count)], axis=-1)
    return np.abs(np.fft.rfft(frames, axis=-2))


def test_mrstft_matches_its_written_definition():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((2, 2, 5000)) * 0.3
    est = ref + 0.2 * rng.standard_normal(ref.shape)
    expected = 0.0
    for n_fft in (2048, 1024, 512):
        a, b = magnitudes(est, n_fft, n_fft // 4), magnitudes(ref, n_fft, n_fft // 4)
        expected += np.abs(a - b).mean() + np.abs(np.log(a + 1e-5) - np.log(b + 1e-5)).mean()
    got = float(mrstft(torch.from_numpy(est), torch.from_numpy(ref)))
    assert got == pytest.approx(expected / 3, rel=1e-6)


def test_magnitude_l1_is_the_mean_l11_mask_loss_and_wavl1_the_sample_mean():
    rng = np.random.default_rng(4)
    mix, target, mask = rng.random((2, 2, 65, 9)), rng.random((2, 2, 65, 9)), rng.random((2, 2, 65, 9))
    expected = np.abs(mask * mix - target).sum() / mix.size  # ||mask * X - Y||_1,1, as a mean
    got = LOSSES["l1"][1](torch.from_numpy(mask * mix), torch.from_numpy(target))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    a, b = rng.standard_normal((2, 1, 300)), rng.standard_normal((2, 1, 300))
    assert float(LOSSES["wavl1"][1](torch.from_numpy(a), torch.from_numpy(b))) == pytest.approx(np.abs(a - b).mean())


def test_sdr_frames_are_44100_samples_whatever_the_rate():
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((1, 2, 2 * 44100 + 1000))
    est = ref + np.linspace(0.1, 1.0, ref.shape[-1]) * rng.standard_normal(ref.shape)
    scores = []
    for lo, hi in ((0, 44100), (44100, ref.shape[-1])):  # the last frame takes the remainder
        s, e = ref[..., lo:hi], est[..., lo:hi]
        power, error = (s ** 2).mean(), ((s - e) ** 2).mean()
        scores.append(10 * np.log10(power / (error + 1e-3 * power)))
    got = float(LOSSES["sdr"][1](torch.from_numpy(est), torch.from_numpy(ref)))
    assert got == pytest.approx(-np.mean(scores), abs=1e-6)


# ---------------------------------------------------------------- excerpts shorter than half a window


@pytest.mark.parametrize("arch,kwargs", [
    ("umx", dict(nb_bins=257, hidden_size=8, max_bin=128)),
    ("unet1d", dict(hidden_size=2, nb_layers=2)),
    ("tfattn", dict(nb_bins=257, hidden_size=8, depths=(1, 1), num_heads=(1, 1), window_size=2, patch_size=2)),
])
def test_losses_and_masks_take_excerpts_shorter_than_half_a_window(arch, kwargs):
    torch.manual_seed(0)
    model = get(arch).build(nb_channels=2, **kwargs)
    x = torch.from_numpy(music_like(0.01, RATE, 2))[None].repeat(2, 1, 1)  # 220 samples, n_fft 512
    y = 0.5 * x
    x, y = augment.BatchCompose.from_names(["freqmask", "timemask"], 512, 128)(x, y, torch.Generator().manual_seed(0))
    loss = Objective(parse_loss("l1+0.5*mrstft"), model.domain, 512, 128)(model, x, y)
    assert torch.isfinite(loss)
    loss.backward()


# ---------------------------------------------------------------- mixup


def test_mixup_never_blends_an_example_with_itself():
    for n in (2, 3, 5):
        for seed in range(20):
            partner = augment.derangement(n, torch.Generator().manual_seed(seed))
            assert sorted(partner) == list(range(n)) and all(p != i for i, p in enumerate(partner))
    # With prob 1, every example of a batch of two is blended with the other one.
    x = torch.stack([torch.ones(1, 50), -torch.ones(1, 50)]).double()
    for seed in range(40):
        out, _ = augment.Mixup(prob=1.0)(x, x.clone(), torch.Generator().manual_seed(seed))
        # out[0] = lam0 - (1 - lam0), out[1] = -lam1 + (1 - lam1): solve for the weights of the examples' own.
        lam = torch.stack([(out[0, 0, 0] + 1) / 2, (1 - out[1, 0, 0]) / 2])
        assert torch.all(lam < 1), seed
    # The share of examples mixed is the probability (1/2), not less.
    changed = 0
    for seed in range(200):
        out, _ = augment.Mixup()(x, x.clone(), torch.Generator().manual_seed(seed))
        changed += int((out[:, 0, 0].abs() < 1 - 1e-6).sum())
    assert 0.42 < changed / 400 < 0.58


# ---------------------------------------------------------------- aligned pairs that differ


def common(**kw):
    return dict(dict(seq_duration=1.0, sample_rate=RATE, nb_channels=2), **kw)


def tones(seconds, rate):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1310 * t + 1.0)).astype(np.float32)


def test_aligned_names_the_file_shorter_than_the_excerpt(tmp_path, caplog):
    for name in ("raw", "mixed"):
        (tmp_path / "train" / name).mkdir(parents=True)
    # t0: the output is short, t1: the input is short, t2: both are long enough.
    for k, (inp, out) in enumerate(((2.0, 0.5), (0.5, 2.0), (2.0, 2.0))):
        sf.write(tmp_path / "train" / "raw" / f"t{k}.wav", tones(inp, RATE), RATE)
        sf.write(tmp_path / "train" / "mixed" / f"t{k}.wav", tones(out, RATE), RATE)
    sf.write(tmp_path / "train" / "mixed" / "stray.wav", tones(2.0, RATE), RATE)
    with caplog.at_level(logging.WARNING, logger="openunmix_like.data"):
        ds = data.AlignedDataset(tmp_path, "train", "raw", "mixed", **common())
    assert [a.path.name for a, _ in ds.pairs] == ["t2.wav"]
    lines = caplog.text.splitlines()
    assert any(line.strip().startswith(str(tmp_path / "train" / "mixed" / "t0.wav") + ": shorter") for line in lines)
    assert any(line.strip().startswith(str(tmp_path / "train" / "raw" / "t1.wav") + ": shorter") for line in lines)
    assert not any(str(tmp_path / "train" / "raw" / "t0.wav") in line for line in lines)
    assert f"{tmp_path / 'train' / 'mixed' / 'stray.wav'}: no {tmp_path / 'train' / 'raw' / 'stray.wav'}" in caplog.text


@pytest.mark.slow
def test_aligned_pairs_of_other_rates_channels_and_lengths_start_together(tmp_path):
    # The same tones: input mono at 44.1 kHz, 2 s; output stereo at 22.05 kHz, 3 s (a longer tail).
    folder = tmp_path / "train" / "song"
    folder.mkdir(parents=True)
    sf.write(folder / "raw.wav", tones(2.0, 44100), 44100)
    sf.write(folder / "mixed.wav", np.stack([tones(3.0, RATE)] * 2, axis=1), RATE)
    ds = data.AlignedDataset(tmp_path, "train", "raw.wav", "mixed.wav", **common())
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        x, y = ds[0]
        assert x.shape == y.shape == (2, RATE)
        inner = slice(200, -200)  # away from the resampling filter's edges
        assert torch.allclose(x[:, inner], y[:, inner], atol=2e-3)
    whole = data.AlignedDataset(tmp_path, "train", "raw.wav", "mixed.wav", **common(seq_duration=None))
    x, y = whole[0]
    assert x.shape == y.shape == (2, 2 * RATE)  # cut to the shorter


def test_aligned_empty_split_says_what_it_looked_for(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(data.DatasetError, match="neither a folder .*raw nor track folders holding raw"):
        data.AlignedDataset(tmp_path, "train", "raw", "mixed", **common())


# ---------------------------------------------------------------- masks: what the aligned docs warn about


class Double(nn.Module):
    domain = "magnitude"

    def __init__(self):
        super().__init__()
        self.nb_bins, self.nb_channels = 257, 2

    def forward(self, x):
        return 2 * x


def test_a_louder_estimate_needs_niter_0():
    audio = torch.from_numpy(music_like(0.5, RATE, 2))[None]
    plain = Separator({"t": Double()}, n_fft=512, n_hop=128, niter=0)(audio)[0, 0]
    assert torch.allclose(plain, 2 * audio[0], atol=1e-5)
    filtered = Separator({"t": Double()}, n_fft=512, n_hop=128, niter=1)(audio)[0, 0]
    assert filtered.abs().max() < audio.abs().max()
    # The sigmoid masks of unet2d and unet1d only attenuate.
    torch.manual_seed(0)
    for arch, x in (("unet2d", torch.rand(1, 2, 257, 20)), ("unet1d", torch.randn(1, 2, 3000))):
        model = get(arch).build(**({"nb_bins": 257, "nb_layers": 3} if arch == "unet2d" else {"nb_layers": 3}),
                                hidden_size=4).eval()
        with torch.no_grad():
            assert torch.all(model(x).abs() <= x.abs() + 1e-6)


# ---------------------------------------------------------------- the round trip, on aligned mono pairs


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_aligned_mono_unet1d_with_a_long_kernel_trains_separates_and_exports(tmp_path):
    for split in ("train", "valid"):
        for k in range(2):
            raw = music_like(1.0 + 0.013 * k, RATE, 2, seed=k + (5 if split == "valid" else 0))
            for name, audio in (("raw", raw), ("mixed", 0.5 * raw)):
                (tmp_path / "al" / split / name).mkdir(parents=True, exist_ok=True)
                sf.write(tmp_path / "al" / split / name / f"take{k}.wav", audio.T, RATE)
    out = tmp_path / "model"
    assert train_main(["--dataset", "aligned", "--root", str(tmp_path / "al"), "--input-file", "raw",
                       "--output-file", "mixed", "--nb-channels", "1", "--arch", "unet1d", "--hidden-size", "2",
                       "--arch-args", "nb_layers=2", "kernel_size=12", "--output", str(out), *TRAIN]) == 0
    record = json.loads((out / "mixed.json").read_text())
    assert record["model_args"] == {"nb_channels": 1, "hidden_size": 2, "nb_layers": 2, "kernel_size": 12,
                                    "stride": 4}
    sep = Separator.from_pretrained(out, niter=0)
    for length in (7, 3001):  # shorter than one window, and odd
        audio = torch.from_numpy(music_like(length / RATE + 1e-9, RATE, 2))[None]
        assert audio.shape[-1] == length
        stems = sep(audio)
        assert stems.shape == (1, 1, 2, length) and torch.isfinite(stems).all()
    assert export_main([str(out), "--format", "torchscript", "--outdir", str(tmp_path / "ts")]) == 0
    traced = torch.jit.load(str(tmp_path / "ts" / "mixed.pt"))
    x = torch.randn(2, 1, 4001)
    assert torch.allclose(traced(x), sep.target_models["mixed"](x), atol=1e-5 * float(x.abs().max()))


@pytest.mark.slow
def test_source_augmentations_follow_the_seed_epoch_and_index(tmp_path):
    root = track_folders(tmp_path / "d", tracks=2, seconds=1.0)
    chain = augment.Compose.from_names(["volume", "timestretch", "pitchshift"])
    make = lambda: data.FixedSourcesTrackFolderDataset(  # noqa: E731
        root, "train", target_file="vocals.wav", interferer_files=["drums.wav"], seq_duration=0.3,
        sample_rate=RATE, nb_channels=2, source_augmentations=chain, seed=7)
    a, b = make(), make()
    b.set_epoch(0)
    assert torch.equal(a[1][0], b[1][0]) and torch.equal(a[1][1], b[1][1])
    b.set_epoch(1)
    assert not torch.equal(a[1][1], b[1][1])
    # volume's range, drawn from the rng the data set passes in.
    gains = [float(augment.volume(torch.ones(1, 1), random.Random(s))) for s in range(300)]
    assert 0.7 <= min(gains) and max(gains) < 1.3 and math.isclose(np.mean(gains), 1.0, abs_tol=0.03)


def test_aligned_refuses_source_augmentations_in_one_line(tmp_path):
    """A source augmentation would change one file of a pair: umx-train stops before reading data."""
    import subprocess
    import sys

    out = tmp_path / "model"
    done = subprocess.run([sys.executable, "-m", "openunmix_like.cli.train", "--dataset", "aligned",
                           "--root", str(tmp_path / "nowhere"), "--input-file", "raw.wav", "--output-file",
                           "mixed.wav", "--source-augmentations", "gain", "mixup", "--output", str(out)],
                          capture_output=True, text=True)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--source-augmentations gain" in lines[0] and "aligned" in lines[0], done.stderr
    assert not out.exists()
