"""Where the CPU time of a 60 s separation goes, against what the processor can do at all.

With random umxhq-shaped weights (the folder of ``side_by_side.py``), niter 1, it prints:
the arithmetic of one target model on 60 s (multiply-adds of its dense layers and
LSTM), the processor's matrix-multiply rate in float32 and bfloat16 on a GEMM of the
first layer's shape, and the time of each stage of ``Separator.forward``, best of
``--calls``, in float32 and with the models in bfloat16.

    python scripts/cpu_limits.py --threads 2
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from side_by_side import best_of, write_umxhq_shaped


def best(fn, calls: int) -> float:
    """Seconds of the best of ``calls`` calls after one warm-up call."""
    fn()
    return round(best_of(fn, calls)[0], 3)


def model_macs(frames: int, nb_bins: int = 2049, max_bin: int = 1487, hidden: int = 512, channels: int = 2,
               layers: int = 3) -> int:
    """Multiply-adds of one bidirectional Open-Unmix model on ``frames`` frames of one stereo signal."""
    units = hidden // 2
    fc1 = frames * channels * max_bin * hidden
    lstm = layers * 2 * frames * 4 * units * (hidden + units)  # input and recurrent weights, both directions
    fc2 = frames * 2 * hidden * hidden
    fc3 = frames * hidden * nb_bins * channels
    return fc1 + lstm + fc2 + fc3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from openunmix_like import Separator

    report = {"threads": args.threads, "seconds": args.seconds}
    frames = int(args.seconds * 44100) // 1024 + 1
    macs = model_macs(frames)
    report["gflop_per_model"] = round(2 * macs / 1e9, 1)
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        a, w = torch.randn(frames, 2974).to(dtype), torch.randn(2974, 2048).to(dtype)
        report[f"gemm_gflops_{name}"] = round(2 * frames * 2974 * 2048 / best(lambda: a @ w, args.calls) / 1e9, 1)
    with tempfile.TemporaryDirectory() as tmp:
        separator = Separator.from_pretrained(write_umxhq_shaped(Path(tmp)), niter=1)
    torch.manual_seed(0)
    audio = 0.1 * torch.randn(1, 2, int(args.seconds * 44100))
    with torch.inference_mode():
        spec = separator.stft(audio)
        mag = separator.complexnorm(spec)
        models = list(separator.target_models.values())
        report["stft_s"] = best(lambda: separator.complexnorm(separator.stft(audio)), args.calls)
        report["one_model_s"] = best(lambda: models[0](mag), args.calls)
        report["one_lstm_s"] = best(lambda: models[0].lstm(torch.zeros(frames, 1, 512)), args.calls)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            report["one_model_bf16_s"] = best(lambda: models[0](mag), args.calls)
        outs = [m(mag) for m in models]
        spectrograms = torch.stack([o.permute(3, 0, 1, 2) for o in outs], dim=2).permute(1, 2, 3, 4, 0)
        report["wiener_istft_s"] = best(
            lambda: separator._filter_and_invert(spectrograms[0], spec[0], 0, audio.shape[-1]), args.calls)
        report["forward_s"] = best(lambda: separator(audio), args.calls)
        separator.precision = "bf16"
        report["forward_bf16_s"] = best(lambda: separator(audio), args.calls)
    report["models_at_gemm_rate_s"] = round(4 * 2 * macs / (report["gemm_gflops_fp32"] * 1e9), 2)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
