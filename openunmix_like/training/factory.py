"""Building what a run needs from its configuration: data sets, model, optimiser, schedule.

The configuration flows one way: each factory returns what it built together
with the configuration resolved by it (file names the data layout implies, the
architecture, width, STFT and loss the model has), and :func:`prepare` chains
them, so the ``args`` saved with a model are complete.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import architectures, data
from ..errors import ModelError, OpenUnmixLikeError
from ..losses import Objective, parse_loss
from ..modeldir import AudioSettings
from ..transforms import STFT, ComplexNorm
from .config import (DATASETS, STEM_LAYOUTS, TrainConfig, check_options, model_bandwidth,
                     resolve_samples_per_track, resolve_target)
from .context import Context, WeightAverage
from .distributed import broadcast_from_rank0, is_main, pick_device, setup_distributed, wrap
from .history import History

log = logging.getLogger(__name__)
Datasets = Tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]


# ---------------------------------------------------------------- data


def resolve_sources(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the file and folder names the data layout implies where none are given:
    ``trackfolder_fix``: ``<target>.<ext>`` and every other audio file except ``mixture.*``;
    ``trackfolder_var``: ``<target><--ext>``; ``sourcefolder``: ``<target>/`` and every other folder.
    A ``target`` not given is named first (:func:`~openunmix_like.training.config.resolve_target`)."""
    cfg = resolve_target(cfg)
    if cfg.root is None:
        raise OpenUnmixLikeError("--root is required: the folder holding the dataset")
    if cfg.dataset == "trackfolder_fix" and not (cfg.target_file and cfg.interferer_files):
        target_file, interferers = data.default_track_files(cfg.root, cfg.target, cfg.target_file,
                                                            cfg.interferer_files)
        return dataclasses.replace(cfg, target_file=target_file, interferer_files=interferers)
    if cfg.dataset == "trackfolder_var" and not cfg.target_file:
        return dataclasses.replace(cfg, target_file=cfg.target + cfg.ext)
    if cfg.dataset == "sourcefolder" and not (cfg.target_dir and cfg.interferer_dirs):
        target_dir, interferers = data.default_source_dirs(cfg.root, cfg.target, cfg.target_dir, cfg.interferer_dirs)
        return dataclasses.replace(cfg, target_dir=target_dir, interferer_dirs=interferers)
    return cfg


# Training data is read in stereo whatever --nb-channels is: a mono model learns from the downmix
# the separator will give it, which for magnitude models (umx, unet2d) is the mean of the channels'
# magnitudes (a spectral downmix, as in the reference recipe), not the magnitude of the mean of the
# samples; the objective downmixes (see openunmix_like.losses.Objective).
DATA_CHANNELS = 2


def build_datasets(cfg: TrainConfig) -> Datasets:
    """Training and validation datasets for ``cfg.dataset`` (names resolved by :func:`resolve_sources`)."""
    cfg = dataclasses.replace(resolve_sources(cfg), samples_per_track=resolve_samples_per_track(cfg))
    train_kw, valid_kw = dataset_kwargs(cfg)
    if cfg.dataset in STEM_LAYOUTS:
        return stem_datasets(cfg, cfg.target)
    if cfg.dataset == "musdb":
        args = dict(root=cfg.root, target=cfg.target, is_wav=cfg.is_wav)
        return (data.MUSDBDataset(split="train", samples_per_track=cfg.samples_per_track,
                                  random_track_mix=True, **args, **train_kw),
                data.MUSDBDataset(split="valid", **args, **valid_kw))
    if cfg.dataset == "aligned":
        _require(cfg, "input_file", "output_file")
        args = dict(root=cfg.root, input_file=cfg.input_file, output_file=cfg.output_file)
        train_kw.pop("source_augmentations")
        return (data.AlignedDataset(split="train", **args, **train_kw),
                data.AlignedDataset(split="valid", **args, **valid_kw))
    if cfg.dataset == "sourcefolder":
        args = dict(root=cfg.root, target_dir=cfg.target_dir, interferer_dirs=cfg.interferer_dirs, ext=cfg.ext)
        # Excerpts at random positions, drawn once (validation items are those of epoch 0), as the reference's.
        valid_kw.update(seq_duration=cfg.seq_dur, random_chunks=True)
        return (data.SourceFolderDataset(split="train", nb_samples=cfg.nb_train_samples, **args, **train_kw),
                data.SourceFolderDataset(split="valid", nb_samples=cfg.nb_valid_samples, **args, **valid_kw))
    if cfg.dataset == "trackfolder_fix":
        args = dict(root=cfg.root, target_file=cfg.target_file, interferer_files=cfg.interferer_files)
        return (data.FixedSourcesTrackFolderDataset(split="train", random_track_mix=cfg.random_track_mix,
                                                    samples_per_track=cfg.samples_per_track, **args, **train_kw),
                data.FixedSourcesTrackFolderDataset(split="valid", **args, **valid_kw))
    if cfg.dataset == "trackfolder_var":
        args = dict(root=cfg.root, target_file=cfg.target_file, ext=cfg.ext,
                    silence_missing_targets=cfg.silence_missing_targets)
        return (data.VariableSourcesTrackFolderDataset(split="train", random_interferer_mix=cfg.random_interferer_mix,
                                                       **args, **train_kw),
                data.VariableSourcesTrackFolderDataset(split="valid", **args, **valid_kw))
    raise OpenUnmixLikeError(f"--dataset {cfg.dataset!r}: choose one of {', '.join(DATASETS)}")


def dataset_kwargs(cfg: TrainConfig) -> Tuple[dict, dict]:
    """The settings every training set and every validation set takes (validation: whole tracks, no augmentation)."""
    common = dict(sample_rate=cfg.sample_rate, nb_channels=DATA_CHANNELS, seed=cfg.seed)
    train_kw = dict(common, seq_duration=cfg.seq_dur, source_augmentations=cfg.augmentations())
    valid_kw = dict(common, seq_duration=None, random_chunks=False)
    return train_kw, valid_kw


def stem_datasets(cfg: TrainConfig, target) -> Datasets:
    """``slakh``, ``moisesdb``, ``medleydb`` or ``dsd100`` training and validation sets for ``target``, a name or
    a list of names (then the items hold the targets stacked, as ``--targets`` trains them)."""
    if cfg.root is None:
        raise OpenUnmixLikeError("--root is required: the folder holding the dataset")
    train_kw, valid_kw = dataset_kwargs(cfg)
    args = dict(root=cfg.root, target=target, silence_missing_targets=cfg.silence_missing_targets)
    kind = {"slakh": data.SlakhDataset, "moisesdb": data.MoisesDBDataset, "medleydb": data.MedleyDBDataset,
            "dsd100": data.DSD100Dataset}[cfg.dataset]
    if cfg.dataset in ("moisesdb", "medleydb"):
        args.update(stem_grouping=cfg.stem_grouping or "four")
    if cfg.dataset in ("moisesdb", "medleydb", "dsd100"):
        args.update(valid_tracks=cfg.valid_tracks)
    if cfg.dataset == "medleydb":
        args.update(include_bleed=cfg.include_bleed)
    samples = resolve_samples_per_track(cfg)
    return (kind(split="train", random_track_mix=cfg.random_track_mix, samples_per_track=samples, **args, **train_kw),
            kind(split="valid", **args, **valid_kw))


def preload_datasets(cfg: TrainConfig, device: torch.device, train_set, valid_set) -> TrainConfig:
    """With ``--preload on`` (or ``auto`` on CUDA when the decoded audio takes at most half the
    device's free memory), decode both data sets once onto ``device``; returns ``cfg`` with
    ``preload`` resolved to ``on`` or ``off`` (and no loader workers for data already on a GPU)."""
    needed = train_set.preload_bytes() + valid_set.preload_bytes()
    if cfg.preload == "auto":
        fits = device.type == "cuda" and needed <= 0.5 * torch.cuda.mem_get_info(device)[0]
        if device.type == "cuda" and not fits and is_main() and not cfg.quiet:
            log.info("--preload auto: the decoded audio (%.1f GB) does not fit; reading it from the files",
                     needed / 1e9)
        if not fits:
            return dataclasses.replace(cfg, preload="off")
    elif cfg.preload == "off":
        return cfg
    start = time.perf_counter()
    train_set.preload(device)
    valid_set.preload(device)
    if is_main() and not cfg.quiet:
        log.info("preloaded %.2f GB of decoded audio onto %s in %.1f s", needed / 1e9, device,
                 time.perf_counter() - start)
    workers = 0 if device.type == "cuda" else cfg.nb_workers  # CUDA tensors stay in this process
    return dataclasses.replace(cfg, preload="on", nb_workers=workers)


def _require(cfg: TrainConfig, *names: str) -> None:
    missing = [n for n in names if not getattr(cfg, n)]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise OpenUnmixLikeError(f"--dataset {cfg.dataset} needs {flags}")


def input_statistics(dataset, n_fft: int, n_hop: int, limit: int = 1000, whole_tracks: bool = False,
                     downmix: str = "spectral") -> Tuple[Tensor, Tensor]:
    """Per-bin mean and standard deviation of the mono training magnitudes (no augmentation).

    Args:
        dataset: the training set (see :meth:`openunmix_like.data._Base.iter_mixtures`).
        limit: at most this many mixtures (one per track for the track layouts).
        whole_tracks: whole tracks rather than excerpts, as the reference recipe and
            :func:`build_model` compute them (``sourcefolder`` reads excerpts either way).
        downmix: ``spectral``, the mean of the channels' magnitudes (what magnitude models,
            mono or stereo, are given, and the reference's statistics), or ``waveform``, the
            magnitude of the mean of the channels (what mono complex-domain models are given).

    The standard deviation is floored at 1e-4 of its largest value so silent
    bins do not blow the input scale up.
    """
    norm = ComplexNorm(mono=True)
    total = torch.zeros(n_fft // 2 + 1, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    with torch.inference_mode():
        for mixture in dataset.iter_mixtures(limit, whole_tracks=whole_tracks):
            mixture = mixture.cpu()
            if downmix == "waveform":
                mixture = mixture.mean(dim=0, keepdim=True)
            for spec in stft_segments(mixture, n_fft, n_hop):
                mag = norm(spec)[0, 0].double()  # (nb_bins, nb_frames)
                total += mag.sum(dim=1)
                total_sq += mag.square().sum(dim=1)
                count += mag.shape[1]
    if count == 0:
        raise OpenUnmixLikeError("the training set yielded no audio for the input statistics")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    std = torch.maximum(std, 1e-4 * std.max())
    return mean.float(), std.float()


def stft_segments(audio: Tensor, n_fft: int, n_hop: int, max_frames: int = 2048) -> Iterator[Tensor]:
    """The frames of the (centred, reflect-padded) training STFT of ``audio`` ``(nb_channels, nb_timesteps)``,
    ``max_frames`` at a time, as ``(1, nb_channels, nb_bins, frames)``: a whole track's spectrogram
    is never held at once."""
    length = audio.shape[-1]
    nb_frames = length // n_hop + 1
    if length <= n_fft // 2:  # too short to reflect: zero-padded
        yield STFT(n_fft, n_hop, pad_mode="constant")(audio[None])
        return
    padded = nn.functional.pad(audio[None], (n_fft // 2, n_fft // 2), mode="reflect")
    framewise = STFT(n_fft, n_hop, center=False)
    for first in range(0, nb_frames, max_frames):
        last = min(first + max_frames, nb_frames)
        yield framewise(padded[..., first * n_hop : (last - 1) * n_hop + n_fft])


# ---------------------------------------------------------------- model


def build_model(cfg: TrainConfig, train_set, device: torch.device) -> Tuple[nn.Module, AudioSettings, TrainConfig]:
    """A fresh model with the training set's statistics, or the ``--model`` one to fine-tune.

    Returns:
        the model on ``device``, its STFT settings, and ``cfg`` resolved to the
        model: its target's name, architecture, width, loss (and, fine-tuning, its STFT and direction).
    """
    cfg = resolve_target(cfg)
    if cfg.model:
        model, settings, cfg = load_pretrained(cfg, device)
    else:
        arch = cfg.architecture()
        settings = settings_of(cfg)
        torch.manual_seed(cfg.seed)
        model = arch.build(**model_args(cfg, arch))
        cfg = dataclasses.replace(cfg, arch=arch.name, hidden_size=model.config.hidden_size)
        if arch.input_stats:
            # What the model is given: mono complex-domain models the downmixed signal's magnitudes.
            downmix = "waveform" if cfg.nb_channels == 1 and arch.domain != architectures.MAGNITUDE else "spectral"
            mean, std = broadcast_from_rank0(
                lambda: input_statistics(train_set, cfg.nfft, cfg.nhop, whole_tracks=True, downmix=downmix),
                cfg.nfft // 2 + 1)
            model.set_input_stats(mean, std)
    cfg = dataclasses.replace(cfg, loss=cfg.loss or architectures.get(cfg.arch).default_loss)
    return set_lstm_dropout(cfg, model).to(device), settings, cfg


def set_lstm_dropout(cfg: TrainConfig, model: nn.Module) -> nn.Module:
    """Apply ``--lstm-dropout`` (a training setting: it is not part of the saved model)."""
    if cfg.lstm_dropout is not None:
        if not isinstance(getattr(model, "lstm", None), nn.LSTM):
            raise ModelError(f"--lstm-dropout: the {cfg.arch!r} model has no LSTM; drop the option")
        model.lstm.dropout = float(cfg.lstm_dropout)
    return model


def model_args(cfg: TrainConfig, arch: architectures.Architecture) -> dict:
    """Constructor arguments from the options: the shared ones, the width, then ``--arch-args``."""
    options = architectures.ModelOptions(cfg.sample_rate, cfg.nfft, cfg.nb_channels, cfg.bandwidth,
                                         cfg.unidirectional)
    args = arch.args_from_options(options)
    if cfg.hidden_size:  # else the architecture's own default (512 for umx)
        args["hidden_size"] = cfg.hidden_size
    args.update(arch.parse_args(cfg.arch_args or []))
    return args


def load_pretrained(cfg: TrainConfig, device: torch.device) -> Tuple[nn.Module, AudioSettings, TrainConfig]:
    """The ``--model`` target to fine-tune (widened to ``--hidden-size`` if larger), and ``cfg``
    with the model's architecture, width, STFT settings, bandwidth and the weight file it starts from.

    ``cfg`` comes from :func:`~openunmix_like.training.config.check_options`, which has checked
    the options against the model.
    """
    from ..pretrained import load_models

    models, settings = load_models(cfg.model, targets=[cfg.target], progress=not cfg.quiet)
    model = models[cfg.target]
    if settings.sample_rate != cfg.sample_rate or settings.nb_channels != cfg.nb_channels:
        raise ModelError(f"--model {cfg.model}: {settings} does not match --nb-channels {cfg.nb_channels} / "
                         f"--sample-rate {cfg.sample_rate}; drop those options to keep the model's")
    arch = architectures.architecture_of(model)
    source = model_source(cfg.model, cfg.target)
    bandwidth = cfg.bandwidth
    if getattr(model.config, "max_bin", None) is not None:
        bandwidth = model_bandwidth(settings.sample_rate, settings.n_fft, model.config.max_bin)
    if cfg.hidden_size and cfg.hidden_size != model.config.hidden_size:
        model = widened(cfg, arch, model)
    resolved = dataclasses.replace(cfg, arch=arch.name, nfft=settings.n_fft, nhop=settings.n_hop,
                                   hidden_size=model.config.hidden_size, bandwidth=bandwidth, model_source=source,
                                   unidirectional=getattr(model.config, "unidirectional", cfg.unidirectional))
    return model.to(device).train(), settings, resolved


def model_source(name_or_path: str, target: str) -> dict:
    """The weight file ``--model`` gives ``target`` from (in the model folder, or the cache for a published
    name), as ``{"file": its name, "sha256": its hash}``."""
    from ..modeldir import find_weight_files
    from ..pretrained import bundled_model_dir, cache_dir, is_bundled_name, sha256_of

    folder = Path(name_or_path).expanduser()
    if is_bundled_name(name_or_path):
        folder = bundled_model_dir()
    elif not folder.exists():
        folder = cache_dir() / str(name_or_path)
    path = find_weight_files(folder)[target]
    return {"file": path.name, "sha256": sha256_of(path)}


def widened(cfg: TrainConfig, arch: architectures.Architecture, model: nn.Module) -> nn.Module:
    """``--model`` at ``--hidden-size``, computing the same output at first."""
    if arch.widen is None:
        raise ModelError(f"--model {cfg.model}: its {cfg.target!r} model is a {arch.name!r} model, which cannot "
                         "be widened; drop --hidden-size")
    try:
        model = arch.widen(model, cfg.hidden_size, torch.Generator().manual_seed(cfg.seed))
    except ValueError as exc:
        raise ModelError(f"--model {cfg.model} --hidden-size {cfg.hidden_size}: {exc}") from exc
    if is_main() and not cfg.quiet:
        log.info("widened the %s model to hidden size %d (same output at first)", cfg.target, cfg.hidden_size)
    return model


# ---------------------------------------------------------------- optimisation


def resolve_precision(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """``cfg`` with ``precision`` resolved for ``device`` (``auto``: fp16 on CUDA, as before, fp32 elsewhere).

    Raises:
        OpenUnmixLikeError: fp16 off CUDA, or bf16 on a GPU without it.
    """
    precision = cfg.precision
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise OpenUnmixLikeError(f"--precision fp16 needs CUDA (training on {device}); use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise OpenUnmixLikeError("--precision bf16: this GPU has no bfloat16; use fp16 or fp32")
    return dataclasses.replace(cfg, precision=precision)


AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def loss_scaler(precision: str, device: torch.device) -> Optional[torch.amp.GradScaler]:
    """The training step's loss scaler: for fp16, and for bf16 on CUDA too, where autocast runs cuDNN's LSTMs
    in float16 whatever its dtype (PyTorch's ``_cudnn_rnn`` autocast wrapper casts to half), so that their
    gradients would otherwise underflow; None otherwise."""
    if precision == "fp16" or (precision == "bf16" and device.type == "cuda"):
        return torch.amp.GradScaler("cuda")
    return None


def make_context(cfg: TrainConfig, model: nn.Module, settings: AudioSettings, device: torch.device,
                 train_set, valid_set) -> Context:
    """Objective, optimiser, schedule, autocast (and loss scaler) and weight average around a built model."""
    arch = architectures.architecture_of(model)
    cfg = resolve_precision(resolve_target(cfg), device)
    objective = Objective(parse_loss(cfg.loss or arch.default_loss), arch.domain, settings.n_fft, settings.n_hop,
                          mono=settings.nb_channels == 1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = loss_scaler(cfg.precision, device)
    # No TensorBoard writer yet: it makes <output>/tensorboard/ at once, and a run that fails before its first
    # epoch is saved (a checkpoint it cannot resume from, Ctrl+C) must leave no new --output behind.
    ctx = Context(cfg, wrap(model, device), objective, optimizer, make_scheduler(cfg, optimizer), scaler, device,
                  train_set, valid_set, settings, History(), None, cfg.batch_augmentations(),
                  autocast=AUTOCAST[cfg.precision])
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


def prepare(cfg: TrainConfig) -> Context:
    """Everything a run needs, from its options: checked and resolved options, device (and
    process group under torchrun), data sets, model and optimiser."""
    from .checkpoint import check_output, start_afresh

    cfg = check_options(cfg)
    # The settings are the options' (a --model's own, resolved by check_options): check the folder before
    # reading any data.
    check_output(cfg, settings_of(cfg))
    device = pick_device(cfg.device, cfg.no_cuda)
    cfg = resolve_precision(cfg, device)  # a precision the device lacks is refused before any data is read
    setup_distributed(device)
    cfg = resolve_sources(cfg)
    train_set, valid_set = build_datasets(cfg)
    cfg = preload_datasets(cfg, device, train_set, valid_set)
    model, settings, cfg = build_model(cfg, train_set, device)
    context = make_context(cfg, model, settings, device, train_set, valid_set)
    start_afresh(context.cfg)  # only now: a run refused above keeps the checkpoints --force would replace
    return context


def settings_of(cfg: TrainConfig) -> AudioSettings:
    """The STFT and audio settings of a new model built from ``cfg``."""
    return AudioSettings(float(cfg.sample_rate), cfg.nfft, cfg.nhop, cfg.nb_channels)
