"""``umx-train``: train one target model (see docs/training.md)."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

from .. import __version__
from ..architectures import ARCHITECTURES, PRESETS
from ..augment import AUGMENTATIONS, BATCH_AUGMENTATIONS
from ..errors import OpenUnmixLikeError
from ..losses import LOSSES
from ..train import DATASETS, SCHEDULERS, SELECT_BY, TrainConfig, distributed_session, run

DEFAULTS = TrainConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umx-train", description="Train an Open-Unmix target model.")
    g = p.add_argument_group("target and output")
    g.add_argument("--target", default=DEFAULTS.target, help="target source name (default vocals)")
    g.add_argument("--output", default=DEFAULTS.output, help="output folder (default ./open-unmix)")
    g.add_argument("--checkpoint", default=None, help="resume from this <target>.chkpnt (or its folder)")
    g.add_argument("--resume", default=None, choices=["auto"],
                   help="auto: resume from the newest of <output>/<target>.chkpnt and the step checkpoints "
                        "in <output>/checkpoints/, when there is one")
    g.add_argument("--model", default=None, help="pretrained model name or folder to fine-tune")

    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", default=DEFAULTS.dataset, choices=DATASETS)
    g.add_argument("--root", default=None, help="dataset folder")
    g.add_argument("--is-wav", action="store_true", help="musdb: MUSDB18-HQ wav layout instead of .stem.mp4")
    g.add_argument("--samples-per-track", type=int, default=DEFAULTS.samples_per_track)
    g.add_argument("--input-file", "--input_file", dest="input_file", default=None,
                   help="aligned: input file name in each track folder, or input folder name")
    g.add_argument("--output-file", "--output_file", dest="output_file", default=None,
                   help="aligned: output file name in each track folder, or output folder name")
    g.add_argument("--target-dir", default=None, help="sourcefolder: folder of target files")
    g.add_argument("--interferer-dirs", nargs="+", default=None, help="sourcefolder: folders of interferers")
    g.add_argument("--target-file", default=None, help="trackfolder_*: target file name (with extension)")
    g.add_argument("--interferer-files", nargs="+", default=None, help="trackfolder_fix: interferer file names")
    g.add_argument("--ext", default=DEFAULTS.ext, help="sourcefolder/trackfolder_var: file extension (default .wav)")
    g.add_argument("--nb-train-samples", type=int, default=DEFAULTS.nb_train_samples)
    g.add_argument("--nb-valid-samples", type=int, default=DEFAULTS.nb_valid_samples)
    g.add_argument("--random-track-mix", action="store_true", help="trackfolder_fix: interferers from random tracks")
    g.add_argument("--silence-missing-targets", action="store_true", help="trackfolder_var: silent missing targets")
    g.add_argument("--random-interferer-mix", action="store_true",
                   help="trackfolder_var: interferers from a random track")
    g.add_argument("--source-augmentations", nargs="*", default=None,
                   help=f"per source: {', '.join(AUGMENTATIONS)}; per batch: {', '.join(BATCH_AUGMENTATIONS)} "
                        "(default: gain channelswap; none for aligned)")
    g.add_argument("--sample-rate", type=int, default=DEFAULTS.sample_rate,
                   help="rate the model works at; files at other rates are resampled (default 44100)")

    g = p.add_argument_group("training")
    for name, kind, text in [
        ("epochs", int, "maximum epochs"), ("batch-size", int, "batch size"),
        ("patience", int, "early stopping patience in epochs"),
        ("seq-dur", float, "excerpt length in seconds; <= 0 uses whole tracks"),
        ("lr", float, "learning rate"), ("lr-decay-patience", int, "epochs without improvement before decay"),
        ("lr-decay-gamma", float, "learning rate decay factor"), ("weight-decay", float, "L2 weight decay"),
    ]:
        default = getattr(DEFAULTS, name.replace("-", "_"))
        g.add_argument(f"--{name}", type=kind, default=default, help=f"{text} (default {default})")
    g.add_argument("--lr-scheduler", choices=SCHEDULERS, default=DEFAULTS.lr_scheduler,
                   help="plateau: decay after --lr-decay-patience epochs without improvement; cosine: anneal "
                        "to 0 over --epochs; resumed with another --epochs, it anneals to 0 at the new end "
                        "(default plateau)")
    g.add_argument("--clip-grad", type=float, default=DEFAULTS.clip_grad,
                   help="clip the gradient norm to this value (default 0: no clipping)")
    g.add_argument("--ema", type=float, default=DEFAULTS.ema, metavar="DECAY",
                   help="keep an exponential moving average of the weights (decay per step, e.g. 0.99); "
                        "validation, the best epoch and the saved model use it (default 0: off)")
    g.add_argument("--ckpt-every", type=int, default=DEFAULTS.ckpt_every,
                   help="also write a resumable checkpoint every N steps to <output>/checkpoints/ (default 0: off)")
    g.add_argument("--max-minutes", type=float, default=DEFAULTS.max_minutes,
                   help="training-time budget in minutes; the run stops at the first step past it, validates "
                        "and saves that partial epoch (default 0: no budget; resumed runs count earlier epochs)")
    g.add_argument("--stop-after", type=int, default=DEFAULTS.stop_after, metavar="EPOCH",
                   help="stop once this epoch is trained, while the learning-rate schedule still spans --epochs "
                        "(go on later with --resume auto; default 0: train to --epochs)")
    g.add_argument("--ckpt-keep", type=int, default=DEFAULTS.ckpt_keep,
                   help=f"step checkpoints kept, newest first (default {DEFAULTS.ckpt_keep})")
    g.add_argument("--loss", default=None,
                   help=f"loss or weighted sum, e.g. l1+0.5*mrstft; names: {', '.join(LOSSES)} "
                        "(default: the architecture's, mse for umx)")

    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="settings that belong together (architecture, rate, STFT, loss, ...); flags given "
                        "explicitly win. " + "; ".join(f"{k}: {_describe(v)}" for k, v in PRESETS.items()))
    g.add_argument("--arch", choices=list(ARCHITECTURES), default=DEFAULTS.arch,
                   help="per-target architecture (default umx). " +
                        "; ".join(f"{k}: {a.summary}" for k, a in ARCHITECTURES.items()))
    g.add_argument("--arch-args", nargs="+", default=None, metavar="NAME=VALUE",
                   help="other constructor arguments of the architecture, e.g. depths=2,2,6,2 window_size=8 "
                        "(see docs/architectures.md)")
    g.add_argument("--hidden-size", type=int, default=None,
                   help="width: umx bottleneck (default 512), first-layer channels of unet2d (16), unet1d (32) "
                        "and tfattn (32); with --model, a larger width widens the umx model, which computes the "
                        "same output at first")
    g.add_argument("--lstm-dropout", type=float, default=None,
                   help="umx: dropout between the LSTM layers while training (default: the model's, 0.4)")
    g.add_argument("--unidirectional", action="store_true", help="umx: causal LSTM (real-time use)")
    for name, kind, text in [
        ("nfft", int, "STFT length"), ("nhop", int, "STFT hop"),
        ("bandwidth", float, "umx: highest frequency in Hz the LSTM sees"),
        ("nb-channels", int, "1 (mono) or 2 (stereo)"),
    ]:
        default = getattr(DEFAULTS, name.replace("-", "_"))
        g.add_argument(f"--{name}", type=kind, default=default, help=f"{text} (default {default})")

    g.add_argument("--eval-every", type=int, default=0,
                   help="every N epochs, report the validation SDR (Music Demixing Challenge definition) and "
                        "SI-SDR of the target; fast metrics, not BSSEval (default 0: never)")
    g.add_argument("--select-by", choices=SELECT_BY, default=DEFAULTS.select_by,
                   help="what picks the best epoch (the saved model, early stopping): the lowest validation "
                        "loss, or the highest validation SDR of --eval-every (every epoch unless --eval-every "
                        "is given); the plateau schedule still follows the loss (default loss)")

    g.add_argument("--nonfinite-loss", dest="nonfinite", choices=["skip", "stop"], default="skip",
                   help="a batch with a NaN or infinite loss or gradient: skip it (weights unchanged) or stop "
                        "the run (default skip); either way it is reported with its epoch and batch")

    g = p.add_argument_group("running")
    g.add_argument("--nb-workers", type=int, default=0, help="data loading processes (default 0)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed)
    g.add_argument("--no-cuda", "--no_cuda", dest="no_cuda", action="store_true", help="do not use CUDA")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    g.add_argument("--verbose", action="store_true",
                   help="also print the traceback of dataset and configuration errors (unexpected errors always "
                        "print theirs)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _describe(preset: dict) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
                    for k, v in preset.items())


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the options; a ``--preset`` supplies defaults that explicit flags override."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.preset:
        parser.set_defaults(**PRESETS[known.preset])
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="umx-train: %(message)s")
    cfg = config_from_args(args)
    try:
        with distributed_session():
            run(cfg)
    except OpenUnmixLikeError as exc:
        print(f"umx-train: error: {exc}", file=sys.stderr)
        return 1
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
