"""The options of ``umx-train`` as one dataclass, and their checks."""
from __future__ import annotations

import dataclasses
import math
from pathlib import PurePath
from typing import TYPE_CHECKING, List, Optional

from ..choices import BATCH_AUGMENTATION_NAMES, DEFAULT_ARCHITECTURE
from ..errors import OpenUnmixLikeError

if TYPE_CHECKING:
    from ..architectures import Architecture
    from ..augment import BatchCompose, Compose

# This module builds umx-train's options and imports no torch: what checks or builds models (architectures,
# augmentations, losses) is imported where it is used.

DATASETS = ("musdb", "aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var", "slakh", "moisesdb", "medleydb",
            "dsd100")
# Targets summed from files chosen by the data set's metadata (or, for dsd100, its fixed file names).
STEM_LAYOUTS = ("slakh", "moisesdb", "medleydb", "dsd100")
# The options of some of those layouts: (flag, TrainConfig field, the layouts that take it).
LAYOUT_OPTIONS = (("--stem-grouping", "stem_grouping", ("moisesdb", "medleydb")),
                  ("--valid-tracks", "valid_tracks", ("moisesdb", "medleydb", "dsd100")),
                  ("--include-bleed", "include_bleed", ("medleydb",)))
SCHEDULERS = ("plateau", "cosine")
SELECT_BY = ("loss", "sdr")
PRELOAD = ("auto", "on", "off")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclasses.dataclass
class TrainConfig:
    """Every option of ``umx-train`` (names as in the reference, so its tools can read ``args``).

    Fields left at ``None`` are resolved when training starts (the dataset's
    file names, the architecture, width and loss) and saved resolved in
    ``<target>.json``: see :func:`openunmix_like.training.factory.build_model`.
    """

    # what and where; None: named after --target-file, --output-file or --target-dir, as the
    # reference names it, else vocals (see resolve_target)
    target: Optional[str] = None
    targets: Optional[List[str]] = None  # several targets trained together from one stream of mixtures
    output: str = "open-unmix"
    checkpoint: Optional[str] = None
    resume: Optional[str] = None
    force: bool = False  # start over in an --output that holds this target's model
    model: Optional[str] = None  # fine-tune this model (a published name or a folder)
    # resolved with --model: the weight file fine-tuned from, {"file": name, "sha256": hex digest}
    model_source: Optional[dict] = None
    dataset: str = "musdb"
    root: Optional[str] = None
    # musdb
    is_wav: bool = False
    # musdb, trackfolder_fix and the STEM_LAYOUTS: training items per track and epoch (None: 64 for musdb, else 1)
    samples_per_track: Optional[int] = None
    # folder datasets (None: the defaults of the layout, see factory.resolve_sources)
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
    # moisesdb, medleydb: targets vocals, bass, drums, other ("four") or one stem (instrument label) each ("all");
    # None: four
    stem_grouping: Optional[str] = None
    # moisesdb, medleydb, dsd100: validation tracks (None: 10 %, chosen by a hash of the track id)
    valid_tracks: Optional[int] = None
    include_bleed: bool = False  # medleydb: keep the tracks whose metadata says has_bleed: yes
    source_augmentations: Optional[List[str]] = None
    # None (umx-train --model without the option): the model's, see MODEL_FIXED
    sample_rate: Optional[int] = 44100
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
    arch: Optional[str] = None  # None: umx for a new model, the fine-tuned model's own with --model
    arch_args: Optional[List[str]] = None
    loss: Optional[str] = None  # None: the architecture's default (mse for umx)
    preset: Optional[str] = None  # the --preset name, saved so a model's record says where its settings came from
    unidirectional: Optional[bool] = False
    hidden_size: Optional[int] = None  # None: the architecture's default (512 for umx); with --model: widen to it
    lstm_dropout: Optional[float] = None  # umx: dropout between LSTM layers (None: the model's, 0.4)
    nfft: Optional[int] = 4096
    nhop: Optional[int] = 1024
    bandwidth: Optional[float] = 16000
    nb_channels: Optional[int] = 2
    # validation metric
    eval_every: int = 0
    select_by: str = "loss"  # what picks the best epoch: the validation loss, or the validation SDR (eval_every)
    # what to do when a batch gives a NaN or infinite loss or gradient: skip the batch or stop
    nonfinite: str = "skip"
    # autocast of the training step: fp16 (with loss scaling) or bf16; auto: fp16 on CUDA, fp32 elsewhere
    precision: str = "auto"
    # running
    preload: str = "auto"  # decode the data once and hold it on the device: auto (on CUDA when it fits), on, off
    nb_workers: int = 0
    quiet: bool = False
    seed: int = 42
    no_cuda: bool = False
    device: Optional[str] = None

    def architecture(self) -> Architecture:
        """The architecture of a new model (``--arch``, default umx)."""
        from .. import architectures

        return architectures.get(self.arch or DEFAULT_ARCHITECTURE)

    def augmentation_names(self) -> List[str]:
        """``--source-augmentations``, or the layout's default: none for ``aligned`` and, as the training guide
        and the reference recipe have it, for the folder layouts; ``gain channelswap`` for ``musdb`` and the
        stem data sets read like it."""
        names = self.source_augmentations
        if names is None:
            names = [] if self.dataset in UNAUGMENTED_LAYOUTS else ["gain", "channelswap"]
        return list(names)

    def augmentations(self) -> Compose:
        """The source augmentations, applied by the data set to every source."""
        from ..augment import Compose, split_names

        return Compose.from_names(split_names(self.augmentation_names())[0])

    def batch_augmentations(self) -> BatchCompose:
        """The batch augmentations (masking, mixup), applied by the training step."""
        from ..augment import BatchCompose, split_names

        return BatchCompose.from_names(split_names(self.augmentation_names())[1], self.nfft, self.nhop)


# Layouts trained without source augmentations unless --source-augmentations names some.
# The layouts whose tracks may lack a target, kept with a silent one by --silence-missing-targets.
SILENCEABLE_LAYOUTS = ("trackfolder_var", *STEM_LAYOUTS)
UNAUGMENTED_LAYOUTS = ("aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var")


def check_options(cfg: TrainConfig) -> TrainConfig:
    """Fail on bad architecture, loss, schedule or augmentation options before reading any data.

    Returns:
        ``cfg`` with ``target`` named (:func:`resolve_target`), ``eval_every`` resolved
        (``--select-by sdr`` scores every epoch unless ``--eval-every`` says otherwise),
        ``samples_per_track`` resolved for the layout, ``source_augmentations`` to the
        names used (the layout's default when none were given), so the saved ``args`` say them,
        and the options of the ``slakh`` and ``moisesdb`` layouts resolved (:func:`resolve_stem_options`).
    """
    from ..augment import split_names
    from ..losses import parse_loss

    cfg = resolve_model_options(resolve_stem_options(resolve_target(cfg)))
    check_numbers(cfg)
    if cfg.silence_missing_targets and cfg.dataset not in SILENCEABLE_LAYOUTS:
        raise OpenUnmixLikeError(f"--silence-missing-targets: --dataset {cfg.dataset} keeps no track without a "
                                 f"target (a track folder lacking a file is reported and left out); the option is "
                                 f"for {', '.join(SILENCEABLE_LAYOUTS)}: drop it")
    if cfg.lr_scheduler not in SCHEDULERS:
        raise OpenUnmixLikeError(f"--lr-scheduler {cfg.lr_scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    if not (cfg.clip_grad >= 0 and cfg.ckpt_every >= 0 and cfg.max_minutes >= 0 and cfg.stop_after >= 0):  # NaN too
        raise OpenUnmixLikeError("--clip-grad, --ckpt-every, --max-minutes and --stop-after must not be negative")
    if cfg.lstm_dropout is not None and not 0.0 <= cfg.lstm_dropout < 1.0:
        raise OpenUnmixLikeError(f"--lstm-dropout {cfg.lstm_dropout}: give a probability in [0, 1)")
    if cfg.select_by not in SELECT_BY:
        raise OpenUnmixLikeError(f"--select-by {cfg.select_by!r}: choose one of {', '.join(SELECT_BY)}")
    if cfg.precision not in PRECISIONS:
        raise OpenUnmixLikeError(f"--precision {cfg.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if cfg.preload not in PRELOAD:
        raise OpenUnmixLikeError(f"--preload {cfg.preload!r}: choose one of {', '.join(PRELOAD)}")
    eval_every = check_checkpoints_and_scoring(cfg)
    if not 0.0 <= cfg.ema < 1.0:
        raise OpenUnmixLikeError(f"--ema {cfg.ema}: give a decay in [0, 1), e.g. 0.99 (0: no weight average)")
    if not cfg.model:
        try:
            arch = cfg.architecture()
        except ValueError as exc:
            raise OpenUnmixLikeError(f"--arch: {exc}") from None
        arch.parse_args(cfg.arch_args or [])
        check_lstm_options(cfg, arch, f"a {arch.name!r} model (--arch {arch.name})")
        if cfg.arch_args and cfg.hidden_size is not None and any(
                a.split("=")[0].strip() == "hidden_size" for a in cfg.arch_args):
            raise OpenUnmixLikeError("give the width once: --hidden-size or --arch-args hidden_size=...")
    if cfg.loss:
        parse_loss(cfg.loss)
    source_level = split_names(cfg.augmentation_names())[0]
    if cfg.dataset == "aligned" and source_level:  # a pair has no sources: augmenting one file breaks the pair
        raise OpenUnmixLikeError(f"--source-augmentations {' '.join(source_level)}: --dataset aligned has no "
                                 "sources to augment; give only batch augmentations "
                                 f"({', '.join(BATCH_AUGMENTATION_NAMES)}) or none")
    return dataclasses.replace(cfg, eval_every=eval_every, samples_per_track=resolve_samples_per_track(cfg),
                               source_augmentations=cfg.augmentation_names())


def check_checkpoints_and_scoring(cfg: TrainConfig) -> int:
    """Refuse resume, step-checkpoint and scoring options that cannot work together; returns ``eval_every``
    resolved (``--select-by sdr`` scores every epoch unless ``--eval-every`` says otherwise)."""
    if cfg.force and (cfg.resume or cfg.checkpoint):
        flag = "--resume auto" if cfg.resume else f"--checkpoint {cfg.checkpoint}"
        raise OpenUnmixLikeError(f"--force starts the target over and {flag} continues it: give one of them")
    if cfg.ckpt_keep < 1:
        raise OpenUnmixLikeError(f"--ckpt-keep {cfg.ckpt_keep}: give how many step checkpoints to keep, at least 1 "
                                 "(default 3; leave out --ckpt-every for none)")
    if cfg.eval_every < 0:
        raise OpenUnmixLikeError(f"--eval-every {cfg.eval_every}: give a number of epochs (0: never)")
    eval_every = cfg.eval_every or (1 if cfg.select_by == "sdr" else 0)
    if cfg.select_by == "sdr" and eval_every > cfg.epochs:
        raise OpenUnmixLikeError(f"--select-by sdr with --eval-every {eval_every} above --epochs {cfg.epochs}: "
                                 "no epoch would be scored; give a smaller --eval-every")
    if eval_every > cfg.epochs:
        raise OpenUnmixLikeError(f"--eval-every {eval_every} above --epochs {cfg.epochs}: no epoch would be scored; "
                                 "give a smaller --eval-every, or leave it out")
    if cfg.select_by == "sdr" and cfg.patience < eval_every:
        raise OpenUnmixLikeError(f"--select-by sdr with --patience {cfg.patience} below --eval-every {eval_every}: "
                                 "the run would stop before the next epoch after the best is scored; give a "
                                 f"--patience of at least {eval_every}")
    return eval_every


# The options a fine-tuned model (--model) fixes, and their defaults for a new model.
MODEL_FIXED = {"sample_rate": 44100, "nb_channels": 2, "nfft": 4096, "nhop": 1024, "bandwidth": 16000,
               "unidirectional": False}


def resolve_model_options(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the options of :data:`MODEL_FIXED` left at ``None`` resolved: without ``--model`` to
    their defaults, with it to the model's (its rate, channels and STFT, and for Open-Unmix the
    bandwidth its LSTM sees and its direction), which are known before any data is read.

    Raises:
        OpenUnmixLikeError: the model or a target cannot be loaded, or an option given contradicts it
            (one line naming the option and what to do).
    """
    defaults = {name: value for name, value in MODEL_FIXED.items() if getattr(cfg, name) is None}
    if not cfg.model:
        return dataclasses.replace(cfg, **defaults)
    from .. import architectures
    from ..architectures.umx import bandwidth_to_max_bin
    from ..pretrained import load_models

    models, settings = load_models(cfg.model, targets=cfg.targets or [cfg.target], progress=not cfg.quiet)
    rate = int(settings.sample_rate) if float(settings.sample_rate).is_integer() else settings.sample_rate
    fixed = {"sample_rate": (rate, f"works at {rate:g} Hz (training audio at other rates is resampled to it)"),
             "nb_channels": (settings.nb_channels, f"has {settings.nb_channels} channel(s)"),
             "nfft": (settings.n_fft, f"has an STFT of {settings.n_fft} samples"),
             "nhop": (settings.n_hop, f"has an STFT hop of {settings.n_hop} samples")}
    for target, model in models.items():
        arch = architectures.architecture_of(model)
        if cfg.arch not in (None, arch.name) or cfg.arch_args:
            preset = f" (set by --preset {cfg.preset})" if cfg.preset else ""
            raise OpenUnmixLikeError(f"--model {cfg.model}: its {target!r} model is a {arch.name!r} model; "
                                     f"fine-tuning keeps the architecture and its arguments, drop --arch and "
                                     f"--arch-args{preset}")
        check_lstm_options(cfg, arch, f"--model {cfg.model}: its {target!r} model, a {arch.name!r} one,")
        config = model.config
        own = dict(fixed)
        if hasattr(config, "unidirectional"):
            own["unidirectional"] = (config.unidirectional, f"has a {'uni' if config.unidirectional else 'bi'}"
                                     f"directional LSTM in its {target!r} model")
        if getattr(config, "max_bin", None) is not None:
            bandwidth = model_bandwidth(rate, settings.n_fft, config.max_bin)
            own["bandwidth"] = (bandwidth, f"feeds {config.max_bin} of {config.nb_bins} bins (up to {bandwidth:g} "
                                f"Hz) to the LSTM of its {target!r} model")
        for name, (value, what) in own.items():
            given = getattr(cfg, name)
            if given is None or given == value or (name == "unidirectional" and not given) or (
                    name == "bandwidth" and bandwidth_to_max_bin(rate, settings.n_fft, given) == config.max_bin):
                continue
            flag = "--" + name.replace("_", "-")
            raise OpenUnmixLikeError(f"{flag if name == 'unidirectional' else f'{flag} {given:g}'}: --model "
                                     f"{cfg.model} {what}, and fine-tuning keeps that; drop {flag} (or train a new "
                                     "model without --model)")
        defaults.update({name: value for name, (value, _) in own.items()
                         if getattr(cfg, name) is None or (name == "unidirectional" and not cfg.unidirectional)})
    return dataclasses.replace(cfg, **defaults)


def check_lstm_options(cfg: TrainConfig, arch: Architecture, what: str) -> None:
    """Refuse ``--unidirectional`` and a ``--bandwidth`` other than the default for an architecture without
    Open-Unmix's LSTM, which they shape: taken silently, they would leave a model that is not what was asked
    (a ``tfattn`` that looks ahead, a ``unet2d`` fed every bin).

    Args:
        what: the model the options are for, as the message's subject (``"a 'unet2d' model (--arch unet2d)"``).

    Raises:
        OpenUnmixLikeError: one line naming the option, the model, and what to do.
    """
    if arch.name == "umx":
        return
    if cfg.unidirectional:
        raise OpenUnmixLikeError(f"--unidirectional: {what} has no LSTM to make causal (its output for a frame "
                                 "depends on later frames; only umx models are trained causal, for streaming); drop "
                                 "the option")
    if cfg.bandwidth is not None and cfg.bandwidth != MODEL_FIXED["bandwidth"]:
        bins = "it takes every bin up to --arch-args max_bin=N" if arch.spectral() else "it works on the waveform"
        raise OpenUnmixLikeError(f"--bandwidth {cfg.bandwidth:g}: {what} has no LSTM whose input it "
                                 f"limits ({bins}); drop the option")


def model_bandwidth(sample_rate: float, n_fft: int, max_bin: int) -> float:
    """The ``--bandwidth`` (Hz) that gives ``max_bin`` bins: 16000 where it does (the published models),
    else the centre frequency of the highest bin the model sees."""
    from ..architectures.umx import bandwidth_to_max_bin, bin_frequencies

    if bandwidth_to_max_bin(sample_rate, n_fft, MODEL_FIXED["bandwidth"]) == max_bin:
        return MODEL_FIXED["bandwidth"]
    return float(bin_frequencies(sample_rate, n_fft)[max_bin - 1])


DEFAULT_TARGET = "vocals"


def resolve_target(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``target`` named when ``--target`` was not given, as the reference recipe names
    it: the stem of ``--target-file`` (``trackfolder_fix``, ``trackfolder_var``) or of
    ``--output-file`` (``aligned``), the ``--target-dir`` folder (``sourcefolder``), else vocals.
    A model trained from ``drums.wav`` is then saved as ``drums``, not as ``vocals``."""
    if cfg.target is not None:
        return cfg
    target = DEFAULT_TARGET
    named = {"trackfolder_fix": cfg.target_file, "trackfolder_var": cfg.target_file,
             "aligned": cfg.output_file}.get(cfg.dataset)
    if named:
        target = PurePath(named).stem
    elif cfg.dataset == "sourcefolder" and cfg.target_dir:
        target = PurePath(cfg.target_dir).name
    return dataclasses.replace(cfg, target=target)


def check_numbers(cfg: TrainConfig) -> None:
    """Refuse numeric options no model or data set could use."""
    from ..audio import MAX_RATE, MIN_RATE

    if cfg.nb_channels not in (1, 2):
        raise OpenUnmixLikeError(f"--nb-channels {cfg.nb_channels}: give 1 (mono) or 2 (stereo)")
    if not MIN_RATE <= cfg.sample_rate <= MAX_RATE:
        raise OpenUnmixLikeError(f"--sample-rate {cfg.sample_rate}: give a rate in Hz from {MIN_RATE} to {MAX_RATE}")
    if cfg.nfft < 16 or not 1 <= cfg.nhop <= cfg.nfft:
        raise OpenUnmixLikeError(f"--nfft {cfg.nfft} --nhop {cfg.nhop}: give an STFT length of at least 16 and a "
                                 "hop from 1 to that length")
    if cfg.hidden_size is not None and cfg.hidden_size < 1:
        raise OpenUnmixLikeError(f"--hidden-size {cfg.hidden_size}: give a width of at least 1")
    if not cfg.bandwidth > 0:  # NaN too
        raise OpenUnmixLikeError(f"--bandwidth {cfg.bandwidth:g}: give a frequency in Hz above 0")
    if cfg.batch_size < 1 or cfg.epochs < 1:
        raise OpenUnmixLikeError("--batch-size and --epochs must be at least 1")
    if not cfg.lr > 0:
        raise OpenUnmixLikeError(f"--lr {cfg.lr:g}: give a learning rate above 0")
    # These used to reach the optimiser and the schedule, whose own messages name no option, after the data was read.
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise OpenUnmixLikeError(f"--weight-decay {cfg.weight_decay:g}: give an L2 weight decay of 0 or more")
    if not 0 < cfg.lr_decay_gamma < 1:
        raise OpenUnmixLikeError(f"--lr-decay-gamma {cfg.lr_decay_gamma:g}: give the factor the learning rate is "
                                 "multiplied by at a plateau, above 0 and below 1 (default 0.3)")
    for flag, value in (("--patience", cfg.patience), ("--lr-decay-patience", cfg.lr_decay_patience)):
        if value < 0:
            raise OpenUnmixLikeError(f"{flag} {value}: give a number of epochs, 0 or more")
    if not math.isfinite(cfg.seq_dur):
        raise OpenUnmixLikeError(f"--seq-dur {cfg.seq_dur:g}: give seconds (0 or less: whole tracks)")
    if cfg.seq_dur <= 0 and cfg.batch_size > 1:
        raise OpenUnmixLikeError(f"--seq-dur {cfg.seq_dur:g} trains on whole tracks, which differ in length and "
                                 f"cannot share a batch: add --batch-size 1 (now {cfg.batch_size})")
    if cfg.nb_workers < 0:
        raise OpenUnmixLikeError(f"--nb-workers {cfg.nb_workers}: give 0 (load in this process) or more")


# The layouts that take --samples-per-track, and their defaults.
SAMPLES_PER_TRACK = {"musdb": 64, "trackfolder_fix": 1, "slakh": 1, "moisesdb": 1, "medleydb": 1, "dsd100": 1}


def resolve_samples_per_track(cfg: TrainConfig) -> Optional[int]:
    """``--samples-per-track``, or the layout's default; ``None`` for the layouts that do not use it."""
    if cfg.dataset not in SAMPLES_PER_TRACK:
        if cfg.samples_per_track is not None:
            raise OpenUnmixLikeError(f"--samples-per-track works with --dataset {' or '.join(SAMPLES_PER_TRACK)}; "
                                     f"drop it for --dataset {cfg.dataset}")
        return None
    if cfg.samples_per_track is None:
        return SAMPLES_PER_TRACK[cfg.dataset]
    if cfg.samples_per_track < 1:
        raise OpenUnmixLikeError(f"--samples-per-track {cfg.samples_per_track}: give at least 1")
    return cfg.samples_per_track


def resolve_stem_options(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the targets of the :data:`STEM_LAYOUTS` spelt as their metadata is matched
    (``"Synth Pad"`` -> ``synth_pad``, which also names the model files) and ``stem_grouping``
    resolved (``four`` for moisesdb and medleydb); the options of :data:`LAYOUT_OPTIONS` refused elsewhere.

    Raises:
        OpenUnmixLikeError: an option the layout does not take, or a value no data set could use.
    """
    from ..data import MOISESDB_FOUR, MUSDB_SOURCES, STEM_GROUPINGS, stem_key

    for flag, field, layouts in LAYOUT_OPTIONS:
        value = getattr(cfg, field)
        if value is not None and value is not False and cfg.dataset not in layouts:
            also = f" ({' and '.join(layouts[1:])} take{'s' if len(layouts) == 2 else ''} it too)"
            raise OpenUnmixLikeError(f"{flag} works with --dataset {layouts[0]}; drop it for --dataset {cfg.dataset}"
                                     f"{also if layouts[1:] else ''}")
    if cfg.dataset not in STEM_LAYOUTS:
        return cfg
    targets = [stem_key(t) for t in cfg.targets] if cfg.targets else None
    target = stem_key(cfg.target) if cfg.target is not None else None
    for name in targets or [target]:
        if not name:
            raise OpenUnmixLikeError(f"--dataset {cfg.dataset}: give a target with letters or digits")
    if cfg.valid_tracks is not None and cfg.valid_tracks < 1:
        raise OpenUnmixLikeError(f"--valid-tracks {cfg.valid_tracks}: give at least 1")
    if cfg.dataset == "dsd100":
        for name in targets or [target]:
            if name not in MUSDB_SOURCES:
                raise OpenUnmixLikeError(f"--target {name}: DSD100's sources are {', '.join(MUSDB_SOURCES)}; "
                                         "train one of them")
    if cfg.dataset in ("slakh", "dsd100"):
        return dataclasses.replace(cfg, target=target, targets=targets)
    grouping = cfg.stem_grouping or "four"
    if grouping not in STEM_GROUPINGS:
        raise OpenUnmixLikeError(f"--stem-grouping {grouping!r}: choose one of {', '.join(STEM_GROUPINGS)}")
    if grouping == "four":
        example = "female singer or acoustic guitar" if cfg.dataset == "medleydb" else "guitar or piano"
        for name in targets or [target]:
            if name not in MOISESDB_FOUR:
                raise OpenUnmixLikeError(f"--target {name}: with --stem-grouping four (the default) the targets are "
                                         f"{', '.join(MOISESDB_FOUR)}; add --stem-grouping all to train one stem "
                                         f"such as {example}")
    return dataclasses.replace(cfg, target=target, targets=targets, stem_grouping=grouping)
