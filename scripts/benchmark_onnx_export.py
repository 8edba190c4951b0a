#!/usr/bin/env python
"""ONNX export time, file size and error of one umxhq-sized target (hidden 512) with each of torch's two ONNX
exporters: `python scripts/benchmark_onnx_export.py` (docs/architectures.md quotes it)."""
import tempfile
import time
from pathlib import Path
import torch
from openunmix_like import export as E
from openunmix_like.architectures.umx import OpenUnmix

torch.manual_seed(0)
model = OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=1487).eval()
with tempfile.TemporaryDirectory() as d:
    for name, fn, opset in (("torchscript", E._export_onnx_torchscript, 17), ("dynamo", E._export_onnx_dynamo, 18)):
        path = Path(d) / f"{name}.onnx"
        t = time.perf_counter()
        fn(model, path, 1024, opset)
        took = time.perf_counter() - t
        err = E.relative_error(model, path, "onnx", 1024)
        print(f"{name}: export {took:.1f} s, {path.stat().st_size:,} bytes, relative error {err:.1e}", flush=True)
