"""``umx-synth``: generate a synthetic multitrack corpus (see docs/synth.md)."""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import List, Optional

from .. import __version__
from . import sigterm_as_interrupt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="umx-synth",
        description="Compose songs by program and render them with General MIDI soundfonts (FluidSynth) and "
                    "sung voices into MUSDB18-HQ-layout folders: <root>/{train,valid,test}/<track>/"
                    "{mixture,vocals,drums,bass,other}.wav.",
    )
    p.add_argument("root", nargs="?", help="output folder (created; complete tracks already there are kept, and "
                                           "they must have been made with the same --seed and --duration)")
    p.add_argument("--train", type=int, default=100, help="songs in train/ (default 100)")
    p.add_argument("--valid", type=int, default=5, help="songs in valid/ (default 5)")
    p.add_argument("--test", type=int, default=10, help="songs in test/ (default 10)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per song, 0.02 to 600 (default 30)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed; the same seed gives the same corpus (default 0)")
    p.add_argument("--jobs", type=int, default=1, help="songs rendered in parallel (default 1)")
    p.add_argument("--cache-dir", default=None, help="folder caching rendered speech (default: none)")
    p.add_argument("--check", action="store_true", help="only check the Debian packages the generator needs")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _error(message: str) -> int:
    print(f"umx-synth: error: {message}", file=sys.stderr)
    return 1


def plan(args: argparse.Namespace) -> list:
    """The jobs of the run, after checking every option and the output folder, which is then created.

    Raises :class:`~openunmix_like.synth.voice.SynthError` naming the option or path and what to do.
    """
    from ..errors import OpenUnmixLikeError
    from ..fileio import writable_folder
    from ..synth.corpus import check_root, plan_jobs
    from ..synth.voice import SynthError

    if args.root is None:
        raise SynthError("give the output folder ROOT (umx-synth ROOT --train N ...)")
    if args.jobs < 1:
        raise SynthError(f"--jobs {args.jobs}: give 1 or more songs rendered in parallel")
    cache = Path(args.cache_dir) if args.cache_dir is not None else None
    if cache is not None and cache.exists() and not cache.is_dir():
        raise SynthError(f"--cache-dir {cache}: is a file; give a folder")
    counts = {"train": args.train, "valid": args.valid, "test": args.test}
    jobs = plan_jobs(args.root, counts, args.seed, args.duration, cache_dir=args.cache_dir)
    check_root(jobs)
    try:
        writable_folder("ROOT", args.root)
    except OpenUnmixLikeError as exc:
        raise SynthError(str(exc)) from None
    return jobs


def run(jobs: list, workers: int) -> int:
    """Make the songs, printing one line per song; 130 after Ctrl+C or SIGTERM, with the finished songs kept."""
    from ..synth.corpus import generate

    began = time.perf_counter()
    finished = failed = 0
    try:
        with sigterm_as_interrupt(), contextlib.closing(generate(jobs, workers)) as results:
            for job, made, error in results:
                if error:
                    failed += 1
                    print(f"umx-synth: error: {job.path}: {error}", file=sys.stderr)
                    continue
                finished += 1
                print(f"[{finished + failed}/{len(jobs)}] {job.path} {made['style']} {made['tempo']:.0f} bpm "
                      f"{made['key']}", flush=True)
    except KeyboardInterrupt:
        _error(f"interrupted: {finished} of {len(jobs)} songs complete; the songs in hand were discarded, nothing "
               "half-written is kept; run the same command again to make the rest")
        return 130
    print(f"{len(jobs) - failed} songs in {time.perf_counter() - began:.0f} s", flush=True)
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from ..synth.corpus import check_dependencies
        from ..synth.voice import SynthError

        try:
            found = check_dependencies()
            if args.check:
                print(f"soundfonts: {', '.join(found['soundfonts'])}\nvoices: {', '.join(found['voices'])}")
                return 0
            jobs = plan(args)
        except SynthError as exc:
            return _error(str(exc))
    except KeyboardInterrupt:
        _error("interrupted before any song was made")
        return 130
    return run(jobs, args.jobs)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
