"""Does averaging estimates over transformed copies of the input (Demucs' ``--shifts``, or a left/right
swap) help this separator?

Separates the 14 MUSDB18 7 s validation excerpts (the sum of the stems as input, as the model card's
evaluation) once per copy: shifted by ``k * n_hop / 4`` samples of leading padding (cut off again),
and with the channels swapped (swapped back). Then scores averages of those estimates with the
package's BSSEval v4 (as ``umx-evaluate``) and prints, per combination, the median over tracks of
each target's per-track median SDR, and the mean over tracks of the change against the plain
estimate. Measured 2026-12-07 (bundled model): docs/history/2026-12-07-signals-suite-swap.md.

    python scripts/probe_shifts.py --root ~/data/musdb18-7s [--model MODEL] [--tracks N]
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from openunmix_like.evaluate import musdb_tracks, score_track, track_medians
from openunmix_like.inference import separate_tensor
from openunmix_like.separator import Separator

# name -> the copies averaged: (channels swapped, quarter hops of leading padding)
COMBINATIONS = {
    "plain": [(False, 0)],
    "swap": [(False, 0), (True, 0)],
    "2 shifts": [(False, 0), (False, 2)],
    "4 shifts": [(False, k) for k in range(4)],
    "swap x 4 shifts": [(swap, k) for swap in (False, True) for k in range(4)],
}


def estimate(separator: Separator, mixture: torch.Tensor, rate: int, swap: bool, pad: int) -> torch.Tensor:
    """``(targets, channels, time)`` of one transformed copy, transformed back."""
    x = mixture.flip(0) if swap else mixture
    x = torch.nn.functional.pad(x, (pad, 0))
    est = separate_tensor(separator, x, rate, 30.0, 2.0)[..., pad: pad + mixture.shape[-1]]
    return est.flip(1) if swap else est


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="~/data/musdb18-7s", help="the MUSDB18 7-second preview")
    parser.add_argument("--model", default=None, help="a model folder or name (default: the bundled model)")
    parser.add_argument("--tracks", type=int, default=None, help="only the first N validation excerpts")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    separator = Separator.from_pretrained(args.model, precision="fp32", progress=False)
    targets = separator.target_names
    copies = sorted({copy for chosen in COMBINATIONS.values() for copy in chosen})
    scores = {name: [] for name in COMBINATIONS}  # per combination: one {target: SDR} per track
    tracks = musdb_tracks(os.path.expanduser(args.root), "train", split="valid", mixture_from_sources=True)
    for number, track in enumerate(tracks):
        if args.tracks is not None and number >= args.tracks:
            break
        refs = {t: track.references[t].T.numpy().astype(np.float64) for t in targets}
        ests = {(swap, k): estimate(separator, track.mixture, track.rate, swap, k * separator.n_hop // 4)
                for swap, k in copies}
        for name, chosen in COMBINATIONS.items():
            mean = torch.stack([ests[copy] for copy in chosen]).mean(0)
            record = score_track(track.name, refs, {t: mean[j].T.numpy().astype(np.float64)
                                                    for j, t in enumerate(targets)}, track.rate)
            scores[name].append({t: v["SDR"] for t, v in track_medians(record).items()})
        print(track.name, flush=True)
    plain = [np.mean(list(s.values())) for s in scores["plain"]]
    print("| copies averaged | " + " | ".join(targets) + " | average | change against plain, mean over tracks |")
    print("|---|" + "---|" * (len(targets) + 2))
    for name, per_track in scores.items():
        medians = [float(np.nanmedian([s[t] for s in per_track])) for t in targets]
        change = np.mean([np.mean(list(s.values())) - p for s, p in zip(per_track, plain)])
        print(f"| {name} | " + " | ".join(f"{m:.2f}" for m in medians) + f" | {np.mean(medians):.3f} | {change:+.3f} |")


if __name__ == "__main__":
    main()
