"""umx-train under torchrun (two processes, gloo on the CPU): sharding, validation, resuming, failures."""
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import track_folders
from openunmix_like.training import TrainConfig, distributed, loop, prepare, run, validate

TINY = ["--dataset", "trackfolder_fix", "--target", "vocals", "--hidden-size", "8", "--nfft", "512", "--nhop", "128",
        "--batch-size", "2", "--seq-dur", "0.5", "--sample-rate", "22050"]

# umx-train with faults: UMX_REVIEW_FAULT=raise fails rank 1 reading a training item of epoch 2,
# noresume hides the checkpoints from rank 1; UMX_REVIEW_LOG=<folder> records each rank's training items.
WRAPPER = r"""
import os, sys
from openunmix_like import data
from openunmix_like.training import loop
from openunmix_like.cli.train import main

rank, fault, logs = os.environ["RANK"], os.environ.get("UMX_REVIEW_FAULT"), os.environ.get("UMX_REVIEW_LOG")
read = data.FixedSourcesTrackFolderDataset.__getitem__

def getitem(self, index):
    if fault == "raise" and rank == "1" and self.epoch == 2:
        raise ValueError(f"t{index}/vocals.wav: cannot read (simulated)")
    if logs and self.epoch > 0:  # training items (validation reads epoch 0)
        with open(os.path.join(logs, f"rank{rank}.txt"), "a") as f:
            f.write(f"{self.epoch} {index}\n")
    return read(self, index)

data.FixedSourcesTrackFolderDataset.__getitem__ = getitem
if fault == "noresume" and rank == "1":
    loop.find_resume_checkpoint = lambda cfg: None
sys.exit(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workers(script: Path):
    """The ids of the processes running ``script`` (torchrun starts its workers in sessions of their own)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(script).encode() in (proc / "cmdline").read_bytes():
                yield int(proc.name)
        except OSError:
            pass


def torchrun(tmp_path: Path, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    """``umx-train args`` (through :data:`WRAPPER`) in two processes; a hang fails instead of blocking."""
    script, log = tmp_path / "umx_train.py", tmp_path / "torchrun.log"
    script.write_text(WRAPPER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun stops its workers
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        pytest.fail(f"torchrun {' '.join(map(str, args))}: still running after {timeout} s (a hang)")
    finally:
        for pid in workers(script):  # none once torchrun has ended normally
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, log.read_text())


def record(folder: Path) -> dict:
    return json.loads((folder / "vocals.json").read_text())


def one_process_valid_loss(tmp_path: Path, root: Path, folder: Path) -> float:
    """The validation loss one process computes on the model (batch-norm statistics included) ``folder`` holds."""
    cfg = TrainConfig(dataset="trackfolder_fix", root=str(root), target="vocals", hidden_size=8, nfft=512, nhop=128,
                      batch_size=2, seq_dur=0.5, sample_rate=22050, quiet=True, output=str(tmp_path / "one"),
                      epochs=1, force=True)
    ctx = prepare(cfg)
    ctx.model.load_state_dict(torch.load(folder / "vocals.chkpnt", weights_only=True)["state_dict"])
    return validate(ctx, 1)


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_step_batches_deal_each_item_once_in_the_same_number_of_steps(size, batch_size):
    for n in range(1, 14):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(n)).tolist()
        plans = [loop.StepBatches(order, batch_size, rank, size) for rank in range(size)]
        steps = math.ceil(n / (batch_size * size))
        assert all(len(plan) == steps for plan in plans), (n, [len(plan) for plan in plans])
        counted = [i for plan in plans for batch, count in zip(plan, plan.counts) for i in batch[:count]]
        assert sorted(counted) == sorted(order)  # each item once over the ranks
        for k in range(steps):
            items = plans[0].taken[k]
            assert sum(plan.counts[k] for plan in plans) == items
            for plan in plans:  # DDP averages the ranks' mean losses: weighted, each item counts 1 / items
                assert 1 <= len(plan.batches[k]) <= batch_size
                if plan.counts[k]:
                    assert plan.weights[k] / (size * plan.counts[k]) == pytest.approx(1 / items)
                else:
                    assert plan.weights[k] == 0
        if size == 1:  # one process: the order in batches of --batch-size, as before
            assert plans[0].batches == [order[i: i + batch_size] for i in range(0, n, batch_size)]
            assert set(plans[0].weights) == {1.0}


@pytest.mark.slow
def test_two_ranks_train_each_item_once_and_validate_as_one_process(tmp_path):
    root = track_folders(tmp_path / "data", tracks=3, seconds=1.0)
    out, logs = tmp_path / "ddp", tmp_path / "logs"
    logs.mkdir()
    # 9 items in steps of 2 x 2: the last step has one item, for rank 0 only
    result = torchrun(tmp_path, *TINY, "--root", root, "--output", out, "--epochs", "1", "--samples-per-track", "3",
                      env={"UMX_REVIEW_LOG": str(logs)})
    assert result.returncode == 0, result.stdout[-6000:]
    trained = record(out)
    assert trained["samples_history"] == [9] and trained["steps_trained"] == 3
    seen = [line.split() for rank in (0, 1) for line in (logs / f"rank{rank}.txt").read_text().splitlines()]
    assert {int(index) for epoch, index in seen if epoch == "1"} == set(range(9))
    assert result.stdout.count("umx-train: epoch 1: train") == 1  # rank 0 alone logs
    assert trained["valid_loss_history"][0] == pytest.approx(one_process_valid_loss(tmp_path, root, out), rel=1e-6)


@pytest.mark.slow
def test_a_mid_epoch_resume_under_torchrun_continues_as_if_uninterrupted(tmp_path):
    root = track_folders(tmp_path / "data", tracks=4, seconds=1.0)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    # 16 items, 4 steps of 2 x 2; a batch augmentation, whose draws differ by rank
    args = [*TINY, "--root", root, "--epochs", "1", "--samples-per-track", "4", "--ckpt-every", "3",
            "--source-augmentations", "freqmask", "--quiet"]
    result = torchrun(tmp_path, *args, "--output", whole)
    assert result.returncode == 0, result.stdout[-6000:]
    shutil.copytree(whole, resumed)
    (resumed / "vocals.chkpnt").unlink()  # left: the checkpoint after step 3
    result = torchrun(tmp_path, *args, "--output", resumed, "--resume", "auto")
    assert result.returncode == 0, result.stdout[-6000:]
    assert record(resumed)["train_loss_history"] == record(whole)["train_loss_history"]
    assert record(resumed)["valid_loss_history"] == record(whole)["valid_loss_history"]
    # Both ranks' last batches hold items: without sharing rank 0's batch-norm statistics, rank 1 would validate
    # another model than the one saved.
    valid = record(whole)["valid_loss_history"][0]
    assert valid == pytest.approx(one_process_valid_loss(tmp_path, root, whole), rel=1e-6)


@pytest.mark.slow
def test_ranks_that_find_different_checkpoints_stop_with_one_line_not_a_hang(tmp_path):
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    out = tmp_path / "m"
    run(TrainConfig(dataset="trackfolder_fix", root=str(root), target="vocals", hidden_size=8, nfft=512, nhop=128,
                    batch_size=2, seq_dur=0.5, sample_rate=22050, quiet=True, output=str(out), epochs=1))
    result = torchrun(tmp_path, *TINY, "--root", root, "--output", out, "--epochs", "3", "--resume", "auto",
                      "--quiet", env={"UMX_REVIEW_FAULT": "noresume"}, timeout=60)
    assert result.returncode != 0
    assert "umx-train: error: --output" in result.stdout and "found different checkpoints" in result.stdout
    assert record(out)["epochs_trained"] == 1


@pytest.mark.slow
def test_a_failure_on_rank_1_ends_the_run_with_its_message(tmp_path):
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    result = torchrun(tmp_path, *TINY, "--root", root, "--output", tmp_path / "m", "--epochs", "3", "--quiet",
                      env={"UMX_REVIEW_FAULT": "raise"}, timeout=60)
    assert result.returncode != 0
    assert "umx-train: error: t" in result.stdout and "cannot read (simulated)" in result.stdout
    assert record(tmp_path / "m")["epochs_trained"] == 1  # the last complete epoch, to resume from


def test_only_rank_0_logs_before_the_process_group_is_joined(monkeypatch, caplog):
    monkeypatch.setenv("RANK", "1")
    assert not distributed.is_main()  # e.g. check_output's --force line, before torchrun's group is joined
    monkeypatch.setattr(loop, "is_main", lambda: False)
    with caplog.at_level("WARNING", logger="openunmix_like.training"):
        loop.handle_nonfinite(TrainConfig(), 1, 1)  # every rank skips the batch; rank 0 says so
    assert not caplog.records
    monkeypatch.setenv("RANK", "0")
    assert distributed.is_main()


def test_the_process_group_waits_long_enough_for_rank_0s_input_statistics(monkeypatch):
    import datetime

    import torch

    from openunmix_like.training import distributed

    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: joined.update(kw))
    distributed.setup_distributed(torch.device("cpu"))
    # nccl's default is 10 minutes, less than reading 1000 whole tracks can take on rank 0.
    assert joined == {"backend": "gloo", "timeout": datetime.timedelta(hours=2)}


def test_the_data_sets_warnings_come_once_not_once_per_rank(tmp_path):
    root = track_folders(tmp_path / "data", tracks=3, seconds=1.0)
    (root / "train" / "t0" / "vocals.wav").write_bytes(b"not audio")  # left out, with a warning
    result = torchrun(tmp_path, *TINY, "--root", root, "--output", tmp_path / "m", "--epochs", "1", "--quiet",
                      timeout=90)
    assert result.returncode == 0, result.stdout[-2000:]
    assert result.stdout.count("file(s) or track(s) left out") == 1, result.stdout[-3000:]


def test_each_rank_draws_its_own_dropout_masks(monkeypatch):
    cfg = TrainConfig(seed=42)
    assert loop.dropout_seed(cfg, 3) == 45  # one process: the seed it always had
    seeds = set()
    for rank in range(4):
        monkeypatch.setattr(loop, "world", lambda rank=rank: (rank, 4))
        seeds.add(loop.dropout_seed(cfg, 3))
    assert len(seeds) == 4 and 45 in seeds
