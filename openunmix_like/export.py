"""Exporting per-target models to TorchScript and ONNX.

Each target model is exported on its own, in its domain (see
:mod:`openunmix_like.architectures`), for a batch of one with the model's
channel count fixed and the number of frames (or samples, for waveform models)
free. ``export.json`` beside the files records what each one takes and gives
and the STFT settings the caller must use around it.

The whole :class:`~openunmix_like.separator.Separator` is not exported: its
Wiener filter works on complex tensors (ONNX has no complex type) and its
stereo fast path takes Python decisions from the data (the EM scaling from the
peak power, the filter windows from the length), which a trace would freeze
at the example's values. Run the exported targets, then the STFT, Wiener
filter and inverse STFT of your runtime.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from .architectures import COMPLEX, WAVEFORM, architecture_of, domain_of
from .errors import OpenUnmixLikeError
from .fileio import atomic_path, write_json_atomic
from .modeldir import AudioSettings

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
EXAMPLE_FRAMES = 64
CHECK_FRAMES = 37  # a second size: the exported file must not have frozen the first


@dataclasses.dataclass(frozen=True)
class Exported:
    """One exported target: its file and how far the export's output is from the model's."""

    target: str
    path: Path
    max_error: Optional[float]  # relative to the output's peak; None when it could not be checked


def example_input(model: nn.Module, nb_frames: int, n_hop: int) -> Tensor:
    """A random input of the model's domain with ``nb_frames`` STFT frames (or as many hops of samples)."""
    generator = torch.Generator().manual_seed(nb_frames)
    domain = domain_of(model)
    if domain == WAVEFORM:
        return torch.randn(1, model.nb_channels, nb_frames * n_hop, generator=generator) * 0.1
    if domain == COMPLEX:
        return torch.randn(1, model.nb_channels, model.nb_bins, nb_frames, 2, generator=generator)
    return torch.rand(1, model.nb_channels, model.nb_bins, nb_frames, generator=generator)


def io_description(model: nn.Module) -> dict:
    """Names, shapes (``null`` where free) and meaning of a model's input and output."""
    domain = domain_of(model)
    c = model.nb_channels
    if domain == WAVEFORM:
        shape, what = [1, c, None], "audio (nb_samples, nb_channels, nb_timesteps)"
    elif domain == COMPLEX:
        shape, what = [1, c, model.nb_bins, None, 2], "STFT real/imag (nb_samples, nb_channels, nb_bins, nb_frames, 2)"
    else:
        shape, what = [1, c, model.nb_bins, None], "magnitude (nb_samples, nb_channels, nb_bins, nb_frames)"
    return {"input": {"name": "mix", "shape": shape, "meaning": "mixture " + what},
            "output": {"name": "estimate", "shape": shape, "meaning": "target " + what}}


def free_axis(model: nn.Module) -> int:
    return 2 if domain_of(model) == WAVEFORM else 3


def export_torchscript(model: nn.Module, path: Path, n_hop: int) -> None:
    """Trace ``model`` (checked on a second size so a frozen shape fails here, not later) and save it."""
    with warnings.catch_warnings(), torch.no_grad():
        # torch 2.9+ marks TorchScript deprecated (in favour of torch.export); it still traces and runs.
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, (example_input(model, EXAMPLE_FRAMES, n_hop),),
                                 check_inputs=[(example_input(model, CHECK_FRAMES, n_hop),)])
        torch.jit.save(traced, str(path))


def export_onnx(model: nn.Module, path: Path, n_hop: int, opset: int = 17) -> None:
    """ONNX with the TorchScript-based exporter: batch and channels fixed, frames (or samples) free."""
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError as exc:
        raise OpenUnmixLikeError("ONNX export needs the onnx package: pip install onnx onnxruntime") from exc
    axis = free_axis(model)
    name = "nb_timesteps" if axis == 2 else "nb_frames"
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns about its own deprecation and about LSTM batch sizes (ours is fixed at 1).
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example_input(model, EXAMPLE_FRAMES, n_hop),), str(path), dynamo=False,
                          opset_version=opset, input_names=["mix"], output_names=["estimate"],
                          dynamic_axes={"mix": {axis: name}, "estimate": {axis: name}})


def run_exported(path: Path, fmt: str, x: Tensor) -> Optional[Tensor]:
    """Output of an exported file on ``x``; ``None`` for ONNX without onnxruntime."""
    if fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path))(x)
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"mix": x.numpy()})[0])


def relative_error(model: nn.Module, path: Path, fmt: str, n_hop: int) -> Optional[float]:
    """Largest difference between the exported file and the model on an unseen size, over the output's peak."""
    x = example_input(model, CHECK_FRAMES, n_hop)
    got = run_exported(path, fmt, x)
    if got is None:
        return None
    with torch.no_grad():
        want = model(x)
    if got.shape != want.shape:
        raise OpenUnmixLikeError(f"{path}: exported model gives shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def export_models(models: Dict[str, nn.Module], settings: AudioSettings, outdir: Path, fmt: str,
                  opset: int = 17, check: bool = True) -> Dict[str, Exported]:
    """Export every target to ``outdir/<target>.pt`` (TorchScript) or ``.onnx``, and write ``export.json``.

    Args:
        models: target -> model (any registered architecture).
        settings: the STFT settings the models were trained with.
        fmt: ``torchscript`` or ``onnx``.
        check: run each file on an input of another size and compare with the model.
    """
    if fmt not in FORMATS:
        raise OpenUnmixLikeError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    results, record = {}, {}
    for target, model in models.items():
        model = model.cpu().eval()  # tracing, export and checks all run under no_grad
        path = outdir / f"{target}{FORMATS[fmt]}"
        with atomic_path(path, suffix=FORMATS[fmt]) as tmp:
            if fmt == "torchscript":
                export_torchscript(model, tmp, settings.n_hop)
            else:
                export_onnx(model, tmp, settings.n_hop, opset)
        error = relative_error(model, path, fmt, settings.n_hop) if check else None
        results[target] = Exported(target, path, error)
        record[target] = {"file": path.name, "architecture": architecture_of(model).name,
                          "domain": domain_of(model), "model_args": model.config.to_dict(), **io_description(model),
                          "max_relative_error": error}
    write_json_atomic(outdir / "export.json", {
        "format": fmt, **({"opset": opset} if fmt == "onnx" else {}),
        "sample_rate": settings.sample_rate, "n_fft": settings.n_fft, "n_hop": settings.n_hop,
        "nb_channels": settings.nb_channels,
        "stft": "periodic Hann window of n_fft, centred frames with reflect padding, not normalised, one-sided",
        "targets": record,
    })
    return results


def export(model: Optional[str], outdir: Path, fmt: str, targets: Optional[Sequence[str]] = None,
           opset: int = 17, check: bool = True) -> Dict[str, Exported]:
    """Export a model folder, a published model name, or (``None``) the bundled model."""
    from .pretrained import load_models

    models, settings = load_models(model, targets=targets, progress=False)
    return export_models(models, settings, outdir, fmt, opset, check)
