"""What a track's stems are called, where they go and what they hold: the names and paths of its output
files, checked before any audio is read, and the sums of targets ``aggregate`` asks for.

Nothing here imports torch: ``umx-separate``'s option checks and the Ray engine's decode and write tasks use
it, and a process that separates nothing does not pay torch's import (seconds, and about 180 MB in each worker).
"""
from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .audio import MP3_BITRATES, MP3_DEFAULT_BITRATE, subtype_for
from .errors import AudioError, shown

DEFAULT_TEMPLATE = "{track}/{target}.{ext}"
EXTENSIONS = ("wav", "flac", "mp3")
PathLike = Union[str, bytes, "os.PathLike[str]"]

if TYPE_CHECKING:
    from torch import Tensor

Estimate = Union["Tensor", np.ndarray]


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


def check_aggregate(aggregate) -> None:
    """A one-line error for an ``aggregate`` that is not new stem names mapped to target names (or one name);
    whether the targets exist is checked against the estimates (:func:`aggregate_estimates`)."""
    if aggregate is None:
        return
    example = "e.g. {'accompaniment': ['drums', 'bass', 'other']}"
    if not isinstance(aggregate, Mapping):
        raise TypeError(f"aggregate must map new names to lists of targets, {example}; got {type(aggregate).__name__}")
    if not aggregate:
        raise ValueError(f"aggregate={{}}: name at least one stem, {example}")
    for name, members in aggregate.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"aggregate: stem name {name!r} is not a non-empty string; {example}")
        if isinstance(members, str):
            continue
        if not isinstance(members, (list, tuple, set, frozenset)) or not all(isinstance(m, str) for m in members):
            raise TypeError(f"aggregate[{name!r}] must be a target name or a list of them, {example}; "
                            f"got {members!r}")
        if not members:
            raise ValueError(f"aggregate[{name!r}] is empty: list the targets it sums, {example}")


def aggregate_estimates(named: Mapping[str, Estimate],
                        aggregate: Optional[Mapping[str, Sequence[str]]] = None) -> Dict[str, Estimate]:
    """Sum named estimates (tensors, or NumPy arrays) into groups (see :meth:`Separator.to_dict`)."""
    if aggregate is None:
        return dict(named)
    check_aggregate(aggregate)
    out = {}
    for name, members in aggregate.items():
        members = [members] if isinstance(members, str) else list(members)
        unknown = [m for m in members if m not in named]
        if unknown:
            raise ValueError(f"aggregate {name!r} names unknown targets {unknown}; available: {', '.join(named)}")
        parts = [named[m] for m in members]
        if isinstance(parts[0], np.ndarray):
            out[name] = np.stack(parts).sum(axis=0)
        else:
            import torch

            out[name] = torch.stack(parts).sum(dim=0)
    return out
