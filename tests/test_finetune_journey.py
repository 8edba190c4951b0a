"""Fine-tuning a published model on one's own data, then checking it is better: umx-train --model, the folder
it writes, umx-compare of the two evaluations.

The published model is a stand-in laid out as published (``<target>-<sha256 prefix>.pth`` plain state dicts in
the cache, no JSON), small: ``tinyhq``, entered in the table of published models for the test.
"""
import hashlib
import io
import json

import pytest
import torch

import openunmix_like.pretrained as pretrained
from helpers import RATE, track_folders
from openunmix_like.architectures import architecture_of
from openunmix_like.cli import compare
from openunmix_like.cli.train import main as train_main
from openunmix_like.cli.train import parse_args
from openunmix_like.evaluate import METRICS
from openunmix_like.model import OpenUnmix
from openunmix_like.training import TrainConfig, build_datasets, build_model, check_options

TINY = dict(nb_bins=257, nb_channels=2, hidden_size=8, max_bin=64)  # n_fft 512; bins up to 2713 Hz at 22050 Hz
COMMON = ["--target", "vocals", "--dataset", "trackfolder_fix", "--batch-size", "2", "--seq-dur", "0.5",
          "--quiet"]


@pytest.fixture
def tinyhq(tmp_path, monkeypatch):
    """Publish a four-target ``tinyhq`` into a fresh cache; returns the cache folder and the file names."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(pretrained.CACHE_ENV, str(cache))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, "http://127.0.0.1:9")  # nothing to download from
    files = {}
    for k, target in enumerate(("vocals", "drums", "bass", "other")):
        torch.manual_seed(k)
        model = OpenUnmix(**TINY)
        with torch.no_grad():
            model.input_mean.normal_(-1.0, 0.1)  # statistics a fine-tune must keep
            model.input_scale.uniform_(0.5, 2.0)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        files[target] = f"{target}-{hashlib.sha256(buffer.getvalue()).hexdigest()[:8]}.pth"
        (cache / "tinyhq").mkdir(parents=True, exist_ok=True)
        (cache / "tinyhq" / files[target]).write_bytes(buffer.getvalue())
    table = {"tinyhq": {"url": "http://unused.invalid/{file}", "sample_rate": RATE, "nfft": 512, "nhop": 128,
                        "nb_channels": 2, "files": files}}
    monkeypatch.setattr(pretrained, "pretrained_table", lambda: table)
    return cache, files


@pytest.mark.parametrize("options, message", [
    (["--nfft", "1024"], "--nfft 1024: --model tinyhq has an STFT of 512 samples, and fine-tuning keeps that; "
                         "drop --nfft"),
    (["--nhop", "256"], "--nhop 256: --model tinyhq has an STFT hop of 128 samples"),
    (["--nb-channels", "1"], "--nb-channels 1: --model tinyhq has 2 channel(s)"),
    (["--sample-rate", "44100"], "--sample-rate 44100: --model tinyhq works at 22050 Hz"),
    (["--bandwidth", "2000"], "--bandwidth 2000: --model tinyhq feeds 64 of 257 bins (up to 2713.18 Hz)"),
    (["--unidirectional"], "--unidirectional: --model tinyhq has a bidirectional LSTM in its 'vocals' model"),
    (["--arch", "unet2d"], "--model tinyhq: its 'vocals' model is a 'umx' model"),
    (["--target", "guitar"], "model 'tinyhq' has no target(s) guitar; available: vocals, drums, bass, other"),
])
def test_options_contradicting_the_model_are_one_line_before_any_data_is_read(tinyhq, tmp_path, capsys, options,
                                                                               message):
    # --root does not exist: an option checked only after the data was read would fail on that instead
    args = ["--model", "tinyhq", *COMMON, "--root", str(tmp_path / "nowhere"), "--output", str(tmp_path / "ft")]
    assert train_main(args + options) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"umx-train: error: {message}") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ft").exists()


def test_a_missing_download_and_a_taken_output_are_said_before_any_data_is_read(tinyhq, tmp_path, capsys):
    cache, files = tinyhq
    nowhere = ["--root", str(tmp_path / "nowhere")]
    (cache / "tinyhq" / files["vocals"]).rename(tmp_path / files["vocals"])
    assert train_main(["--model", "tinyhq", *COMMON, *nowhere, "--output", str(tmp_path / "ft")]) == 1
    err = capsys.readouterr().err
    assert f"fetch http://127.0.0.1:9/{files['vocals']} and put the files in {cache / 'tinyhq'}" in err
    (tmp_path / files["vocals"]).rename(cache / "tinyhq" / files["vocals"])
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "vocals.chkpnt").write_bytes(b"")
    assert train_main(["--model", "tinyhq", *COMMON, *nowhere, "--output", str(taken)]) == 1
    assert "already holds a 'vocals' model (vocals.chkpnt)" in capsys.readouterr().err


def test_fine_tune_takes_the_models_settings_and_statistics_and_records_its_source(tinyhq, tmp_path):
    cache, files = tinyhq
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    published = pretrained.load_models("tinyhq", ["vocals"])[0]["vocals"]
    # No --sample-rate, --nfft, --nhop or --bandwidth: the model's (the defaults, 44100 Hz and 4096, are not)
    cfg = check_options(TrainConfig(**{k: v for k, v in vars(parse_args(
        ["--model", "tinyhq", *COMMON, "--root", str(root), "--hidden-size", "12"])).items()
        if k in TrainConfig.__dataclass_fields__}))
    assert (cfg.sample_rate, cfg.nb_channels, cfg.nfft, cfg.nhop) == (RATE, 2, 512, 128)
    model, _, resolved = build_model(cfg, build_datasets(cfg)[0], torch.device("cpu"))
    assert torch.equal(model.input_mean, published.input_mean)  # kept, not recomputed from the data
    assert resolved.hidden_size == 12 and architecture_of(model).name == "umx"
    mix = torch.rand(2, 2, 257, 20)
    with torch.no_grad():  # widened: the same output before any training
        torch.testing.assert_close(model.eval()(mix), published(mix), rtol=1e-5, atol=1e-6)

    out = tmp_path / "ft"
    assert train_main(["--model", "tinyhq", *COMMON, "--root", str(root), "--output", str(out), "--epochs", "1"]) == 0
    source = {"file": files["vocals"],
              "sha256": hashlib.sha256((cache / "tinyhq" / files["vocals"]).read_bytes()).hexdigest()}
    args = json.loads((out / "vocals.json").read_text())["args"]
    assert (args["sample_rate"], args["nfft"], args["nhop"]) == (RATE, 512, 128)
    assert args["bandwidth"] == pytest.approx(63 * RATE / 512)  # what the model's 64 bins reach, not 16000
    assert (args["model"], args["model_source"]) == ("tinyhq", source)
    # Resumed (here without --model): the record still says where the weights started
    assert train_main([*COMMON, "--root", str(root), "--output", str(out), "--epochs", "2", "--resume", "auto",
                       "--sample-rate", str(RATE), "--nfft", "512", "--nhop", "128", "--hidden-size", "8",
                       "--bandwidth", "2714"]) == 0
    record = json.loads((out / "vocals.json").read_text())
    assert record["epochs_trained"] == 2
    assert (record["args"]["model"], record["args"]["model_source"]) == ("tinyhq", source)


def track_record(scores, settings):
    """A umx-evaluate track record: target -> SDR of its one window (the other metrics equal)."""
    return {"targets": [{"name": name, "frames": [{"time": 0.0, "duration": 1.0,
                                                    "metrics": dict.fromkeys(METRICS, value)}]}
                        for name, value in scores.items()],
            "model_sha256": "0" * 64, "settings": settings}


def test_compare_says_when_the_two_separated_other_targets_or_used_other_settings(tmp_path, capsys):
    base = {"targets": None, "residual": None, "niter": 1, "wiener_win_len": 300}
    four = dict.fromkeys(("vocals", "drums", "bass", "other"), 1.0)
    for name, scores, settings in (("ft", {"vocals": 2.0}, base),
                                   ("hq", four, base),
                                   ("hq-vocals", {"vocals": 1.0}, dict(base, targets=["vocals"])),
                                   ("hq-niter0", four, dict(base, niter=0))):
        (tmp_path / name).mkdir()
        for track in ("a", "b", "c"):
            (tmp_path / name / f"{track}.json").write_text(json.dumps(track_record(scores, settings)))

    assert compare.main([str(tmp_path / "ft"), str(tmp_path / "hq")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    notes = [line for line in lines if line.startswith("Separated different targets")]
    assert notes == [f"Separated different targets ({tmp_path / 'ft'}: vocals; {tmp_path / 'hq'}: vocals, drums, "
                     "bass, other): only those both scored are compared, and their estimates differ even from the "
                     "same model (the Wiener filter shares the mixture among the targets separated); evaluate both "
                     "with the same --targets."]
    assert not any(line.startswith("Evaluated with different settings") for line in lines)
    # The same targets separated (a vocals model, and the four-target model with --targets vocals): no note
    assert compare.main([str(tmp_path / "ft"), str(tmp_path / "hq-vocals")]) == 0
    out = capsys.readouterr().out
    assert "ft is better" in out and "Separated different" not in out and "different settings" not in out
    assert compare.main([str(tmp_path / "hq"), str(tmp_path / "hq-niter0")]) == 0
    assert (f"Evaluated with different settings ({tmp_path / 'hq'} / {tmp_path / 'hq-niter0'}): niter 1 / 0; the "
            "difference is not the models' alone.") in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("several", [False, True])
def test_the_starting_model_is_validated_and_kept_until_an_epoch_beats_it(tinyhq, tmp_path, caplog, several):
    from safetensors.torch import load_file

    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    published = pretrained.load_models("tinyhq", ["vocals"])[0]["vocals"].state_dict()
    out = tmp_path / "ft"
    which = ["--targets", "vocals", "drums"] if several else ["--target", "vocals"]
    common = [c for c in COMMON if c not in ("--target", "vocals", "--quiet")]
    # A learning rate so large that every epoch is worse than the model it started from.
    caplog.set_level("INFO", logger="openunmix_like")
    assert train_main(["--model", "tinyhq", *which, *common, "--root", str(root), "--output", str(out),
                       "--epochs", "2", "--lr", "10"]) == 0
    record = json.loads((out / "vocals.json").read_text())
    start = record["start_valid_loss"]
    assert start is not None and all(v > start for v in record["valid_loss_history"])
    assert record["best_epoch"] == 0 and record["best_loss"] == pytest.approx(start)
    kept = load_file(str(out / "vocals.safetensors"))
    assert all(torch.equal(kept[k], v) for k, v in published.items())  # the starting weights, not epoch 1's
    assert "vocals: the starting model (tinyhq) has a validation loss of" in caplog.text
    # With a learning rate that trains, an epoch beats it and replaces it.
    assert train_main(["--model", "tinyhq", *which, *common, "--root", str(root), "--output", str(tmp_path / "ft2"),
                       "--epochs", "4", "--lr", "3e-3", "--samples-per-track", "8"]) == 0
    record = json.loads((tmp_path / "ft2" / "vocals.json").read_text())
    losses = [record["start_valid_loss"], *record["valid_loss_history"]]
    assert record["best_epoch"] == losses.index(min(losses)) > 0
