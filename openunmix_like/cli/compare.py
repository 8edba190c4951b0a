"""``umx-compare``: is one separator better than another? A paired, track-by-track comparison of two
``umx-evaluate`` result folders, with a bootstrap interval."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

from .. import __version__
from ..errors import OpenUnmixLikeError
from ..results import MAX_RESAMPLES, METRICS, check_bootstrap, load_records, paired_difference, paired_markdown


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="umx-compare",
        description="Compare two umx-evaluate results track by track: the mean difference per target and over "
                    "targets, a 95 % bootstrap interval over the tracks and how many tracks got better.")
    p.add_argument("new", help="results of the method to judge: <evaldir>/<method>, or an evaldir (its --method "
                               "folder is used)")
    p.add_argument("old", help="results to compare against, the same way")
    p.add_argument("--method", default="default",
                   help="method folder used when a folder given is an evaldir (default: default, the name "
                        "umx-evaluate gives the bundled model)")
    p.add_argument("--metric", choices=METRICS, default="SDR", help="BSSEval metric (default SDR)")
    p.add_argument("--resamples", type=int, default=10000,
                   help=f"bootstrap draws, 1 to {MAX_RESAMPLES:,} (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws, 0 or more (default 0)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def results_folder(path: str, method: str) -> Dict[str, dict]:
    """The per-track records in ``path``, or in ``path/method`` when ``path`` is an evaldir."""
    folder = Path(path)
    if not folder.is_dir():
        raise OpenUnmixLikeError(f"{folder}: no such folder; give a folder umx-evaluate wrote "
                                 f"(<evaldir>/<method>)")
    for candidate in (folder, folder / method):
        records = load_records(candidate)  # a file that is not a track's result is named
        if records:
            return records
    raise OpenUnmixLikeError(f"{folder}: no per-track results (*.json) here or in {folder / method}; give "
                             f"<evaldir>/<method> as written by umx-evaluate")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_bootstrap(args.resamples, args.seed)
        new, old = results_folder(args.new, args.method), results_folder(args.old, args.method)
        result = paired_difference(new, old, metric=args.metric, resamples=args.resamples, seed=args.seed)
    except OpenUnmixLikeError as exc:
        print(f"umx-compare: error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(paired_markdown(result, args.new, args.old))
    return 0


if __name__ == "__main__":
    sys.exit(main())
