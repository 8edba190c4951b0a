"""umx-train end to end: every dataset type, resuming, torchrun, reproducibility."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

from helpers import MUSDB_7S, aligned_pairs, require, track_folders, write
from openunmix_like import Separator
from openunmix_like.cli.separate import main as separate_main
from openunmix_like.cli.train import main as train_main
from openunmix_like.fileio import HOST_TAG
from openunmix_like.training import TrainConfig, run

TINY = ["--hidden-size", "8", "--nfft", "512", "--nhop", "128", "--batch-size", "2", "--seq-dur", "0.5",
        "--sample-rate", "22050", "--quiet"]


def train(*args) -> int:
    return train_main([str(a) for a in args] + TINY)


def separates_with(folder: Path, tmp_path: Path, targets):
    song = tmp_path / "song.wav"
    write(song, 1.0, 5, rate=22050)
    out = tmp_path / "sep"
    assert separate_main([str(song), "--model", str(folder), "--outdir", str(out), "--quiet", "--force"]) == 0
    assert sorted(p.stem for p in (out / "song").iterdir()) == sorted(targets)
    assert sf.info(str(out / "song" / f"{targets[0]}.wav")).frames == 22050


@pytest.mark.slow
def test_trackfolder_fix_trains_several_targets_into_one_folder(tmp_path):
    root = track_folders(tmp_path / "data")
    out = tmp_path / "model"
    for target in ("vocals", "drums"):
        others = [f"{n}.wav" for n in ("vocals", "drums", "bass", "other") if n != target]
        assert train("--dataset", "trackfolder_fix", "--root", root, "--target", target, "--target-file",
                     f"{target}.wav", "--interferer-files", *others, "--random-track-mix", "--output", out,
                     "--epochs", "2") == 0
    for target in ("vocals", "drums"):
        for ext in ("pth", "safetensors", "json", "chkpnt", "csv"):
            assert (out / f"{target}.{ext}").exists()
        record = json.loads((out / f"{target}.json").read_text())
        assert record["epochs_trained"] == 2 and len(record["valid_loss_history"]) == 2
        assert record["model_args"]["hidden_size"] == 8 and record["args"]["nfft"] == 512
    assert json.loads((out / "separator.json").read_text())["targets"] == ["vocals", "drums"]
    sep = Separator.from_pretrained(out)
    assert sep.sample_rate == 22050 and sep.target_names == ["vocals", "drums"]
    separates_with(out, tmp_path, ["vocals", "drums"])


@pytest.mark.slow
def test_aligned_trackfolder_var_sourcefolder_runs_and_separate(tmp_path):
    aligned_pairs(tmp_path / "al")
    for split in ("train", "valid"):
        for t in range(2):
            write(tmp_path / "var" / split / f"{t}" / "vocals.wav", 1.0, t)
            write(tmp_path / "var" / split / f"{t}" / f"instrument{t}.wav", 1.0, t + 9)
            write(tmp_path / "sf" / split / "speech" / f"{t}.wav", 1.0, t)
            write(tmp_path / "sf" / split / "noise" / f"{t}.wav", 1.0, t + 3)
    runs = {
        "aligned": ["--root", tmp_path / "al", "--input-file", "raw", "--output-file", "mixed", "--target", "mixed"],
        "trackfolder_var": ["--root", tmp_path / "var", "--target-file", "vocals.wav", "--random-interferer-mix"],
        "sourcefolder": ["--root", tmp_path / "sf", "--target-dir", "speech", "--interferer-dirs", "noise",
                         "--nb-train-samples", "4", "--nb-valid-samples", "2", "--target", "speech"],
    }
    for name, args in runs.items():
        out = tmp_path / f"out-{name}"
        assert train("--dataset", name, "--output", out, "--epochs", "1", *args) == 0, name
        target = args[args.index("--target") + 1] if "--target" in args else "vocals"
        separates_with(out, tmp_path / name, [target])


@pytest.mark.slow
@pytest.mark.musdb
def test_musdb_run_and_separate(tmp_path):
    pytest.importorskip("musdb")
    root = require(MUSDB_7S).parent
    out = tmp_path / "m"
    code = train_main(["--dataset", "musdb", "--root", str(root), "--target", "accompaniment", "--output", str(out),
                       "--epochs", "1", "--samples-per-track", "1", "--hidden-size", "8", "--nfft", "1024",
                       "--nhop", "256", "--batch-size", "8", "--seq-dur", "1.0", "--quiet"])
    assert code == 0
    record = json.loads((out / "accompaniment.json").read_text())
    assert record["samples_history"] == [80]  # balanced: one excerpt per training track
    separates_with(out, tmp_path, ["accompaniment"])


@pytest.mark.slow
def test_same_seed_same_first_epoch_loss(tmp_path):
    root = track_folders(tmp_path / "data")

    def first_loss(seed, name):
        cfg = TrainConfig(dataset="trackfolder_fix", root=str(root), target_file="vocals.wav",
                          interferer_files=["drums.wav", "bass.wav"], random_track_mix=True,
                          output=str(tmp_path / name),
                          epochs=1, batch_size=2, seq_dur=0.5, hidden_size=8, nfft=512, nhop=128, sample_rate=22050,
                          quiet=True, seed=seed)
        return run(cfg).train_loss[0]

    a, b, c = first_loss(3, "a"), first_loss(3, "b"), first_loss(4, "c")
    assert a == b and a != c


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    root = track_folders(tmp_path / "data", tracks=4, seconds=3.0)
    out = tmp_path / "model"
    args = [sys.executable, "-m", "openunmix_like.cli.train", "--dataset", "trackfolder_fix", "--root", str(root),
            "--target-file", "vocals.wav", "--interferer-files", "drums.wav", "bass.wav", "other.wav",
            "--output", str(out), *TINY]
    proc = subprocess.Popen(args + ["--epochs", "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chkpnt = out / "vocals.chkpnt"
    deadline = time.time() + 120
    while time.time() < deadline:
        if chkpnt.exists() and torch.load(chkpnt, weights_only=True)["epoch"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(chkpnt, weights_only=True)["epoch"]
    history = torch.load(chkpnt, weights_only=True)["history"]["train_loss"]
    assert done >= 2
    # SIGKILL may land mid-write: a hidden partial file can stay, but every file under its real name is whole.
    # So can a lock file, which binds nobody once its process is gone.
    for path in out.iterdir():
        if path.name.startswith("."):
            assert ".partial" in path.name or path.name.endswith(".lock")
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".chkpnt", ".pth"):
            torch.load(path, weights_only=True)
    # What a kill mid-write leaves (whether or not this kill did): the next writer of each name removes it.
    for name in ("separator.json", "vocals.chkpnt"):
        (out / f".{name}.{proc.pid}-{HOST_TAG}-killed.partial").write_bytes(b"half")
    assert subprocess.run(args + ["--epochs", str(done + 1), "--resume", "auto"]).returncode == 0
    assert not list(out.glob(".*.partial*")) and not list(out.glob(".*.lock"))
    record = json.loads((out / "vocals.json").read_text())
    assert record["epochs_trained"] == done + 1
    assert record["train_loss_history"][:done] == history


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    root = track_folders(tmp_path / "data", tracks=4)
    out = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "openunmix_like.cli.train",
           "--dataset", "trackfolder_fix", "--root", str(root), "--target-file", "vocals.wav",
           "--interferer-files", "drums.wav", "--output", str(out), "--epochs", "2", *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-8000:]
    record = json.loads((out / "vocals.json").read_text())
    # Each rank saw half of the 4 tracks: together one epoch's worth, not two.
    assert record["samples_history"] == [4, 4] and record["epochs_trained"] == 2
    assert Separator.from_pretrained(out).target_names == ["vocals"]


def test_fine_tune_from_a_model_folder(tmp_path):
    root = track_folders(tmp_path / "data")
    base = tmp_path / "base"
    assert train("--dataset", "trackfolder_fix", "--root", root, "--target-file", "vocals.wav",
                 "--interferer-files", "drums.wav", "--output", base, "--epochs", "1") == 0
    tuned = tmp_path / "tuned"
    assert train_main(["--dataset", "trackfolder_fix", "--root", str(root), "--target-file", "vocals.wav",
                       "--interferer-files", "drums.wav", "--output", str(tuned), "--epochs", "1",
                       "--model", str(base), "--sample-rate", "22050", "--batch-size", "2", "--seq-dur", "0.5",
                       "--quiet"]) == 0
    record = json.loads((tuned / "vocals.json").read_text())
    assert record["model_args"]["hidden_size"] == 8  # taken from the pretrained model, not the default 512


def test_fine_tuning_with_a_larger_hidden_size_widens_the_model(tmp_path, capsys):
    root = track_folders(tmp_path / "data")
    base = tmp_path / "base"
    args = ["--dataset", "trackfolder_fix", "--root", str(root), "--target-file", "vocals.wav",
            "--interferer-files", "drums.wav", "--sample-rate", "22050", "--batch-size", "2", "--seq-dur", "0.5",
            "--nfft", "512", "--nhop", "128", "--quiet"]
    assert train_main([*args, "--output", str(base), "--epochs", "1", "--hidden-size", "8"]) == 0
    wide = tmp_path / "wide"
    assert train_main([*args, "--output", str(wide), "--epochs", "1", "--model", str(base), "--hidden-size", "12",
                       "--lstm-dropout", "0.1"]) == 0
    record = json.loads((wide / "vocals.json").read_text())
    assert record["model_args"]["hidden_size"] == 12 and record["args"]["lstm_dropout"] == 0.1
    assert Separator.from_pretrained(wide).target_models["vocals"].hidden_size == 12
    assert train_main([*args, "--output", str(tmp_path / "narrow"), "--epochs", "1", "--model", str(base),
                       "--hidden-size", "4"]) == 1
    err = capsys.readouterr().err
    assert "cannot narrow a hidden-8 model to 4" in err and len(err.strip().splitlines()) == 1


def test_bad_configuration_is_one_line(tmp_path, capsys):
    assert train("--dataset", "trackfolder_fix", "--root", tmp_path, "--output", tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert err.startswith("umx-train: error:") and "--target-file" in err
    assert train("--dataset", "aligned", "--root", tmp_path / "nowhere", "--input-file", "a.wav",
                 "--output-file", "b.wav", "--output", tmp_path / "o") == 1
    assert "nowhere/train: missing" in capsys.readouterr().err


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    root = track_folders(tmp_path / "data")
    out = tmp_path / "tb"
    assert train("--dataset", "trackfolder_fix", "--root", root, "--target-file", "vocals.wav",
                 "--interferer-files", "drums.wav", "--output", out, "--epochs", "2") == 0
    events = list((out / "tensorboard" / "vocals").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
