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
import posixpath
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from .audio import MP3_BITRATES, MP3_DEFAULT_BITRATE, subtype_for
from .errors import AudioError, shown
from .inference import DEFAULT_OVERLAP, DEFAULT_SEGMENT, check_segmenting, iter_separate, separator_for
from .separator import REFERENCE_KEYWORDS, Separator, WienerSettings, aggregate_estimates, check_aggregate

DEFAULT_TEMPLATE = "{track}/{target}.{ext}"
EXTENSIONS = ("wav", "flac", "mp3")
PathLike = Union[str, bytes, "os.PathLike[str]"]


class Cancelled(Exception):
    """A track stopped because its ``cancel`` event was set; it wrote nothing."""


def track_name(path: PathLike) -> str:
    """The name a file's stems are filed under: its name without the extension (or ``.stem.mp4``)."""
    name = Path(path).name
    for suffix in (".stem.mp4", ".stem.m4a"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def folder_name(path: PathLike, root: Optional[str] = None) -> str:
    """The ``{folder}`` of an input in output templates, with ``/`` between its parts.

    For an input found in a folder or by a pattern, ``root`` is that folder (a pattern's part
    before its first wildcard) and ``{folder}`` the input's folder below it; for an input named
    directly, it is the input's folder as written. A URL's scheme, a leading ``/`` or drive (``C:``) and ``.`` or
    ``..`` parts are left out, so it always stays under the output folder; ``""`` at the top.

    >>> folder_name("/music/Artist/Album/01.mp3", root="/music"), folder_name("s3://b/x/01.mp3")
    ('Artist/Album', 'b/x')
    """
    def inner(text: str) -> str:
        if "://" in text:
            text = text.split("://", 1)[1]
        else:  # a Windows drive ("C:") goes as a leading "/" does: no folder can be named "C:"
            drive = os.path.splitdrive(text)[0]
            text = text[len(drive):] if drive.endswith(":") else text
        return text.replace(os.sep, "/")

    text = os.fsdecode(path) if isinstance(path, bytes) else os.fspath(path)
    folder = posixpath.dirname(inner(text))
    if root is not None:
        folder = posixpath.relpath(folder or ".", inner(os.fspath(root)).rstrip("/") or "/")
    return "/".join(part for part in folder.split("/") if part not in ("", ".", ".."))


def _fill(template: str, folder: str, **fields: str) -> str:
    if not folder:  # "{folder}/{track}" is "song" for a file at the top, not "/song"
        template = template.replace("{folder}/", "").replace("/{folder}", "")
    return template.format(folder=folder, **fields)


# Demucs's and Spleeter's names of the template fields (docs/migrating.md).
FOREIGN_FIELDS = {"stem": "{target}", "instrument": "{target}", "filename": "{track}", "codec": "{ext}",
                  "foldername": "{folder}", "trackext": "the input's extension in the template itself"}


def stem_names(template: str, track: str, names: Sequence[str], ext: str, model: str,
               folder: str = "") -> Dict[str, str]:
    """Stem name -> path relative to the output folder, from a template with ``{track}``, ``{target}``,
    ``{ext}``, ``{model}`` and ``{folder}`` (see :func:`folder_name`); a ``ValueError`` for a bad
    template or one that gives two stems one file."""
    out = {}
    for name in names:
        try:
            out[name] = _fill(template, folder, track=track, target=name, ext=ext, model=model)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
            ours = FOREIGN_FIELDS.get(exc.args[0]) if isinstance(exc, KeyError) and exc.args else None
            raise ValueError(f"{template!r}: bad template ({exc}); use {{track}}, {{target}}, {{ext}}, "
                             "{model}, {folder}" + (f" (write {ours} for {{{exc.args[0]}}})" if ours else "")
                             ) from None
    # Compared as paths: "a/./b.wav" and "a//b.wav" are one file, and "a" cannot be a file and hold "a/b.wav".
    normal = {name: posixpath.normpath(rel.replace(os.sep, "/")) for name, rel in out.items()}
    for name, rel in normal.items():
        if posixpath.isabs(rel) or os.path.isabs(out[name]) or rel == ".." or rel.startswith("../"):
            raise ValueError(f"{template!r} gives {out[name]!r} for {name!r}, outside the output folder; "
                             "give a template relative to it")
    if len(set(normal.values())) < len(out):
        if len(set(out.values())) < len(out) or "{target}" not in template:
            raise ValueError(f"{template!r} gives the same file for several targets; include {{target}}")
        first, second = next((a, b) for a in normal for b in normal if a != b and normal[a] == normal[b])
        raise ValueError(f"{template!r} gives one file, {normal[first]!r}, for the stems {first!r} and {second!r}; "
                         "give them names that differ as file names")
    for name, rel in normal.items():
        inside = next((other for other, o in normal.items() if o.startswith(rel + "/")), None)
        if inside is not None:
            raise ValueError(f"{template!r} gives {out[inside]!r} for {inside!r}, inside {out[name]!r} for {name!r}: "
                             "one stem's file would be another's folder; give the stems names that do not nest")
    return out


log = logging.getLogger(__name__)
PYTHON_NAMES = {"overwrite": "overwrite=True", "outdir": "outdir", "filename": "filename", "style": "python",
                "clamp": 'clip="clamp"'}
CLI_NAMES = {"overwrite": "--force", "outdir": "--outdir", "filename": "--filename", "style": "cli",
             "clamp": "--clip clamp"}


def check_outputs(path: Path, outputs: Mapping[str, Path], overwrite: bool,
                  names: Mapping[str, str] = PYTHON_NAMES) -> None:
    """Refuse outputs that would replace the input, sit where a folder is, or exist (without ``overwrite``);
    ``names`` spells the options in the messages (:data:`CLI_NAMES` for ``umx-separate``)."""
    source = path.resolve()
    for out in outputs.values():
        check_name_length(path, out, names)
        if out.resolve() == source:
            raise AudioError(f"{path}: output would overwrite the input; change {names['outdir']} or "
                             f"{names['filename']}")
        if out.is_dir():
            raise AudioError(f"{out}: is a folder, where a stem would be written; move it or choose another "
                             f"{names['outdir']}")
        if out.exists() and not overwrite:
            raise AudioError(f"{out}: exists; pass {names['overwrite']} to overwrite it or choose another "
                             f"{names['outdir']}")


# Bytes a partial file's path adds to its stem's path (openunmix_like.fileio:
# ".<name>.<pid>-<host>-<random>.partial.ext").
PARTIAL_EXTRA = 64
# libsndfile, which writes every stem (mp3 ones first as wav), refuses paths of this many bytes or more.
SNDFILE_PATH_MAX = 1024


def _limits(folder: Path) -> Tuple[int, int]:
    """The longest file name and path (in bytes) that the file system of ``folder`` (or of its nearest existing
    parent) takes."""
    existing = next((p for p in (folder, *folder.parents) if p.is_dir()), Path("."))
    try:
        return os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows) or no answer: the common limits
        return 255, 4096


def rescale_message(path: Union[str, Path], db: float, names: Mapping[str, str] = PYTHON_NAMES) -> Optional[str]:
    """What :func:`report_rescale` says of a track turned down ``db`` dB; ``None`` for none."""
    if db <= 0:
        return None
    clamp = names.get("clamp", 'clip="clamp"')
    return (f"{shown(str(path))}: the stems peaked {db:.1f} dB over full scale, so all of them were turned down "
            f"{db:.1f} dB together (they add up to the input turned down as much); {clamp} keeps their level "
            "and cuts the peaks")


def report_rescale(path: Path, db: float, names: Mapping[str, str] = PYTHON_NAMES) -> None:
    """Say that ``clip="rescale"`` turned a track's stems down ``db`` dB (a clipped or loud master's stems add
    up to more than full scale), once per track, as a warning: the stems are quieter than the input."""
    message = rescale_message(path, db, names)
    if message is not None:
        log.warning("%s", message)


def check_name_length(path: Union[str, Path], out: Path, names: Mapping[str, str] = PYTHON_NAMES) -> None:
    """Refuse the output ``out`` of the input ``path`` when one of its file or folder names, or the whole path,
    is longer than its file system takes, before any work: the stems would be separated, then fail to be
    written."""
    name_max, path_max = _limits(out.parent)
    part = next((p for p in out.parts if len(os.fsencode(p)) > name_max), None)
    if part is not None:
        raise AudioError(f"{path}: its output {out} has a name of {len(os.fsencode(part))} bytes, and the file system "
                         f"takes at most {name_max}; shorten the input's name, or put {{track}} in a folder name of "
                         f"its own ({names['filename']} '{{track}}/{{target}}.{{ext}}')")
    size = len(os.fsencode(os.path.abspath(out)))
    most = min(path_max, SNDFILE_PATH_MAX) - PARTIAL_EXTRA
    if size > most:
        raise AudioError(f"{path}: its output {out} is a path of {size} bytes (from /), and stems are written at "
                         f"paths of at most {most}; give a shorter {names['outdir']} or {names['filename']}")


def output_format(ext: str, bits: Optional[int], mp3_bitrate: Optional[int]) -> Tuple[Optional[int], Optional[int]]:
    """``(bits, mp3_bitrate)`` with their defaults filled in, or a one-line ``ValueError`` naming the keyword."""
    if ext not in EXTENSIONS:
        raise ValueError(f"ext={ext!r}: choose from {', '.join(EXTENSIONS)}")
    if ext == "mp3":
        if bits is not None:
            raise ValueError(f"bits={bits} is for wav and flac; mp3 stems take mp3_bitrate")
        if mp3_bitrate is not None and mp3_bitrate not in MP3_BITRATES:
            raise ValueError(f"mp3_bitrate={mp3_bitrate}: choose from {', '.join(map(str, MP3_BITRATES))} (kbit/s)")
        return None, mp3_bitrate or MP3_DEFAULT_BITRATE
    if mp3_bitrate is not None:
        raise ValueError(f"mp3_bitrate is for ext='mp3', and the stems are {ext}; leave it out")
    bits = 16 if bits is None else bits
    try:
        subtype_for(ext, bits)
    except (AudioError, TypeError):  # its message names --mp3-bitrate, an option of umx-separate
        choices = "16, 24 or 32 (float)" if ext == "wav" else "16 or 24 (32-bit float stems are wav only)"
        raise ValueError(f"ext={ext!r}, bits={bits!r}: {ext} stems take bits={choices}") from None
    return bits, None


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
