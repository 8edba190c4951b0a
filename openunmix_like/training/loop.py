"""The training loop: epochs of optimisation steps, validation, and the run that strings them together."""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Callable, Iterator, Optional, Sequence, Tuple, TypeVar

import torch
from torch import Tensor, nn

from ..errors import OpenUnmixLikeError
from ..losses import SILENT_POWER
from ..progress import bar as progress_bar
from .checkpoint import (checkpoint_path, find_resume_checkpoint, load_checkpoint, restore_device_rng_state,
                         save_epoch, save_start, save_step_checkpoint)
from .config import TrainConfig
from .context import Context, EpochProgress, evaluated_model
from .distributed import all_reduce_sum, broadcast_buffers, is_main, same_on_every_rank, world
from .factory import prepare
from .history import History, record_epoch

log = logging.getLogger(__name__)

R = TypeVar("R")


def keeps_callers_rng(train: Callable[[TrainConfig], R]) -> Callable[[TrainConfig], R]:
    """``train`` with torch's generators put back as they were when it returns or raises.

    A run seeds torch's global generator (initial weights, each epoch's dropout masks): without this a
    program that trains and then draws numbers of its own would draw the run's sequence, whatever it
    had seeded. The CUDA generators kept are those already in use when the run starts.
    """
    @functools.wraps(train)
    def kept(cfg: TrainConfig) -> R:
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            return train(cfg)

    return kept


@keeps_callers_rng
def run(cfg: TrainConfig) -> History:
    """Train ``cfg.target``; returns the history (also written to the output folder)."""
    ctx = prepare(cfg)
    with closing_logs([ctx]):
        first, progress = resume(ctx)
        cfg = ctx.cfg
        if first == 1 and progress is None and cfg.model:
            validate_start(ctx)
        for epoch in range(first, cfg.epochs + 1):
            if should_stop(ctx, epoch):
                break
            finish_epoch(ctx, epoch, *train_epoch(ctx, epoch, progress))
            progress = None
            if ctx.out_of_time:
                if is_main() and not cfg.quiet:
                    log.info("%s", out_of_time_message(ctx, epoch))
                break
    return ctx.history


@contextlib.contextmanager
def closing_logs(contexts: Sequence[Context]) -> Iterator[None]:
    """Close the runs' TensorBoard writers at the end, however it comes. Each holds its event file open and
    a thread of its own: a program that trains several times (a notebook, a sweep) gathered them."""
    try:
        yield
    finally:
        for ctx in contexts:
            if ctx.tensorboard is not None:
                ctx.tensorboard.close()
                ctx.tensorboard = None


def out_of_time_message(ctx: Context, epoch: int) -> str:
    """What a run stopped by ``--max-minutes`` saved, and how to go on."""
    cfg, history = ctx.cfg, ctx.history
    where = cfg.output if cfg.targets else checkpoint_path(cfg)
    return (f"--max-minutes {cfg.max_minutes:g} spent after {history.global_step} steps "
            f"({sum(history.epoch_time) / 60:.2f} minutes of training): stopping; epoch {epoch} is saved as far as "
            f"it got in {where}. --resume auto continues at epoch {epoch + 1}, with a larger "
            "--max-minutes (the budget counts the training time already spent) or without it")


def finish_epoch(ctx: Context, epoch: int, train_loss: Optional[float], seconds: float, data_share: float,
                 samples: int) -> bool:
    """After an epoch's steps: validate, step the schedule, score, record, save and log;
    returns whether the epoch is the best so far. ``train_loss`` is ``None`` when no step was taken
    (every batch skipped for a non-finite loss): recorded as such, and never the best epoch."""
    cfg = ctx.cfg
    if train_loss is None and is_main():
        log.warning("epoch %d of %s: every batch was skipped for a NaN or infinite loss or gradient "
                    "(--nonfinite-loss skip), so no step was taken: its train loss is recorded as null, and it "
                    "cannot be the best epoch", epoch, cfg.target)
    valid_loss = validate(ctx, epoch)
    if cfg.lr_scheduler == "plateau":
        ctx.scheduler.step(valid_loss)
    else:
        ctx.scheduler.step()
    ctx.history.samples.append(samples)
    sdr = score_epoch(ctx, epoch)
    improved = record_epoch(ctx.history, train_loss, valid_loss, ctx.optimizer, seconds, data_share, epoch,
                            cfg.select_by, sdr)
    save_epoch(ctx, epoch, improved)
    if is_main() and not cfg.quiet:
        target = f" {cfg.target}" if cfg.targets else ""
        shown = "-" if train_loss is None else f"{train_loss:.5f}"
        log.info("epoch %d%s: train %s valid %.5f (%.1f s, %.0f %% data loading)%s", epoch, target, shown,
                 valid_loss, seconds, 100 * data_share, " best" if improved else "")
    return improved


def validate_start(ctx: Context) -> None:
    """Before a fine-tune's first step: validate the model it starts from, which the epochs must then beat.

    Its validation loss (and SDR, with ``--eval-every`` or ``--select-by sdr``) is recorded, it is the best
    so far (epoch 0), and its weights are written as the output's model: a fine-tune that never improves on
    its starting model keeps that model rather than the least bad of its epochs."""
    cfg, history = ctx.cfg, ctx.history
    loss = validate(ctx, 0)
    sdr = validate_sdr(ctx, 0)[0] if cfg.eval_every or cfg.select_by == "sdr" else None
    history.start_loss, history.start_sdr = loss, sdr
    if cfg.select_by == "sdr":
        if sdr is not None:
            history.best_sdr, history.best_loss = sdr, loss
    else:
        history.best_loss = loss
    if not is_main():
        return
    save_start(ctx)
    if not cfg.quiet:
        scored = f", validation SDR {sdr:.3f} dB" if sdr is not None else ""
        log.info("%s: the starting model (%s) has a validation loss of %.5f%s; it stays the model until an epoch "
                 "does better", cfg.target, cfg.model, loss, scored)


def resume(ctx: Context) -> Tuple[int, Optional[EpochProgress]]:
    """The epoch to start at, and the progress within it, from the checkpoint to resume (if any)."""
    cfg = ctx.cfg
    path = find_resume_checkpoint(cfg)
    first, progress = load_checkpoint(ctx, path) if path is not None else (1, None)
    if not same_on_every_rank([first, progress.items if progress else -1, ctx.history.global_step]):
        raise OpenUnmixLikeError(f"--output {cfg.output}: the torchrun processes found different checkpoints to "
                                 f"resume from (rank {world()[0]}: {path or 'none'}); on several machines, give "
                                 "an --output they all share")
    if path is None:
        return 1, None
    if is_main() and not cfg.quiet:
        where = f", batch {progress.batches + 1}" if progress else ""
        log.info("resuming from %s at epoch %d%s", path, first, where)
        if cfg.stop_after and first > cfg.stop_after:
            log.info("%s: epoch %d is trained already (--stop-after %d): nothing to do", path, cfg.stop_after,
                     cfg.stop_after)
    return first, progress


def should_stop(ctx: Context, epoch: int) -> bool:
    """Before ``epoch``: early stopping (``--patience``), the time budget, or ``--stop-after``.

    Patience counts from the best epoch, or from the start when no epoch has been the best yet
    (every epoch skipped, or no validation SDR with ``--select-by sdr``)."""
    cfg, history = ctx.cfg, ctx.history
    say = is_main() and not cfg.quiet
    if history.train_loss and epoch - history.best_epoch > cfg.patience:
        if say:
            since = f"since epoch {history.best_epoch}" if history.best_epoch else "in any epoch"
            log.info("%s: no better validation %s %s (--patience %d): stopping before epoch %d", cfg.target,
                     "SDR" if cfg.select_by == "sdr" else "loss", since, cfg.patience, epoch)
        return True
    if cfg.max_minutes and budget_spent(ctx, 0.0):
        if say:
            log.info("%s: --max-minutes %g is spent already (%.2f minutes trained): nothing to do before epoch %d; "
                     "give a larger --max-minutes to train on", cfg.target, cfg.max_minutes,
                     sum(history.epoch_time) / 60, epoch)
        return True
    return bool(cfg.stop_after and epoch > cfg.stop_after)


def score_epoch(ctx: Context, epoch: int) -> Optional[float]:
    """Every ``--eval-every`` epochs, the validation SDR and SI-SDR (recorded); returns the SDR or ``None``."""
    cfg = ctx.cfg
    scored = bool(cfg.eval_every) and epoch % cfg.eval_every == 0
    metric = validate_sdr(ctx, epoch) if scored else (None, None)
    if scored and metric[0] is None:
        what = f"the {cfg.target} target is silent in every validation track, so no SDR can be computed"
        if cfg.select_by == "sdr":
            raise OpenUnmixLikeError(f"--select-by sdr: {what}; validate on tracks that hold it, or use "
                                     "--select-by loss")
        if is_main():
            log.warning("epoch %d: %s (--eval-every %d): recorded as null", epoch, what, cfg.eval_every)
    ctx.history.valid_sdr.append(metric[0])
    ctx.history.valid_si_sdr.append(metric[1])
    if metric[0] is not None and is_main() and not cfg.quiet:
        log.info("epoch %d: validation SDR (MDX definition) %.2f dB, SI-SDR %.2f dB", epoch, *metric)
    return metric[0]


# What a loader worker unpickles its data set with; imported once by the forkserver's server.
WORKER_MODULES = ["openunmix_like.data"]


@functools.lru_cache(maxsize=None)
def preload_forkserver() -> None:
    """Where loader workers start from a forkserver (Python 3.14's default on Linux), have its server import
    the data set's modules, torch with them, once: each epoch's new workers then start without importing
    torch again (measured: an epoch of 2 workers on a tiny data set cost 4.3 s more than with fork, mostly
    those imports). Without effect once a forkserver runs, and where workers are forked or spawned."""
    import multiprocessing

    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    if method == "forkserver":
        multiprocessing.set_forkserver_preload(WORKER_MODULES)


def loader(ctx: Context, dataset, epoch: int, train: bool, skip: int = 0) -> torch.utils.data.DataLoader:
    """This rank's batches of one epoch (see :class:`StepBatches`); ``skip`` leaves out the first items of the
    epoch's order (resuming mid-epoch). Validation: rank r takes items r, r + ranks, ..., one at a time."""
    rank, size = world()
    if ctx.cfg.nb_workers:
        preload_forkserver()
    dataset.set_epoch(epoch if train else 0)  # validation: the same items every epoch
    if train:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(ctx.cfg.seed + epoch)).tolist()
        batches = StepBatches(order[skip:], ctx.cfg.batch_size, rank, size)
    else:
        batches = [[index] for index in range(rank, len(dataset), size)]
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=ctx.cfg.nb_workers,
        pin_memory=ctx.device.type == "cuda" and dataset.preloaded is None,
    )


class StepBatches(torch.utils.data.Sampler):
    """One rank's training batches of an epoch whose items come in ``order`` (a permutation drawn from
    ``(seed, epoch)``, the same whatever the number of ranks).

    Each step takes the next ``batch_size`` x ranks items of ``order`` and deals them out (its item k
    to rank k mod ranks), so that together the ranks see each item once per epoch, as one process
    does, and all take the same number of steps. A rank the last step leaves without an item repeats
    one with a loss weight of 0. ``weights`` scale each step's loss so that the gradients DDP averages
    over the ranks are the mean over the step's items; ``counts``: the items of each batch that count,
    ``taken``: the items of ``order`` each step uses up (all ranks together).
    """

    def __init__(self, order, batch_size: int, rank: int = 0, size: int = 1):
        self.batches, self.weights, self.counts, self.taken = [], [], [], []
        for first in range(0, len(order), batch_size * size):
            items = order[first: first + batch_size * size]
            mine = items[rank::size]
            self.batches.append(mine or items[:1])
            self.counts.append(len(mine))
            self.weights.append(len(mine) * size / len(items))
            self.taken.append(len(items))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def augment_seed(cfg: TrainConfig, epoch: int) -> int:
    return (cfg.seed * 1_000_003 + epoch) * 1_009 + world()[0]


def dropout_seed(cfg: TrainConfig, epoch: int) -> int:
    """The seed of an epoch's dropout draws: ``seed + epoch`` in one process and on rank 0; the other
    ranks draw their own masks (the same ones would drop the same units of their different items)."""
    return cfg.seed + epoch + 1_000_003 * world()[0]


def train_epoch(ctx: Context, epoch: int,
                resume: Optional[EpochProgress] = None) -> Tuple[Optional[float], float, float, int]:
    """One pass over the training set: mean loss (``None`` when no step was taken), seconds, share of time
    spent waiting for data, and the number of samples all ranks together trained on. ``resume`` continues an epoch
    that a step checkpoint interrupted."""
    ctx.model.train()
    progress = resume or EpochProgress()
    batches = loader(ctx, ctx.train_set, epoch, train=True, skip=progress.items)
    plan = batches.batch_sampler
    if resume is None:
        torch.manual_seed(dropout_seed(ctx.cfg, epoch))  # dropout draws, reproducible per epoch
        ctx.generator.manual_seed(augment_seed(ctx.cfg, epoch))
        iterator = iter(batches)
    else:
        # Starting the iterator draws a worker seed: restore the states after it, as they were saved.
        iterator = iter(batches)
        torch.set_rng_state(resume.rng_state)
        restore_device_rng_state(resume, ctx.device)  # dropout on CUDA draws from the device's generator
        ctx.generator.set_state(resume.generator_state)
    start = last = time.perf_counter()
    before = progress.seconds  # an interrupted epoch's time counts, as its data-loading time does
    quiet = ctx.cfg.quiet or not is_main()
    with progress_bar(not quiet, iterator, total=len(batches), desc=f"epoch {epoch}", leave=False) as bar:
        for k, (x, y) in enumerate(bar):
            batch = progress.batches + 1
            progress.data_time += time.perf_counter() - last
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            if train_batch(ctx, x, y, epoch, batch, progress, count=plan.counts[k], weight=plan.weights[k]):
                bar.set_postfix(loss=f"{progress.total / max(progress.count, 1):.4f}")
            progress.batches, progress.items = batch, progress.items + plan.taken[k]
            if ctx.cfg.ckpt_every and ctx.history.global_step % ctx.cfg.ckpt_every == 0:
                progress.seconds = before + time.perf_counter() - start
                save_step_checkpoint(ctx, epoch, progress)
            if ctx.cfg.max_minutes and budget_spent(ctx, before + time.perf_counter() - start):
                ctx.out_of_time = True
                break
            last = time.perf_counter()
    total, count = all_reduce_sum([progress.total, progress.count])
    elapsed = before + time.perf_counter() - start
    return mean_loss(total, count), elapsed, progress.data_time / max(elapsed, 1e-9), int(count)


def mean_loss(total: float, count: int) -> Optional[float]:
    """An epoch's mean training loss; ``None`` when no step was taken (every batch skipped as non-finite),
    rather than a 0.0 that would look like a perfect epoch."""
    return total / count if count else None


def train_batch(ctx: Context, x: Tensor, y: Tensor, epoch: int, batch: int, progress: EpochProgress,
                mix_stft: Optional[Tensor] = None, count: Optional[int] = None, weight: float = 1.0) -> bool:
    """Augment, step and count one batch of one model (``progress`` gathers its loss); returns
    whether the step was taken (``False``: a non-finite loss or gradient, reported). ``count``: the
    items of the batch that count (all by default), ``weight``: the loss weight (see :class:`StepBatches`)."""
    if ctx.batch_augment:
        x, y = ctx.batch_augment(x, y, ctx.generator)
    note_levels(ctx, x)
    count = x.shape[0] if count is None else count
    loss = step(ctx, x, y, mix_stft=mix_stft, **({} if weight == 1.0 else {"weight": weight}))
    ctx.history.global_step += 1
    if loss is None:
        handle_nonfinite(ctx.cfg, epoch, batch)
        return False
    if ctx.average is not None:
        ctx.average.update(ctx.model)
    progress.total += loss * count
    progress.count += count
    return True


LEVEL_SAMPLES = 256  # training mixtures whose level is measured (the first ones each process draws)


def note_levels(ctx: Context, x: Tensor) -> None:
    """Measure the levels of the batch's mixtures, as the model sees them, until :data:`LEVEL_SAMPLES` are
    known (a median over that many excerpts moves by tenths of a dB). Not for aligned pairs: a model that
    processes its input (a compressor) depends on its level by design, and level matching would change what
    it does."""
    if len(ctx.levels) >= LEVEL_SAMPLES or ctx.cfg.dataset == "aligned":
        return
    from ..level import track_level

    with torch.no_grad():
        for mixture in x[: LEVEL_SAMPLES - len(ctx.levels)]:
            measured = track_level(mixture.float(), ctx.settings.sample_rate)
            if measured is not None:
                ctx.levels.append(measured)


def budget_spent(ctx: Context, epoch_seconds: float) -> bool:
    """Whether the training time of the finished epochs plus ``epoch_seconds`` exceeds ``--max-minutes``.

    Under DDP the ranks agree (one small all-reduce per step), so that all stop at the same batch.
    """
    spent = sum(ctx.history.epoch_time) + epoch_seconds > 60.0 * ctx.cfg.max_minutes
    return all_reduce_sum([float(spent)])[0] > 0


def step(ctx: Context, x: Tensor, y: Tensor, mix_stft: Optional[Tensor] = None,
         weight: float = 1.0) -> Optional[float]:
    """One optimisation step on a batch; returns its loss, or ``None`` (weights untouched)
    when the loss or a gradient is NaN or infinite. ``mix_stft``: the mixtures' STFT, when
    several models share it; ``weight``: what the loss is scaled by for the gradient."""
    ctx.optimizer.zero_grad(set_to_none=True)
    amp = ctx.scaler is not None  # loss scaling: fp16, or bf16 on CUDA (see factory.loss_scaler)
    with torch.autocast(device_type=x.device.type, dtype=ctx.autocast or torch.float32, enabled=bool(ctx.autocast)):
        loss = ctx.objective(ctx.model, x, y, mix_stft=mix_stft)
    # Backward first, then one look at the loss (and, without loss scaling, at every gradient): on a GPU each
    # look waits for the work queued before it, and a look before backward() kept the backward from being
    # queued while the forward ran. Every rank runs backward (its gradient all-reduce), and all skip together.
    (ctx.scaler.scale(loss * weight) if amp else loss * weight).backward()
    bad = ~torch.isfinite(loss.detach())
    if not amp:  # the scaler skips steps with non-finite gradients (fp16 overflow) by design
        grads = [p.grad for p in ctx.model.parameters() if p.grad is not None]
        if grads:
            bad = bad | ~torch.stack([torch.isfinite(g).all() for g in grads]).all()
    if all_reduce_sum([float(bad)])[0] > 0:
        ctx.optimizer.zero_grad(set_to_none=True)
        return None
    clip = ctx.cfg.clip_grad
    if amp:
        if clip > 0:
            ctx.scaler.unscale_(ctx.optimizer)
            nn.utils.clip_grad_norm_(ctx.model.parameters(), clip)
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        return float(loss.detach())
    if clip > 0:
        nn.utils.clip_grad_norm_(ctx.model.parameters(), clip)
    ctx.optimizer.step()
    return float(loss.detach())


def handle_nonfinite(cfg: TrainConfig, epoch: int, batch: int) -> None:
    """Report a batch whose loss or gradients were not finite; stop if asked to."""
    target = f" of {cfg.target}" if cfg.targets else ""  # with --targets, which model
    where = f"epoch {epoch}, batch {batch}{target}: NaN or infinite loss or gradient"
    if cfg.nonfinite == "stop":
        raise OpenUnmixLikeError(f"{where}; stopped (--nonfinite-loss stop). The last checkpoint is intact: "
                                 "check the data, then resume with --resume auto")
    if is_main():  # every rank skips the same batch
        log.warning("%s; batch skipped, weights unchanged (--nonfinite-loss skip)", where)


def validate(ctx: Context, epoch: int) -> float:
    """Mean training loss over the validation set (full tracks where the dataset has them)."""
    model = evaluated_model(ctx).eval()
    broadcast_buffers(model)
    total, count = 0.0, 0
    with torch.inference_mode():
        for x, y in loader(ctx, ctx.valid_set, epoch, train=False):
            x, y = x.to(ctx.device), y.to(ctx.device)
            total += float(ctx.objective(model, x, y)) * x.shape[0]
            count += x.shape[0]
    total, count = all_reduce_sum([total, count])
    return total / max(count, 1)


def validate_sdr(ctx: Context, epoch: int) -> Tuple[Optional[float], Optional[float]]:
    """Mean full-track SDR (Music Demixing Challenge definition) and SI-SDR of the target
    over the validation set, separating with the model alone (mixture phase, no EM). Tracks
    where the target is silent (below -100 dB RMS, e.g. an instrumental for vocals) are left
    out: their SDR is undefined, and its floor of about -70 dB would swamp the mean. ``(None, None)``
    when every track is left out."""
    from ..metrics import sdr_mdx, si_sdr
    from ..separator import Separator

    s = ctx.settings
    model = evaluated_model(ctx).eval()
    broadcast_buffers(model)
    separator = Separator({ctx.cfg.target: model}, niter=0, sample_rate=s.sample_rate, n_fft=s.n_fft,
                          n_hop=s.n_hop, nb_channels=s.nb_channels)
    total_sdr, total_si, count = 0.0, 0.0, 0
    with torch.inference_mode():
        for x, y in loader(ctx, ctx.valid_set, epoch, train=False):
            est = separator(x.to(ctx.device))[:, 0].cpu()
            for ref, out in zip(y, est):
                if float(ref.double().square().mean()) < SILENT_POWER:
                    continue
                total_sdr += sdr_mdx(ref, out)
                total_si += si_sdr(ref, out)
                count += 1
    total_sdr, total_si, count = all_reduce_sum([total_sdr, total_si, count])
    if not count:  # no track to score: no SDR, rather than a 0 dB that looks like one
        return None, None
    return total_sdr / count, total_si / count
