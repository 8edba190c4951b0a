"""umx-train --targets, reviewed against separate --target runs: what a target learns does not depend on the
targets beside it, a resume continues every target, and the output folder and options are checked before any
data is read, in one line naming every target concerned."""
import json
import logging
import shutil

import pytest
import torch

from helpers import tiny_folder, track_folders
from openunmix_like.cli.train import main as train_main
from openunmix_like.training import TrainConfig, loop, multi, run_targets

TINY = ["--hidden-size", "8", "--nfft", "512", "--nhop", "128", "--batch-size", "2", "--seq-dur", "0.5",
        "--sample-rate", "22050", "--quiet", "--device", "cpu"]
CONFIG = dict(dataset="trackfolder_fix", hidden_size=8, nfft=512, nhop=128, batch_size=2, seq_dur=0.5,
              sample_rate=22050, quiet=True, device="cpu")


def train(*args) -> int:
    return train_main([str(a) for a in args] + TINY)


def weights(folder, target) -> dict:
    return torch.load(folder / f"{target}.chkpnt", weights_only=True)["state_dict"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("umx-train: error: ")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return track_folders(tmp_path_factory.mktemp("data"), tracks=2, seconds=1.0)


def test_the_first_target_trains_as_a_run_of_its_own(root, tmp_path):
    # The others listed in the order its own run reads its interferers (trackfolder_fix: sorted names), every item
    # is drawn alike, and its dropout masks are its own run's whichever models step beside it.
    options = ["--dataset", "trackfolder_fix", "--root", root, "--random-track-mix", "--source-augmentations", "gain",
               "channelswap", "--samples-per-track", "2", "--epochs", "2"]  # two steps an epoch
    assert train(*options, "--targets", "vocals", "bass", "drums", "other", "--output", tmp_path / "four") == 0
    assert train(*options, "--target", "vocals", "--output", tmp_path / "one") == 0
    assert same_weights(weights(tmp_path / "four", "vocals"), weights(tmp_path / "one", "vocals"))
    four, one = (json.loads((tmp_path / f / "vocals.json").read_text()) for f in ("four", "one"))
    assert four["valid_loss_history"] == one["valid_loss_history"]


def test_a_target_resumed_alone_continues_as_if_never_interrupted(root, tmp_path):
    # Killed between the saves of epoch 2: vocals holds epoch 2, drums epoch 1, and drums trains epoch 2 alone.
    cfg = TrainConfig(root=str(root), targets=["vocals", "drums"], epochs=2, **CONFIG)
    run_targets(TrainConfig(**{**vars(cfg), "output": str(tmp_path / "whole")}))
    part = str(tmp_path / "part")
    run_targets(TrainConfig(**{**vars(cfg), "output": part, "stop_after": 1}))
    shutil.copy(tmp_path / "part" / "drums.chkpnt", tmp_path / "drums1.chkpnt")
    run_targets(TrainConfig(**{**vars(cfg), "output": part, "resume": "auto"}))
    shutil.copy(tmp_path / "drums1.chkpnt", tmp_path / "part" / "drums.chkpnt")
    histories = run_targets(TrainConfig(**{**vars(cfg), "output": part, "resume": "auto"}))
    assert len(histories["drums"].train_loss) == 2
    for target in ("vocals", "drums"):
        assert same_weights(weights(tmp_path / "whole", target), weights(tmp_path / "part", target)), target


def test_a_target_stopped_early_does_not_hold_the_others_back_when_resumed(root, tmp_path, monkeypatch):
    # vocals stops by --patience 1 at epoch 3, and lowest start epoch when resumed: drums must still go on.
    monkeypatch.setattr(loop, "validate", lambda ctx, epoch: float(epoch) if ctx.cfg.target == "vocals" else 1 / epoch)
    cfg = TrainConfig(root=str(root), targets=["vocals", "drums"], output=str(tmp_path / "m"), patience=1, **CONFIG)
    histories = run_targets(TrainConfig(**{**vars(cfg), "epochs": 3}))
    assert [len(histories[t].train_loss) for t in ("vocals", "drums")] == [2, 3]
    histories = run_targets(TrainConfig(**{**vars(cfg), "epochs": 4, "resume": "auto"}))
    assert [len(histories[t].train_loss) for t in ("vocals", "drums")] == [2, 4]
    record = json.loads((tmp_path / "m" / "drums.json").read_text())
    assert record["epochs_trained"] == 4 and record["best_epoch"] == 4


def no_data_read(monkeypatch):
    monkeypatch.setattr(multi, "shared_datasets", lambda *a, **k: pytest.fail("read the data before refusing"))


@pytest.mark.parametrize("model", [False, True])
def test_an_output_holding_some_targets_is_refused_before_any_data_is_read(tmp_path, monkeypatch, capsys, model):
    out = tmp_path / "out"
    out.mkdir()
    for target in ("vocals", "drums"):
        (out / f"{target}.chkpnt").write_bytes(b"")
    no_data_read(monkeypatch)
    fine_tune = ["--model", tiny_folder(tmp_path, "umx", targets=("vocals", "drums", "bass"))] if model else []
    assert train("--dataset", "trackfolder_fix", "--root", tmp_path / "nowhere", "--targets", "bass", "vocals",
                 "drums", "--output", out, *fine_tune) == 1
    assert error_line(capsys) == (f"umx-train: error: --output {out}: already holds vocals, drums of --targets "
                                  "(vocals.chkpnt); continue them with --resume auto (bass starts afresh), start "
                                  "over with --force (which replaces them), or give another --output")


@pytest.mark.parametrize("options, message", [
    (["--target", "bass"], "--target bass with --targets vocals drums: name the targets with --targets alone"),
    (["--silence-missing-targets"], "--silence-missing-targets: --dataset trackfolder_fix keeps no track without "
                                    "a target"),
    (["--checkpoint", "{ckpt}"], "--checkpoint {ckpt}: no drums.chkpnt; give a folder holding every target's"),
])
def test_options_several_targets_cannot_honour_are_one_line_before_any_data_is_read(tmp_path, monkeypatch, capsys,
                                                                                     options, message):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "vocals.chkpnt").write_bytes(b"")
    no_data_read(monkeypatch)
    options = [o.format(ckpt=ckpt) for o in options]
    assert train("--dataset", "trackfolder_fix", "--root", tmp_path / "nowhere", "--targets", "vocals", "drums",
                 "--output", tmp_path / "out", *options) == 1
    assert error_line(capsys).startswith("umx-train: error: " + message.format(ckpt=ckpt))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["skip", "stop"])
def test_a_nonfinite_loss_names_its_target_and_leaves_the_others_training(root, tmp_path, monkeypatch, caplog,
                                                                          capsys, mode):
    step = loop.step
    monkeypatch.setattr(loop, "step", lambda ctx, *a, **k: None if ctx.cfg.target == "drums" else step(ctx, *a, **k))
    with caplog.at_level(logging.WARNING, logger="openunmix_like.training.loop"):
        code = train("--dataset", "trackfolder_fix", "--root", root, "--targets", "vocals", "drums", "--epochs", "1",
                     "--output", tmp_path / "m", "--nonfinite-loss", mode)
    if mode == "stop":
        assert code == 1 and "epoch 1, batch 1 of drums: NaN or infinite loss" in error_line(capsys)
        return
    assert code == 0 and "epoch 1, batch 1 of drums: NaN or infinite loss" in caplog.text
    assert "of vocals" not in caplog.text
    vocals = json.loads((tmp_path / "m" / "vocals.json").read_text())
    assert vocals["train_loss_history"][0] > 0  # its steps were taken


@pytest.mark.parametrize("dataset", ["trackfolder_fix", "musdb", "aligned", "sourcefolder"])
def test_silence_missing_targets_is_refused_where_no_track_can_lack_a_target(tmp_path, capsys, dataset):
    from openunmix_like.cli.train import main

    code = main(["--dataset", dataset, "--root", str(tmp_path / "nowhere"), "--target", "vocals",
                 "--silence-missing-targets", "--output", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"umx-train: error: --silence-missing-targets: --dataset {dataset} keeps no track")
    assert not (tmp_path / "m").exists()
