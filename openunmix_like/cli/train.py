"""``umx-train``: train one target model (see docs/training.md)."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

from .. import __version__
from ..choices import (ARCHITECTURE_NAMES, AUGMENTATION_NAMES, BATCH_AUGMENTATION_NAMES, DEFAULT_ARCHITECTURE,
                       LOSS_NAMES, PRESETS, STEM_GROUPINGS)
from ..errors import OpenUnmixLikeError
from ..fileio import LockHeld, held_lock, made_folders_removed_if_empty
# The options come from modules that import no torch, so that --help and a bad option answer at once; what
# trains (torch with it) is imported once the options are read.
from ..training.config import (DATASETS, MODEL_FIXED, PRECISIONS, PRELOAD, SAMPLES_PER_TRACK, SCHEDULERS, SELECT_BY,
                               TrainConfig, resolve_target)
from . import sigterm_as_interrupt

DEFAULTS = TrainConfig()


USAGE = "umx-train --dataset LAYOUT --root DATA --target NAME [--output DIR] [options]"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="umx-train", usage=USAGE,
        description="Train one target model (Open-Unmix by default) on a data set; docs/training.md has details.")
    g = p.add_argument_group("target and output")
    g.add_argument("--target", default=DEFAULTS.target, metavar="NAME",
                   help="source to learn (default: the --target-file or --output-file name without its extension, "
                        "the --target-dir folder, else vocals)")
    g.add_argument("--targets", nargs="+", default=None, metavar="NAME",
                   help="several sources learnt together from one stream of mixtures (musdb, trackfolder_fix, slakh, "
                        "moisesdb, medleydb, dsd100), each into its own files of --output, e.g. --targets vocals "
                        "drums bass other")
    g.add_argument("--output", default=DEFAULTS.output, metavar="DIR",
                   help="model folder to write (default ./open-unmix)")
    g.add_argument("--resume", default=None, choices=["auto"],
                   help="continue from the newest checkpoint in --output, if any")
    g.add_argument("--checkpoint", default=None, metavar="PATH", help="continue from this <target>.chkpnt")
    g.add_argument("--force", action="store_true",
                   help="start over in an --output that already holds the target's model (replaced; its "
                        "checkpoints are removed); without it such a run is refused")
    g.add_argument("--model", default=None, metavar="NAME|DIR",
                   help="fine-tune this trained or published model (its rate, channels, STFT, bandwidth and "
                        "direction are kept; options contradicting them are refused)")

    g = p.add_argument_group("data (layouts: docs/training.md)")
    g.add_argument("--dataset", default=DEFAULTS.dataset, choices=DATASETS, metavar="LAYOUT",
                   help=f"{', '.join(DATASETS)} (default {DEFAULTS.dataset})")
    g.add_argument("--root", default=None, metavar="DIR",
                   help="data folder (musdb, Slakh2100, MoisesDB, MedleyDB or DSD100 root, or one with train/ and "
                        "valid/)")
    g.add_argument("--is-wav", action="store_true", help="musdb: MUSDB18-HQ wav files instead of .stem.mp4")
    g.add_argument("--audio-backend", "--audio_backend", dest="audio_backend", default=None,
                   choices=["soundfile", "sox_io", "stempeg"],
                   help="accepted for the reference's command lines and ignored: audio is read with soundfile, "
                        "and with ffmpeg where soundfile cannot")
    g.add_argument("--samples-per-track", type=int, default=DEFAULTS.samples_per_track, metavar="N",
                   help="musdb, trackfolder_fix, slakh, moisesdb, medleydb, dsd100: training excerpts per track and "
                        "epoch (default "
                        + ", ".join(f"{n} for {layout}" for layout, n in SAMPLES_PER_TRACK.items()) + ")")
    g.add_argument("--input-file", "--input_file", dest="input_file", default=None, metavar="NAME",
                   help="aligned: input file (or folder) name")
    g.add_argument("--output-file", "--output_file", dest="output_file", default=None, metavar="NAME",
                   help="aligned: output file (or folder) name")
    g.add_argument("--target-file", default=None, metavar="NAME",
                   help="trackfolder_*: target file name (default <target>.<ext>)")
    g.add_argument("--interferer-files", nargs="+", default=None, metavar="NAME",
                   help="trackfolder_fix: other files (default every other audio file but mixture.*)")
    g.add_argument("--target-dir", default=None, metavar="NAME", help="sourcefolder: target folder (default <target>)")
    g.add_argument("--interferer-dirs", nargs="+", default=None, metavar="NAME",
                   help="sourcefolder: interferer folders (default every other folder)")
    g.add_argument("--ext", default=DEFAULTS.ext, help="sourcefolder, trackfolder_var: file extension (default .wav)")
    g.add_argument("--nb-train-samples", type=int, default=DEFAULTS.nb_train_samples, metavar="N",
                   help=f"sourcefolder: training mixtures per epoch (default {DEFAULTS.nb_train_samples})")
    g.add_argument("--nb-valid-samples", type=int, default=DEFAULTS.nb_valid_samples, metavar="N",
                   help=f"sourcefolder: validation mixtures (default {DEFAULTS.nb_valid_samples})")
    g.add_argument("--random-track-mix", action="store_true",
                   help="trackfolder_fix, slakh, moisesdb, medleydb, dsd100: interferers from random tracks")
    g.add_argument("--random-interferer-mix", action="store_true",
                   help="trackfolder_var: interferers from a random track")
    g.add_argument("--silence-missing-targets", action="store_true",
                   help="trackfolder_var, slakh, moisesdb, medleydb: a track without the target gets a silent one")
    g.add_argument("--stem-grouping", choices=STEM_GROUPINGS, default=None,
                   help="moisesdb, medleydb: targets vocals, bass, drums, other (four: other is every other stem) "
                        "or any top-level stem such as guitar, piano, or with medleydb any instrument label such as "
                        "female_singer (all) (default four)")
    g.add_argument("--valid-tracks", type=int, default=None, metavar="N",
                   help="moisesdb, medleydb, dsd100 (of its Dev tracks): validation tracks, chosen by a hash of the "
                        "track id (default 10%% of the tracks)")
    g.add_argument("--include-bleed", action="store_true",
                   help="medleydb: also train on the tracks whose metadata says has_bleed: yes (other instruments "
                        "leak into their stems)")
    g.add_argument("--source-augmentations", nargs="*", default=None, metavar="NAME",
                   help=f"per source: {', '.join(AUGMENTATION_NAMES)}; "
                        f"per batch: {', '.join(BATCH_AUGMENTATION_NAMES)} (default gain channelswap for musdb, "
                        "slakh, moisesdb, medleydb and dsd100; none for the folder layouts and aligned)")
    g.add_argument("--sample-rate", type=int, default=DEFAULTS.sample_rate, metavar="HZ",
                   help="rate the model works at; other rates are resampled (default 44100)")

    g = p.add_argument_group("optimisation")
    for name, kind, text in [
        ("epochs", int, "maximum epochs"), ("batch-size", int, "batch size"),
        ("patience", int, "epochs without improvement before stopping"),
        ("seq-dur", float, "excerpt seconds; <= 0: whole tracks"),
        ("lr", float, "learning rate"), ("weight-decay", float, "L2 weight decay"),
        ("lr-decay-patience", int, "plateau: epochs without improvement before decay"),
        ("lr-decay-gamma", float, "plateau: decay factor"),
    ]:
        default = getattr(DEFAULTS, name.replace("-", "_"))
        g.add_argument(f"--{name}", type=kind, default=default, metavar="N", help=f"{text} (default {default})")
    g.add_argument("--lr-scheduler", choices=SCHEDULERS, default=DEFAULTS.lr_scheduler,
                   help="plateau: decay when the validation loss stalls; cosine: anneal to 0 at --epochs "
                        "(default plateau)")
    g.add_argument("--loss", default=None, metavar="SUM",
                   help=f"loss or weighted sum, e.g. l1+0.5*mrstft, of: {', '.join(LOSS_NAMES)} "
                        "(default: the architecture's, mse for umx)")
    g.add_argument("--clip-grad", type=float, default=DEFAULTS.clip_grad, metavar="NORM",
                   help="clip the gradient norm (default 0: off)")
    g.add_argument("--ema", type=float, default=DEFAULTS.ema, metavar="DECAY",
                   help="validate and save a moving average of the weights, e.g. 0.99 (default 0: off)")
    g.add_argument("--precision", choices=PRECISIONS, default=DEFAULTS.precision,
                   help="autocast of the training step: fp16 (CUDA, loss scaling) or bf16 (pays at large "
                        "batches); auto: fp16 on CUDA, fp32 elsewhere (default auto)")
    g.add_argument("--nonfinite-loss", dest="nonfinite", choices=["skip", "stop"], default="skip",
                   help="a batch with a NaN or infinite loss: skip it or stop (default skip)")

    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=list(ARCHITECTURE_NAMES), default=DEFAULTS.arch,
                   help="per-target architecture (default umx; docs/architectures.md)")
    g.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="settings that belong together for an architecture; explicit flags win")
    g.add_argument("--arch-args", nargs="+", default=None, metavar="NAME=VALUE",
                   help="other constructor arguments, e.g. depths=2,2,6,2")
    g.add_argument("--hidden-size", type=int, default=None, metavar="N",
                   help="width (umx default 512); with --model, widens a umx model (same output at first)")
    g.add_argument("--lstm-dropout", type=float, default=None, metavar="P",
                   help="umx: dropout between LSTM layers (default 0.4)")
    g.add_argument("--unidirectional", action="store_true", help="umx: causal LSTM (real-time use)")
    for name, kind, text in [
        ("nfft", int, "STFT length"), ("nhop", int, "STFT hop"),
        ("bandwidth", float, "umx: highest frequency the LSTM sees, Hz"),
        ("nb-channels", int, "1 (mono) or 2 (stereo)"),
    ]:
        default = getattr(DEFAULTS, name.replace("-", "_"))
        g.add_argument(f"--{name}", type=kind, default=default, metavar="N", help=f"{text} (default {default:g})")

    g = p.add_argument_group("validation and checkpoints")
    g.add_argument("--eval-every", type=int, default=0, metavar="N",
                   help="every N epochs, report the validation SDR and SI-SDR (fast metrics; default 0: never)")
    g.add_argument("--select-by", choices=SELECT_BY, default=DEFAULTS.select_by,
                   help="keep the epoch with the lowest validation loss or highest SDR (default loss)")
    g.add_argument("--ckpt-every", type=int, default=DEFAULTS.ckpt_every, metavar="N",
                   help="also checkpoint every N steps into <output>/checkpoints/ (default 0: off)")
    g.add_argument("--ckpt-keep", type=int, default=DEFAULTS.ckpt_keep, metavar="N",
                   help=f"step checkpoints kept (default {DEFAULTS.ckpt_keep})")
    g.add_argument("--max-minutes", type=float, default=DEFAULTS.max_minutes, metavar="M",
                   help="stop after this much training time, saving the partial epoch (default 0: none)")
    g.add_argument("--stop-after", type=int, default=DEFAULTS.stop_after, metavar="EPOCH",
                   help="stop after this epoch, keeping the schedule planned for --epochs; --resume auto "
                        "continues it (default 0: off)")

    g = p.add_argument_group("running")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    g.add_argument("--no-cuda", "--no_cuda", dest="no_cuda", action="store_true", help="do not use CUDA")
    g.add_argument("--nb-workers", type=int, default=0, metavar="N", help="data loading processes (default 0)")
    g.add_argument("--preload", choices=PRELOAD, default=DEFAULTS.preload,
                   help="decode the data once and keep it on the training device; auto: on CUDA when it fits "
                        "in half the free memory (default auto)")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed, help=f"random seed (default {DEFAULTS.seed})")
    g.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    g.add_argument("--verbose", action="store_true", help="tracebacks for data and option errors too")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the options; a ``--preset`` supplies defaults that explicit flags override.

    Without ``--arch`` a new model is an Open-Unmix one; a fine-tuned one (``--model``)
    keeps its own architecture (``arch`` stays ``None`` until the model is loaded), and the
    options it fixes (:data:`~openunmix_like.training.config.MODEL_FIXED`) that were not
    given are ``None``: the model's (a given one that contradicts it is refused).
    """
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.preset:
        parser.set_defaults(**PRESETS[known.preset])
    args = parser.parse_args(argv)
    if args.arch is None and not args.model:
        args.arch = DEFAULT_ARCHITECTURE
    if args.model:
        asked = given_options(argv) | set(PRESETS.get(args.preset) or {})
        for name in MODEL_FIXED:
            if name not in asked:
                setattr(args, name, None)
    return args


def given_options(argv: Optional[Sequence[str]]) -> set:
    """The destinations of the options ``argv`` gives explicitly (not left at their defaults)."""
    probe, unset = build_parser(), object()
    namespace = argparse.Namespace(**dict.fromkeys(vars(probe.parse_args([])), unset))  # defaults fill no name set
    return {name for name, value in vars(probe.parse_args(argv, namespace)).items() if value is not unset}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="umx-train: %(message)s")
    cfg = config_from_args(args)
    try:
        from ..training import run  # noqa: F401  (torch with it: seconds)
    except KeyboardInterrupt:
        print("umx-train: error: interrupted before training started; nothing was written", file=sys.stderr)
        return 130
    with made_folders_removed_if_empty(cfg.output):  # a run that stops before writing leaves none behind
        return _main(cfg, args)


@contextlib.contextmanager
def training_lock(cfg: TrainConfig):
    """Hold, for the run, ``<output>/.<target>.train.lock`` of each target it trains (rank 0 only): a second
    run training one of them into the same ``--output`` is refused before it reads or writes anything, while
    runs of other targets into one folder go on side by side.

    Raises:
        OpenUnmixLikeError: another umx-train holds one of the locks.
    """
    from ..training.distributed import is_main

    with contextlib.ExitStack() as stack:
        if is_main():
            out = Path(cfg.output)
            with contextlib.suppress(OSError):  # an --output that cannot be made is reported by check_output
                out.mkdir(parents=True, exist_ok=True)
            for target in cfg.targets or [resolve_target(cfg).target]:
                try:
                    stack.enter_context(held_lock(out / f".{target}.train.lock", wait=False))
                except LockHeld as exc:
                    who = f"another umx-train (pid {exc.pid})" if exc.pid else "another umx-train"
                    raise OpenUnmixLikeError(f"--output {out}: {who} is training its {target!r} model; wait for "
                                             "it to finish, or give another --output") from None
        yield


def _main(cfg, args: argparse.Namespace) -> int:
    from ..training import distributed_session, run, run_targets  # imported by main already

    try:

        with sigterm_as_interrupt(), training_lock(cfg), distributed_session():
            if cfg.targets:
                run_targets(cfg)
            else:
                run(cfg)
    except OpenUnmixLikeError as exc:
        print(f"umx-train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"umx-train: interrupted; the checkpoints in {cfg.output} are complete (every file is written "
              "whole): continue with --resume auto", file=sys.stderr)
        return 130
    except ValueError as exc:  # dataset and configuration problems raised by the data layer
        print(f"umx-train: error: {exc}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        return 1
    except OSError as exc:
        path = Path(exc.filename) if isinstance(exc.filename, str) else None
        if path is not None and Path(cfg.output).resolve() not in path.resolve().parents:
            print(f"umx-train: error: {path}: {exc.strerror or exc}", file=sys.stderr)  # not a write of ours
            return 1
        what = "no space left on the device" if exc.errno == errno.ENOSPC else str(exc)
        print(f"umx-train: error: cannot write to {cfg.output}: {what}; free space or fix permissions, "
              "then resume with --resume auto (the previous checkpoint is intact)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
