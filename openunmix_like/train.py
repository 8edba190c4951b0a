"""Training one target model: data, statistics, epochs, validation, checkpoints.

``umx-train`` parses its options into a :class:`TrainConfig` and calls
:func:`run`. The output folder follows the reference layout (``<target>.pth``,
``<target>.json``, ``<target>.chkpnt``, ``separator.json``) plus
``<target>.safetensors`` and a per-epoch ``<target>.csv``; every file is written
atomically, so a run killed at any moment leaves loadable files, and training
several targets into one folder gives a folder the separator loads directly.

Runs under ``torchrun`` use DistributedDataParallel (gloo on CPU, nccl on
CUDA): each rank trains on its own shard of the samples and only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import math
import os
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import data
from .augment import Compose
from .errors import ModelError, OpenUnmixLikeError
from .fileio import write_bytes_atomic, write_json_atomic
from .model import OpenUnmix, bandwidth_to_max_bin
from .modeldir import AudioSettings, save_target, target_metadata, update_separator_json
from .transforms import STFT, ComplexNorm

log = logging.getLogger("openunmix_like.train")
DATASETS = ("musdb", "aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var")


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
    # model
    unidirectional: bool = False
    hidden_size: int = 512
    nfft: int = 4096
    nhop: int = 1024
    bandwidth: float = 16000
    nb_channels: int = 2
    # validation metric
    eval_every: int = 0
    # what to do when a batch gives a NaN or infinite loss or gradient: skip the batch or stop
    nonfinite: str = "skip"
    # running
    nb_workers: int = 0
    quiet: bool = False
    seed: int = 42
    no_cuda: bool = False
    device: Optional[str] = None

    def augmentations(self) -> Compose:
        names = self.source_augmentations
        if names is None:
            names = [] if self.dataset == "aligned" else ["gain", "channelswap"]
        return Compose.from_names(names)


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
    best_epoch: int = 0

    def record(self) -> dict:
        """The ``<target>.json`` training fields (reference names)."""
        return {
            "epochs_trained": len(self.train_loss),
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
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


class Spectrogram(nn.Module):
    """Audio ``(nb_samples, nb_channels, nb_timesteps)`` -> magnitude ``(..., nb_bins, nb_frames)``."""

    def __init__(self, n_fft: int, n_hop: int, mono: bool = False):
        super().__init__()
        self.stft = STFT(n_fft, n_hop)
        self.norm = ComplexNorm(mono=mono)

    def forward(self, audio: Tensor) -> Tensor:
        return self.norm(self.stft(audio))


def input_statistics(dataset, n_fft: int, n_hop: int, limit: int = 1000) -> Tuple[Tensor, Tensor]:
    """Per-bin mean and standard deviation of the mono training magnitudes (no augmentation).

    The standard deviation is floored at 1e-4 of its largest value so silent
    bins do not blow the input scale up.
    """
    spec = Spectrogram(n_fft, n_hop, mono=True)
    total = torch.zeros(n_fft // 2 + 1, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    with torch.inference_mode():
        for mixture in dataset.iter_mixtures(limit):
            mag = spec(mixture[None])[0, 0].double()  # (nb_bins, nb_frames)
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


def build_model(cfg: TrainConfig, train_set, device: torch.device) -> Tuple[OpenUnmix, AudioSettings]:
    """A fresh model with the training set's statistics, or a pretrained one to fine-tune."""
    if cfg.model:
        from .pretrained import load_models

        models, settings = load_models(cfg.model, targets=[cfg.target], progress=not cfg.quiet)
        model = models[cfg.target]
        if settings.sample_rate != cfg.sample_rate or settings.nb_channels != cfg.nb_channels:
            raise ModelError(f"--model {cfg.model}: {settings} does not match --nb-channels {cfg.nb_channels} / "
                             f"sample rate {cfg.sample_rate}")
        cfg.nfft, cfg.nhop, cfg.hidden_size = settings.n_fft, settings.n_hop, model.config.hidden_size
        cfg.unidirectional = model.config.unidirectional
        return model.to(device).train(), settings
    settings = AudioSettings(float(cfg.sample_rate), cfg.nfft, cfg.nhop, cfg.nb_channels)
    max_bin = bandwidth_to_max_bin(cfg.sample_rate, cfg.nfft, cfg.bandwidth)
    torch.manual_seed(cfg.seed)
    model = OpenUnmix(nb_bins=cfg.nfft // 2 + 1, nb_channels=cfg.nb_channels, hidden_size=cfg.hidden_size,
                      unidirectional=cfg.unidirectional, max_bin=max_bin)
    mean, std = broadcast_from_rank0(lambda: input_statistics(train_set, cfg.nfft, cfg.nhop), cfg.nfft // 2 + 1)
    model.set_input_stats(mean, std)
    return model.to(device), settings


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
    if world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
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
    spectrogram: Spectrogram
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: Optional[torch.amp.GradScaler]
    device: torch.device
    train_set: torch.utils.data.Dataset
    valid_set: torch.utils.data.Dataset
    settings: AudioSettings
    history: History
    tensorboard: Optional[object] = None


def loader(ctx: Context, dataset, epoch: int, train: bool) -> torch.utils.data.DataLoader:
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
    return torch.utils.data.DataLoader(
        dataset, batch_size=ctx.cfg.batch_size if train else 1, sampler=sampler,
        num_workers=ctx.cfg.nb_workers, drop_last=False, pin_memory=ctx.device.type == "cuda",
    )


def train_epoch(ctx: Context, epoch: int) -> Tuple[float, float, float, int]:
    """One pass over the training set: mean loss, seconds, share of time spent waiting for data,
    and the number of samples all ranks together trained on."""
    from tqdm import tqdm

    ctx.model.train()
    torch.manual_seed(ctx.cfg.seed + epoch)  # dropout draws, reproducible per epoch
    batches = loader(ctx, ctx.train_set, epoch, train=True)
    total, count, data_time = 0.0, 0, 0.0
    start = last = time.perf_counter()
    quiet = ctx.cfg.quiet or world()[0] != 0
    with tqdm(batches, desc=f"epoch {epoch}", disable=quiet, leave=False) as bar:
        for batch, (x, y) in enumerate(bar, start=1):
            data_time += time.perf_counter() - last
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            loss = step(ctx, x, y)
            if loss is None:
                handle_nonfinite(ctx.cfg, epoch, batch)
            else:
                total += loss * x.shape[0]
                count += x.shape[0]
                bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
            last = time.perf_counter()
    total, count = all_reduce_sum([total, count])
    elapsed = time.perf_counter() - start
    return total / max(count, 1), elapsed, data_time / max(elapsed, 1e-9), int(count)


def step(ctx: Context, x: Tensor, y: Tensor) -> Optional[float]:
    """One optimisation step on a batch; returns its loss, or ``None`` (weights untouched)
    when the loss or a gradient is NaN or infinite."""
    ctx.optimizer.zero_grad(set_to_none=True)
    amp = ctx.scaler is not None
    with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
        with torch.no_grad():
            X, Y = ctx.spectrogram(x), ctx.spectrogram(y)
        loss = nn.functional.mse_loss(ctx.model(X), Y)
    if not torch.isfinite(loss):
        return None
    if amp:
        # The scaler skips steps with non-finite gradients (fp16 overflow) by design.
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        return float(loss.detach())
    loss.backward()
    if not all(torch.isfinite(p.grad).all() for p in ctx.model.parameters() if p.grad is not None):
        ctx.optimizer.zero_grad(set_to_none=True)
        return None
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
    """Mean magnitude MSE over the validation set (full tracks where the dataset has them)."""
    ctx.model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for x, y in loader(ctx, ctx.valid_set, epoch, train=False):
            x, y = x.to(ctx.device), y.to(ctx.device)
            X, Y = ctx.spectrogram(x), ctx.spectrogram(y)
            total += float(nn.functional.mse_loss(unwrap(ctx.model)(X), Y)) * x.shape[0]
            count += x.shape[0]
    total, count = all_reduce_sum([total, count])
    return total / max(count, 1)


def validate_sdr(ctx: Context, epoch: int) -> Tuple[float, float]:
    """Mean full-track SDR (Music Demixing Challenge definition) and SI-SDR of the target
    over the validation set, separating with the model alone (mixture phase, no EM)."""
    from .metrics import sdr_mdx, si_sdr
    from .separator import Separator

    s = ctx.settings
    model = unwrap(ctx.model).eval()
    separator = Separator({ctx.cfg.target: model}, niter=0, sample_rate=s.sample_rate, n_fft=s.n_fft,
                          n_hop=s.n_hop, nb_channels=s.nb_channels)
    total_sdr, total_si, count = 0.0, 0.0, 0
    with torch.inference_mode():
        for x, y in loader(ctx, ctx.valid_set, epoch, train=False):
            est = separator(x.to(ctx.device))[:, 0].cpu()
            for ref, out in zip(y, est):
                total_sdr += sdr_mdx(ref, out)
                total_si += si_sdr(ref, out)
                count += 1
    total_sdr, total_si, count = all_reduce_sum([total_sdr, total_si, count])
    return total_sdr / max(count, 1), total_si / max(count, 1)


def unwrap(model: nn.Module) -> OpenUnmix:
    return model.module if hasattr(model, "module") else model


# ---------------------------------------------------------------- files


def checkpoint_path(cfg: TrainConfig) -> Path:
    return Path(cfg.output) / f"{cfg.target}.chkpnt"


def save_epoch(ctx: Context, epoch: int, improved: bool) -> None:
    """Rank 0 writes the checkpoint, the best model when it improved, and the logs."""
    if world()[0] != 0:
        return
    cfg, model = ctx.cfg, unwrap(ctx.model)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    extra = {**ctx.history.record(), "args": dataclasses.asdict(cfg)}
    if improved:
        save_target(out, cfg.target, model, ctx.settings, extra=extra)
    else:
        write_json_atomic(out / f"{cfg.target}.json", target_metadata(model, ctx.settings, extra))
        update_separator_json(out, cfg.target, ctx.settings)
    state = {
        "epoch": epoch,
        "state_dict": model.state_dict(),
        "model_args": model.config.to_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "scheduler": ctx.scheduler.state_dict(),
        "best_loss": ctx.history.best_loss,
        "history": dataclasses.asdict(ctx.history),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(checkpoint_path(cfg), buffer.getvalue())
    write_csv(out / f"{cfg.target}.csv", ctx.history)
    if ctx.tensorboard is not None:
        h = ctx.history
        for name, values in (("loss/train", h.train_loss), ("loss/valid", h.valid_loss), ("lr", h.lr),
                             ("data_loading_share", h.data_share)):
            ctx.tensorboard.add_scalar(f"{cfg.target}/{name}", values[-1], epoch)
        ctx.tensorboard.flush()


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
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        if path.is_dir():
            path = path / f"{cfg.target}.chkpnt"
        if not path.is_file():
            raise OpenUnmixLikeError(f"--checkpoint {cfg.checkpoint}: no checkpoint file {path}")
        return path
    if cfg.resume == "auto":
        path = checkpoint_path(cfg)
        return path if path.is_file() else None
    if cfg.resume:
        raise OpenUnmixLikeError(f"--resume {cfg.resume!r}: only 'auto' is supported (or use --checkpoint PATH)")
    return None


def load_checkpoint(ctx: Context, path: Path) -> int:
    """Restore model, optimiser, scheduler and history; return the epoch to start from."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint
        raise OpenUnmixLikeError(f"{path}: unreadable checkpoint ({exc}); delete it to start over") from exc
    model = unwrap(ctx.model)
    if state.get("model_args") and state["model_args"] != model.config.to_dict():
        raise OpenUnmixLikeError(f"{path}: checkpoint of a different model ({state['model_args']}); "
                                 "use another --output or the same model options")
    model.load_state_dict(state["state_dict"])
    ctx.optimizer.load_state_dict(state["optimizer"])
    ctx.scheduler.load_state_dict(state["scheduler"])
    ctx.history = History(**state["history"])
    return int(state["epoch"]) + 1


# ---------------------------------------------------------------- driver


def run(cfg: TrainConfig) -> History:
    """Train ``cfg.target``; returns the history (also written to the output folder)."""
    device = pick_device(cfg)
    setup_distributed(device)
    train_set, valid_set = build_datasets(cfg)
    model, settings = build_model(cfg, train_set, device)
    ctx = make_context(cfg, model, settings, device, train_set, valid_set)
    resume = find_resume_checkpoint(cfg)
    first = load_checkpoint(ctx, resume) if resume else 1
    if resume and world()[0] == 0 and not cfg.quiet:
        log.info("resuming from %s at epoch %d", resume, first)
    for epoch in range(first, cfg.epochs + 1):
        if epoch - ctx.history.best_epoch > cfg.patience and ctx.history.best_epoch:
            break
        train_loss, seconds, data_share, samples = train_epoch(ctx, epoch)
        valid_loss = validate(ctx, epoch)
        ctx.scheduler.step(valid_loss)
        improved = record_epoch(ctx.history, train_loss, valid_loss, ctx.optimizer, seconds, data_share, epoch)
        ctx.history.samples.append(samples)
        metric = validate_sdr(ctx, epoch) if cfg.eval_every and epoch % cfg.eval_every == 0 else (None, None)
        ctx.history.valid_sdr.append(metric[0])
        ctx.history.valid_si_sdr.append(metric[1])
        if metric[0] is not None and world()[0] == 0 and not cfg.quiet:
            log.info("epoch %d: validation SDR (MDX definition) %.2f dB, SI-SDR %.2f dB", epoch, *metric)
        save_epoch(ctx, epoch, improved)
        if world()[0] == 0 and not cfg.quiet:
            log.info("epoch %d: train %.5f valid %.5f (%.1f s, %.0f %% data loading)%s", epoch, train_loss,
                     valid_loss, seconds, 100 * data_share, " best" if improved else "")
    return ctx.history


def make_context(cfg, model, settings, device, train_set, valid_set) -> Context:
    spectrogram = Spectrogram(cfg.nfft, cfg.nhop, mono=cfg.nb_channels == 1).to(device)
    wrapped = model
    if world()[1] > 1:
        ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=cfg.lr_decay_gamma, patience=cfg.lr_decay_patience, cooldown=10)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    return Context(cfg, wrapped, spectrogram, optimizer, scheduler, scaler, device, train_set, valid_set,
                   settings, History(), tensorboard_writer(cfg))


def record_epoch(history: History, train_loss, valid_loss, optimizer, seconds, data_share, epoch) -> bool:
    history.train_loss.append(train_loss)
    history.valid_loss.append(valid_loss)
    history.lr.append(optimizer.param_groups[0]["lr"])
    history.epoch_time.append(seconds)
    history.data_share.append(data_share)
    improved = valid_loss < history.best_loss
    if improved:
        history.best_loss, history.best_epoch = valid_loss, epoch
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
