"""One target through every training-loop option, alone and together, interrupted and resumed: a resumed run
must be the uninterrupted one, the best model what the selection rule says, an epoch without a step recorded
as such, and option combinations that cannot work refused in one line before any data is read."""
import csv
import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from helpers import track_folders
from openunmix_like.cli.train import main as train_main
from openunmix_like.errors import OpenUnmixLikeError
from openunmix_like.training import TrainConfig, factory, loop, multi, run, run_targets

TINY = dict(dataset="trackfolder_fix", batch_size=2, seq_dur=0.5, hidden_size=8, nfft=512, nhop=128,
            sample_rate=22050, quiet=True)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Four training tracks of 1 s (two batches an epoch) and four validation tracks."""
    return track_folders(tmp_path_factory.mktemp("journey") / "data", tracks=4, seconds=1.0)


@pytest.fixture(scope="module")
def silent_root(tmp_path_factory):
    """As ``root``, but the vocals of every validation track are silent: no validation SDR can be computed."""
    folder = track_folders(tmp_path_factory.mktemp("silent") / "data", tracks=2, seconds=1.0)
    for path in (folder / "valid").glob("*/vocals.wav"):
        audio, rate = sf.read(path, dtype="float32")
        sf.write(path, np.zeros_like(audio), rate, subtype="FLOAT")
    return folder


def config(root, out, **kw):
    return TrainConfig(root=str(root), output=str(out), **{"target": "vocals", **TINY, **kw})


def record(out, target="vocals"):
    return json.loads((out / f"{target}.json").read_text())


def checkpoint(out, target="vocals"):
    return torch.load(out / f"{target}.chkpnt", weights_only=True)


class Interrupt(KeyboardInterrupt):
    """What Ctrl+C or a SIGTERM raises in umx-train (see cli.sigterm_as_interrupt)."""


def interrupted(monkeypatch, cfg, where, call):
    """Run ``cfg`` and interrupt it at the ``call``-th call of ``loop.<where>`` (before a batch or a validation,
    or just after a step checkpoint is written); returns after the interruption."""
    original, calls = getattr(loop, where), []

    def hook(*args, **kw):
        calls.append(None)
        if len(calls) == call and where != "save_step_checkpoint":
            raise Interrupt
        result = original(*args, **kw)
        if len(calls) == call:
            raise Interrupt
        return result

    with monkeypatch.context() as m:
        m.setattr(loop, where, hook)
        with pytest.raises(Interrupt):
            run(cfg)


def assert_same_run(a, b):
    """Same weights, weight average, optimiser, schedule, history (but the times) and best model."""
    ca, cb = checkpoint(a), checkpoint(b)
    for key in ("state_dict", "average"):
        assert set(ca.get(key, {})) == set(cb.get(key, {}))
        for name, value in ca.get(key, {}).items():
            assert torch.equal(value, cb[key][name]), (key, name)
    assert ca["scheduler"] == cb["scheduler"]
    for index, state in ca["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], cb["optimizer"]["state"][index]["exp_avg_sq"])
    for key, value in ca["history"].items():
        if key not in ("epoch_time", "data_share"):
            assert value == cb["history"][key], key
    best_a, best_b = load_file(a / "vocals.safetensors"), load_file(b / "vocals.safetensors")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


# ---------------------------------------------------------------- interrupted and resumed


@pytest.mark.parametrize("where, call", [
    ("train_batch", 4),  # mid-epoch 2, no step checkpoint of it yet: epoch 2 is trained again
    ("save_step_checkpoint", 3),  # just after the step checkpoint of epoch 2's first batch
    ("validate", 2),  # while validating epoch 2, after its last step checkpoint
])
def test_a_run_interrupted_anywhere_and_resumed_is_the_uninterrupted_run(root, tmp_path, monkeypatch, where, call):
    # Every option that carries state from epoch to epoch, at once: the weight average (validated, selected by
    # SDR and saved), the cosine schedule, clipping, batch augmentations, step checkpoints.
    options = dict(epochs=3, lr=0.01, ema=0.7, lr_scheduler="cosine", clip_grad=0.5, select_by="sdr", ckpt_every=1,
                   ckpt_keep=2, patience=3, source_augmentations=["gain", "channelswap", "freqmask"])
    run(config(root, tmp_path / "whole", **options))
    interrupted(monkeypatch, config(root, tmp_path / "cut", **options), where, call)
    resumed = run(config(root, tmp_path / "cut", resume="auto", **options))
    assert len(resumed.train_loss) == 3 and resumed.global_step == 6
    assert_same_run(tmp_path / "whole", tmp_path / "cut")
    # The saved model is the weight average of the epoch with the best SDR, and says so.
    meta = record(tmp_path / "cut")
    assert meta["best_epoch"] == 1 + max(range(3), key=lambda e: resumed.valid_sdr[e])
    assert meta["best_sdr_mdx"] == max(resumed.valid_sdr) and meta["args"]["ema"] == 0.7


def test_an_epoch_resumed_from_a_step_checkpoint_counts_its_time_before_the_interruption(root, tmp_path, monkeypatch):
    # The epoch's data-loading time so far was carried over, its seconds were not: an epoch resumed at its last
    # step reported the few milliseconds after the resume and a data-loading share of several hundred percent.
    from openunmix_like.training.checkpoint import step_checkpoints

    cfg = config(root, tmp_path / "cut", epochs=1, lr=0.01, ckpt_every=1)
    interrupted(monkeypatch, cfg, "validate", 1)  # after the step checkpoint of the epoch's last batch
    path = step_checkpoints(cfg)[-1]
    state = torch.load(path, weights_only=True)
    assert 0 < state["progress"]["data_time"] <= state["progress"]["seconds"]
    state["progress"].update(seconds=100.0, data_time=5.0)  # as if the epoch had taken 100 s until then
    torch.save(state, path)
    history = run(config(root, tmp_path / "cut", epochs=1, lr=0.01, ckpt_every=1, resume="auto"))
    assert 100.0 <= history.epoch_time[0] < 160.0
    assert history.data_share[0] == pytest.approx(5.0 / history.epoch_time[0], rel=0.2)


def test_patience_and_the_plateau_schedule_carry_over_a_resume(root, tmp_path, monkeypatch):
    scripted = {1: 1.0, 2: 0.5, 3: 0.6, 4: 0.7, 5: 0.8, 6: 0.1}  # epoch 2 is best; patience 2 stops before 5
    monkeypatch.setattr(loop, "validate", lambda ctx, epoch: scripted[epoch])
    options = dict(epochs=6, lr=0.01, patience=2, lr_decay_patience=0, lr_decay_gamma=0.5)
    whole = run(config(root, tmp_path / "whole", **options))
    assert whole.valid_loss == [1.0, 0.5, 0.6, 0.7] and whole.best_epoch == 2
    assert whole.lr == pytest.approx([0.01, 0.01, 0.005, 0.005])  # decayed once, then in its 10-epoch cooldown
    run(config(root, tmp_path / "cut", stop_after=3, **options))
    resumed = run(config(root, tmp_path / "cut", resume="auto", **options))
    assert resumed.valid_loss == whole.valid_loss and resumed.lr == whole.lr and resumed.best_epoch == 2
    assert_same_run(tmp_path / "whole", tmp_path / "cut")


def test_the_loss_scale_of_mixed_precision_is_resumed(root, tmp_path, monkeypatch):
    # CUDA's fp16 (and bf16) steps scale the loss; the scale found so far must survive a resume, or the
    # resumed run starts again at 65536 and skips steps an uninterrupted run takes. A CPU scaler that
    # doubles every step stands in for CUDA's here.
    monkeypatch.setattr(factory, "loss_scaler",
                        lambda precision, device: torch.amp.GradScaler("cpu", init_scale=16.0, growth_interval=1))
    options = dict(epochs=2, lr=0.01, precision="bf16")
    run(config(root, tmp_path / "whole", **options))
    run(config(root, tmp_path / "cut", stop_after=1, **options))
    assert checkpoint(tmp_path / "cut")["scaler"]["scale"] == 64.0  # two steps
    run(config(root, tmp_path / "cut", resume="auto", **options))
    assert checkpoint(tmp_path / "cut")["scaler"]["scale"] == checkpoint(tmp_path / "whole")["scaler"]["scale"] == 256
    assert_same_run(tmp_path / "whole", tmp_path / "cut")


# ---------------------------------------------------------------- epochs whose every batch is skipped


def skip_epochs(monkeypatch, epochs, target=None):
    """Make every step of the given epochs (of ``target`` only, if given) non-finite: skipped, weights untouched."""
    step = loop.step

    def maybe(ctx, *args, **kw):
        if len(ctx.history.train_loss) + 1 in epochs and target in (None, ctx.cfg.target):
            return None
        return step(ctx, *args, **kw)

    monkeypatch.setattr(loop, "step", maybe)


def test_an_epoch_without_a_step_is_recorded_as_such_and_never_chosen(root, tmp_path, monkeypatch, caplog):
    skip_epochs(monkeypatch, {1})
    out = tmp_path / "m"
    with caplog.at_level(logging.WARNING, logger="openunmix_like.training.loop"):
        history = run(config(root, out, epochs=2, lr=0.01, stop_after=1))
    assert "epoch 1 of vocals: every batch was skipped" in caplog.text
    # Not a train loss of 0 (a perfect epoch), and not the best: its weights are the untrained ones.
    assert history.train_loss == [None] and history.best_epoch == 0
    assert record(out)["train_loss_history"] == [None] and record(out)["best_epoch"] == 0
    assert not (out / "vocals.safetensors").exists()
    assert [row["train_loss"] for row in csv.DictReader((out / "vocals.csv").open())] == [""]
    history = run(config(root, out, epochs=2, lr=0.01, resume="auto"))
    assert history.train_loss[1] > 0 and history.best_epoch == 2 and (out / "vocals.safetensors").is_file()


def test_patience_counts_epochs_without_a_step_from_the_start(root, tmp_path, monkeypatch, caplog):
    skip_epochs(monkeypatch, {1, 2, 3, 4, 5})
    with caplog.at_level(logging.INFO, logger="openunmix_like.training.loop"):
        history = run(config(root, tmp_path / "m", epochs=5, patience=2, quiet=False))
    assert history.train_loss == [None, None] and history.best_epoch == 0  # not 5 epochs of nothing
    assert "vocals: no better validation loss in any epoch (--patience 2): stopping before epoch 3" in caplog.text


def test_with_several_targets_a_target_without_a_step_is_recorded_as_such(root, tmp_path, monkeypatch, caplog):
    skip_epochs(monkeypatch, {1}, target="drums")
    out = tmp_path / "m"
    cfg = TrainConfig(root=str(root), output=str(out), targets=["vocals", "drums"], epochs=1, lr=0.01, **TINY)
    with caplog.at_level(logging.WARNING, logger="openunmix_like.training.loop"):
        histories = run_targets(cfg)
    assert "epoch 1 of drums: every batch was skipped" in caplog.text and "of vocals: every" not in caplog.text
    assert histories["drums"].train_loss == [None] and histories["drums"].best_epoch == 0
    assert histories["vocals"].train_loss[0] > 0 and histories["vocals"].best_epoch == 1
    assert record(out, "drums")["train_loss_history"] == [None]


# ---------------------------------------------------------------- validation SDR with nothing to score


def test_select_by_sdr_stops_when_no_validation_track_can_be_scored(silent_root, tmp_path):
    with pytest.raises(OpenUnmixLikeError, match="--select-by sdr: the vocals target is silent in every validation"):
        run(config(silent_root, tmp_path / "m", epochs=3, select_by="sdr"))


def test_eval_every_records_no_sdr_rather_than_zero_when_no_track_can_be_scored(silent_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="openunmix_like.training.loop"):
        history = run(config(silent_root, tmp_path / "m", epochs=1, eval_every=1))
    assert history.valid_sdr == [None] and history.valid_si_sdr == [None]
    assert "silent in every validation track" in caplog.text


# ---------------------------------------------------------------- --max-minutes


def test_max_minutes_says_what_it_saved_and_how_to_go_on(root, tmp_path, caplog):
    out = tmp_path / "m"
    with caplog.at_level(logging.INFO, logger="openunmix_like.training.loop"):
        history = run(config(root, out, epochs=5, max_minutes=1e-9, quiet=False))
    assert history.global_step == 1 and checkpoint(out)["epoch"] == 1  # a partial epoch 1, resumable
    assert f"epoch 1 is saved as far as it got in {out / 'vocals.chkpnt'}" in caplog.text
    assert "--resume auto continues at epoch 2, with a larger --max-minutes" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="openunmix_like.training.loop"):
        again = run(config(root, out, epochs=5, max_minutes=1e-9, resume="auto", quiet=False))
    assert again.global_step == 1
    assert "--max-minutes 1e-09 is spent already" in caplog.text and "give a larger --max-minutes" in caplog.text
    resumed = run(config(root, out, epochs=2, resume="auto"))
    assert resumed.global_step == 3 and len(resumed.train_loss) == 2


# ---------------------------------------------------------------- refused before any data is read


@pytest.mark.parametrize("options, message", [
    (["--ckpt-every", "2", "--ckpt-keep", "0"], "--ckpt-keep 0: give how many step checkpoints to keep, at least 1"),
    (["--ckpt-keep", "-1"], "--ckpt-keep -1: give how many step checkpoints to keep"),
    (["--eval-every", "5", "--epochs", "3"], "--eval-every 5 above --epochs 3: no epoch would be scored"),
    (["--select-by", "sdr", "--eval-every", "5", "--patience", "2"],
     "--select-by sdr with --patience 2 below --eval-every 5: the run would stop before"),
    (["--force", "--resume", "auto"], "--force starts the target over and --resume auto continues it"),
    (["--force", "--checkpoint", "x.chkpnt"], "--force starts the target over and --checkpoint x.chkpnt continues"),
    (["--precision", "fp16", "--device", "cpu"], "--precision fp16 needs CUDA (training on cpu)"),
    (["--precision", "fp16", "--device", "cpu", "--targets", "vocals", "drums"],
     "--precision fp16 needs CUDA (training on cpu)"),
])
def test_options_that_cannot_work_are_one_line_before_any_data_is_read(tmp_path, monkeypatch, capsys, options,
                                                                        message):
    for module, name in ((factory, "resolve_sources"), (factory, "build_datasets"), (multi, "shared_datasets")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("read the data before refusing"))
    target = [] if "--targets" in options else ["--target", "vocals"]
    assert train_main(["--dataset", "trackfolder_fix", "--root", str(tmp_path / "data"), *target, "--output",
                       str(tmp_path / "out"), "--quiet", *options]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("umx-train: error: " + message), lines
    assert not (tmp_path / "out").exists()


def test_target_json_is_strict_json_when_a_loss_is_not_a_number():
    from openunmix_like.training.history import History

    history = History(train_loss=[0.5, None, float("inf")], valid_loss=[0.4, float("nan"), 0.3],
                      valid_sdr=[None, float("-inf"), 2.0])
    text = json.dumps(history.record(), allow_nan=False)  # raises on NaN or infinity
    record = json.loads(text)
    assert record["train_loss_history"] == [0.5, None, None]
    assert record["valid_loss_history"] == [0.4, None, 0.3]
    assert record["valid_sdr_mdx_history"] == [None, None, 2.0]
