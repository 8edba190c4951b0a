"""Exporting per-target models to TorchScript and ONNX.

Each target model is exported on its own, in its domain (see
:mod:`openunmix_like.architectures`), with the model's channel count fixed and
the batch size and the number of frames (or samples, for waveform models)
free. ``export.json`` beside the files records what each one takes and gives,
the STFT settings the caller must use around it, and the EM iterations (``niter``)
of the Wiener filter the model's own separations use.

The whole :class:`~openunmix_like.separator.Separator` is not exported: its
Wiener filter works on complex tensors (ONNX has no complex type) and its
stereo fast path takes Python decisions from the data (the EM scaling from the
peak power, the filter windows from the length), which a trace would freeze
at the example's values. Run the exported targets, then the STFT, Wiener
filter and inverse STFT of your runtime.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .architectures import COMPLEX, WAVEFORM, architecture_of, domain_of
from .errors import OpenUnmixLikeError
from .fileio import new_partial, temporary_folder
from .modeldir import AudioSettings
from .processes import interrupts_held

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
EXAMPLE_FRAMES = 64
CHECK_FRAMES = 37  # a second size: the exported file must not have frozen the first
CHECK_BATCH = 2  # and a second batch size: the example's batch is 1


@dataclasses.dataclass(frozen=True)
class Exported:
    """One exported target: its file and how far the export's output is from the model's."""

    target: str
    path: Path
    max_error: Optional[float]  # relative to the output's peak; None when it could not be checked


def onnx_opsets() -> Tuple[int, int]:
    """The ONNX opsets the installed torch's TorchScript-based exporter supports (7 to 20 in torch 2.13).

    Above its maximum that exporter only warns and labels the file with the
    opset asked for; below its minimum it fails.
    """
    try:
        from torch.onnx import _constants
    except ImportError:  # a torch that moved them
        return 7, 20
    return (getattr(_constants, "ONNX_MIN_OPSET", 7),
            getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", 20)))


def check_request(outdir: Path, fmt: str, opset: int = 17) -> None:
    """:class:`OpenUnmixLikeError` when the format, opset or output folder cannot be used; nothing is written."""
    if fmt not in FORMATS:
        raise OpenUnmixLikeError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    low, high = onnx_opsets()
    if fmt == "onnx" and not low <= opset <= high:
        raise OpenUnmixLikeError(f"--opset {opset}: the ONNX exporter of torch {torch.__version__} writes opsets "
                                 f"{low} to {high}; give one of those (default 17)")
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise OpenUnmixLikeError(f"--outdir {outdir}: is a file; give a folder (it is created if missing)")
    existing = next((p for p in [outdir, *outdir.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise OpenUnmixLikeError(f"--outdir {outdir}: {existing} is a file, so the folder cannot be created; give "
                                 "another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OpenUnmixLikeError(f"--outdir {outdir}: cannot write in {existing}; give another folder or fix its "
                                 "permissions")


@contextlib.contextmanager
def _staged(outdir: Path) -> Iterator[Dict[Path, Path]]:
    """Create ``outdir`` and yield a dict to fill with final path -> partial file; rename them all at the end.

    A failure before then leaves ``outdir`` as it was: the partial files are
    removed, and so are the folders this created.
    """
    new = [p for p in [outdir, *outdir.parents] if not p.exists()]  # deepest first
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OpenUnmixLikeError(f"--outdir {outdir}: cannot create the folder ({exc.strerror or exc}); give "
                                 "another folder or fix its permissions") from exc
    staged: Dict[Path, Path] = {}
    try:
        yield staged
        with interrupts_held():  # all renamed or none: never a new model beside an old export.json
            for path, tmp in staged.items():
                os.replace(tmp, path)
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        for folder in new:
            with contextlib.suppress(OSError):  # not empty: someone else wrote there too
                folder.rmdir()
        raise


def example_input(model: nn.Module, nb_frames: int, n_hop: int, batch: int = 1) -> Tensor:
    """A random input of the model's domain with ``nb_frames`` STFT frames (or as many hops of samples)."""
    generator = torch.Generator().manual_seed(nb_frames)
    domain = domain_of(model)
    if domain == WAVEFORM:
        return torch.randn(batch, model.nb_channels, nb_frames * n_hop, generator=generator) * 0.1
    if domain == COMPLEX:
        return torch.randn(batch, model.nb_channels, model.nb_bins, nb_frames, 2, generator=generator)
    return torch.rand(batch, model.nb_channels, model.nb_bins, nb_frames, generator=generator)


def io_description(model: nn.Module) -> dict:
    """Names, shapes (``null`` where free: the batch and the frames or samples) and meaning of a model's
    input and output."""
    domain = domain_of(model)
    c = model.nb_channels
    if domain == WAVEFORM:
        shape, what = [None, c, None], "audio (nb_samples, nb_channels, nb_timesteps)"
    elif domain == COMPLEX:
        shape, what = [None, c, model.nb_bins, None, 2], \
            "STFT real/imag (nb_samples, nb_channels, nb_bins, nb_frames, 2)"
    else:
        shape, what = [None, c, model.nb_bins, None], "magnitude (nb_samples, nb_channels, nb_bins, nb_frames)"
    return {"input": {"name": "mix", "shape": shape, "meaning": "mixture " + what},
            "output": {"name": "estimate", "shape": shape, "meaning": "target " + what}}


def free_axis(model: nn.Module) -> int:
    return 2 if domain_of(model) == WAVEFORM else 3


def export_torchscript(model: nn.Module, path: Path, n_hop: int) -> None:
    """Trace ``model`` (checked on a second size and batch so a frozen shape fails here, not later) and save it."""
    with warnings.catch_warnings(), torch.no_grad():
        _ignore_torchscript_deprecation()
        # The tracer warns of every Python decision taken from a shape (Open-Unmix's chunking of long
        # inputs, which gives the same values either way); the checks on another size are what tell.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (example_input(model, EXAMPLE_FRAMES, n_hop),),
                                 check_inputs=[(example_input(model, CHECK_FRAMES, n_hop, CHECK_BATCH),)])
        torch.jit.save(traced, str(path))


def _ignore_torchscript_deprecation() -> None:
    """Inside ``warnings.catch_warnings()``: hide torch's notices that TorchScript is deprecated (in favour of
    torch.export); it still traces, saves and loads. torch 2.9 to 2.13 give them as DeprecationWarning, 2.14 as
    FutureWarning, which Python shows to users: one per call of ``torch.jit.trace``, ``trace_method``, ``save``
    and ``load``, 16 lines for a 4-target export."""
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=category)


def export_onnx(model: nn.Module, path: Path, n_hop: int, opset: int = 17) -> None:
    """ONNX with the TorchScript-based exporter: channels fixed, batch and frames (or samples) free."""
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError as exc:
        raise OpenUnmixLikeError("ONNX export needs the onnx package: pip install onnx onnxruntime") from exc
    axis = free_axis(model)
    name = "nb_timesteps" if axis == 2 else "nb_frames"
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns about its own deprecation and about LSTM batch sizes (the example's is 1, which
        # it handles; the check runs the file on a batch of 2).
        warnings.simplefilter("ignore")
        # The batch axis is free too: a runtime batching a song's segments must not meet a fixed 1.
        axes = {0: "nb_samples", axis: name}
        with _exporter_log_kept_on_failure():
            torch.onnx.export(model, (example_input(model, EXAMPLE_FRAMES, n_hop),), str(path),
                              opset_version=opset, input_names=["mix"], output_names=["estimate"],
                              dynamic_axes={"mix": axes, "estimate": axes}, **torchscript_exporter())


def torchscript_exporter() -> Dict[str, bool]:
    """``torch.onnx.export``'s arguments that pick the TorchScript-based exporter: ``dynamo=False`` where the
    installed torch has the choice (2.5 and later), nothing before (that exporter is the only one)."""
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


@contextlib.contextmanager
def _exporter_log_kept_on_failure() -> Iterator[None]:
    """Hold back what the process writes to its standard output and error (file descriptors 1 and 2)
    meanwhile; pass it on only if the block succeeds.

    The TorchScript-based exporter switches its C++ log on for every export (torch 2.13) and, when a step
    fails (an operator the opset lacks), prints the whole traced graph to standard output: hundreds of
    lines for a small model before the one-line error the caller reports.
    """
    with contextlib.ExitStack() as stack:
        for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
            stack.enter_context(_held(fd, stream))
        yield


@contextlib.contextmanager
def _held(fd: int, stream) -> Iterator[None]:
    stream.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(dir=temporary_folder()) as held:  # one line when no temporary folder is writable
        os.dup2(held.fileno(), fd)
        ok = False
        try:
            yield
            ok = True
        finally:
            stream.flush()
            os.dup2(saved, fd)
            os.close(saved)
            if ok:
                held.seek(0)
                text = held.read().decode(errors="replace")
                if text:
                    stream.write(text)


def run_exported(path: Path, fmt: str, x: Tensor, name: Optional[Path] = None) -> Optional[Tensor]:
    """Output of an exported file on ``x``; ``None`` for ONNX without onnxruntime.

    ``name`` is the path errors give (the final one, when ``path`` is a partial file).
    """
    if fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            _ignore_torchscript_deprecation()
            return torch.jit.load(str(path))(x)
    try:
        import onnxruntime
    except ImportError:
        return None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"mix": x.numpy()})[0])
    except Exception as exc:  # onnxruntime's own types (Fail, InvalidGraph, ...) derive from Exception only
        reason = _first_line(exc) if name is None else _renamed(_first_line(exc), path, name)
        raise OpenUnmixLikeError(f"{name or path}: onnxruntime cannot run the exported file ({reason}); "
                                 "export with another --opset (default 17), or pass --no-check if another runtime "
                                 "will run it") from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _renamed(text: str, partial: Path, name: Path) -> str:
    """``text`` naming ``name``, the file asked for, where it names ``partial``, the hidden file it is written in
    (which is gone by the time the user reads the message)."""
    for spelling in sorted({os.path.abspath(partial), str(partial)}, key=len, reverse=True):
        text = text.replace(spelling, str(name))
    return text


def relative_error(model: nn.Module, path: Path, fmt: str, n_hop: int, name: Optional[Path] = None) -> Optional[float]:
    """Largest difference between the exported file and the model on an unseen size and batch, over the
    output's peak."""
    x = example_input(model, CHECK_FRAMES, n_hop, CHECK_BATCH)
    got = run_exported(path, fmt, x, name)
    if got is None:
        return None
    with torch.no_grad():
        want = model(x)
    if got.shape != want.shape:
        raise OpenUnmixLikeError(f"{name or path}: exported model gives shape {tuple(got.shape)}, "
                                 f"expected {tuple(want.shape)}")
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def _export_one(model: nn.Module, tmp: Path, path: Path, fmt: str, n_hop: int, opset: int) -> None:
    """Write one target's file to ``tmp``; exporter failures as one :class:`OpenUnmixLikeError` naming ``path``."""
    try:
        if fmt == "torchscript":
            export_torchscript(model, tmp, n_hop)
        else:
            export_onnx(model, tmp, n_hop, opset)
    except (RuntimeError, ValueError, TypeError) as exc:  # torch's tracer and exporter raise these
        other = "another --opset (default 17) or --format torchscript" if fmt == "onnx" else "--format onnx"
        raise OpenUnmixLikeError(f"{path}: the {fmt} export failed ({_first_line(exc)}); try {other}") from exc


def export_models(models: Dict[str, nn.Module], settings: AudioSettings, outdir: Path, fmt: str,
                  opset: int = 17, check: bool = True, niter: int = 1) -> Dict[str, Exported]:
    """Export every target to ``outdir/<target>.pt`` (TorchScript) or ``.onnx``, and write ``export.json``.

    Nothing in ``outdir`` changes unless every target exports (and passes
    its check): the files are renamed into place together at the end.

    Args:
        models: target -> model (any registered architecture).
        settings: the STFT settings the models were trained with.
        fmt: ``torchscript`` or ``onnx``.
        check: run each file on an input of another size and compare with the model.
        niter: the Wiener EM iterations the model's separations use (its folder's ``niter``, else 1),
            recorded for the runtime.
    """
    outdir = Path(outdir)
    check_request(outdir, fmt, opset)
    if isinstance(niter, bool) or not isinstance(niter, int) or niter < 0:
        raise OpenUnmixLikeError(f"niter must be a whole number of Wiener EM iterations, 0 or more, not {niter!r}")
    results, record = {}, {}
    with _staged(outdir) as staged:
        for target, model in models.items():
            # A copy in float32 (what runtimes run), in eval mode: the caller's model stays as it was.
            model = copy.deepcopy(model).float().cpu().eval()  # tracing, export and checks run under no_grad
            path = outdir / f"{target}{FORMATS[fmt]}"
            staged[path] = tmp = new_partial(path, suffix=FORMATS[fmt])
            _export_one(model, tmp, path, fmt, settings.n_hop, opset)
            error = relative_error(model, tmp, fmt, settings.n_hop, name=path) if check else None
            results[target] = Exported(target, path, error)
            record[target] = {"file": path.name, "architecture": architecture_of(model).name,
                              "domain": domain_of(model), "model_args": model.config.to_dict(),
                              **io_description(model), "max_relative_error": error}
        staged[outdir / "export.json"] = tmp = new_partial(outdir / "export.json", suffix=".json")
        tmp.write_text(json.dumps({
            "format": fmt, **({"opset": opset} if fmt == "onnx" else {}),
            "sample_rate": settings.sample_rate, "n_fft": settings.n_fft, "n_hop": settings.n_hop,
            "nb_channels": settings.nb_channels, "niter": niter,
            "stft": "periodic Hann window of n_fft, centred frames with reflect padding, not normalised, one-sided",
            "targets": record,
        }, indent=2) + "\n")
    return results


def export(model: Optional[str], outdir: Path, fmt: str, targets: Optional[Sequence[str]] = None,
           opset: int = 17, check: bool = True) -> Dict[str, Exported]:
    """Export a model folder, a published model name, or (``None``) the bundled model; ``export.json``
    records the folder's ``niter`` (``separator.json``), else 1."""
    from .pretrained import load_models, own_niter

    check_request(Path(outdir), fmt, opset)  # before the models are loaded or downloaded
    models, settings = load_models(model, targets=targets, progress=False)
    own = own_niter(model)
    return export_models(models, settings, outdir, fmt, opset, check, niter=1 if own is None else own)
