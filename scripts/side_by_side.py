"""Plain side-by-side timing of ``Separator`` forward: ours against the reference Open-Unmix.

Both separators are loaded from the same folder of random umxhq-shaped weights
in the reference layout (``<target>.pth`` + ``<target>.json``), then each is
called twice on the same 60 s of noise and the better call counts. Nothing else
runs in between: no warm-up outside the two calls, no other path of ours.

    pip install --no-deps openunmix==1.3.0
    PYTHONPATH=../shared/tools/reference-openunmix python scripts/side_by_side.py --threads 2

Prints one JSON line per separator and the ratio.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

TARGETS = ("vocals", "drums", "bass", "other")


def write_umxhq_shaped(folder: Path, seed: int = 0) -> Path:
    """Random weights in the published umxhq shapes and the reference's file layout."""
    from openunmix_like.model import OpenUnmix

    generator = torch.Generator().manual_seed(seed)
    for target in TARGETS:
        state = OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=1487).state_dict()
        for key, value in state.items():
            if not value.dtype.is_floating_point:
                continue
            if "running_var" in key or key.endswith(("input_scale", "output_scale")):
                state[key] = 0.5 + torch.rand(value.shape, generator=generator)
            elif key.endswith("output_mean"):
                state[key] = 1.0 + 0.1 * torch.randn(value.shape, generator=generator)
            else:
                state[key] = 0.05 * torch.randn(value.shape, generator=generator)
        torch.save(state, folder / f"{target}.pth")
        args = {"nfft": 4096, "nhop": 1024, "nb_channels": 2, "hidden_size": 512, "bandwidth": 16000,
                "sample_rate": 44100, "target": target}
        (folder / f"{target}.json").write_text(json.dumps({"args": args}))
    (folder / "separator.json").write_text(json.dumps({"nfft": 4096, "nhop": 1024, "sample_rate": 44100.0,
                                                       "nb_channels": 2}))
    return folder


def best_of(fn, calls: int):
    times, result = [], None
    for _ in range(calls):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--niter", type=int, default=1)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="ours only; auto (our default) is bf16 on CPUs with bfloat16 units, else fp32")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from openunmix_like import Separator

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_umxhq_shaped(Path(tmp))
        torch.manual_seed(0)
        audio = 0.1 * torch.randn(1, 2, int(args.seconds * 44100))
        rows = {}
        ours = Separator.from_pretrained(folder, niter=args.niter, precision=args.precision)
        with torch.inference_mode():
            rows["ours"], ours_out = best_of(lambda: ours(audio), args.calls)
        try:
            from openunmix import utils
        except ImportError:
            reference = None
        else:
            reference = utils.load_separator(str(folder), targets=list(TARGETS), niter=args.niter, device="cpu")
            reference.freeze()
        if reference is not None:
            with torch.inference_mode():
                rows["reference"], ref_out = best_of(lambda: reference(audio), args.calls)
            rows["max_diff_over_peak"] = float((ours_out - ref_out).abs().max() / ref_out.abs().max())
            rows["speedup"] = rows["reference"] / rows["ours"]
    print(json.dumps({"seconds": args.seconds, "threads": args.threads, "niter": args.niter,
                      "precision": args.precision, "resolved": ours.precision, **rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
