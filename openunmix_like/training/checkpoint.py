"""The files a run writes and resumes from.

After every epoch rank 0 writes ``<target>.chkpnt`` (everything a resumed run
needs), the best model when the epoch improved (``<target>.safetensors``,
``.pth``, ``.json``, ``separator.json``), otherwise just the updated
``<target>.json``, and ``<target>.csv``. With ``--ckpt-every N`` it also writes
``checkpoints/<target>-step<N>.chkpnt`` mid-epoch. Every file is written
atomically, so a run killed at any moment leaves loadable files. A run of
``--dataset aligned`` writes ``"niter": 0`` into ``separator.json`` (see
:func:`own_niter`); other runs keep the ``niter`` it holds.
"""
from __future__ import annotations

import dataclasses
import glob
import io
import logging
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from .. import architectures
from ..errors import OpenUnmixLikeError
from ..fileio import writable_folder, write_bytes_atomic
from ..modeldir import AudioSettings, model_niter, read_target_json, save_metadata, save_target
from .config import TrainConfig
from .context import Context, EpochProgress, evaluated_model
from .distributed import all_reduce_sum, gather, is_main, unwrap, world
from .history import History, log_tensorboard, tensorboard_writer, write_csv

log = logging.getLogger(__name__)


def checkpoint_path(cfg: TrainConfig) -> Path:
    return Path(cfg.output) / f"{cfg.target}.chkpnt"


def step_checkpoint_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.output) / "checkpoints"


def check_output(cfg: TrainConfig, settings: AudioSettings) -> None:
    """Before anything is trained or written: ``--output`` can be written, its other models share
    ``settings``, and a run that starts afresh does not silently replace this target's model.

    With ``--force`` a fresh run goes on; :func:`start_afresh` removes the earlier checkpoints once the run's
    data and model are ready.

    Raises:
        OpenUnmixLikeError: one line naming the folder and what to do.
    """
    out = writable_folder("--output", cfg.output)
    held = read_target_json(out / "separator.json")
    others = [t for t in held.get("targets", []) if t != cfg.target]
    # As the first save will check (modeldir.update_separator_json): found now, not after an epoch's training.
    theirs = AudioSettings.from_json(held, out / "separator.json") if held else settings
    if theirs != settings and others:
        raise OpenUnmixLikeError(f"--output {out}: holds {', '.join(others)} with {theirs}, and a separator's "
                                 f"targets share their settings; this {cfg.target!r} model has {settings}: "
                                 "use another --output")
    if theirs != settings:
        raise OpenUnmixLikeError(f"--output {out}: its separator.json has {theirs}, and this {cfg.target!r} model "
                                 f"has {settings}; a model replaced in a folder keeps the folder's settings: use "
                                 "another --output")
    report_niter(cfg, out, others)
    if cfg.resume or cfg.checkpoint:
        return
    earlier = earlier_files(cfg)
    if not earlier:
        return
    if not cfg.force:
        raise OpenUnmixLikeError(f"--output {out}: already holds a {cfg.target!r} model ({earlier[0].name}); "
                                 "continue it with --resume auto, start over with --force (which replaces it), "
                                 "or give another --output")


def start_afresh(cfg: TrainConfig) -> None:
    """With ``--force``, remove this target's checkpoints before a fresh run's first step (so that ``--resume
    auto`` can never continue the replaced run); its model files are replaced by the first epoch.

    Called once the data and the model are ready, not by :func:`check_output`: a run that stops before
    (a mistyped ``--root``, a bad ``--model``) leaves the earlier run resumable.
    """
    if cfg.resume or cfg.checkpoint or not cfg.force or not is_main() or not earlier_files(cfg):
        return
    for path in (checkpoint_path(cfg), *step_checkpoints(cfg)):
        path.unlink(missing_ok=True)
    log.info("--force: starting %s in %s afresh (its checkpoints removed)", cfg.target, cfg.output)


def own_niter(cfg: TrainConfig) -> Optional[int]:
    """The Wiener EM iterations this run writes into ``separator.json``: 0 for a model of aligned pairs, else
    ``None`` (the folder keeps what it says). With one target, EM shares the input between the target and a
    hidden residual, so nothing comes out louder than the input: a model that processes its input (a gain, an
    equaliser) would lose what it learnt, and one that separates (noisy -> clean) loses little without EM."""
    return 0 if cfg.dataset == "aligned" else None


def own_input_level(ctx: Context) -> Optional[float]:
    """The level this run writes into ``separator.json`` for level matching: the median level of the training
    mixtures it measured (``Context.levels``, rounded to 0.1 dB), or ``None`` (the folder keeps what it says):
    none measured yet (a resumed run before its first batch), aligned pairs, or a level beyond what a
    model may ask for (a data set of near silence)."""
    from ..level import LEVEL_RANGE

    if not ctx.levels:
        return None
    level = round(float(np.median(ctx.levels)), 1)
    return level if LEVEL_RANGE[0] <= level <= LEVEL_RANGE[1] else None


def report_niter(cfg: TrainConfig, out: Path, others: List[str]) -> None:
    """Say, before training, what ``niter`` the folder's ``separator.json`` will give where that is not the
    default: one value for all its targets, the last aligned run's or a hand-written one.

    Raises:
        ModelError: the ``niter`` it holds is not a whole number of at least 0.
    """
    held, ours = model_niter(out), own_niter(cfg)
    if not is_main() or (held is None and ours is None):
        return
    path = out / "separator.json"
    if ours is None:
        log.warning("%s says niter %d, which separating %s with this folder uses too (one value for all its "
                    "targets, written by a run of --dataset aligned or by hand); delete the key for the default "
                    "(1), or train into another --output", path, held, cfg.target)
    elif others and ours != (1 if held is None else held):
        log.warning("%s: niter becomes %d for all its targets, %s separated with niter %d until now: this "
                    "--dataset aligned model loses what it learns to EM; train it into another --output to keep "
                    "them as they were", path, ours, ", ".join(others), 1 if held is None else held)
    else:
        log.info("%s: niter %d, so separating with this model skips the Wiener filter's EM unless --niter is "
                 "given", path, ours)


def earlier_files(cfg: TrainConfig) -> List[Path]:
    """The files of an earlier run of this target in ``--output``: its checkpoints and model weights."""
    out = Path(cfg.output)
    return [p for p in (checkpoint_path(cfg), out / f"{cfg.target}.safetensors", out / f"{cfg.target}.pth",
                        *step_checkpoints(cfg)) if p.is_file()]


def save_start(ctx: Context) -> None:
    """A fine-tune's starting weights as the output's model, before its first epoch (rank 0)."""
    cfg = ctx.cfg
    extra = {**ctx.history.record(), "args": dataclasses.asdict(cfg)}
    save_target(Path(cfg.output), cfg.target, evaluated_model(ctx), ctx.settings, extra=extra, niter=own_niter(cfg),
                input_level=own_input_level(ctx))


def save_epoch(ctx: Context, epoch: int, improved: bool) -> None:
    """Rank 0 writes the checkpoint, the best model when it improved, and the logs."""
    if not is_main():
        return
    cfg, model = ctx.cfg, evaluated_model(ctx)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    extra = {**ctx.history.record(), "args": dataclasses.asdict(cfg)}
    if improved:
        save_target(out, cfg.target, model, ctx.settings, extra=extra, niter=own_niter(cfg),
                    input_level=own_input_level(ctx))
    else:
        save_metadata(out, cfg.target, model, ctx.settings, extra, own_niter(cfg), own_input_level(ctx))
    write_checkpoint(checkpoint_path(cfg), checkpoint_state(ctx, epoch))
    csv_path = out / f"{cfg.target}.csv"
    try:
        write_csv(csv_path, ctx.history)
    except PermissionError as exc:
        # On Windows a file open in a spreadsheet cannot be replaced: a log someone looks at must not stop the run.
        log.warning("%s: not updated after epoch %d (%s); is it open in another program, such as a spreadsheet? "
                    "Training goes on and writes it again after the next epoch", csv_path, epoch, exc.strerror or exc)
    if ctx.tensorboard is None:  # made with the first epoch's files (None again without TensorBoard)
        ctx.tensorboard = tensorboard_writer(cfg.output, cfg.target)
    if ctx.tensorboard is not None:
        log_tensorboard(ctx.tensorboard, cfg.target, ctx.history, epoch)


def checkpoint_state(ctx: Context, epoch: int) -> dict:
    """Everything a resumed run needs after ``epoch`` (or part of it, see :func:`save_step_checkpoint`)."""
    model = unwrap(ctx.model)
    state = {
        "epoch": epoch,
        "step": ctx.history.global_step,
        "architecture": architectures.architecture_of(model).name,
        "lr_scheduler": ctx.cfg.lr_scheduler,
        "state_dict": model.state_dict(),
        "model_args": model.config.to_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "scheduler": ctx.scheduler.state_dict(),
        "best_loss": ctx.history.best_loss,
        "history": dataclasses.asdict(ctx.history),
    }
    if ctx.average is not None:
        state["average"] = ctx.average.model.state_dict()
    if ctx.scaler is not None:  # the loss scale it has found, which a fresh scaler would have to find again
        state["scaler"] = ctx.scaler.state_dict()
    if ctx.cfg.model_source:  # a fine-tune: what it started from, kept by runs that resume it
        state["fine_tuned_from"] = {"model": ctx.cfg.model, **ctx.cfg.model_source}
    return state


def write_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def save_step_checkpoint(ctx: Context, epoch: int, progress: EpochProgress) -> None:
    """Every ``--ckpt-every`` steps: ``checkpoints/<target>-step<N>.chkpnt``, resumable mid-epoch.

    Holds the epoch checkpoint's state plus the epoch's progress (batches done,
    the loss summed over all ranks so far, random states); only the newest
    ``--ckpt-keep`` are kept.
    """
    total, count = all_reduce_sum([progress.total, progress.count])  # every rank reaches this step
    own = {"rng_state": torch.get_rng_state(), "generator_state": ctx.generator.get_state(),
           **device_rng_state(ctx.device)}
    size = world()[1]
    ranks = {name: gather(value) for name, value in own.items()} if size > 1 else {}
    if not is_main():
        return
    cfg = ctx.cfg
    folder = step_checkpoint_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    state = checkpoint_state(ctx, epoch)
    state["progress"] = {"batches": progress.batches, "items": progress.items, "total": total, "count": int(count),
                         "data_time": progress.data_time, "seconds": progress.seconds, **own}
    if ranks:  # each rank continues with its own random states (batch augmentations differ by rank)
        state["progress"]["rank_states"] = [{name: states[r] for name, states in ranks.items()} for r in range(size)]
    write_checkpoint(folder / f"{cfg.target}-step{ctx.history.global_step:08d}.chkpnt", state)
    for old in step_checkpoints(cfg)[: -max(cfg.ckpt_keep, 1)]:
        old.unlink(missing_ok=True)


def device_rng_state(device: torch.device) -> dict:
    """``{"cuda_rng_state": ...}`` on CUDA, whose generator (not the CPU's) draws the dropout masks
    of a model there; nothing elsewhere."""
    if device.type != "cuda":
        return {}
    return {"cuda_rng_state": torch.cuda.get_rng_state(device)}


def restore_device_rng_state(progress: EpochProgress, device: torch.device) -> None:
    """Put back what :func:`device_rng_state` saved, where the run is on CUDA again."""
    if device.type == "cuda" and progress.cuda_rng_state is not None:
        torch.cuda.set_rng_state(progress.cuda_rng_state.cpu(), device)


def step_checkpoints(cfg: TrainConfig) -> List[Path]:
    """This target's step checkpoints, oldest first."""
    folder = step_checkpoint_dir(cfg)
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"{glob.escape(cfg.target)}-step[0-9]*.chkpnt"))


def find_resume_checkpoint(cfg: TrainConfig) -> Optional[Path]:
    """``--checkpoint`` (a file, or the folder of ``<target>.chkpnt``), or with ``--resume auto`` the
    newest of ``<output>/<target>.chkpnt`` and the step checkpoints (by training step)."""
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        if path.is_dir():
            path = path / f"{cfg.target}.chkpnt"
        if not path.is_file():
            raise OpenUnmixLikeError(f"--checkpoint {cfg.checkpoint}: no checkpoint file {path}")
        return path
    if cfg.resume == "auto":
        path = checkpoint_path(cfg)
        steps = step_checkpoints(cfg)
        if not steps:
            return path if path.is_file() else None
        newest = steps[-1]
        newest_step = int(newest.stem.rsplit("-step", 1)[1])
        if path.is_file() and read_checkpoint(path).get("step", -1) >= newest_step:
            return path
        return newest
    if cfg.resume:
        raise OpenUnmixLikeError(f"--resume {cfg.resume!r}: only 'auto' is supported (or use --checkpoint PATH)")
    return None


# What every checkpoint this package writes holds (see checkpoint_state).
CHECKPOINT_KEYS = ("epoch", "state_dict", "optimizer", "scheduler", "history")


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's contents (tensors and plain data only, nothing unpickled beyond that).

    Raises:
        OpenUnmixLikeError: the file cannot be read, or is no checkpoint of umx-train (a model's
            weights given as ``--checkpoint``, say).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint
        raise OpenUnmixLikeError(f"{path}: unreadable checkpoint ({exc}); delete it to start over") from exc
    missing = [key for key in CHECKPOINT_KEYS if key not in state] if isinstance(state, dict) else CHECKPOINT_KEYS
    if missing:
        raise OpenUnmixLikeError(f"{path}: not a training checkpoint (no {', '.join(missing)}; a model's weights?); "
                                 "give the <target>.chkpnt umx-train wrote, or fine-tune a model folder with "
                                 "--model")
    return state


def load_checkpoint(ctx: Context, path: Path) -> Tuple[int, Optional[EpochProgress]]:
    """Restore model, optimiser, scheduler and history; return the epoch to start from, and
    for a step checkpoint the progress within it."""
    state = read_checkpoint(path)
    model = unwrap(ctx.model)
    arch = architectures.architecture_of(model).name
    saved_arch = state.get("architecture", architectures.DEFAULT_ARCHITECTURE)
    if saved_arch != arch or (state.get("model_args") and state["model_args"] != model.config.to_dict()):
        raise OpenUnmixLikeError(f"{path}: checkpoint of a different model ({saved_arch}, "
                                 f"{state.get('model_args')}); use another --output or the same model options")
    if state.get("lr_scheduler", "plateau") != ctx.cfg.lr_scheduler:
        raise OpenUnmixLikeError(f"{path}: checkpoint of a run with --lr-scheduler {state.get('lr_scheduler')}; "
                                 f"resume with the same schedule")
    model.load_state_dict(state["state_dict"])
    origin = state.get("fine_tuned_from")
    if isinstance(origin, dict):  # the weights descend from it, whatever --model this run was given
        source = {key: origin.get(key) for key in ("file", "sha256")}
        ctx.cfg = dataclasses.replace(ctx.cfg, model=origin.get("model"), model_source=source)
    if ctx.average is not None:
        if "average" in state:
            ctx.average.model.load_state_dict(state["average"])
        else:
            # A run that did not average before: the average starts here.
            ctx.average.model.load_state_dict(state["state_dict"])
            if is_main():
                log.info("%s holds no weight average: --ema starts from its weights", path)
    ctx.optimizer.load_state_dict(state["optimizer"])
    ctx.scheduler.load_state_dict(state["scheduler"])
    if ctx.scaler is not None and state.get("scaler"):  # else (a run in fp32 before) it starts afresh
        ctx.scaler.load_state_dict(state["scaler"])
    first = int(state["epoch"]) + ("progress" not in state)
    if not ctx.cfg.stop_after or first <= ctx.cfg.stop_after:  # a run that trains nothing keeps its schedule
        retarget_cosine(ctx, path)
    ctx.history = History(**state["history"])
    if "progress" not in state:
        return first, None
    progress = EpochProgress(**state["progress"])
    if "items" not in state["progress"]:  # a checkpoint from before items were counted, by one process
        progress.items = progress.batches * ctx.cfg.batch_size
    rank, size = world()
    if progress.rank_states and len(progress.rank_states) == size:
        for name, value in progress.rank_states[rank].items():
            setattr(progress, name, value)
    if rank != 0:  # rank 0 carries the epoch's loss so far (summed over all ranks)
        progress.total, progress.count = 0.0, 0
    return int(state["epoch"]), progress


def retarget_cosine(ctx: Context, path: Path) -> None:
    """A cosine run resumed with another ``--epochs`` anneals from its current learning rate to 0 at
    the new last epoch (the restored schedule would otherwise end at the old one)."""
    scheduler = ctx.scheduler
    if not isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        return
    epochs = max(ctx.cfg.epochs, 1)
    if scheduler.T_max == epochs:
        return
    if scheduler.last_epoch >= epochs:
        raise OpenUnmixLikeError(f"{path}: the run has already trained {scheduler.last_epoch} epochs; "
                                 f"resume with --epochs above that")
    if is_main():
        log.info("%s: cosine schedule re-targeted from %d to %d epochs", path, scheduler.T_max, epochs)
    # PyTorch's recursive form telescopes from the current rate, so the rest of the curve is
    # lr_now * (1 + cos(pi * e / epochs)) / (1 + cos(pi * e_now / epochs)), which is 0 at e = epochs.
    scheduler.T_max = epochs
