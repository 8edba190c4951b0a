"""Separating audio files into stem files: what ``umx-separate`` does for one file, from Python.

The file is decoded, separated and written chunk by chunk (memory does not grow with its length),
and its stems appear all together or not at all: until every stem is encoded no output path is
touched, and a failure or a cancellation leaves none of this call's files behind
(:class:`openunmix_like.writer.StemWriter`).

>>> from openunmix_like.stems import separate_file
>>> separate_file("song.mp3", "separated")              # the bundled model
{'vocals': PosixPath('separated/song/vocals.wav'), 'drums': ..., 'bass': ..., 'other': ...}
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import numbers
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Union

import torch

from .errors import AudioError, shown
from .inference import DEFAULT_OVERLAP, DEFAULT_SEGMENT, check_segmenting, iter_separate, separator_for
from .naming import (CLI_NAMES, DEFAULT_TEMPLATE, EXTENSIONS, FOREIGN_FIELDS, PYTHON_NAMES, PathLike,  # noqa: F401
                     check_name_length, check_outputs, folder_name, output_format, rescale_message, stem_names,
                     track_name)
from .separator import REFERENCE_KEYWORDS, Separator, WienerSettings, aggregate_estimates, check_aggregate


class Cancelled(Exception):
    """A track stopped because its ``cancel`` event was set; it wrote nothing."""


log = logging.getLogger(__name__)


def report_rescale(path: Path, db: float, names: Mapping[str, str] = PYTHON_NAMES) -> None:
    """Say that ``clip="rescale"`` turned a track's stems down ``db`` dB (a clipped or loud master's stems add
    up to more than full scale), once per track, as a warning: the stems are quieter than the input."""
    message = rescale_message(path, db, names)
    if message is not None:
        log.warning("%s", message)


def _as_path(name: str, value) -> Path:
    """``value`` (a str, bytes or os.PathLike path) as a Path, or a one-line TypeError naming the argument."""
    try:
        return Path(os.fsdecode(value))
    except TypeError:
        raise TypeError(f"{name} must be a path (str or pathlib.Path), got {type(value).__name__}") from None


WIENER_FIELDS = tuple(field.name for field in dataclasses.fields(WienerSettings))


def _check_early(path: Path, outdir: Path, on_progress, cancel, wiener_options: Mapping) -> None:
    """Refuse, before a model is loaded (maybe downloaded), what no model could change."""
    from .audio import _existing

    unknown = [key for key in wiener_options if key not in WIENER_FIELDS]
    if unknown:
        hints = [f"{key}, the reference package's: {REFERENCE_KEYWORDS[key]}" for key in unknown
                 if key in REFERENCE_KEYWORDS]
        raise TypeError(f"separate_file() got unexpected keyword arguments {', '.join(map(repr, unknown))}; "
                        f"the Wiener settings it takes as keywords are {', '.join(WIENER_FIELDS)}"
                        + (f" ({'; '.join(hints)})" if hints else ""))
    if on_progress is not None and not callable(on_progress):
        raise TypeError(f"on_progress must be a function taking the fraction done, got {type(on_progress).__name__}")
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise TypeError(f"cancel must be a threading.Event (set it to stop), got {type(cancel).__name__}")
    _existing(path)
    folder = next((p for p in (outdir, *outdir.parents) if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise AudioError(f"{outdir}: cannot write there, {folder} is a file and not a folder; "
                         "give another outdir (a folder, made if missing)")


def _check_span(start: float, duration: Optional[float]) -> None:
    if isinstance(start, bool) or not isinstance(start, numbers.Real) or not math.isfinite(start) or start < 0:
        raise ValueError(f"start must be a number of seconds, 0 or more; got {start!r}")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, numbers.Real)
                                 or not math.isfinite(duration) or duration <= 0):
        raise ValueError(f"duration must be a number of seconds above 0, or None for the rest; got {duration!r}")


def separate_file(
    path: PathLike,
    outdir: PathLike = "separated",
    model: Union[str, Path, Separator, None] = None,
    *,
    filename: str = DEFAULT_TEMPLATE,
    ext: str = "wav",
    bits: Optional[int] = None,
    mp3_bitrate: Optional[int] = None,
    clip: str = "rescale",
    keep_model_rate: bool = False,
    start: float = 0.0,
    duration: Optional[float] = None,
    aggregate: Optional[Mapping[str, Sequence[str]]] = None,
    segment: Optional[float] = DEFAULT_SEGMENT,
    overlap: float = DEFAULT_OVERLAP,
    batch_segments: Optional[int] = None,
    overwrite: bool = False,
    progress: bool = False,
    on_progress: Optional[Callable[[float], None]] = None,
    cancel: Optional[threading.Event] = None,
    targets: Optional[Sequence[str]] = None,
    device: Union[str, torch.device, None] = None,
    precision: Optional[str] = None,
    wiener: Optional[WienerSettings] = None,
    input_level: Union[str, float, None] = "auto",
    **wiener_options,
) -> Dict[str, Path]:
    """Separate one audio file into stem files, as ``umx-separate`` does (the same files, to the bit).

    Args:
        path: any file :func:`openunmix_like.audio.load` reads (wav, flac, ogg, mp3, and what ffmpeg decodes).
        outdir: the output folder; the stems go to ``outdir / filename`` (made as needed).
        model: a :class:`Separator` (load it once for many files), a model name or folder, or ``None``
            for the bundled model; ``targets``, ``device``, ``precision`` and the Wiener settings
            (``wiener`` or its fields as keywords) apply to a model loaded here, as in :func:`separate`.
        filename: template under ``outdir`` with ``{track}`` (the file's name without extension),
            ``{target}``, ``{ext}``, ``{model}`` (the model's name or folder name; ``default`` for
            the bundled one; not available with a :class:`Separator`) and ``{folder}`` (the folder of
            ``path`` as given, without a leading ``/`` or ``..`` parts, see :func:`folder_name`).
        ext, bits, mp3_bitrate: ``wav`` or ``flac`` at 16, 24 or 32 bits (32 is float, wav only;
            default 16), or ``mp3`` at a constant bitrate in kbit/s (default 320; needs ffmpeg).
        clip: peaks above full scale: ``rescale`` the whole track (the stems still sum to the
            mixture), ``clamp`` samples, or ``none``.
        keep_model_rate: write at the model's rate instead of the input's.
        start, duration: the part of the file to separate, in seconds (default: all of it).
        aggregate: sum targets into new stems (only these are written), see :meth:`Separator.to_dict`.
        segment, overlap, batch_segments: segmented processing, see :func:`openunmix_like.inference.iter_separate`.
        overwrite: replace stems that exist (refused by default); they stay as they were until every
            new stem is encoded. Without it, a file made at an output path meanwhile is kept as well.
        input_level: level matching for a model loaded here (``auto``: the model's own; a level in dBFS;
            ``None``: off), see :meth:`Separator.from_pretrained`; a :class:`Separator` has its own.
        progress: a progress bar on stderr.
        on_progress: called with the fraction done after each chunk.
        cancel: when set (from another thread), the file stops after the chunk in hand, raising
            :class:`Cancelled`, and nothing of it is kept.

    Returns:
        stem name -> the path written.

    Raises:
        AudioError: the file cannot be read, a stem cannot be written or exists (names the path).
        ModelError: the model cannot be found or loaded.
        ValueError: an argument no file could use (a ``TypeError`` for one of the wrong type); these, a
            missing input and an ``outdir`` that is a file are refused before the model is loaded.

    Example:
        >>> separator = Separator.from_pretrained("umxhq")
        >>> for song in Path("album").glob("*.flac"):
        ...     separate_file(song, "stems", separator, ext="mp3", targets=None)
    """
    bits, mp3_bitrate = output_format(ext, bits, mp3_bitrate)
    _check_span(start, duration)
    check_segmenting(segment, overlap)
    check_aggregate(aggregate)
    path, outdir = _as_path("path", path), _as_path("outdir", outdir)
    if not isinstance(filename, str):
        raise TypeError(f"filename must be a template string like {DEFAULT_TEMPLATE!r}, got {type(filename).__name__}")
    named = None if isinstance(model, Separator) else ("default" if model is None else Path(str(model)).name)
    if named is None and "{model}" in filename:
        raise ValueError(f"filename {filename!r}: {{model}} needs the model's name; pass the name or folder as "
                         "model, or write the name into the template")
    _check_early(path, outdir, on_progress, cancel, wiener_options)
    separator = separator_for(model, targets, wiener, device, precision, progress, wiener_options, input_level)
    aggregate_estimates({name: torch.zeros(1) for name in separator.target_names}, aggregate)  # checks the names
    stems = list(aggregate) if aggregate is not None else separator.target_names
    try:
        relative = stem_names(filename, track_name(path), stems, ext, named or "", folder_name(path))
    except ValueError as exc:
        raise ValueError(f"filename {exc}") from None
    outputs = {name: outdir / rel for name, rel in relative.items()}
    write_stems(path, separator, outputs, ext=ext, bits=bits, mp3_bitrate=mp3_bitrate, clip=clip,
                keep_model_rate=keep_model_rate, start=start, duration=duration, aggregate=aggregate,
                segment=segment, overlap=overlap, batch_segments=batch_segments, overwrite=overwrite,
                progress=progress, on_progress=on_progress, cancel=cancel)
    return outputs


def write_stems(path: Path, separator: Separator, outputs: Mapping[str, Path], *, ext: str = "wav",
                bits: Optional[int] = 16, mp3_bitrate: Optional[int] = None, clip: str = "rescale",
                keep_model_rate: bool = False, start: float = 0.0, duration: Optional[float] = None,
                aggregate: Optional[Mapping[str, Sequence[str]]] = None, segment: Optional[float] = DEFAULT_SEGMENT,
                overlap: float = DEFAULT_OVERLAP, batch_segments: Optional[int] = None, overwrite: bool = False,
                progress: bool = False, on_progress: Optional[Callable[[float], None]] = None,
                cancel: Optional[threading.Event] = None, names: Mapping[str, str] = PYTHON_NAMES) -> None:
    """Separate one file into the given output paths (all written, or none): :func:`separate_file`
    with the paths chosen and the options checked by the caller (``umx-separate``, ``umx-web``)."""
    from .audio import AudioSource
    from .writer import OutputExists, StemWriter, format_problem

    check_outputs(path, outputs, overwrite, names)
    if cancel is not None and cancel.is_set():  # set before the call: not even one chunk is separated
        raise Cancelled(str(path))
    if ext == "mp3" and not shutil.which("ffmpeg"):
        raise AudioError(f"{path}: mp3 stems need the ffmpeg program to encode; install it "
                         "(e.g. apt-get install ffmpeg) or write wav or flac")
    with AudioSource(path, start=start, duration=duration) as source:
        out_rate = int(separator.sample_rate) if keep_model_rate else source.sample_rate
        problem = format_problem(ext, out_rate, source.nb_channels, python=names.get("style") == "python")
        if problem:  # before separating, and named by its input rather than its output
            raise AudioError(f"{path}: {problem}")
        total = max(1.0, source.nb_frames * out_rate / source.sample_rate)
        with StemWriter(outputs, out_rate, source.nb_channels, ext, bits, clip, mp3_bitrate,
                        overwrite=overwrite, channel_map=source.channel_map) as writer:
            chunks = iter_separate(separator, source, source.sample_rate, segment or None, overlap,
                                   progress=progress, desc=shown(path.name), out_rate=out_rate,
                                   batch_segments=batch_segments)
            # A writer thread encodes each chunk while the next one is separated; one chunk in
            # flight at most, so memory stays bounded and a write error surfaces at the next chunk.
            with contextlib.closing(chunks), ThreadPoolExecutor(max_workers=1,
                                                                thread_name_prefix="umx-write") as encoder:
                writing, done = None, 0
                for chunk in chunks:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(str(path))
                    stems = aggregate_estimates(dict(zip(separator.target_names, chunk)), aggregate)
                    if writing is not None:
                        writing.result()
                    writing = encoder.submit(writer.write, stems)
                    if on_progress is not None:
                        done += chunk.shape[-1]
                        on_progress(min(1.0, done / total))
                if writing is not None:
                    writing.result()
            try:
                writer.finish()
                report_rescale(path, writer.rescaled_db, names)
            except OutputExists as exc:  # made since check_outputs (another run, or another program)
                raise AudioError(f"{exc.path}: exists (written while this file was being separated), and was "
                                 f"kept; pass {names['overwrite']} to overwrite it or choose another "
                                 f"{names['outdir']}") from None
