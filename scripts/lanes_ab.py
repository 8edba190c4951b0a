"""In-process A/B of the CPU lanes (``openunmix_like.lanes``): the same separator, the
same 60 s of noise, with lanes off, for the targets' encoders only, and everywhere
(encoders and the Wiener filter's bin blocks), alternating in one process so that
the machine's changes of speed hit every variant alike.

    python scripts/lanes_ab.py --threads 2 --rounds 10 [--precision fp32]

Prints one line per round (best of two calls per variant) and a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import write_umxhq_shaped  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from openunmix_like import Separator, filtering, lanes

    on, off = lanes.nb_lanes, (lambda nb_items: 1)
    variants = {"off": (off, off), "encoders": (on, off), "everywhere": (on, on)}
    times = {name: [] for name in variants}
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        sep = Separator.from_pretrained(write_umxhq_shaped(Path(tmp)), niter=1, precision=args.precision)
    torch.manual_seed(0)
    audio = 0.1 * torch.randn(1, 2, int(args.seconds * 44100))
    try:
        with torch.inference_mode():
            for _ in range(args.rounds):
                for name, (for_encoders, for_filter) in variants.items():
                    lanes.nb_lanes, filtering.nb_lanes = for_encoders, for_filter
                    best = float("inf")
                    for _ in range(2):
                        start = time.perf_counter()
                        outputs[name] = sep(audio)
                        best = min(best, time.perf_counter() - start)
                    times[name].append(best)
                print(" | ".join(f"{name} {t[-1]:.3f} s" for name, t in times.items()), flush=True)
    finally:
        lanes.nb_lanes, filtering.nb_lanes = on, on
    peak = float(outputs["off"].abs().max())
    print(json.dumps({
        "precision": sep.precision, "threads": args.threads, "rounds": args.rounds,
        **{f"{name}_s": [round(min(t), 3), round(statistics.median(t), 3), round(max(t), 3)]
           for name, t in times.items()},
        "max_diff_over_peak": max(float((outputs[n] - outputs["off"]).abs().max()) / peak for n in variants),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
