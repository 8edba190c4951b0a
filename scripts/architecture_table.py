#!/usr/bin/env python
"""The architecture comparison table of docs/architectures.md, from a compare_architectures.sh work folder.

    python scripts/architecture_table.py WORK [--speed AUDIO]

For every model folder ``WORK/models/<name>``: parameters per target (counted
from the weights), training time (the summed epoch times of all targets,
from ``<target>.json``), the optimiser steps each target took, the median over the 14 validation excerpts of the
per-excerpt median BSSEval v4 SDR per target (``WORK/eval/<name>/*.json``,
written by ``umx-evaluate``), and, with ``--speed``, the seconds one thread
takes to separate AUDIO into the four targets (``niter=1``), per minute of audio.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from openunmix_like import Separator
from openunmix_like.audio import load
from openunmix_like.cli.evaluate import load_records
from openunmix_like.evaluate import MUSDB_TARGETS, aggregate
from openunmix_like.inference import separate_tensor


def target_records(folder: Path) -> list:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.name != "separator.json"]


def training_minutes(records: list) -> float:
    return sum(sum(r.get("train_time_history", [])) for r in records) / 60


def steps_trained(records: list) -> str:
    steps = sorted(r.get("steps_trained", 0) for r in records) or [0]
    return f"{steps[0]}-{steps[-1]}" if steps[0] != steps[-1] else str(steps[0])


def sdr_medians(evaldir: Path) -> dict:
    records = load_records(evaldir)
    return {t: row["SDR"]["median"] for t, row in aggregate(records).items()} if records else {}


def separation_seconds_per_minute(separator: Separator, audio: torch.Tensor, rate: int) -> float:
    start = time.perf_counter()
    separate_tensor(separator, audio, rate)
    return (time.perf_counter() - start) / (audio.shape[-1] / rate / 60)


def fmt(value: float, digits: int = 2) -> str:
    return "not measured" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", help="the work folder of scripts/compare_architectures.sh")
    p.add_argument("--speed", default=None, help="audio file to time the separation on")
    args = p.parse_args()
    work = Path(args.work)
    torch.set_num_threads(1)
    audio, rate = load(args.speed) if args.speed else (None, None)
    header = "| model | parameters per target | training time (min, all targets) | steps per target | " + " | ".join(
        f"SDR {t}" for t in MUSDB_TARGETS) + " | SDR average | separation (s per min of audio, 1 thread) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for folder in sorted(p for p in (work / "models").iterdir() if (p / "separator.json").is_file()):
        separator = Separator.from_pretrained(folder, niter=1, precision="fp32")
        params = {sum(v.numel() for v in m.parameters()) for m in separator.target_models.values()}
        records = target_records(folder)
        sdr = sdr_medians(work / "eval" / folder.name)
        speed = separation_seconds_per_minute(separator, audio, rate) if args.speed else None
        complete = all(t in sdr for t in MUSDB_TARGETS)
        average = sum(sdr[t] for t in MUSDB_TARGETS) / len(MUSDB_TARGETS) if complete else None
        cells = [folder.name, "/".join(f"{n:,}" for n in sorted(params)), fmt(training_minutes(records), 1),
                 steps_trained(records),
                 *(fmt(sdr.get(t)) for t in MUSDB_TARGETS), fmt(average), fmt(speed, 1)]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
