"""Time and peak memory of BSSEval v4 scoring: museval's against openunmix_like.bsseval, on the same track.

Each run is a fresh process, on four stereo targets of
coloured noise at 44.1 kHz with estimates that leak and filter, 1 s windows as in umx-evaluate. The
scores of both are compared window by window.

    python scripts/benchmark_scoring.py --minutes 1 3.5
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

RATE = 44100


def track(minutes: float, seed: int = 0):
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(minutes * 60 * RATE)
    refs = lfilter([1.0, 0.4], [1.0, -0.8], rng.standard_normal((4, n, 2)), axis=1)
    ests = 0.8 * refs + 0.1 * refs.sum(0, keepdims=True) + 0.01 * rng.standard_normal(refs.shape)
    ests[0] = lfilter([0.6, 0.3, -0.1], [1.0], ests[0], axis=0)
    return refs, ests


def child(implementation: str, minutes: float, out: Path) -> None:
    refs, ests = track(minutes)
    tracemalloc.start()  # what the scoring allocates beyond its inputs (numpy reports its arrays)
    start = time.perf_counter()
    if implementation == "museval":
        import museval

        scores = museval.evaluate(refs, ests, win=RATE, hop=RATE)
    else:
        from openunmix_like.bsseval import bss_eval_v4

        scores = bss_eval_v4(refs, ests, RATE, RATE)
    seconds = time.perf_counter() - start
    working = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    np.save(out, np.stack(scores))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "working_mb": working}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 3.5])
    parser.add_argument("--child", nargs=3, metavar=("IMPLEMENTATION", "MINUTES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], float(args.child[1]), Path(args.child[2]))
        return
    inputs_mb = {m: 2 * 4 * int(m * 60 * RATE) * 2 * 8 / 2 ** 20 for m in args.minutes}
    print("| minutes | museval | openunmix_like.bsseval | largest difference (dB): SDR, ISR, SIR, SAR |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            runs = {}
            for implementation in ("museval", "ours"):
                out = Path(tmp) / f"{implementation}-{minutes}.npy"
                done = subprocess.run([sys.executable, __file__, "--child", implementation, str(minutes), str(out)],
                                      check=True, capture_output=True, text=True)
                runs[implementation] = {**json.loads(done.stdout.splitlines()[-1]), "scores": np.load(out)}
            difference = np.nanmax(np.abs(runs["museval"]["scores"] - runs["ours"]["scores"]), axis=(1, 2))
            cells = [f"{runs[i]['seconds']:.1f} s, {runs[i]['working_mb']:.0f} MB ({runs[i]['peak_mb']:.0f} MB)"
                     for i in ("museval", "ours")]
            print(f"| {minutes:g} | {cells[0]} | {cells[1]} | {', '.join(f'{d:.1e}' for d in difference)} |",
                  flush=True)
    print(f"\n(time; memory allocated by the scoring beyond its inputs, traced, and in brackets the peak resident "
          "memory of the whole process, which includes making the inputs; the inputs alone, float64: "
          f"{', '.join(f'{inputs_mb[m]:.0f} MB at {m:g} min' for m in args.minutes)})")


if __name__ == "__main__":
    main()
