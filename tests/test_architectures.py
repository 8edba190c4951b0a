"""The architectures: shapes, domains, model folders, the Separator, and training each one end to end."""
import json
import re
from pathlib import Path

import pytest
import torch

from helpers import TINY_ARGS, Identity, music_like, tiny, tiny_folder, track_folders
from openunmix_like import ModelError, Separator, separate
from openunmix_like.architectures import ARCHITECTURES, PRESETS, get
from openunmix_like.architectures.tfattn import WindowAttention
from openunmix_like.audio import resample
from openunmix_like.cli.train import main as train_main
from openunmix_like.cli.train import parse_args
from openunmix_like.modeldir import AudioSettings, load_model_dir

# Tiny versions of every architecture (helpers.TINY_ARGS) through umx-train's options.
TINY_FLAGS = {
    "umx": ["--hidden-size", "8"],
    "unet2d": ["--hidden-size", "4", "--arch-args", "nb_layers=3"],
    "unet1d": ["--hidden-size", "4", "--arch-args", "nb_layers=3"],
    "tfattn": ["--hidden-size", "8", "--arch-args", "depths=1,2", "num_heads=1,2", "window_size=4", "patch_size=2"],
}


def example(model, nb_frames=20, hop=128):
    if model.domain == "waveform":
        return torch.randn(2, model.nb_channels, nb_frames * hop + 37)
    if model.domain == "complex":
        return torch.randn(2, model.nb_channels, model.nb_bins, nb_frames, 2)
    return torch.rand(2, model.nb_channels, model.nb_bins, nb_frames)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("nb_frames", [1, 13, 64])
def test_output_shape_equals_input_shape(name, nb_frames):
    model = tiny(name)
    x = example(model, nb_frames)
    with torch.no_grad():
        assert model(x).shape == x.shape


def test_unet2d_masks_the_magnitude_below_max_bin():
    model = tiny("unet2d")
    assert model.max_bin == 256  # 257 bins: the Nyquist bin is dropped, as in Jansson et al. (2017)
    x = torch.rand(1, 2, 257, 30)
    with torch.no_grad():
        y = model(x)
    assert torch.all(y >= 0) and torch.all(y <= x + 1e-7)
    assert torch.all(y[:, :, 256] == 0)


def test_unet2d_seed_preset_sizes():
    model = get("unet2d").build(nb_bins=513, nb_channels=1)
    assert model.max_bin == 512 and model.factor == 64
    with torch.no_grad():
        assert model(torch.rand(1, 1, 513, 128)).shape == (1, 1, 513, 128)
    preset = PRESETS["unet2d-8k"]
    frames = int(round(preset["seq_dur"] * preset["sample_rate"])) // preset["nhop"] + 1
    assert (preset["sample_rate"], preset["nfft"], preset["nhop"], frames) == (8192, 1024, 768, 128)


def test_unet1d_is_a_time_domain_mask():
    model = tiny("unet1d")
    for length in (1, 7, 64, 1000, 4097):
        x = torch.randn(1, 2, length)
        with torch.no_grad():
            y = model(x)
        assert y.shape == x.shape
        ratio = y / x
        assert torch.all((ratio >= 0) & (ratio <= 1 + 1e-6))
    # Masks do not depend on the level: the input is normalised, the mask multiplies it as given.
    x = torch.randn(1, 2, 3000)
    with torch.no_grad():
        assert torch.allclose(model(3 * x), 3 * model(x), atol=1e-5)


def test_tfattn_is_a_complex_mask():
    model = tiny("tfattn")
    x = torch.randn(1, 2, 257, 21, 2)
    with torch.no_grad():
        y = model(x)
    # Every output bin is the input bin times a complex number: zero in gives zero out.
    x[:, :, 10:20] = 0
    with torch.no_grad():
        assert torch.all(model(x)[:, :, 10:20] == 0)
    assert not torch.allclose(y, x)


def test_shifted_window_attention_keeps_the_wrapped_borders_apart():
    torch.manual_seed(0)
    attn = WindowAttention(dim=4, heads=1, window=4, shift=2).eval()
    x = torch.randn(1, 8, 8, 4)
    moved = x.clone()
    moved[0, 0, 0] += 5.0
    with torch.no_grad():
        a, b = attn(x), attn(moved)
    # The cyclic shift puts token (0, 0) into one window with (7, 7); the mask must keep them apart...
    assert torch.allclose(a[0, 7, 7], b[0, 7, 7], atol=1e-6)
    # ... while (0, 0) still sees its own neighbours.
    assert not torch.allclose(a[0, 1, 1], b[0, 1, 1])
    # Without the shift, windows are independent.
    plain = WindowAttention(dim=4, heads=1, window=4, shift=0).eval()
    with torch.no_grad():
        assert torch.allclose(plain(x)[0, 4:, 4:], plain(moved)[0, 4:, 4:], atol=1e-6)


# ---------------------------------------------------------------- model folders


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_model_folder_round_trip(tmp_path, name):
    folder = tiny_folder(tmp_path, name)
    record = json.loads((folder / "vocals.json").read_text())
    assert record["architecture"] == name
    assert (folder / "vocals.pth").exists() == (name == "umx")  # the reference package only builds umx
    models, settings = load_model_dir(folder)
    original = tiny(name, seed=0)
    assert type(models["vocals"]) is type(original)
    assert models["vocals"].config == original.config
    for key, value in original.state_dict().items():
        assert torch.equal(models["vocals"].state_dict()[key], value), key
    assert settings == AudioSettings(22050, 512, 128, 2)


def test_folder_without_architecture_is_umx(model_dir):
    folder = model_dir()
    for target in ("vocals", "drums", "bass", "other"):
        record = json.loads((folder / f"{target}.json").read_text())
        del record["architecture"]
        (folder / f"{target}.json").write_text(json.dumps(record))
    models, _ = load_model_dir(folder)
    assert models["vocals"].config.hidden_size == 16


def test_unknown_architecture_and_missing_arguments_are_refused(tmp_path):
    folder = tiny_folder(tmp_path, "unet2d")
    record = json.loads((folder / "vocals.json").read_text())
    (folder / "vocals.json").write_text(json.dumps(dict(record, architecture="transformer9")))
    with pytest.raises(ModelError, match="unknown architecture 'transformer9'; known: umx, unet2d, unet1d, tfattn"):
        load_model_dir(folder)
    (folder / "vocals.json").write_text(json.dumps({k: v for k, v in record.items() if k != "model_args"}))
    with pytest.raises(ModelError, match="needs its model_args"):
        load_model_dir(folder)
    (folder / "vocals.json").write_text(json.dumps(dict(record, model_args=dict(record["model_args"], hidden_size=8))))
    with pytest.raises(ModelError, match="vocals.*shape"):
        load_model_dir(folder)


# ---------------------------------------------------------------- the separator


@pytest.mark.parametrize("domain", ["complex", "waveform"])
def test_every_domain_reaches_the_wiener_filter_as_the_same_magnitude(domain):
    audio = torch.from_numpy(music_like(0.5, 22050, 2))[None]
    kw = dict(n_fft=512, n_hop=128, niter=1, residual="rest")
    reference = Separator({"t": Identity("magnitude")}, **kw)(audio)
    other = Separator({"t": Identity(domain)}, **kw)(audio)
    assert torch.allclose(other, reference, atol=1e-5 * float(audio.abs().max()))


@pytest.mark.parametrize("domain", ["complex", "waveform"])
def test_mono_models_of_other_domains_see_the_downmix(domain):
    audio = torch.from_numpy(music_like(0.5, 22050, 2))[None]
    seen = []

    class Spy(Identity):
        def forward(self, x):
            seen.append(x)
            return super().forward(x)

    sep = Separator({"t": Spy(domain, nb_channels=1)}, n_fft=512, n_hop=128, nb_channels=1, niter=0)
    assert sep(audio).shape == (1, 1, 2, audio.shape[-1])
    downmix = audio.mean(dim=1, keepdim=True)
    if domain == "waveform":
        assert torch.allclose(seen[0], downmix)
    else:
        assert torch.allclose(torch.view_as_complex(seen[0]), sep.stft(downmix), atol=1e-5)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_separator_loads_and_separates_every_architecture(tmp_path, name):
    folder = tiny_folder(tmp_path, name)
    sep = Separator.from_pretrained(folder, niter=1)
    audio = torch.from_numpy(music_like(1.2, 44100, 2))
    stems = separate(audio, 44100, model=sep, segment=0.5, overlap=0.2)
    assert sorted(stems) == ["drums", "vocals"]
    for stem in stems.values():
        assert stem.shape == audio.shape and torch.isfinite(stem).all()
    mono = separate(audio[0], 44100, model=sep)
    assert mono["vocals"].shape == audio[0].shape


def test_unet2d_at_8192_hz_separates_audio_at_other_rates(tmp_path):
    folder = tiny_folder(tmp_path, "unet2d", AudioSettings(8192, 1024, 768, 1), targets=("vocals",))
    sep = Separator.from_pretrained(folder, residual="accompaniment")
    assert (sep.sample_rate, sep.n_fft, sep.n_hop) == (8192, 1024, 768)
    audio = torch.from_numpy(music_like(2.0, 44100, 2))
    stems = separate(audio, 44100, model=sep)
    assert stems["vocals"].shape == stems["accompaniment"].shape == audio.shape
    # Vocals and the residual add up to the mixture as the model hears it (below 4096 Hz).
    heard = resample(resample(audio, 44100, 8192), 8192, 44100)
    error = (stems["vocals"] + stems["accompaniment"] - heard).square().sum()
    assert error < 0.01 * heard.square().sum()


# ---------------------------------------------------------------- training


TRAIN = ["--nfft", "512", "--nhop", "128", "--batch-size", "2", "--seq-dur", "0.5", "--sample-rate", "22050",
         "--quiet", "--epochs", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_each_architecture_trains_saves_reloads_and_separates(tmp_path, name):
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    out = tmp_path / "model"
    code = train_main(["--dataset", "trackfolder_fix", "--root", str(root), "--target-file", "vocals.wav",
                       "--interferer-files", "drums.wav", "bass.wav", "--output", str(out), "--arch", name,
                       *TINY_FLAGS[name], *TRAIN])
    assert code == 0
    record = json.loads((out / "vocals.json").read_text())
    assert record["architecture"] == name and record["args"]["arch"] == name
    assert record["args"]["loss"] == get(name).default_loss
    assert record["epochs_trained"] == 1 and record["steps_trained"] == 1
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_ARGS[name].items() if k != "max_bin"}
    assert {k: record["model_args"][k] for k in expected} == expected
    sep = Separator.from_pretrained(out)
    assert sep.target_names == ["vocals"] and sep.sample_rate == 22050
    estimate = separate(torch.from_numpy(music_like(0.7, 22050, 2)), 22050, model=sep)["vocals"]
    assert estimate.shape == (2, int(0.7 * 22050)) and torch.isfinite(estimate).all()


def test_arch_args_errors_are_one_line(tmp_path, capsys):
    root = track_folders(tmp_path / "data", tracks=1, seconds=1.0)
    base = ["--dataset", "trackfolder_fix", "--root", str(root), "--target-file", "vocals.wav",
            "--interferer-files", "drums.wav", "--output", str(tmp_path / "o"), *TRAIN]
    assert train_main(base + ["--arch", "unet2d", "--arch-args", "layers=3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("umx-train: error:") and "no argument 'layers'" in err and "nb_layers" in err
    assert train_main(base + ["--arch", "tfattn", "--arch-args", "depths=1,x"]) == 1
    assert "depths=1,x" in capsys.readouterr().err
    assert train_main(base + ["--loss", "l1+0.5*mrsftf"]) == 1
    assert "unknown loss 'mrsftf'; known: mse, l1, mrstft, sisdr, sdr, wavl1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any data was read or file written


def test_presets_fill_in_what_is_not_given():
    args = parse_args(["--preset", "unet2d-8k"])
    assert (args.arch, args.sample_rate, args.nb_channels, args.nfft, args.nhop, args.loss) == \
        ("unet2d", 8192, 1, 1024, 768, "l1")
    assert args.seq_dur == pytest.approx(127 * 768 / 8192)
    args = parse_args(["--preset", "unet2d-8k", "--nhop", "512", "--loss", "mse"])
    assert (args.nhop, args.loss, args.nfft) == (512, "mse", 1024)
    assert parse_args([]).arch == "umx" and parse_args([]).loss is None


# ---------------------------------------------------------------- the documented sizes


def documented_parameters():
    """architecture -> parameter count from the table in docs/architectures.md."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "architectures.md").read_text()
    return {m[1]: int(m[2].replace(",", "")) for m in re.finditer(r"^\| `(\w+)` \| ([\d,]+) \|", text, re.M)}


def test_documented_parameter_counts_match_the_models():
    documented = documented_parameters()
    defaults = {"umx": dict(nb_bins=2049, max_bin=1487), "unet2d": dict(nb_bins=513, nb_channels=1),
                "unet1d": {}, "tfattn": {}}
    assert sorted(documented) == sorted(ARCHITECTURES)
    for name, kw in defaults.items():
        model = get(name).build(**kw)
        assert sum(p.numel() for p in model.parameters()) == documented[name], name



@pytest.mark.slow
def test_fine_tuning_keeps_the_architecture(tmp_path, capsys):
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    data = ["--dataset", "trackfolder_fix", "--root", str(root), "--target-file", "vocals.wav",
            "--interferer-files", "drums.wav", *TRAIN]
    assert train_main(data + ["--output", str(tmp_path / "base"), "--arch", "unet1d", *TINY_FLAGS["unet1d"]]) == 0
    assert train_main(data + ["--output", str(tmp_path / "tuned"), "--model", str(tmp_path / "base")]) == 0
    base = json.loads((tmp_path / "base" / "vocals.json").read_text())
    tuned = json.loads((tmp_path / "tuned" / "vocals.json").read_text())
    assert tuned["architecture"] == "unet1d" and tuned["model_args"] == base["model_args"]
    assert tuned["args"]["loss"] == "wavl1"
    assert train_main(data + ["--output", str(tmp_path / "x"), "--model", str(tmp_path / "base"),
                              "--arch", "unet2d"]) == 1
    assert "is a 'unet1d' model" in capsys.readouterr().err
