"""umx-train does what the training guide and the reference recipe do: the target's name, the input
statistics, what a mono model learns from, augmentation of whole tracks, and the saved record."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import NAMES, RATE, music_like, track_folders, write
from openunmix_like import augment, data
from openunmix_like.cli.train import main as train_main
from openunmix_like.losses import Objective, parse_loss
from openunmix_like.training import TrainConfig, build_datasets, build_model, check_options, prepare, validate

N_FFT, N_HOP = 512, 128
TINY = dict(dataset="trackfolder_fix", target_file="vocals.wav", interferer_files=["drums.wav", "bass.wav"],
            batch_size=2, seq_dur=0.5, hidden_size=8, nfft=N_FFT, nhop=N_HOP, sample_rate=RATE, quiet=True,
            device="cpu")


def wide_stereo_tracks(root, tracks=2, seconds=2.0):
    """Track folders whose channels differ (panned and delayed), so a waveform downmix loses energy."""
    for split in ("train", "valid"):
        for t in range(tracks):
            for k, name in enumerate(NAMES[:3]):
                audio = music_like(seconds, RATE, 2, seed=100 * t + k + (50 if split == "valid" else 0))
                audio[1] = np.roll(audio[1], 23 * (k + 1)) * (0.3 + 0.3 * k)
                path = root / split / f"t{t}" / f"{name}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, audio.T * 0.5, RATE, subtype="FLOAT")
    return root


def read(path):
    audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(audio.T.copy())


def magnitudes(audio):
    """Independent reference: the centred Hann STFT magnitude of ``(nb_channels, nb_timesteps)``."""
    return torch.stft(audio, N_FFT, N_HOP, window=torch.hann_window(N_FFT), center=True, pad_mode="reflect",
                      return_complex=True).abs()


# ---------------------------------------------------------------- the target's name


@pytest.mark.parametrize("options, target", [
    (dict(dataset="trackfolder_fix", target_file="drums.wav"), "drums"),
    (dict(dataset="trackfolder_var", target_file="piano.flac"), "piano"),
    (dict(dataset="aligned", input_file="noisy.wav", output_file="clean.wav"), "clean"),
    (dict(dataset="aligned", input_file="raw", output_file="mixed"), "mixed"),
    (dict(dataset="sourcefolder", target_dir="speech", interferer_dirs=["noise"]), "speech"),
    (dict(dataset="trackfolder_fix"), "vocals"),
    (dict(dataset="musdb"), "vocals"),
    (dict(dataset="trackfolder_fix", target_file="drums.wav", target="beats"), "beats"),  # given: kept
])
def test_the_target_is_named_after_its_file_when_not_given(options, target):
    assert check_options(TrainConfig(**options)).target == target


def test_a_model_trained_from_drums_wav_is_saved_as_drums(tmp_path):
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    out = tmp_path / "model"
    assert train_main([str(a) for a in [
        "--dataset", "trackfolder_fix", "--root", root, "--target-file", "drums.wav", "--interferer-files",
        "vocals.wav", "bass.wav", "--output", out, "--epochs", "1", "--hidden-size", "8", "--nfft", N_FFT,
        "--nhop", N_HOP, "--batch-size", "2", "--seq-dur", "0.5", "--sample-rate", RATE, "--quiet"]]) == 0
    assert (out / "drums.safetensors").is_file() and not list(out.glob("vocals.*"))
    assert json.loads((out / "separator.json").read_text())["targets"] == ["drums"]
    assert json.loads((out / "drums.json").read_text())["args"]["target"] == "drums"


# ---------------------------------------------------------------- input statistics


@pytest.mark.parametrize("nb_channels", [2, 1])
def test_input_statistics_are_those_of_the_whole_training_mixtures(tmp_path, nb_channels):
    """As the reference recipe: whole tracks (not one excerpt each), unaugmented, the mean magnitude
    of the channels, for mono models too."""
    root = wide_stereo_tracks(tmp_path / "data", seconds=2.0)
    cfg = TrainConfig(root=str(root), output=str(tmp_path / "m"), **dict(TINY, nb_channels=nb_channels,
                                                                         random_track_mix=True))
    train_set, _ = build_datasets(cfg)
    model, _, _ = build_model(cfg, train_set, "cpu")
    mags = []
    for track in sorted((root / "train").iterdir()):
        mixture = sum(read(track / name) for name in ("vocals.wav", "drums.wav", "bass.wav"))
        mags.append(magnitudes(mixture).double().mean(0))
    frames = torch.cat(mags, dim=1)
    mean, std = frames.mean(1), frames.std(1, unbiased=False)
    std = torch.maximum(std, 1e-4 * std.max())
    assert torch.allclose(-model.input_mean.detach().double(), mean, rtol=1e-4, atol=1e-7)
    assert torch.allclose(1 / model.input_scale.detach().double(), std, rtol=1e-3, atol=1e-7)


# ---------------------------------------------------------------- mono models


def test_a_mono_model_learns_from_the_spectral_downmix_it_separates_with(tmp_path):
    """--nb-channels 1: the model's input and target are the mean of the channels' magnitudes (as
    the separator feeds a mono model and the reference trains it), not the magnitude of the
    mean of the samples."""
    root = wide_stereo_tracks(tmp_path / "data", seconds=1.5)
    ctx = prepare(TrainConfig(root=str(root), output=str(tmp_path / "m"), **dict(TINY, nb_channels=1)))
    model = ctx.model.eval()
    expected = []
    with torch.no_grad():
        for track in sorted((root / "valid").iterdir()):
            sources = {name: read(track / name) for name in ("vocals.wav", "drums.wav", "bass.wav")}
            mix = magnitudes(sum(sources.values())).mean(0, keepdim=True)[None]
            target = magnitudes(sources["vocals.wav"]).mean(0, keepdim=True)[None]
            expected.append(float(torch.nn.functional.mse_loss(model(mix), target)))
    assert validate(ctx, 1) == pytest.approx(np.mean(expected), rel=1e-4)


def test_mono_waveform_models_are_trained_on_the_downmixed_samples():
    objective = Objective(parse_loss("wavl1"), "waveform", N_FFT, N_HOP, mono=True)
    x, y = torch.randn(2, 2, 4000), torch.randn(2, 2, 4000)

    def model(audio):
        assert audio.shape[1] == 1
        return 0.5 * audio

    expected = (0.5 * x.mean(1, keepdim=True) - y.mean(1, keepdim=True)).abs().mean()
    assert torch.allclose(objective(model, x, y), expected)


# ---------------------------------------------------------------- augmentation of whole tracks


@pytest.mark.parametrize("layout", ["trackfolder_fix", "trackfolder_var"])
def test_whole_track_training_items_are_augmented_like_excerpts(tmp_path, layout):
    """--seq-dur 0 trains on whole tracks; --source-augmentations still apply to every source."""
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    kw = dict(sample_rate=RATE, nb_channels=2, seq_duration=None, seed=3,
              source_augmentations=augment.Compose.from_names(["gain"]))
    if layout == "trackfolder_fix":
        ds = data.FixedSourcesTrackFolderDataset(root, "train", "vocals.wav", ["drums.wav"], **kw)
    else:
        ds = data.VariableSourcesTrackFolderDataset(root, "train", "vocals.wav", **kw)
    x, y = ds[0]
    vocals = read(root / "train" / "t0" / "vocals.wav")
    gain = float((y * vocals).sum() / vocals.square().sum())
    assert 0.25 <= gain < 1.25 and abs(gain - 1.0) > 1e-3
    assert torch.allclose(y, gain * vocals, atol=1e-6)


# ---------------------------------------------------------------- silent targets


def test_a_silent_target_mixed_with_a_track_without_interferers_is_not_a_crash(tmp_path):
    """trackfolder_var with --silence-missing-targets --random-interferer-mix: a track without the
    target may draw an a-cappella track (no interferers); the item keeps its own interferers."""
    root = tmp_path / "data"
    write(root / "train" / "a" / "piano.wav", 1.0, seed=1)  # no vocals.wav: a silent target
    write(root / "train" / "b" / "vocals.wav", 1.0, seed=2)  # only the target
    ds = data.VariableSourcesTrackFolderDataset(root, "train", "vocals.wav", silence_missing_targets=True,
                                                random_interferer_mix=True, sample_rate=RATE, nb_channels=2,
                                                seq_duration=0.5, seed=0, source_augmentations=None)
    piano = read(root / "train" / "a" / "piano.wav")
    for epoch in range(8):  # several draws of the random track for item 0
        ds.set_epoch(epoch)
        x, y = ds[0]
        assert x.shape == y.shape == (2, RATE // 2)
        assert not y.any() and x.abs().sum() > 0
        # the mixture is an excerpt of the track's own piano
        starts = [i for i in range(piano.shape[-1] - RATE // 2 + 1) if torch.equal(piano[:, i:i + RATE // 2], x)]
        assert starts


# ---------------------------------------------------------------- the record


@pytest.mark.parametrize("given, saved", [(None, []), (["gain", "channelswap"], ["gain", "channelswap"])])
def test_the_saved_args_name_the_augmentations_used(tmp_path, given, saved):
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    cfg = TrainConfig(root=str(root), output=str(tmp_path / "m"), epochs=1, source_augmentations=given, **TINY)
    from openunmix_like.training import run

    run(cfg)
    args = json.loads((tmp_path / "m" / "vocals.json").read_text())["args"]
    assert args["source_augmentations"] == saved


@pytest.mark.parametrize("dataset, names", [
    ("musdb", ["gain", "channelswap"]), ("slakh", ["gain", "channelswap"]), ("dsd100", ["gain", "channelswap"]),
    ("trackfolder_fix", []), ("trackfolder_var", []), ("sourcefolder", []), ("aligned", [])])
def test_default_source_augmentations_are_the_guides_for_each_layout(dataset, names):
    """The training guide (and the reference recipe) default to gain and channelswap for MUSDB18 only; the folder
    layouts are not augmented unless --source-augmentations names some."""
    assert TrainConfig(dataset=dataset).augmentation_names() == names
