"""Training one target model: data, statistics, epochs, validation, checkpoints.

``umx-train`` parses its options into a :class:`TrainConfig` and calls
:func:`run`. The output folder follows the reference layout (``<target>.pth``,
``<target>.json``, ``<target>.chkpnt``, ``separator.json``) plus
``<target>.safetensors`` and a per-epoch ``<target>.csv``; every file is written
atomically, so a run killed at any moment leaves loadable files, and training
several targets into one folder gives a folder the separator loads directly.

Runs under ``torchrun`` use DistributedDataParallel (gloo on CPU, nccl on
CUDA): each rank trains on its own shard of the samples and only rank 0 writes.

The architecture (``--arch``, see :mod:`openunmix_like.architectures`) and the
loss (``--loss``, see :mod:`openunmix_like.losses`) are chosen per run; with
``--ckpt-every N`` the trainer also writes a resumable checkpoint every N
steps into ``<output>/checkpoints/``. With ``--ema DECAY`` it keeps an
exponential moving average of the weights beside them; validation, the choice
of the best epoch and the saved model then use the average.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import glob
import io
import logging
import math
import os
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import architectures, data
from .augment import BatchCompose, Compose, split_names
from .errors import ModelError, OpenUnmixLikeError
from .fileio import write_bytes_atomic
from .losses import SILENT_POWER, Objective, parse_loss
from .model import bandwidth_to_max_bin, widen
from .modeldir import AudioSettings, save_metadata, save_target
from .transforms import STFT, ComplexNorm

log = logging.getLogger("openunmix_like.train")
DATASETS = ("musdb", "aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var")
SCHEDULERS = ("plateau", "cosine")
SELECT_BY = ("loss", "sdr")


@dataclasses.dataclass
class TrainConfig:
    """Every option of ``umx-train`` (names as in the reference, so its tools can read ``args``)."""

    # what and where
    target: str = "vocals"
    output: str = "open-unmix"
    checkpoint: Optional[str] = None
    resume: Optional[str] = None
    model: Optional[str] = None
    dataset: str = "musdb"
    root: Optional[str] = None
    # musdb
    is_wav: bool = False
    samples_per_track: int = 64
    # folder datasets
    input_file: Optional[str] = None
    output_file: Optional[str] = None
    target_dir: Optional[str] = None
    interferer_dirs: Optional[List[str]] = None
    target_file: Optional[str] = None
    interferer_files: Optional[List[str]] = None
    ext: str = ".wav"
    nb_train_samples: int = 1000
    nb_valid_samples: int = 100
    random_track_mix: bool = False
    silence_missing_targets: bool = False
    random_interferer_mix: bool = False
    source_augmentations: Optional[List[str]] = None
    sample_rate: int = 44100
    # optimisation
    epochs: int = 1000
    batch_size: int = 16
    patience: int = 140
    seq_dur: float = 6.0
    lr: float = 0.001
    lr_decay_patience: int = 80
    lr_decay_gamma: float = 0.3
    weight_decay: float = 0.00001
    # optimisation (schedules, clipping, step checkpoints)
    lr_scheduler: str = "plateau"
    clip_grad: float = 0.0
    ema: float = 0.0  # decay per step of the weight average that is validated and saved (0: off)
    ckpt_every: int = 0
    ckpt_keep: int = 3
    max_minutes: float = 0.0  # training-time budget (0: none); the run stops mid-epoch when it is spent
    stop_after: int = 0  # last epoch this run trains (0: --epochs); the schedule still spans --epochs
    # model
    arch: str = "umx"
    arch_args: Optional[List[str]] = None
    loss: Optional[str] = None  # None: the architecture's default (mse for umx)
    preset: Optional[str] = None  # recorded only; the preset's values are in the fields
    unidirectional: bool = False
    hidden_size: Optional[int] = None  # None: the architecture's default (512 for umx); with --model: widen to it
    lstm_dropout: Optional[float] = None  # umx: dropout between LSTM layers (None: the model's, 0.4)
    nfft: int = 4096
    nhop: int = 1024
    bandwidth: float = 16000
    nb_channels: int = 2
    # validation metric
    eval_every: int = 0
    select_by: str = "loss"  # what picks the best epoch: the validation loss, or the validation SDR (eval_every)
    # what to do when a batch gives a NaN or infinite loss or gradient: skip the batch or stop
    nonfinite: str = "skip"
    # running
    nb_workers: int = 0
    quiet: bool = False
    seed: int = 42
    no_cuda: bool = False
    device: Optional[str] = None

    def augmentation_names(self) -> List[str]:
        names = self.source_augmentations
        if names is None:
            names = [] if self.dataset == "aligned" else ["gain", "channelswap"]
        return list(names)

    def augmentations(self) -> Compose:
        """The source augmentations, applied by the data set to every source."""
        return Compose.from_names(split_names(self.augmentation_names())[0])

    def batch_augmentations(self) -> BatchCompose:
        """The batch augmentations (masking, mixup), applied by the training step."""
        return BatchCompose.from_names(split_names(self.augmentation_names())[1], self.nfft, self.nhop)


@dataclasses.dataclass
class History:
    train_loss: List[float] = dataclasses.field(default_factory=list)
    valid_loss: List[float] = dataclasses.field(default_factory=list)
    lr: List[float] = dataclasses.field(default_factory=list)
    epoch_time: List[float] = dataclasses.field(default_factory=list)
    data_share: List[float] = dataclasses.field(default_factory=list)
    samples: List[int] = dataclasses.field(default_factory=list)
    valid_sdr: List[Optional[float]] = dataclasses.field(default_factory=list)
    valid_si_sdr: List[Optional[float]] = dataclasses.field(default_factory=list)
    best_loss: float = math.inf
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
            "train_loss_history": self.train_loss,
            "valid_loss_history": self.valid_loss,
            "lr_history": self.lr,
            "train_time_history": self.epoch_time,
            "data_loading_share_history": self.data_share,
            "samples_history": self.samples,
            # Fast metrics (not BSSEval), every --eval-every epochs, else null.
            "valid_sdr_mdx_history": self.valid_sdr,
            "valid_si_sdr_history": self.valid_si_sdr,
        }


# ---------------------------------------------------------------- data


def build_datasets(cfg: TrainConfig) -> Tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """Training and validation datasets for ``cfg.dataset``."""
    if cfg.root is None:
        raise OpenUnmixLikeError("--root is required: the folder holding the dataset")
    common = dict(sample_rate=cfg.sample_rate, nb_channels=cfg.nb_channels, seed=cfg.seed)
    train_kw = dict(common, seq_duration=cfg.seq_dur, source_augmentations=cfg.augmentations())
    valid_kw = dict(common, seq_duration=None, random_chunks=False)
    if cfg.dataset == "musdb":
        args = dict(root=cfg.root, target=cfg.target, is_wav=cfg.is_wav)
        return (data.MUSDBDataset(split="train", samples_per_track=cfg.samples_per_track,
                                  random_track_mix=True, **args, **train_kw),
                data.MUSDBDataset(split="valid", **args, **valid_kw))
    if cfg.dataset == "aligned":
        _require(cfg, "input_file", "output_file")
        args = dict(root=cfg.root, input_file=cfg.input_file, output_file=cfg.output_file)
        train_kw.pop("source_augmentations")
        return data.AlignedDataset(split="train", **args, **train_kw), data.AlignedDataset(split="valid", **args,
                                                                                            **valid_kw)
    if cfg.dataset == "sourcefolder":
        _require(cfg, "target_dir", "interferer_dirs")
        args = dict(root=cfg.root, target_dir=cfg.target_dir, interferer_dirs=cfg.interferer_dirs, ext=cfg.ext)
        valid_kw.update(seq_duration=cfg.seq_dur)
        return (data.SourceFolderDataset(split="train", nb_samples=cfg.nb_train_samples, **args, **train_kw),
                data.SourceFolderDataset(split="valid", nb_samples=cfg.nb_valid_samples, **args, **valid_kw))
    if cfg.dataset == "trackfolder_fix":
        _require(cfg, "target_file", "interferer_files")
        args = dict(root=cfg.root, target_file=cfg.target_file, interferer_files=cfg.interferer_files)
        return (data.FixedSourcesTrackFolderDataset(split="train", random_track_mix=cfg.random_track_mix,
                                                    **args, **train_kw),
                data.FixedSourcesTrackFolderDataset(split="valid", **args, **valid_kw))
    if cfg.dataset == "trackfolder_var":
        _require(cfg, "target_file")
        args = dict(root=cfg.root, target_file=cfg.target_file, ext=cfg.ext,
                    silence_missing_targets=cfg.silence_missing_targets)
        return (data.VariableSourcesTrackFolderDataset(split="train", random_interferer_mix=cfg.random_interferer_mix,
                                                       **args, **train_kw),
                data.VariableSourcesTrackFolderDataset(split="valid", **args, **valid_kw))
    raise OpenUnmixLikeError(f"--dataset {cfg.dataset!r}: choose one of {', '.join(DATASETS)}")


def _require(cfg: TrainConfig, *names: str) -> None:
    missing = [n for n in names if not getattr(cfg, n)]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise OpenUnmixLikeError(f"--dataset {cfg.dataset} needs {flags}")


def input_statistics(dataset, n_fft: int, n_hop: int, limit: int = 1000) -> Tuple[Tensor, Tensor]:
    """Per-bin mean and standard deviation of the mono training magnitudes (no augmentation).

    The standard deviation is floored at 1e-4 of its largest value so silent
    bins do not blow the input scale up.
    """
    stft, norm = STFT(n_fft, n_hop), ComplexNorm(mono=True)
    total = torch.zeros(n_fft // 2 + 1, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    with torch.inference_mode():
        for mixture in dataset.iter_mixtures(limit):
            mag = norm(stft(mixture[None]))[0, 0].double()  # (nb_bins, nb_frames)
            total += mag.sum(dim=1)
            total_sq += mag.square().sum(dim=1)
            count += mag.shape[1]
    if count == 0:
        raise OpenUnmixLikeError("the training set yielded no audio for the input statistics")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    std = torch.maximum(std, 1e-4 * std.max())
    return mean.float(), std.float()


# ---------------------------------------------------------------- model


def build_model(cfg: TrainConfig, train_set, device: torch.device) -> Tuple[nn.Module, AudioSettings]:
    """A fresh model with the training set's statistics, or a pretrained one to fine-tune.

    Sets ``cfg.hidden_size`` (and, when fine-tuning, ``cfg.arch`` and the STFT
    settings) to what the model uses, so the recorded ``args`` are complete.
    """
    if cfg.model:
        model, settings = load_pretrained(cfg, device)
        return set_lstm_dropout(cfg, model), settings
    arch = architectures.get(cfg.arch)
    settings = AudioSettings(float(cfg.sample_rate), cfg.nfft, cfg.nhop, cfg.nb_channels)
    torch.manual_seed(cfg.seed)
    model = arch.build(**model_args(cfg, arch))
    cfg.hidden_size = model.config.hidden_size
    if arch.input_stats:
        mean, std = broadcast_from_rank0(lambda: input_statistics(train_set, cfg.nfft, cfg.nhop), cfg.nfft // 2 + 1)
        model.set_input_stats(mean, std)
    return set_lstm_dropout(cfg, model).to(device), settings


def set_lstm_dropout(cfg: TrainConfig, model: nn.Module) -> nn.Module:
    """Apply ``--lstm-dropout`` (a training setting: it is not part of the saved model)."""
    if cfg.lstm_dropout is not None:
        if not isinstance(getattr(model, "lstm", None), nn.LSTM):
            raise ModelError(f"--lstm-dropout: the {cfg.arch!r} model has no LSTM; drop the option")
        model.lstm.dropout = float(cfg.lstm_dropout)
    return model


def model_args(cfg: TrainConfig, arch: architectures.Architecture) -> dict:
    """Constructor arguments from the options: shared ones, then ``--arch-args``."""
    if arch.name == "umx":
        args = dict(nb_bins=cfg.nfft // 2 + 1, nb_channels=cfg.nb_channels, unidirectional=cfg.unidirectional,
                    max_bin=bandwidth_to_max_bin(cfg.sample_rate, cfg.nfft, cfg.bandwidth))
    else:
        args = dict(nb_channels=cfg.nb_channels)
        if arch.spectral():
            args["nb_bins"] = cfg.nfft // 2 + 1
    if cfg.hidden_size:  # else the architecture's own default (512 for umx)
        args["hidden_size"] = cfg.hidden_size
    args.update(arch.parse_args(cfg.arch_args or []))
    return args


def load_pretrained(cfg: TrainConfig, device: torch.device) -> Tuple[nn.Module, AudioSettings]:
    """The ``--model`` target to fine-tune; its architecture and STFT settings replace the options'."""
    from .pretrained import load_models

    models, settings = load_models(cfg.model, targets=[cfg.target], progress=not cfg.quiet)
    model = models[cfg.target]
    if settings.sample_rate != cfg.sample_rate or settings.nb_channels != cfg.nb_channels:
        raise ModelError(f"--model {cfg.model}: {settings} does not match --nb-channels {cfg.nb_channels} / "
                         f"sample rate {cfg.sample_rate}")
    name = architectures.architecture_of(model).name
    if cfg.arch not in ("umx", name) or cfg.arch_args:
        raise ModelError(f"--model {cfg.model}: its {cfg.target!r} model is a {name!r} model; fine-tuning keeps "
                         "the architecture and its arguments, drop --arch and --arch-args")
    cfg.arch = name
    if cfg.hidden_size and cfg.hidden_size != model.config.hidden_size:
        if name != "umx":
            raise ModelError(f"--model {cfg.model}: --hidden-size widens umx models only; its {cfg.target!r} model "
                             f"is a {name!r} model, drop --hidden-size")
        try:
            model = widen(model, cfg.hidden_size, torch.Generator().manual_seed(cfg.seed))
        except ValueError as exc:
            raise ModelError(f"--model {cfg.model} --hidden-size {cfg.hidden_size}: {exc}") from exc
        if world()[0] == 0 and not cfg.quiet:
            log.info("widened the %s model to hidden size %d (same output at first)", cfg.target, cfg.hidden_size)
    cfg.nfft, cfg.nhop, cfg.hidden_size = settings.n_fft, settings.n_hop, model.config.hidden_size
    if cfg.arch == "umx":
        cfg.unidirectional = model.config.unidirectional
    return model.to(device).train(), settings


# ---------------------------------------------------------------- distributed


def world() -> Tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def setup_distributed(device: torch.device) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def broadcast_from_rank0(compute, nb_bins: int) -> Tuple[Tensor, Tensor]:
    """Compute on rank 0 only and share the result with every rank."""
    rank, size = world()
    if size == 1:
        return compute()
    stats = torch.zeros(2, nb_bins)
    if rank == 0:
        mean, std = compute()
        stats = torch.stack([mean, std])
    torch.distributed.broadcast(stats, src=0)
    return stats[0], stats[1]


def all_reduce_sum(values: List[float]) -> List[float]:
    """Sums over the ranks (the values themselves in a single process)."""
    if world()[1] == 1:
        return values
    on_gpu = torch.distributed.get_backend() == "nccl"  # nccl reduces CUDA tensors only
    t = torch.tensor(values, dtype=torch.float64, device="cuda" if on_gpu else "cpu")
    torch.distributed.all_reduce(t)
    return t.tolist()


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise OpenUnmixLikeError("--device cuda: CUDA is not available on this machine; use --device cpu")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() and not cfg.no_cuda else "cpu")
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


# ---------------------------------------------------------------- epochs


@dataclasses.dataclass
class Context:
    cfg: TrainConfig
    model: nn.Module  # possibly wrapped in DistributedDataParallel
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: Optional[torch.amp.GradScaler]
    device: torch.device
    train_set: torch.utils.data.Dataset
    valid_set: torch.utils.data.Dataset
    settings: AudioSettings
    history: History
    tensorboard: Optional[object] = None
    batch_augment: BatchCompose = dataclasses.field(default_factory=BatchCompose)
    # Randomness of the batch augmentations, re-seeded every epoch.
    generator: torch.Generator = dataclasses.field(default_factory=torch.Generator)
    out_of_time: bool = False  # set when --max-minutes is spent
    average: Optional["WeightAverage"] = None  # with --ema


class WeightAverage:
    """Exponential moving average of a model's weights and batch-norm statistics.

    After every optimisation step each floating-point entry of the state dict
    moves towards the trained model's: ``avg += (1 - decay) * (current - avg)``;
    integer entries (batch counts) are copied. It starts from the weights
    training starts from (a ``--model``'s when fine-tuning), with no warm-up.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(unwrap(model)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = unwrap(model).state_dict()
        for name, avg in self.model.state_dict().items():
            if avg.is_floating_point():
                avg.lerp_(current[name].detach(), 1.0 - self.decay)
            else:
                avg.copy_(current[name])


def evaluated_model(ctx: "Context") -> nn.Module:
    """The model validation scores and the best-model files hold: the weight average with ``--ema``."""
    return ctx.average.model if ctx.average is not None else unwrap(ctx.model)


@dataclasses.dataclass
class EpochProgress:
    """Where a step checkpoint left an epoch: batches done, their summed loss, samples, and
    the random states, so the epoch continues as if it had not been interrupted."""

    batches: int = 0
    total: float = 0.0
    count: int = 0
    data_time: float = 0.0
    rng_state: Optional[Tensor] = None
    generator_state: Optional[Tensor] = None


def loader(ctx: Context, dataset, epoch: int, train: bool, skip: int = 0) -> torch.utils.data.DataLoader:
    """Batches of one epoch; ``skip`` leaves out the first samples of the epoch's order (resuming mid-epoch)."""
    rank, size = world()
    dataset.set_epoch(epoch)
    if size > 1:
        sampler = torch.utils.data.DistributedSampler(dataset, size, rank, shuffle=train, seed=ctx.cfg.seed)
        sampler.set_epoch(epoch)
    elif train:
        generator = torch.Generator().manual_seed(ctx.cfg.seed + epoch)
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    else:
        sampler = torch.utils.data.SequentialSampler(dataset)
    if skip:
        sampler = list(sampler)[skip:]
    return torch.utils.data.DataLoader(
        dataset, batch_size=ctx.cfg.batch_size if train else 1, sampler=sampler,
        num_workers=ctx.cfg.nb_workers, drop_last=False, pin_memory=ctx.device.type == "cuda",
    )


def augment_seed(cfg: TrainConfig, epoch: int) -> int:
    return (cfg.seed * 1_000_003 + epoch) * 1_009 + world()[0]


def train_epoch(ctx: Context, epoch: int, resume: Optional[EpochProgress] = None) -> Tuple[float, float, float, int]:
    """One pass over the training set: mean loss, seconds, share of time spent waiting for data,
    and the number of samples all ranks together trained on. ``resume`` continues an epoch
    that a step checkpoint interrupted."""
    from tqdm import tqdm

    ctx.model.train()
    progress = resume or EpochProgress()
    batches = loader(ctx, ctx.train_set, epoch, train=True, skip=progress.batches * ctx.cfg.batch_size)
    if resume is None:
        torch.manual_seed(ctx.cfg.seed + epoch)  # dropout draws, reproducible per epoch
        ctx.generator.manual_seed(augment_seed(ctx.cfg, epoch))
        iterator = iter(batches)
    else:
        # Starting the iterator draws a worker seed: restore the states after it, as they were saved.
        iterator = iter(batches)
        torch.set_rng_state(resume.rng_state)
        ctx.generator.set_state(resume.generator_state)
    start = last = time.perf_counter()
    quiet = ctx.cfg.quiet or world()[0] != 0
    with tqdm(iterator, total=len(batches), desc=f"epoch {epoch}", disable=quiet, leave=False) as bar:
        for batch, (x, y) in enumerate(bar, start=progress.batches + 1):
            progress.data_time += time.perf_counter() - last
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            if ctx.batch_augment:
                x, y = ctx.batch_augment(x, y, ctx.generator)
            loss = step(ctx, x, y)
            if loss is None:
                handle_nonfinite(ctx.cfg, epoch, batch)
            else:
                if ctx.average is not None:
                    ctx.average.update(ctx.model)
                progress.total += loss * x.shape[0]
                progress.count += x.shape[0]
                bar.set_postfix(loss=f"{progress.total / max(progress.count, 1):.4f}")
            progress.batches = batch
            ctx.history.global_step += 1
            if ctx.cfg.ckpt_every and ctx.history.global_step % ctx.cfg.ckpt_every == 0:
                save_step_checkpoint(ctx, epoch, progress)
            if ctx.cfg.max_minutes and budget_spent(ctx, time.perf_counter() - start):
                ctx.out_of_time = True
                break
            last = time.perf_counter()
    total, count = all_reduce_sum([progress.total, progress.count])
    elapsed = time.perf_counter() - start
    return total / max(count, 1), elapsed, progress.data_time / max(elapsed, 1e-9), int(count)


def budget_spent(ctx: Context, epoch_seconds: float) -> bool:
    """Whether the training time of the finished epochs plus ``epoch_seconds`` exceeds ``--max-minutes``.

    Under DDP the ranks agree (one small all-reduce per step), so that all stop at the same batch.
    """
    spent = sum(ctx.history.epoch_time) + epoch_seconds > 60.0 * ctx.cfg.max_minutes
    return all_reduce_sum([float(spent)])[0] > 0


def step(ctx: Context, x: Tensor, y: Tensor) -> Optional[float]:
    """One optimisation step on a batch; returns its loss, or ``None`` (weights untouched)
    when the loss or a gradient is NaN or infinite."""
    ctx.optimizer.zero_grad(set_to_none=True)
    amp = ctx.scaler is not None
    with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
        loss = ctx.objective(ctx.model, x, y)
    # All ranks skip together: one that left before backward() would keep the others
    # waiting in the gradient all-reduce. (Gradients are all-reduced, so they agree already.)
    if all_reduce_sum([0.0 if torch.isfinite(loss) else 1.0])[0] > 0:
        return None
    clip = ctx.cfg.clip_grad
    if amp:
        # The scaler skips steps with non-finite gradients (fp16 overflow) by design.
        ctx.scaler.scale(loss).backward()
        if clip > 0:
            ctx.scaler.unscale_(ctx.optimizer)
            nn.utils.clip_grad_norm_(ctx.model.parameters(), clip)
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        return float(loss.detach())
    loss.backward()
    if not all(torch.isfinite(p.grad).all() for p in ctx.model.parameters() if p.grad is not None):
        ctx.optimizer.zero_grad(set_to_none=True)
        return None
    if clip > 0:
        nn.utils.clip_grad_norm_(ctx.model.parameters(), clip)
    ctx.optimizer.step()
    return float(loss.detach())


def handle_nonfinite(cfg: TrainConfig, epoch: int, batch: int) -> None:
    """Report a batch whose loss or gradients were not finite; stop if asked to."""
    where = f"epoch {epoch}, batch {batch}: NaN or infinite loss or gradient"
    if cfg.nonfinite == "stop":
        raise OpenUnmixLikeError(f"{where}; stopped (--nonfinite-loss stop). The last checkpoint is intact: "
                                 "check the data, then resume with --resume auto")
    log.warning("%s; batch skipped, weights unchanged (--nonfinite-loss skip)", where)


def validate(ctx: Context, epoch: int) -> float:
    """Mean training loss over the validation set (full tracks where the dataset has them)."""
    model = evaluated_model(ctx).eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for x, y in loader(ctx, ctx.valid_set, epoch, train=False):
            x, y = x.to(ctx.device), y.to(ctx.device)
            total += float(ctx.objective(model, x, y)) * x.shape[0]
            count += x.shape[0]
    total, count = all_reduce_sum([total, count])
    return total / max(count, 1)


def validate_sdr(ctx: Context, epoch: int) -> Tuple[float, float]:
    """Mean full-track SDR (Music Demixing Challenge definition) and SI-SDR of the target
    over the validation set, separating with the model alone (mixture phase, no EM). Tracks
    where the target is silent (below -100 dB RMS, e.g. an instrumental for vocals) are left
    out: their SDR is undefined, and its floor of about -70 dB would swamp the mean."""
    from .metrics import sdr_mdx, si_sdr
    from .separator import Separator

    s = ctx.settings
    model = evaluated_model(ctx).eval()
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
    return total_sdr / max(count, 1), total_si / max(count, 1)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


# ---------------------------------------------------------------- files


def checkpoint_path(cfg: TrainConfig) -> Path:
    return Path(cfg.output) / f"{cfg.target}.chkpnt"


def step_checkpoint_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.output) / "checkpoints"


def save_epoch(ctx: Context, epoch: int, improved: bool) -> None:
    """Rank 0 writes the checkpoint, the best model when it improved, and the logs."""
    if world()[0] != 0:
        return
    cfg, model = ctx.cfg, evaluated_model(ctx)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    extra = {**ctx.history.record(), "args": dataclasses.asdict(cfg)}
    if improved:
        save_target(out, cfg.target, model, ctx.settings, extra=extra)
    else:
        save_metadata(out, cfg.target, model, ctx.settings, extra)
    write_checkpoint(checkpoint_path(cfg), checkpoint_state(ctx, epoch))
    write_csv(out / f"{cfg.target}.csv", ctx.history)
    if ctx.tensorboard is not None:
        h = ctx.history
        for name, values in (("loss/train", h.train_loss), ("loss/valid", h.valid_loss), ("lr", h.lr),
                             ("data_loading_share", h.data_share)):
            ctx.tensorboard.add_scalar(f"{cfg.target}/{name}", values[-1], epoch)
        ctx.tensorboard.flush()


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
    if world()[0] != 0:
        return
    cfg = ctx.cfg
    folder = step_checkpoint_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    state = checkpoint_state(ctx, epoch)
    state["progress"] = {"batches": progress.batches, "total": total, "count": int(count),
                         "data_time": progress.data_time, "rng_state": torch.get_rng_state(),
                         "generator_state": ctx.generator.get_state()}
    write_checkpoint(folder / f"{cfg.target}-step{ctx.history.global_step:08d}.chkpnt", state)
    for old in step_checkpoints(cfg)[: -max(cfg.ckpt_keep, 1)]:
        old.unlink(missing_ok=True)


def step_checkpoints(cfg: TrainConfig) -> List[Path]:
    """This target's step checkpoints, oldest first."""
    folder = step_checkpoint_dir(cfg)
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"{glob.escape(cfg.target)}-step[0-9]*.chkpnt"))


def tensorboard_writer(cfg: TrainConfig):
    """A SummaryWriter under ``<output>/tensorboard`` when TensorBoard is installed (rank 0 only)."""
    if world()[0] != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(Path(cfg.output) / "tensorboard" / cfg.target))


def write_csv(path: Path, history: History) -> None:
    rows = zip(range(1, len(history.train_loss) + 1), history.train_loss, history.valid_loss, history.lr,
               history.epoch_time, history.data_share)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["epoch", "train_loss", "valid_loss", "lr", "epoch_seconds", "data_loading_share"])
    writer.writerows(rows)
    write_bytes_atomic(path, text.getvalue().encode())


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


def read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint
        raise OpenUnmixLikeError(f"{path}: unreadable checkpoint ({exc}); delete it to start over") from exc


def load_checkpoint(ctx: Context, path: Path) -> Tuple[int, Optional[EpochProgress]]:
    """Restore model, optimiser, scheduler and history; return the epoch to start from, and
    for a step checkpoint the progress within it."""
    state = read_checkpoint(path)
    model = unwrap(ctx.model)
    arch = architectures.architecture_of(model).name
    if state.get("architecture", "umx") != arch or (state.get("model_args")
                                                    and state["model_args"] != model.config.to_dict()):
        raise OpenUnmixLikeError(f"{path}: checkpoint of a different model ({state.get('architecture', 'umx')}, "
                                 f"{state.get('model_args')}); use another --output or the same model options")
    if state.get("lr_scheduler", "plateau") != ctx.cfg.lr_scheduler:
        raise OpenUnmixLikeError(f"{path}: checkpoint of a run with --lr-scheduler {state.get('lr_scheduler')}; "
                                 f"resume with the same schedule")
    model.load_state_dict(state["state_dict"])
    if ctx.average is not None:
        if "average" in state:
            ctx.average.model.load_state_dict(state["average"])
        else:
            # A run that did not average before: the average starts here.
            ctx.average.model.load_state_dict(state["state_dict"])
            if world()[0] == 0:
                log.info("%s holds no weight average: --ema starts from its weights", path)
    ctx.optimizer.load_state_dict(state["optimizer"])
    ctx.scheduler.load_state_dict(state["scheduler"])
    first = int(state["epoch"]) + ("progress" not in state)
    if not ctx.cfg.stop_after or first <= ctx.cfg.stop_after:  # a run that trains nothing keeps its schedule
        retarget_cosine(ctx, path)
    ctx.history = History(**state["history"])
    if "progress" not in state:
        return first, None
    progress = EpochProgress(**state["progress"])
    if world()[0] != 0:  # rank 0 carries the epoch's loss so far (summed over all ranks)
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
    if world()[0] == 0:
        log.info("%s: cosine schedule re-targeted from %d to %d epochs", path, scheduler.T_max, epochs)
    # PyTorch's recursive form telescopes from the current rate, so the rest of the curve is
    # lr_now * (1 + cos(pi * e / epochs)) / (1 + cos(pi * e_now / epochs)), which is 0 at e = epochs.
    scheduler.T_max = epochs


# ---------------------------------------------------------------- driver


def run(cfg: TrainConfig) -> History:
    """Train ``cfg.target``; returns the history (also written to the output folder)."""
    check_options(cfg)
    device = pick_device(cfg)
    setup_distributed(device)
    train_set, valid_set = build_datasets(cfg)
    model, settings = build_model(cfg, train_set, device)
    ctx = make_context(cfg, model, settings, device, train_set, valid_set)
    resume = find_resume_checkpoint(cfg)
    first, progress = load_checkpoint(ctx, resume) if resume else (1, None)
    if resume and world()[0] == 0 and not cfg.quiet:
        where = f", batch {progress.batches + 1}" if progress else ""
        log.info("resuming from %s at epoch %d%s", resume, first, where)
    if cfg.stop_after and first > cfg.stop_after and world()[0] == 0 and not cfg.quiet:
        log.info("%s: epoch %d is trained already (--stop-after %d): nothing to do", resume, cfg.stop_after,
                 cfg.stop_after)
    for epoch in range(first, cfg.epochs + 1):
        if epoch - ctx.history.best_epoch > cfg.patience and ctx.history.best_epoch:
            break
        if cfg.max_minutes and budget_spent(ctx, 0.0):
            break
        if cfg.stop_after and epoch > cfg.stop_after:
            break
        train_loss, seconds, data_share, samples = train_epoch(ctx, epoch, progress)
        progress = None
        valid_loss = validate(ctx, epoch)
        if cfg.lr_scheduler == "plateau":
            ctx.scheduler.step(valid_loss)
        else:
            ctx.scheduler.step()
        ctx.history.samples.append(samples)
        metric = validate_sdr(ctx, epoch) if cfg.eval_every and epoch % cfg.eval_every == 0 else (None, None)
        ctx.history.valid_sdr.append(metric[0])
        ctx.history.valid_si_sdr.append(metric[1])
        if metric[0] is not None and world()[0] == 0 and not cfg.quiet:
            log.info("epoch %d: validation SDR (MDX definition) %.2f dB, SI-SDR %.2f dB", epoch, *metric)
        improved = record_epoch(ctx.history, train_loss, valid_loss, ctx.optimizer, seconds, data_share, epoch,
                                cfg.select_by, metric[0])
        save_epoch(ctx, epoch, improved)
        if world()[0] == 0 and not cfg.quiet:
            log.info("epoch %d: train %.5f valid %.5f (%.1f s, %.0f %% data loading)%s", epoch, train_loss,
                     valid_loss, seconds, 100 * data_share, " best" if improved else "")
        if ctx.out_of_time:
            if world()[0] == 0 and not cfg.quiet:
                log.info("--max-minutes %g spent after %d steps: stopping", cfg.max_minutes, ctx.history.global_step)
            break
    return ctx.history


def check_options(cfg: TrainConfig) -> None:
    """Fail on bad architecture, loss, schedule or augmentation options before reading any data."""
    if cfg.lr_scheduler not in SCHEDULERS:
        raise OpenUnmixLikeError(f"--lr-scheduler {cfg.lr_scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    if cfg.clip_grad < 0 or cfg.ckpt_every < 0 or cfg.max_minutes < 0 or cfg.stop_after < 0:
        raise OpenUnmixLikeError("--clip-grad, --ckpt-every, --max-minutes and --stop-after must not be negative")
    if cfg.lstm_dropout is not None and not 0.0 <= cfg.lstm_dropout < 1.0:
        raise OpenUnmixLikeError(f"--lstm-dropout {cfg.lstm_dropout}: give a probability in [0, 1)")
    if cfg.select_by not in SELECT_BY:
        raise OpenUnmixLikeError(f"--select-by {cfg.select_by!r}: choose one of {', '.join(SELECT_BY)}")
    if cfg.eval_every < 0:
        raise OpenUnmixLikeError(f"--eval-every {cfg.eval_every}: give a number of epochs (0: never)")
    if cfg.select_by == "sdr" and not cfg.eval_every:
        cfg.eval_every = 1  # the choice needs the SDR: every epoch unless --eval-every says otherwise
    if cfg.select_by == "sdr" and cfg.eval_every > cfg.epochs:
        raise OpenUnmixLikeError(f"--select-by sdr with --eval-every {cfg.eval_every} above --epochs {cfg.epochs}: "
                                 "no epoch would be scored; give a smaller --eval-every")
    if not 0.0 <= cfg.ema < 1.0:
        raise OpenUnmixLikeError(f"--ema {cfg.ema}: give a decay in [0, 1), e.g. 0.99 (0: no weight average)")
    if not cfg.model:
        arch = architectures.get(cfg.arch)
        arch.parse_args(cfg.arch_args or [])
        if cfg.arch_args and cfg.hidden_size is not None and any(
                a.split("=")[0].strip() == "hidden_size" for a in cfg.arch_args):
            raise OpenUnmixLikeError("give the width once: --hidden-size or --arch-args hidden_size=...")
    if cfg.loss:
        parse_loss(cfg.loss)
    split_names(cfg.augmentation_names())


def make_context(cfg, model, settings, device, train_set, valid_set) -> Context:
    arch = architectures.architecture_of(model)
    cfg.loss = cfg.loss or arch.default_loss
    objective = Objective(parse_loss(cfg.loss), arch.domain, settings.n_fft, settings.n_hop,
                          mono=settings.nb_channels == 1).to(device)
    wrapped = model
    if world()[1] > 1:
        ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    ctx = Context(cfg, wrapped, objective, optimizer, make_scheduler(cfg, optimizer), scaler, device, train_set,
                  valid_set, settings, History(), tensorboard_writer(cfg), cfg.batch_augmentations())
    if cfg.ema:
        ctx.average = WeightAverage(model, cfg.ema)
    return ctx


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """``plateau``: decay by ``--lr-decay-gamma`` after ``--lr-decay-patience`` epochs without a better
    validation loss (Open-Unmix); ``cosine``: cosine annealing from ``--lr`` to 0 over ``--epochs``."""
    if cfg.lr_scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=cfg.lr_decay_gamma, patience=cfg.lr_decay_patience, cooldown=10)


def record_epoch(history: History, train_loss, valid_loss, optimizer, seconds, data_share, epoch,
                 select_by: str = "loss", sdr: Optional[float] = None) -> bool:
    """Append the epoch to ``history``; return whether it is the best so far: the lowest validation
    loss, or with ``select_by="sdr"`` the highest validation SDR (an epoch without one, between
    ``--eval-every`` epochs, is never best), ``best_loss`` then being the validation loss of that epoch."""
    history.train_loss.append(train_loss)
    history.valid_loss.append(valid_loss)
    history.lr.append(optimizer.param_groups[0]["lr"])
    history.epoch_time.append(seconds)
    history.data_share.append(data_share)
    if select_by == "sdr":
        improved = sdr is not None and sdr > history.best_sdr
        if improved:
            history.best_sdr = sdr
    else:
        improved = valid_loss < history.best_loss
    if improved:
        history.best_loss, history.best_epoch, history.best_step = valid_loss, epoch, history.global_step
    return improved


@contextlib.contextmanager
def distributed_session():
    """Tear the process group down when training ends (no-op without torchrun).

    Ranks first wait for each other, so none closes its connections while rank 0
    is still writing the last epoch's files or another rank is mid-collective.
    """
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if not failed:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()
