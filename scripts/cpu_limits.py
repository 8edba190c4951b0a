"""Where the CPU time of a 60 s separation goes, against what the processor can do at all.

With random umxhq-shaped weights (the folder of ``side_by_side.py``), niter 1, it prints:
the arithmetic of one target model on 60 s (multiply-adds of its dense layers and
LSTM), the processor's matrix-multiply rate in float32 and bfloat16 on a GEMM of the
first layer's shape, and the time of each stage of ``Separator.forward``, best of
``--calls``, in float32 and with the models' products in bfloat16 (and, for
comparison, one model under bfloat16 autocast), with the page faults of one
forward call.

    python scripts/cpu_limits.py --threads 2

glibc's allocator can be told to keep freed memory rather than map it afresh,
which shows what those faults cost on this machine:

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 python scripts/cpu_limits.py --threads 2
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
from pathlib import Path

import torch

from side_by_side import best_of, write_umxhq_shaped


def best(fn, calls: int) -> float:
    """Seconds of the best of ``calls`` calls after one warm-up call."""
    fn()
    return round(best_of(fn, calls)[0], 3)


def page_faults(fn) -> int:
    """Minor page faults of one call: first touches of fresh memory."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


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
        folder = write_umxhq_shaped(Path(tmp))
        separator = Separator.from_pretrained(folder, niter=1, precision="fp32")
        separator_bf16 = Separator.from_pretrained(folder, niter=1, precision="bf16")
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
            report["one_model_bf16_autocast_s"] = best(lambda: models[0](mag), args.calls)
        model_bf16 = next(iter(separator_bf16.target_models.values()))
        report["one_model_bf16_s"] = best(lambda: model_bf16(mag), args.calls)
        report["one_lstm_bf16_s"] = best(lambda: model_bf16.lstm(torch.zeros(frames, 1, 512, dtype=torch.bfloat16)),
                                         args.calls)
        outs = [m(mag) for m in models]
        frame_major = [o.permute(3, 0, 1, 2)[:, 0] for o in outs]  # per target (frames, channels, bins)
        report["wiener_istft_s"] = best(
            lambda: separator._filter_and_invert(frame_major, spec[0], 0, audio.shape[-1]), args.calls)
        report["forward_s"] = best(lambda: separator(audio), args.calls)
        report["forward_faults"] = page_faults(lambda: separator(audio))
        report["forward_bf16_s"] = best(lambda: separator_bf16(audio), args.calls)
        report["forward_bf16_faults"] = page_faults(lambda: separator_bf16(audio))
    report["models_at_gemm_rate_s"] = round(4 * 2 * macs / (report["gemm_gflops_fp32"] * 1e9), 2)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
