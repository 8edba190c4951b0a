"""``umx-export``: per-target models to TorchScript or ONNX (see docs/architectures.md)."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .. import __version__
from . import sigterm_as_interrupt
from ..errors import OpenUnmixLikeError
from ..choices import EXPORT_FORMATS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="umx-export",
        description="Export every target model of a model folder (any architecture) to TorchScript or ONNX: "
                    "the model's channels, any batch size and number of frames (samples for waveform models). "
                    "export.json describes each file's input and output and the STFT to use around them.")
    p.add_argument("model", nargs="?", default=None,
                   help="model folder or published model name (default: the bundled model)")
    p.add_argument("--format", choices=list(EXPORT_FORMATS), required=True, help="torchscript (.pt) or onnx (.onnx)")
    p.add_argument("--outdir", default="exported", help="output folder (default ./exported)")
    p.add_argument("--targets", nargs="+", default=None, help="only these targets")
    # Stated without importing torch (seconds), so that --help answers at once; the range the installed torch
    # writes is checked before any work, and a refusal names it.
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default 17 while torch has its TorchScript-based ONNX exporter, as torch 2.13 "
                        "does; else 18, the lowest its torch.export-based exporter writes); one the installed torch "
                        "does not write is refused before any work, naming those it does")
    p.add_argument("--no-check", action="store_true",
                   help="do not run the exported files against the models (ONNX checks need onnxruntime)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            from ..export import export  # torch: once the options are read

            results = export(args.model, args.outdir, args.format, args.targets, args.opset,
                             check=not args.no_check)
    except OpenUnmixLikeError as exc:
        print(f"umx-export: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # files are staged under hidden names and renamed together, or removed
        print(f"umx-export: error: interrupted; {args.outdir} holds what it held before or the whole export, "
              "nothing half-written: run the same command again", file=sys.stderr)
        return 130
    for item in results.values():
        if item.max_error is None:
            note = "not checked" + ("" if args.no_check else " (install onnxruntime to check)")
        else:
            note = f"max deviation from the model {item.max_error:.1e} of the output's peak"
        print(f"{item.target}: {item.path} ({note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
