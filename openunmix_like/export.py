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
import importlib.util
import inspect
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .architectures import COMPLEX, WAVEFORM, architecture_of, domain_of
from .choices import EXPORT_FORMATS as FORMATS
from .errors import OpenUnmixLikeError
from .fileio import new_partial, replace_together, temporary_folder
from .modeldir import AudioSettings
from .processes import interrupts_held

EXAMPLE_FRAMES = 64
CHECK_FRAMES = 37  # a second size: the exported file must not have frozen the first
CHECK_BATCH = 3  # and another batch size: the examples' batch is 1 (2 for the torch.export-based exporter)


@dataclasses.dataclass(frozen=True)
class Exported:
    """One exported target: its file and how far the export's output is from the model's."""

    target: str
    path: Path
    max_error: Optional[float]  # relative to the output's peak; None when it could not be checked


def torch_version() -> Tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def torchscript_exporter_available() -> bool:
    """Whether the installed torch still has its TorchScript-based ONNX exporter (deprecated from torch 2.9,
    and to be removed): before 2.9 it is the default, from 2.9 it lives in ``torch.onnx._internal``."""
    if torch_version() < (2, 9):
        return True
    return importlib.util.find_spec("torch.onnx._internal.torchscript_exporter") is not None


def uses_dynamo_exporter() -> bool:
    """Whether ONNX files are written with torch's torch.export-based exporter (``dynamo=True``).

    Only where torch no longer has the TorchScript-based one: with torch 2.13 the older exporter is
    11 times faster on Open-Unmix's LSTM (2.4 s against 27.7 s for an umxhq-sized target) and needs no
    onnxscript. The newer one is ready for the torch that drops it (tests/test_export_dynamo.py).
    """
    takes = inspect.signature(torch.onnx.export).parameters
    return not torchscript_exporter_available() and "dynamo" in takes and "dynamic_shapes" in takes


def onnx_opsets() -> Tuple[int, int]:
    """The ONNX opsets the exporter in use writes: 7 to 20 with the TorchScript-based one, 18 to 23 with the
    torch.export-based one (both in torch 2.13).

    The torch.export-based exporter writes 18 and up itself; asked for less it converts the file down and,
    where that fails, keeps 18 without an error, so lower opsets are refused rather than mislabelled.
    """
    try:
        from torch.onnx import _constants
    except ImportError:  # a torch that moved them
        return (18, 23) if uses_dynamo_exporter() else (7, 20)
    if uses_dynamo_exporter():
        return 18, getattr(_constants, "ONNX_MAX_OPSET", 23)
    return (getattr(_constants, "ONNX_MIN_OPSET", 7),
            getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", 20)))


def default_opset() -> int:
    """17 with the TorchScript-based exporter, 18 with the torch.export-based one (its lowest)."""
    return 18 if uses_dynamo_exporter() else 17


def check_onnx_packages() -> None:
    """:class:`OpenUnmixLikeError` naming the extra when a package the exporter in use needs is missing."""
    needed = ("onnx", "onnxscript") if uses_dynamo_exporter() else ("onnx",)
    for name in needed:
        try:
            __import__(name)
        except ImportError as exc:
            raise OpenUnmixLikeError(f"ONNX export with torch {torch.__version__} needs {' and '.join(needed)}, "
                                     f"and {name} is not installed: pip install 'openunmix-like[export]'") from exc


def check_request(outdir: Path, fmt: str, opset: Optional[int] = None) -> None:
    """:class:`OpenUnmixLikeError` when the format, opset, packages or output folder cannot be used; nothing is
    written. ``opset`` ``None``: :func:`default_opset`."""
    if fmt not in FORMATS:
        raise OpenUnmixLikeError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    low, high = onnx_opsets()
    if fmt == "onnx" and opset is not None and not low <= opset <= high:
        raise OpenUnmixLikeError(f"--opset {opset}: the ONNX exporter of torch {torch.__version__} writes opsets "
                                 f"{low} to {high}; give one of those (default {default_opset()})")
    if fmt == "onnx":
        check_onnx_packages()
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
            replace_together(staged)
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


def export_onnx(model: nn.Module, path: Path, n_hop: int, opset: Optional[int] = None) -> None:
    """ONNX with channels fixed, batch and frames (or samples) free: written by torch's TorchScript-based
    exporter while torch has it, else by its torch.export-based one. ``opset`` ``None``: the default."""
    check_onnx_packages()
    opset = default_opset() if opset is None else opset
    if uses_dynamo_exporter():
        _export_onnx_dynamo(model, path, n_hop, opset)
    else:
        _export_onnx_torchscript(model, path, n_hop, opset)


def _export_onnx_dynamo(model: nn.Module, path: Path, n_hop: int, opset: int) -> None:
    axis = free_axis(model)
    names = {0: "nb_samples", axis: "nb_timesteps" if axis == 2 else "nb_frames"}
    # Names, not torch.export.Dim: the exporter makes them Dim.DYNAMIC, which lets torch.export bound an axis
    # (tfattn's windows bound the frames) where a Dim fails the export; fixing one to a value still fails it.
    shapes = (names,)
    # torch.export fixes every axis whose example size is 1, so the example has a batch of 2 (the check runs 3).
    x = example_input(model, EXAMPLE_FRAMES, n_hop, batch=2)
    with _quiet_torch_export(), _exporter_log_kept_on_failure(), torch.no_grad():
        _forget_cached_lstm_kernel()
        # onnxscript's optimizer (0.7.2) folds the reshape after each LSTM layer to the example's frame count, so
        # the file failed at any other length: models with an LSTM are written unoptimised, which runs at all of
        # them. The others are optimised (unoptimised, onnxruntime warns of unfolded CastLike nodes in tfattn).
        optimize = not any(isinstance(layer, nn.LSTM) for layer in model.modules())
        program = torch.onnx.export(model, (x,), None, dynamo=True, opset_version=opset, input_names=["mix"],
                                    output_names=["estimate"], dynamic_shapes=shapes, optimize=optimize,
                                    verbose=False)
        # One file, weights inside: a .data file beside it would name the hidden partial file it was written as.
        program.save(str(path), external_data=False)


def _forget_cached_lstm_kernel() -> None:
    """Empty the kernel cache of ``aten.lstm``: after one export torch 2.13 dispatches the next one's LSTM to the
    decomposition that unrolls it over the example's frames, so the second target of a model failed to export
    (with torch.export.Dim axes its file was written, and ran at the example's 64 frames only)."""
    cache = getattr(torch.ops.aten.lstm.input, "_dispatch_cache", None)
    if isinstance(cache, dict):
        cache.clear()


@contextlib.contextmanager
def _quiet_torch_export() -> Iterator[None]:
    """Hide what torch.export and onnxscript say about their own code (FutureWarnings on torch internals, notes
    on skipped torchvision operators): nothing a user can act on. The check on another size tells the rest."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _export_onnx_torchscript(model: nn.Module, path: Path, n_hop: int, opset: int) -> None:
    axis = free_axis(model)
    name = "nb_timesteps" if axis == 2 else "nb_frames"
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns about its own deprecation (torch 2.9 and later) and about LSTM batch sizes (the
        # example's is 1, which it handles; the check runs the file on a batch of 3).
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
                                 f"export with another --opset (default {default_opset()}), or pass --no-check if "
                                 "another runtime will run it") from exc


def _first_line(exc: BaseException) -> str:
    """The line of ``exc``'s message that says what went wrong: the first, or for the torch.export-based
    exporter (whose first lines are steps to report it) the one after its "## Exception summary" heading."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    if "## Exception summary" in lines:
        summary = [line for line in lines[lines.index("## Exception summary") + 1:] if line]
        if summary:
            return summary[0]
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


def _export_one(model: nn.Module, tmp: Path, path: Path, fmt: str, n_hop: int, opset: Optional[int]) -> None:
    """Write one target's file to ``tmp``; exporter failures as one :class:`OpenUnmixLikeError` naming ``path``."""
    try:
        if fmt == "torchscript":
            export_torchscript(model, tmp, n_hop)
        else:
            export_onnx(model, tmp, n_hop, opset)
    except (RuntimeError, ValueError, TypeError) as exc:  # torch's tracer and exporter raise these
        other = (f"another --opset (default {default_opset()}) or --format torchscript" if fmt == "onnx"
                 else "--format onnx")
        raise OpenUnmixLikeError(f"{path}: the {fmt} export failed ({_first_line(exc)}); try {other}") from exc


def export_models(models: Dict[str, nn.Module], settings: AudioSettings, outdir: Path, fmt: str,
                  opset: Optional[int] = None, check: bool = True, niter: int = 1) -> Dict[str, Exported]:
    """Export every target to ``outdir/<target>.pt`` (TorchScript) or ``.onnx``, and write ``export.json``.

    Nothing in ``outdir`` changes unless every target exports (and passes
    its check): the files are renamed into place together at the end.

    Args:
        models: target -> model (any registered architecture).
        settings: the STFT settings the models were trained with.
        fmt: ``torchscript`` or ``onnx``.
        opset: the ONNX opset; ``None``: :func:`default_opset`.
        check: run each file on an input of another size and compare with the model.
        niter: the Wiener EM iterations the model's separations use (its folder's ``niter``, else 1),
            recorded for the runtime.
    """
    outdir = Path(outdir)
    check_request(outdir, fmt, opset)
    opset = default_opset() if opset is None else opset
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
           opset: Optional[int] = None, check: bool = True) -> Dict[str, Exported]:
    """Export a model folder, a published model name, or (``None``) the bundled model; ``export.json``
    records the folder's ``niter`` (``separator.json``), else 1."""
    from .pretrained import load_models, own_niter

    check_request(Path(outdir), fmt, opset)  # before the models are loaded or downloaded
    models, settings = load_models(model, targets=targets, progress=False)
    own = own_niter(model)
    return export_models(models, settings, outdir, fmt, opset, check, niter=1 if own is None else own)
