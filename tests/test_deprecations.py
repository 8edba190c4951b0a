"""Deprecation and future warnings our calls raise: the breakages of our dependencies' next releases.

Where the installed release still takes the old call quietly, a test replays the newer release's warning
(its category and message) around the call, and asserts that the user sees nothing; where a newer release
changes a default (Python 3.14's start method for worker processes), a test runs with the new default.
"""
import functools
import json
import subprocess
import sys
import warnings

import pytest
import torch

from helpers import tiny_folder, track_folders
from openunmix_like.export import export_models
from openunmix_like.modeldir import AudioSettings, load_model_dir


def warning_before(function, message, category):
    """``function``, warning ``message`` first, as a newer torch does."""
    @functools.wraps(function)
    def warned(*args, **kwargs):
        warnings.warn(message, category, stacklevel=2)
        return function(*args, **kwargs)
    return warned


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_a_torchscript_export_shows_no_deprecation_notice(tmp_path, monkeypatch, category):
    # torch 2.14 gives TorchScript's notices as FutureWarning, which Python shows to users: umx-export
    # --format torchscript printed 16 of them for the bundled model (trace, trace_method, save, load).
    for name, advice in (("trace", "`torch.compile` or `torch.export`"), ("save", "`torch.export`"),
                         ("load", "`torch.export`")):
        text = f"`torch.jit.{name}` is deprecated. Please switch to {advice}."
        monkeypatch.setattr(torch.jit, name, warning_before(getattr(torch.jit, name), text, category))
    folder = tiny_folder(tmp_path, "umx", AudioSettings(22050, 512, 128, 2), targets=("vocals",))
    models, settings = load_model_dir(folder)[:2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exported = export_models(models, settings, tmp_path / "ts", "torchscript")
    assert exported["vocals"].max_error < 1e-4  # the check loaded and ran the file
    assert [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))] == []


# Python 3.14 starts the data loader's workers with forkserver on Linux (3.13 and earlier fork them, and from
# 3.12 warn that forking a process with threads may deadlock): the workers then get the data set, its
# augmentations and its preloaded audio by pickling, and import the package afresh.
FORKSERVER_TRAIN = ("import multiprocessing, sys; multiprocessing.set_start_method('forkserver'); "
                    "from openunmix_like.cli.train import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize("method, preloaded", [("forkserver", True), ("fork", False), ("spawn", False)])
def test_a_forkserver_imports_the_data_modules_once_for_every_epochs_workers(method, preloaded):
    # Each epoch starts new loader workers; from a forkserver each imported torch again (measured: 4.3 s an
    # epoch more than forked workers). Its server now imports the data set's modules, torch with them, once.
    code = (f"import multiprocessing; multiprocessing.set_start_method({method!r}); "
            "from multiprocessing import forkserver; "
            "from openunmix_like.training.loop import WORKER_MODULES, preload_forkserver; "
            "preload_forkserver(); print(forkserver._forkserver._preload_modules == WORKER_MODULES)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(preloaded)]


@pytest.mark.parametrize("preload", ["off", "on"])
def test_training_with_workers_runs_as_python_3_14_starts_them(tmp_path, preload):
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    out = tmp_path / "model"
    args = ["--dataset", "trackfolder_fix", "--root", str(root), "--target-file", "vocals.wav",
            "--interferer-files", "drums.wav", "--output", str(out), "--epochs", "1", "--hidden-size", "4",
            "--nfft", "512", "--nhop", "128", "--batch-size", "2", "--seq-dur", "0.5", "--sample-rate", "22050",
            "--nb-workers", "2", "--preload", preload, "--source-augmentations", "gain", "channelswap", "--quiet"]
    result = subprocess.run([sys.executable, "-c", FORKSERVER_TRAIN, *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert len(json.loads((out / "vocals.json").read_text())["train_loss_history"]) == 1
