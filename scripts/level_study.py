"""How the separation's quality depends on the input's level, with and without level matching.

The models see magnitudes: a song mastered 12 dB quieter than the training songs is another
input to them, not the same one turned down. This script turns the MUSDB18 validation
excerpts down and up, separates each with the bundled model (or a model folder), and scores
the estimates against the references at the same gain (BSSEval v4, museval's windows): the
scores of a separator that did not depend on the level would be equal at every gain.

    python scripts/level_study.py --root ~/data/musdb18-7s --out level

Writes ``levels.json`` (every track's median SDR per target, gain and mode) and prints a
table of the median over tracks of the median over windows (museval's aggregate), per target, gain and mode.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from openunmix_like.evaluate import estimates_fn_for, musdb_tracks, score_track, track_medians
from openunmix_like import level as level_module
from openunmix_like.level import track_level
from openunmix_like.separator import Separator


def training_levels(root: str) -> list:
    """RMS (dBFS) of the training split's mixtures: the level the models were fitted at."""
    return [track_level(track.mixture, track.rate) for track in musdb_tracks(root, "train", split="train")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="~/data/musdb18-7s", help="the MUSDB18 7-second preview")
    parser.add_argument("--model", default=None, help="a model folder or name (default: the bundled model)")
    parser.add_argument("--gains", type=float, nargs="+", default=[-30, -20, -12, -6, 0, 6])
    parser.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True,
                        help="also separate the tracks as given (no level matching)")
    parser.add_argument("--levels", type=float, nargs="*", default=None,
                        help="levels (dBFS) to match (openunmix_like.level); default: the median of the training "
                             "split's mixtures' levels")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="dB around the level within which tracks are left as they are (default: the package's)")
    parser.add_argument("--out", type=Path, default=Path("level"), help="where levels.json is written")
    args = parser.parse_args(argv)
    args.root = os.path.expanduser(args.root)
    torch.set_num_threads(2)
    if args.tolerance is not None:
        level_module.TOLERANCE_DB = args.tolerance
    args.out.mkdir(parents=True, exist_ok=True)

    levels = training_levels(args.root)
    matched = args.levels if args.levels is not None else [round(float(np.median(levels)), 1)]
    modes = {"plain": None} if args.plain else {}
    modes.update({f"matched {level:g}": level for level in matched})
    print(f"training split: {len(levels)} mixtures, level median {np.median(levels):.1f} dBFS, "
          f"quartiles {np.percentile(levels, 25):.1f} / {np.percentile(levels, 75):.1f}, "
          f"range {min(levels):.1f} .. {max(levels):.1f}")

    separator = Separator.from_pretrained(args.model, precision="fp32", progress=False, input_level=None)
    run = estimates_fn_for(separator)
    results = {"training_levels": levels, "modes": modes, "tracks": {}}
    start = time.time()
    for track in musdb_tracks(args.root, "train", split="valid"):
        refs = {t: track.references[t].T.numpy().astype(np.float64) for t in separator.target_names}
        own = track_level(track.mixture, track.rate)
        per_track = results["tracks"].setdefault(track.name, {"level_db": own})
        for gain_db in args.gains:
            gain = 10 ** (gain_db / 20)
            for mode, level in modes.items():
                separator.input_level = level  # the package's level matching, on or off
                est = run(dataclasses.replace(track, mixture=track.mixture * gain))
                # Scored at the input's gain: the references turned down with the mixture
                # (BSSEval is not scale invariant).
                ests = {t: v.T.numpy().astype(np.float64) for t, v in est.items()}
                record = score_track(track.name, {t: r * gain for t, r in refs.items()}, ests, track.rate)
                per_track[f"{mode} {gain_db:+g}"] = {t: v["SDR"] for t, v in track_medians(record).items()}
        print(f"{track.name}: {own:.1f} dBFS, {time.time() - start:.0f} s", flush=True)
        (args.out / "levels.json").write_text(json.dumps(results, indent=1))
    print_table(results, args.gains, list(modes), separator.target_names)


def print_table(results: dict, gains, modes, targets) -> None:
    print("| mode | gain (dB) | " + " | ".join(targets) + " | mean |")
    print("|---|---|" + "---|" * (len(targets) + 1))
    for mode in modes:
        for gain_db in gains:
            key = f"{mode} {gain_db:+g}"
            values = [[t[key][name] for t in results["tracks"].values()] for name in targets]
            means = [float(np.nanmedian(v)) for v in values]  # museval's: median over tracks
            print(f"| {mode} | {gain_db:+g} | " + " | ".join(f"{m:.2f}" for m in means)
                  + f" | {np.mean(means):.2f} |")


if __name__ == "__main__":
    main()
