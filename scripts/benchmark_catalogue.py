"""Tracks per hour of ``umx-separate --engine ray`` against ``--engine local --jobs 2`` on this machine.

Generates ``--tracks`` stereo 44.1 kHz tracks of ``--seconds`` each (16-bit
wav), separates the folder with each engine in its own process (the bundled
default model unless ``--model``, the same settings for all), checks that the
engines' stems agree, and prints a markdown table. Ray's start and stop are
part of its time, as a user would see them.

    python scripts/benchmark_catalogue.py                 # 20 tracks of 3 minutes
    python scripts/benchmark_catalogue.py --tracks 4 --seconds 30
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 44100


def song(seconds: float, seed: int) -> np.ndarray:
    """Plucked harmonic notes on a beat plus a little noise, ``(n, 2)`` float32."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    out = np.zeros((n, 2), np.float32)
    note = int(0.25 * RATE)
    t = np.arange(note) / RATE
    decay = np.exp(-6 * t)
    for start in range(0, n - note, note):
        f0 = rng.choice([110, 147, 165, 196, 220, 262, 330, 392])
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * decay
        out[start:start + note] += (tone[:, None] * rng.uniform(0.2, 0.6, size=2)).astype(np.float32)
    out += 0.01 * rng.standard_normal((n, 2)).astype(np.float32)
    return 0.8 * out / np.abs(out).max()


def make_tracks(folder: Path, tracks: int, seconds: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(tracks):
        sf.write(folder / f"track{k:03d}.wav", song(seconds, k), RATE, subtype="PCM_16")


def timed(command: list) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def max_difference(a: Path, b: Path) -> float:
    """Largest stem difference between two output folders, relative to the peak."""
    worst = 0.0
    for path in sorted(a.rglob("*.wav")):
        x, _ = sf.read(path, dtype="float32")
        y, _ = sf.read(b / path.relative_to(a), dtype="float32")
        worst = max(worst, float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-12)))
    return worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracks", type=int, default=20)
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--model", default=None, help="model for every run (default: the bundled one)")
    p.add_argument("--workdir", default=None, help="folder for the tracks and outputs (default: a temporary one)")
    p.add_argument("--options", default="",
                   help='more umx-separate options for every run, e.g. --options="--device cuda --niter 1"')
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="umx-catalogue-bench-"))
    try:
        return run(args, work)
    finally:
        if args.workdir is None:  # 20 tracks of 3 minutes leave about 3 GB of stems per run
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    inputs = work / "in"
    make_tracks(inputs, args.tracks, args.seconds)
    common = ["umx-separate", str(inputs), "--quiet"] + (["--model", args.model] if args.model else [])
    common += shlex.split(args.options)
    runs = [("local", ["--engine", "local", "--jobs", "2"]),
            ("ray", ["--engine", "ray"]),
            ("ray", ["--engine", "ray", "--actors", "2", "--io-cpus", "0"]),
            ("ray", ["--engine", "ray", "--actors", "1", "--actor-cpus", "2", "--io-cpus", "0"]),
            ("local", ["--engine", "local", "--jobs", "1"])]
    rows = []
    for k, (engine, options) in enumerate(runs):
        out = work / f"out{k}"
        wall = timed(common + options + ["--outdir", str(out)])
        diff = max_difference(out, work / "out0") if k else 0.0
        rows.append((engine, " ".join(options), wall, diff))
        if k:
            shutil.rmtree(out)  # only the first run's stems are needed, as the reference
    audio_h = args.tracks * args.seconds / 3600
    print(f"\n{args.tracks} tracks of {args.seconds:g} s ({audio_h:.2f} h of audio), model "
          f"{args.model or 'bundled default'}{', ' + args.options if args.options else ''}; "
          f"{platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    print("| engine | options | wall (s) | tracks per hour | x real time | max stem diff to local / peak |")
    print("|---|---|---|---|---|---|")
    for engine, options, wall, diff in rows:
        print(f"| {engine} | `{options}` | {wall:.1f} | {args.tracks * 3600 / wall:.0f} | "
              f"{audio_h * 3600 / wall:.1f} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
