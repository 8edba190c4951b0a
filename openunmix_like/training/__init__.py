"""Training one target model: ``umx-train`` parses its options into a :class:`TrainConfig`
and calls :func:`run`.

The parts, in the order a run uses them:

- :mod:`.config`: the options (:class:`TrainConfig`) and their checks;
- :mod:`.factory`: data sets, model (fresh, fine-tuned or widened), optimiser and
  schedule, each returning the configuration it resolved (:func:`prepare` chains them);
- :mod:`.loop`: epochs, optimisation steps, validation, early stopping (:func:`run`);
- :mod:`.multi`: several targets from one stream of mixtures (:func:`run_targets`);
- :mod:`.checkpoint`: the files of the output folder, and resuming from them;
- :mod:`.history`: per-epoch records, the CSV and TensorBoard logs;
- :mod:`.distributed`: ranks and collectives under ``torchrun`` (DistributedDataParallel,
  gloo on CPU, nccl on CUDA: each rank trains on its own shard, only rank 0 writes).

The output folder follows the reference layout (``<target>.pth``, ``<target>.json``,
``<target>.chkpnt``, ``separator.json``) plus ``<target>.safetensors`` and a per-epoch
``<target>.csv``; training several targets into one folder gives a folder the separator
loads directly.

>>> from openunmix_like.training import TrainConfig, run
>>> history = run(TrainConfig(dataset="trackfolder_fix", root="data", target="vocals", epochs=10))
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Each name's submodule, imported on first use: umx-train builds its options from .config, which needs no
# torch, and answers --help or a bad option before the rest (torch with it) is imported.
_LAZY = {
    "read_checkpoint": "checkpoint",
    **dict.fromkeys(("DATASETS", "PRECISIONS", "PRELOAD", "SCHEDULERS", "SELECT_BY", "TrainConfig", "check_options"),
                    "config"),
    **dict.fromkeys(("Context", "WeightAverage", "evaluated_model"), "context"),
    **dict.fromkeys(("distributed_session", "pick_device"), "distributed"),
    **dict.fromkeys(("build_datasets", "build_model", "input_statistics", "make_context", "preload_datasets",
                     "prepare", "resolve_sources"), "factory"),
    "History": "history",
    **dict.fromkeys(("run", "step", "train_epoch", "validate", "validate_sdr"), "loop"),
    "run_targets": "multi",
}

if TYPE_CHECKING:
    from .checkpoint import read_checkpoint
    from .config import DATASETS, PRECISIONS, PRELOAD, SCHEDULERS, SELECT_BY, TrainConfig, check_options
    from .context import Context, WeightAverage, evaluated_model
    from .distributed import distributed_session, pick_device
    from .factory import (build_datasets, build_model, input_statistics, make_context, preload_datasets, prepare,
                          resolve_sources)
    from .history import History
    from .loop import run, step, train_epoch, validate, validate_sdr
    from .multi import run_targets
else:
    def __getattr__(name: str):
        if name not in _LAZY:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value


def __dir__():
    return sorted({*globals(), *_LAZY})


__all__ = ["Context", "DATASETS", "History", "PRECISIONS", "PRELOAD", "SCHEDULERS", "SELECT_BY", "TrainConfig",
           "WeightAverage", "build_datasets", "build_model", "check_options", "distributed_session",
           "evaluated_model", "input_statistics", "make_context", "pick_device", "preload_datasets", "prepare",
           "read_checkpoint", "resolve_sources", "run", "run_targets", "step", "train_epoch", "validate",
           "validate_sdr"]
