"""``umx-synth``: generate a synthetic multitrack corpus (see docs/synth.md)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from .. import __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="umx-synth",
        description="Compose songs by program and render them with General MIDI soundfonts (FluidSynth) and "
                    "sung voices into MUSDB18-HQ-layout folders: <root>/{train,valid,test}/<track>/"
                    "{mixture,vocals,drums,bass,other}.wav.",
    )
    p.add_argument("root", nargs="?", help="output folder (created; complete tracks already there are kept)")
    p.add_argument("--train", type=int, default=100, help="songs in train/ (default 100)")
    p.add_argument("--valid", type=int, default=5, help="songs in valid/ (default 5)")
    p.add_argument("--test", type=int, default=10, help="songs in test/ (default 10)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per song (default 30)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed; the same seed gives the same corpus (default 0)")
    p.add_argument("--jobs", type=int, default=1, help="songs rendered in parallel (default 1)")
    p.add_argument("--cache-dir", default=None, help="folder caching rendered speech (default: none)")
    p.add_argument("--check", action="store_true", help="only check the Debian packages the generator needs")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ..synth.corpus import check_dependencies, generate, plan_jobs
    from ..synth.voice import SynthError

    try:
        found = check_dependencies()
    except SynthError as exc:
        print(f"umx-synth: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"soundfonts: {', '.join(found['soundfonts'])}\nvoices: {', '.join(found['voices'])}")
        return 0
    if args.root is None:
        print("umx-synth: give the output folder ROOT", file=sys.stderr)
        return 2
    if args.duration <= 0 or min(args.train, args.valid, args.test) < 0:
        print("umx-synth: --duration must be positive and song counts non-negative", file=sys.stderr)
        return 2
    counts = {"train": args.train, "valid": args.valid, "test": args.test}
    jobs = plan_jobs(args.root, counts, args.seed, args.duration, cache_dir=args.cache_dir)
    Path(args.root).mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    failed = 0
    for done, (job, plan, error) in enumerate(generate(jobs, args.jobs), 1):
        if error:
            failed += 1
            print(f"umx-synth: {job.path}: {error}", file=sys.stderr)
        else:
            print(f"[{done}/{len(jobs)}] {job.path} {plan['style']} {plan['tempo']:.0f} bpm {plan['key']}",
                  flush=True)
    print(f"{len(jobs) - failed} songs in {time.perf_counter() - began:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
