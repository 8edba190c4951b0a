"""Real-time speed of :class:`~openunmix_like.streaming.StreamingSeparator` on the CPU.

Four causal (unidirectional) Open-Unmix targets with random weights (speed does not depend on
them) at the published STFT settings (n_fft 4096, hop 1024, stereo, 44.1 kHz, bandwidth 16 kHz),
for each hidden size, torch thread count and block size: ``--seconds`` of noise streamed block by
block after a warm-up, each ``process`` call timed. A call keeps up with real time when it takes
less than its block lasts: the table gives the time per block (median, 99th percentile, largest)
over the block's duration (the real-time factor, RTF; below 1 keeps up). Blocks shorter than the
hop complete a frame only every few calls, and those calls carry the models' work: the 99th
percentile and the largest show them.

    python scripts/benchmark_streaming.py                       # prints a markdown report
    python scripts/benchmark_streaming.py --seconds 5 --hidden-sizes 128 --block-sizes 1024
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from openunmix_like import OpenUnmix, Separator
from openunmix_like.model import bandwidth_to_max_bin
from openunmix_like.streaming import StreamingSeparator

TARGETS = ("vocals", "drums", "bass", "other")
RATE, N_FFT, N_HOP = 44100, 4096, 1024


def causal_separator(hidden_size: int, precision: str, seed: int = 0) -> Separator:
    """Four random-weight unidirectional targets of ``hidden_size``, umxhq's other settings, ``niter=0``."""
    torch.manual_seed(seed)
    max_bin = bandwidth_to_max_bin(RATE, N_FFT, 16000)
    models = {t: OpenUnmix(N_FFT // 2 + 1, 2, hidden_size, unidirectional=True, max_bin=max_bin) for t in TARGETS}
    return Separator(models, niter=0, sample_rate=RATE, n_fft=N_FFT, n_hop=N_HOP, precision=precision).freeze()


def time_blocks(streamer: StreamingSeparator, audio: torch.Tensor, block: int, warmup: int) -> List[float]:
    """Seconds of each ``process`` call over ``audio``, after ``warmup`` samples streamed untimed."""
    streamer.reset()
    for piece in audio[:, :warmup].split(block, dim=-1):
        streamer.process(piece)
    times = []
    for piece in audio[:, warmup:].split(block, dim=-1):
        if piece.shape[-1] < block:
            break
        start = time.perf_counter()
        streamer.process(piece)
        times.append(time.perf_counter() - start)
    return times


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def measure(hidden_sizes, threads, block_sizes, seconds: float, precision: str, causal_em: int = 0) -> List[Dict]:
    generator = torch.Generator().manual_seed(0)
    warmup = 2 * RATE
    audio = 0.1 * torch.randn(2, warmup + int(seconds * RATE), generator=generator)
    rows = []
    for hidden in hidden_sizes:
        streamer = StreamingSeparator(causal_separator(hidden, precision), causal_em=causal_em)
        for nb_threads in threads:
            torch.set_num_threads(nb_threads)
            for block in block_sizes:
                load = os.getloadavg()[0]
                times = time_blocks(streamer, audio, block, warmup)
                duration = block / RATE
                rows.append(dict(hidden=hidden, threads=nb_threads, block=block, load=load, n=len(times),
                                 median=statistics.median(times), p99=percentile(times, 99), max=max(times),
                                 mean_rtf=sum(times) / (len(times) * duration), duration=duration))
    return rows


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores; Linux {platform.release()}; Python {platform.python_version()}, " \
           f"torch {torch.__version__}"


def report(rows: List[Dict], command: str, precision: str, causal_em: int = 0) -> str:
    lines = [
        f"Measured {datetime.date.today().isoformat()} on: {machine()}.",
        "",
        "Command:",
        "",
        f"    {command}",
        "",
        f"Four unidirectional targets with random weights, n_fft {N_FFT}, hop {N_HOP}, stereo, {RATE} Hz, "
        f"niter 0{f' with causal_em={causal_em}' if causal_em else ''}, {precision} products; "
        f"latency {N_FFT - 1} samples ({1000 * (N_FFT - 1) / RATE:.1f} ms) "
        "whatever the block size. Times per `process` call after 2 s of warm-up; RTF: time over the block's "
        "duration (below 1 keeps up with real time). Load: the 1-minute load average when the row started.",
        "",
        "| hidden | threads | block (samples) | block (ms) | median (ms) | 99th pct (ms) | largest (ms) "
        "| RTF median | RTF 99th pct | RTF mean | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms = 1000 * r["duration"]
        lines.append(f"| {r['hidden']} | {r['threads']} | {r['block']} | {ms:.1f} | {1000 * r['median']:.2f} "
                     f"| {1000 * r['p99']:.2f} | {1000 * r['max']:.2f} | {r['median'] / r['duration']:.3f} "
                     f"| {r['p99'] / r['duration']:.3f} | {r['mean_rtf']:.3f} | {r['load']:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="audio timed per row, after 2 s of warm-up")
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[256, 512, 1024, 4096])
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=[512, 128])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--causal-em", type=int, default=0, help="StreamingSeparator's causal EM iterations")
    args = parser.parse_args(argv)
    rows = measure(args.hidden_sizes, args.threads, args.block_sizes, args.seconds, args.precision, args.causal_em)
    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python scripts/benchmark_streaming.py", *given])
    print(report(rows, command, args.precision, args.causal_em))


if __name__ == "__main__":
    main()
