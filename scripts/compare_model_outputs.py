#!/usr/bin/env python
"""How far apart two model folders, or two precisions, separate the same songs.

    python scripts/compare_model_outputs.py MODEL_A MODEL_B SONG [SONG ...] [--threads N]
    python scripts/compare_model_outputs.py MODEL MODEL SONG ... --precision-b bf16

Both folders are loaded with ``Separator.from_pretrained`` (which builds the
models in float32 whatever the files store; ``--precision-a/-b`` choose the
target models' arithmetic, fp32 by default) and separate each song with the
other default settings of ``umx-separate``. ``default`` names the bundled model.
Per song and target it prints the largest absolute difference of B's stem from
A's over the peak of A's stem, and the energy of the difference against that of
A's stem in dB.
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
    p.add_argument("--precision-a", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--precision-b", choices=["fp32", "bf16"], default="fp32")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    a, b = (Separator.from_pretrained(None if folder == "default" else folder, precision=precision)
            for folder, precision in ((args.model_a, args.precision_a), (args.model_b, args.precision_b)))
    print(f"parameter dtypes after loading: A {sorted(map(str, parameter_dtypes(a)))}, "
          f"B {sorted(map(str, parameter_dtypes(b)))}")
    print("| song | target | max diff / peak | difference energy (dB) |\n|---|---|---|---|")
    for song in args.songs:
        for target, max_ratio, energy_db in compare(a, b, song):
            print(f"| {song.rsplit('/', 1)[-1]} | {target} | {max_ratio:.1e} | {energy_db:.1f} |")


if __name__ == "__main__":
    main()
