"""Which tracks a catalogue run processes: inputs and manifests expanded, outputs named, finished ones skipped."""
from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .. import storage
from ..errors import OpenUnmixLikeError
from ..naming import CLI_NAMES, check_name_length, folder_name
from . import records
from .stages import Track

Failure = Tuple[str, str, str]  # path, stage, reason
# Inputs are checked (size, _done.json) this many at a time: on object storage each is a round trip.
CHECK_THREADS = 32
# The longest object key (the part of a URL after its bucket) that S3, Google Cloud Storage and Azure take, in bytes.
KEY_MAX = 1024


@dataclasses.dataclass
class Plan:
    todo: List[Track]
    skipped: List[Track]
    failures: List[Failure]


def gather_sources(specs: Sequence[str], manifest: Optional[str],
                   storage_options=None, outdir: Optional[str] = None) -> Tuple[Dict[str, str], List[Failure]]:
    """Files named by ``specs`` (files, folders, globs, URLs of any of these) and the manifest's entries,
    each with its ``{folder}`` (:func:`openunmix_like.stems.folder_name`; a manifest's entries are named
    directly).

    Local folders and URL prefixes are searched without the output folder ``outdir``, if it is inside them.

    A manifest's entries are taken as files without a check here: one missing
    file is one failure when it is read, not a stop of the listing.
    """
    from ..cli.separate import AUDIO_EXTENSIONS, collect_inputs, home_expanded, pattern_root

    sources: Dict[str, str] = {}
    failures: List[Failure] = []
    local = [s for s in specs if not storage.is_url(s)]
    files, errors = collect_inputs(local, exclude=Path(outdir) if outdir and not storage.is_url(outdir) else None)
    # Absolute, so that records match from any working directory and tasks on other nodes find the files.
    for path, folder in files.items():
        sources.setdefault(os.path.abspath(path), folder)
    failures.extend((message.split(": ", 1)[0], "input", message) for message in errors)
    for spec in (s for s in specs if storage.is_url(s)):
        found, errors = storage.expand_url(spec, AUDIO_EXTENSIONS, storage_options)
        root = None if found == [spec] else (pattern_root(spec) if glob.has_magic(spec) else spec)
        # A prefix is searched as a local folder is, a pattern below its fixed part as a local pattern is:
        # without the output folder, whose stems an earlier run wrote there.
        kept = [url for url in found if not (root is not None and outdir and _inside(url, outdir, root))]
        for url in kept:
            sources.setdefault(url, folder_name(url, root))
        if found and not kept:
            kind = "pattern matches" if glob.has_magic(spec) else "folder holds"
            errors.append(f"{spec}: {kind} no audio files outside --outdir {outdir}")
        failures.extend((spec, "input", message) for message in errors)
    if manifest is not None:
        for entry in storage.read_manifest(manifest, storage_options):
            if not storage.is_url(entry):
                entry = home_expanded(entry)  # "~/song.flac" as --engine local reads it
            sources.setdefault(entry if storage.is_url(entry) else os.path.abspath(entry), folder_name(entry))
    return sources, failures


def place(path: str) -> str:
    """One spelling per location, to compare inputs with outputs: a local path (or ``file://`` URL) resolved,
    another URL with its path normalized."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    if not storage.is_url(path):
        return os.path.realpath(path)
    protocol, rest = path.split("://", 1)
    return f"{protocol}://{posixpath.normpath(rest)}"


def _inside(url: str, outdir: str, searched: str) -> bool:
    """Whether ``url`` is under ``outdir``, a folder strictly inside the prefix ``searched`` (as
    :func:`openunmix_like.cli.separate.collect_inputs` leaves out a local output folder)."""
    top, folder = place(searched).rstrip("/") + "/", place(outdir).rstrip("/") + "/"
    return folder.startswith(top) and folder != top and place(url).startswith(folder)


def track_name(source: str) -> str:
    from ..naming import track_name as name_of

    inner = source.split("://", 1)[1] if storage.is_url(source) else source
    return name_of(Path(PurePosixPath(inner).name))


def stem_outputs(source: str, names: Sequence[str], args: argparse.Namespace, folder: str = "") -> Dict[str, str]:
    """Stem name -> path or URL under ``args.outdir``, from ``--filename``."""
    from ..cli.separate import relative_outputs

    return {name: storage.join(args.outdir, rel)
            for name, rel in relative_outputs(track_name(source), names, args, folder).items()}


def record_path(track: str, names: Sequence[str], args: argparse.Namespace, folder: str = "") -> str:
    """Where a track's ``_done.json`` goes, relative to ``--outdir``: in the folder that holds its
    stems when that folder is the track's own (``<track>/_done.json`` for the default template,
    ``<model>/<track>/_done.json`` for ``{model}/{track}/{target}.{ext}``), else in ``<track>/``
    under the folder the stems share (``<track>/_done.json`` for ``{target}/{track}.{ext}``,
    ``<folder>/<track>/_done.json`` for ``{target}/{folder}/{track}.{ext}``);
    so that runs whose templates keep their stems apart keep their records apart too."""
    from ..cli.separate import relative_outputs

    folders = [PurePosixPath(rel).parent for rel in relative_outputs(track, names, args, folder).values()]
    common = PurePosixPath(os.path.commonpath([str(f) for f in folders])) if folders else PurePosixPath(".")
    if track in common.parts:
        return str(common / records.DONE_NAME)
    if "{folder}" in args.filename:  # tracks of one name in two folders: two records
        return str(common / folder / track / records.DONE_NAME)
    return str(common / track / records.DONE_NAME)


def legacy_finished(legacy: str, done: str, source: str, size: int, model_sha256: str, settings: dict,
                    stems: Dict[str, str], storage_options=None) -> bool:
    """Whether the record at ``legacy`` (``<outdir>/<track>/_done.json``, where releases up to 2026-12-05 wrote it
    whatever ``--filename`` said; :func:`record_path` puts it beside the stems) shows this track finished by this
    model and settings.

    Its stems may have been replaced since by a run that kept its record at ``done``, which never removes this
    one: they count only where each still has the sha256 the record lists. The record is then copied to ``done``,
    so that later runs find it there without reading the stems again.
    """
    record = records.read_record(legacy, storage_options)
    if not (record is not None and isinstance(record.get("stems"), dict)
            and records.is_finished(record, source, size, model_sha256, settings, stems, storage_options)):
        return False
    for name, url in stems.items():
        listed = record["stems"][name]
        if not isinstance(listed, dict) or listed.get("sha256") != _sha256(url, storage_options):
            return False
    try:
        storage.write_bytes(done, (json.dumps(record, indent=2) + "\n").encode(), storage_options)
    except (OSError, OpenUnmixLikeError):  # read here again next time
        pass
    return True


def _sha256(url: str, storage_options=None) -> str:
    if storage.is_url(url):
        return hashlib.sha256(storage.read_bytes(url, storage_options)).hexdigest()
    return records.file_sha256(Path(url))


def check_output_names(source: str, stems: Mapping[str, str]) -> None:
    """Refuse, before any work, stems whose names their file system or object store would not take: the track
    would be separated, then fail to be written. Local stems (written in place, beside partial files) meet the
    file system's limits (:func:`openunmix_like.stems.check_name_length`); an object's key, :data:`KEY_MAX`
    bytes (stems for URLs are encoded under short temporary names, then uploaded)."""
    for out in stems.values():
        if not storage.is_url(out):
            check_name_length(source, Path(out), CLI_NAMES)
            continue
        key = out.split("://", 1)[1].partition("/")[2]
        if len(key.encode("utf-8", "surrogateescape")) > KEY_MAX:
            raise OpenUnmixLikeError(f"{source}: its output {out} has an object key of "
                                     f"{len(key.encode('utf-8', 'surrogateescape'))} bytes, and object storage "
                                     f"takes at most {KEY_MAX}; give a shorter --outdir or --filename")


def make_plan(sources: Mapping[str, str], names: Sequence[str], args: argparse.Namespace, model_sha256: str,
              settings: dict, storage_options=None, named: Sequence[str] = ()) -> Plan:
    """Name every source's outputs, refuse clashes, and skip tracks whose ``_done.json`` matches this run.

    ``sources`` maps each source to its ``{folder}``.

    A source found in a folder or URL prefix (not in ``named``) that is one of this run's outputs (the
    stems of an earlier run, with ``--outdir`` the searched folder) is left out.
    """
    from ..cli.separate import clash_remedy

    plan = Plan([], [], [])
    claimed: Dict[str, str] = {}
    candidates = []
    outputs = {source: stem_outputs(source, names, args, folder) for source, folder in sources.items()}
    # Compared as places, so that stems in object storage are found as this run's outputs too.
    produced = {place(o) for stems in outputs.values() for o in stems.values()}
    earlier_outputs = produced - {place(s) for s in named}
    for source in sources:
        if place(source) in earlier_outputs:
            continue
        stems = outputs[source]
        clash = next((claimed[o] for o in stems.values() if o in claimed), None)
        if clash is not None:
            plan.failures.append((source, "plan", f"{source}: would write the same files as {clash}; "
                                                  f"{clash_remedy(args.filename)}"))
            continue
        if any(place(o) == place(source) for o in stems.values()):
            plan.failures.append((source, "plan", f"{source}: output would overwrite the input; "
                                                  "change --outdir or --filename"))
            continue
        claimed.update({o: source for o in stems.values()})
        done = storage.join(args.outdir, record_path(track_name(source), names, args, sources[source]))
        candidates.append((source, stems, done))

    def check(item):
        source, stems, done = item
        try:
            check_output_names(source, stems)
        except OpenUnmixLikeError as exc:
            return None, (source, "plan", str(exc))
        try:
            size = storage.size(source, storage_options)
        except storage.StorageError as exc:  # names the URL and what to check already
            return None, (source, "input", str(exc))
        except (OSError, OpenUnmixLikeError) as exc:
            return None, (source, "input", f"{source}: cannot read ({records.one_line(exc)}); check the path")
        track = Track(source, track_name(source), size, stems, done)
        if args.force:
            return (track, False), None
        record = records.read_record(done, storage_options)
        legacy = storage.join(args.outdir, f"{track_name(source)}/{records.DONE_NAME}")
        try:
            if record is None and legacy != done:  # none here: perhaps where earlier releases kept it
                finished = legacy_finished(legacy, done, source, size, model_sha256, settings, stems, storage_options)
            else:
                finished = records.is_finished(record, source, size, model_sha256, settings, stems, storage_options)
        except OSError:  # a stem that cannot be checked counts as missing: the track is redone
            finished = False
        return (track, finished), None

    with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:
        for result, failure in pool.map(check, candidates):
            if failure is not None:
                plan.failures.append(failure)
            else:
                track, finished = result
                (plan.skipped if finished else plan.todo).append(track)
    return plan
