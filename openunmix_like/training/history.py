"""What a run remembers of its epochs: losses, rates, times, the best epoch; and where it logs them."""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path
from typing import List, Optional


from ..fileio import write_bytes_atomic


@dataclasses.dataclass
class History:
    """Per-epoch records of a run, saved in checkpoints and ``<target>.json``."""

    train_loss: List[Optional[float]] = dataclasses.field(default_factory=list)  # None: no step taken
    valid_loss: List[float] = dataclasses.field(default_factory=list)
    lr: List[float] = dataclasses.field(default_factory=list)
    epoch_time: List[float] = dataclasses.field(default_factory=list)
    data_share: List[float] = dataclasses.field(default_factory=list)
    samples: List[int] = dataclasses.field(default_factory=list)
    valid_sdr: List[Optional[float]] = dataclasses.field(default_factory=list)
    valid_si_sdr: List[Optional[float]] = dataclasses.field(default_factory=list)
    best_loss: float = math.inf
    # A fine-tune's starting model, validated before the first step (None for a model trained from scratch).
    start_loss: Optional[float] = None
    start_sdr: Optional[float] = None
    best_sdr: float = -math.inf  # with --select-by sdr: the validation SDR of the best epoch
    best_epoch: int = 0
    global_step: int = 0  # training batches done, over all epochs
    best_step: int = 0

    def record(self) -> dict:
        """The ``<target>.json`` training fields (reference names)."""
        return {
            "epochs_trained": len(self.train_loss),
            "steps_trained": self.global_step,
            "best_step": self.best_step,
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "best_sdr_mdx": self.best_sdr if math.isfinite(self.best_sdr) else None,
            "best_epoch": self.best_epoch,
            "start_valid_loss": finite_or_null([self.start_loss])[0],
            "start_valid_sdr_mdx": finite_or_null([self.start_sdr])[0],
            # null for a loss that is not a number (strict JSON has no NaN) or an epoch without a step
            "train_loss_history": finite_or_null(self.train_loss),
            "valid_loss_history": finite_or_null(self.valid_loss),
            "lr_history": self.lr,
            "train_time_history": self.epoch_time,
            "data_loading_share_history": self.data_share,
            "samples_history": self.samples,
            # Fast metrics (not BSSEval), every --eval-every epochs, else null.
            "valid_sdr_mdx_history": finite_or_null(self.valid_sdr),
            "valid_si_sdr_history": finite_or_null(self.valid_si_sdr),
        }


def finite_or_null(values: List[Optional[float]]) -> List[Optional[float]]:
    """``values`` with NaN and infinities as ``None``, which JSON writes as null."""
    return [v if v is None or math.isfinite(v) else None for v in values]


def record_epoch(history: History, train_loss, valid_loss, optimizer, seconds, data_share, epoch,
                 select_by: str = "loss", sdr: Optional[float] = None) -> bool:
    """Append the epoch to ``history``; return whether it is the best so far: the lowest validation
    loss, or with ``select_by="sdr"`` the highest validation SDR (an epoch without one, between
    ``--eval-every`` epochs, is never best), ``best_loss`` then being the validation loss of that epoch.
    An epoch without a step (``train_loss`` ``None``: every batch skipped as non-finite) is never best: its
    weights are the previous epoch's, and the initial ones in the first epoch."""
    history.train_loss.append(train_loss)
    history.valid_loss.append(valid_loss)
    history.lr.append(optimizer.param_groups[0]["lr"])
    history.epoch_time.append(seconds)
    history.data_share.append(data_share)
    if train_loss is None:
        improved = False
    elif select_by == "sdr":
        improved = sdr is not None and sdr > history.best_sdr
        if improved:
            history.best_sdr = sdr
    else:
        improved = valid_loss < history.best_loss
    if improved:
        history.best_loss, history.best_epoch, history.best_step = valid_loss, epoch, history.global_step
    return improved


def write_csv(path: Path, history: History) -> None:
    """``<target>.csv``: one row per epoch (losses, learning rate, time, data-loading share, and the
    validation SDR and SI-SDR of the epochs ``--eval-every`` scored, empty in the others)."""
    def scored(values: List[Optional[float]], epoch: int) -> object:
        return "" if epoch >= len(values) or values[epoch] is None else values[epoch]

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["epoch", "train_loss", "valid_loss", "lr", "epoch_seconds", "data_loading_share",
                     "valid_sdr_mdx", "valid_si_sdr"])
    for k, row in enumerate(zip(history.train_loss, history.valid_loss, history.lr, history.epoch_time,
                                history.data_share)):
        writer.writerow([k + 1, *row, scored(history.valid_sdr, k), scored(history.valid_si_sdr, k)])
    write_bytes_atomic(path, text.getvalue().encode())


def tensorboard_writer(output: str, target: str):
    """A SummaryWriter under ``<output>/tensorboard/<target>`` when TensorBoard is installed, else ``None``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(Path(output) / "tensorboard" / target))


def log_tensorboard(writer, target: str, history: History, epoch: int) -> None:
    """The epoch's losses, learning rate and data-loading share."""
    for name, values in (("loss/train", history.train_loss), ("loss/valid", history.valid_loss),
                         ("lr", history.lr), ("data_loading_share", history.data_share)):
        if values[-1] is not None:  # an epoch without a step has no train loss
            writer.add_scalar(f"{target}/{name}", values[-1], epoch)
    writer.flush()


__all__ = ["History", "log_tensorboard", "record_epoch", "tensorboard_writer", "write_csv"]
