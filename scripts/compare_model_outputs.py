#!/usr/bin/env python
"""How far apart two model folders separate the same songs (e.g. float32 and float16 weights).

    python scripts/compare_model_outputs.py MODEL_A MODEL_B SONG [SONG ...] [--threads N]

Both folders are loaded with ``Separator.from_pretrained`` (which builds the
models in float32 whatever the files store) and separate each song with the
default settings of ``umx-separate``. Per song and target it prints the largest
absolute difference of B's stem from A's over the peak of A's stem, and the
energy of the difference against that of A's stem in dB.
"""
import argparse

import torch

from openunmix_like import Separator, separate
from openunmix_like.audio import load


def parameter_dtypes(separator: Separator) -> set:
    return {p.dtype for model in separator.target_models.values() for p in model.parameters()}


def compare(a: Separator, b: Separator, path: str) -> list:
    """Per target: (name, max |b - a| / peak |a|, 10 log10 of the energy of b - a over that of a)."""
    audio, rate = load(path)
    with torch.inference_mode():
        stems_a = separate(audio, rate, model=a)
        stems_b = separate(audio, rate, model=b)
    rows = []
    for target, ref in stems_a.items():
        diff = stems_b[target] - ref
        peak = float(ref.abs().max().clamp_min(1e-12))
        ratio_db = 10 * torch.log10(diff.double().square().sum() / ref.double().square().sum().clamp_min(1e-30))
        rows.append((target, float(diff.abs().max()) / peak, float(ratio_db)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_a")
    p.add_argument("model_b")
    p.add_argument("songs", nargs="+")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    a, b = Separator.from_pretrained(args.model_a), Separator.from_pretrained(args.model_b)
    print(f"parameter dtypes after loading: A {sorted(map(str, parameter_dtypes(a)))}, "
          f"B {sorted(map(str, parameter_dtypes(b)))}")
    print("| song | target | max diff / peak | difference energy (dB) |\n|---|---|---|---|")
    for song in args.songs:
        for target, max_ratio, energy_db in compare(a, b, song):
            print(f"| {song.rsplit('/', 1)[-1]} | {target} | {max_ratio:.1e} | {energy_db:.1f} |")


if __name__ == "__main__":
    main()
