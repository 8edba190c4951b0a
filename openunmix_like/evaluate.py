"""Evaluation with the SiSEC protocol: BSSEval v4 as museval computes it, oracle bounds, aggregation.

Per track and target, SDR, SIR, SAR and ISR on 1 s windows with a 1 s hop and
time-invariant distortion filters (:mod:`openunmix_like.bsseval`: museval's
scores in memory flat in the track's length; records in museval's format). A track's score is the
median over its windows (NaN windows, where the reference is silent, are
skipped); the data set's score is the median over tracks (the mean is given
too). Scores go to one museval JSON per track, so an interrupted evaluation
resumes where it stopped.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .data import (AUDIO_SUFFIXES, MOISESDB_FOUR, DatasetError, dsd100_track_dirs, hash_split, hidden,
                   medleydb_has_bleed, medleydb_metadata, medleydb_track_dirs, moisesdb_split, moisesdb_track_dirs,
                   read_stem_track, slakh_split_dir, stem_group, stem_track_sources, track_dirs)
from .errors import OpenUnmixLikeError
from .results import (BOOTSTRAP_BLOCK, MAX_RESAMPLES, METRICS, MUSDB_TARGETS, _one_line,  # noqa: F401
                      _target_order, aggregate, boxplot, check_bootstrap, closed_fraction, full_markdown,
                      markdown_table, paired_difference, paired_markdown, read_record, record_problem,
                      score_track, track_medians, write_csv)

log = logging.getLogger(__name__)

ORACLES = ("irm1", "irm2", "ibm1", "ibm2", "mwf", "mix")


@dataclasses.dataclass
class Track:
    """A mixture and its true sources, ``(nb_channels, nb_timesteps)`` tensors."""

    name: str
    rate: int
    mixture: Tensor
    references: Dict[str, Tensor]
    path: str = ""  # the track folder or file, for messages
    # The parts the mixture is the sum of, where the layout knows them (MUSDB's four sources, a folder's
    # files, slakh's and moisesdb's stems): an oracle's masks share the mixture among all of them, not only
    # among the targets it estimates.
    sources: Dict[str, Tensor] = dataclasses.field(default_factory=dict)
    # The sources a reference is the sum of, where it is not the source of its name (MUSDB's accompaniment).
    components: Dict[str, Tuple[str, ...]] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------- data


def musdb_tracks(root: str, subset: str = "test", is_wav: bool = False, split: Optional[str] = None,
                 names: Optional[Sequence[str]] = None, mixture_from_sources: bool = False,
                 skip: Optional[Callable[[str], bool]] = None,
                 on_error: Optional[Callable[[str, OpenUnmixLikeError], None]] = None) -> Iterator[Track]:
    """MUSDB18 tracks through the ``musdb`` package, with all its targets (incl. accompaniment).

    Only the ``names`` given (default all), and none for which ``skip(name)`` is true: those are not decoded.
    A track that cannot be read raises :class:`OpenUnmixLikeError`, or with ``on_error`` is passed to
    ``on_error(name, error)`` and left out, so that a batch goes on with the next track.

    The input is the data set's mixture, or with ``mixture_from_sources`` the
    sum of its sources (the stem files' own mixture of MUSDB18 is encoded
    separately and differs slightly from that sum).
    """
    try:
        import musdb
    except ImportError as exc:
        raise OpenUnmixLikeError("MUSDB18 evaluation needs the musdb package: "
                                 "pip install 'openunmix-like[evaluate]'") from exc
    if split and subset != "train":
        raise OpenUnmixLikeError(f"--split {split}: splits exist only in the train subset; add --subset train")
    db = musdb.DB(root=root, subsets=subset, is_wav=is_wav, split=split)
    where = f"subset {subset!r}{f', split {split!r}' if split else ''}"
    if not db.tracks:
        raise OpenUnmixLikeError(f"{root}: no MUSDB18 tracks in {where}")
    _check_names(names, [track.name for track in db.tracks], f"{root}, {where}")
    for track in db.tracks:
        if (names and track.name not in names) or (skip and skip(track.name)):
            continue
        try:
            yield _musdb_track(track, mixture_from_sources)
        except OpenUnmixLikeError as exc:
            _failed(track.name, exc, on_error)


def _musdb_track(track, mixture_from_sources: bool) -> Track:
    # One decode of every stream (musdb decodes again on each ``.audio``); targets are
    # summed from these as musdb sums them (gain times source, in its order).
    try:
        stems = track.stems
    except Exception as exc:  # musdb and stempeg raise untyped errors for a file ffmpeg cannot read
        raise OpenUnmixLikeError(f"{track.path}: cannot decode it ({type(exc).__name__}: {_one_line(exc)}); "
                                 "re-download or re-encode the track") from exc
    sources = {name: stems[source.stem_id] for name, source in track.sources.items()}
    refs = {name: _tensor(np.sum(np.array([s.gain * sources[s.name] for s in target.sources]), axis=0))
            for name, target in track.targets.items() if name != "linear_mixture"}
    mixture = sum(sources.values()) if mixture_from_sources else stems[0]
    components = {name: tuple(s.name for s in target.sources) for name, target in track.targets.items()
                  if name != "linear_mixture"}
    # A source that is also a reference (vocals, ...) shares its tensor: a long track is held once.
    plain = {name for name, target in track.targets.items()
             if [(s.name, s.gain) for s in target.sources] == [(name, 1)]}
    held = {name: refs[name] if name in plain else _tensor(a) for name, a in sources.items()}
    return Track(track.name, int(track.rate), _tensor(mixture), refs, str(track.path), sources=held,
                 components=components)


def folder_tracks(root: str, names: Optional[Sequence[str]] = None,
                  skip: Optional[Callable[[str], bool]] = None,
                  on_error: Optional[Callable[[str, OpenUnmixLikeError], None]] = None) -> Iterator[Track]:
    """``<root>/<track>/{mixture?, <source>...}.wav``; without a mixture file, the sum of the sources.
    ``names``, ``skip`` and ``on_error`` choose tracks and report bad ones as in :func:`musdb_tracks`;
    see :func:`folder_track` for what makes a track bad."""
    folders = track_dirs(Path(root)) if Path(root).is_dir() else []
    if not folders:
        raise OpenUnmixLikeError(f"{root}: no track folders (<root>/<track>/<source>.wav)")
    _check_names(names, [folder.name for folder in folders], root)
    files = {folder: _source_files(folder) for folder in folders}
    expected = {}  # every source some track folder has -> its file name there
    for found in files.values():
        for stem, path in found.items():
            expected.setdefault(stem, path.name)
    for folder in folders:
        if (names and folder.name not in names) or (skip and skip(folder.name)):
            continue
        try:
            missing = sorted(stem for stem in expected if stem not in files[folder])
            if files[folder] and missing:  # its scores and its oracles' masks would leave that source out
                raise OpenUnmixLikeError(
                    f"{folder / expected[missing[0]]}: missing (the other track folders have it); add it, all "
                    f"zeros if the track has no {missing[0]}, or leave the track out with --tracks")
            track = folder_track(folder)
        except OpenUnmixLikeError as exc:
            _failed(folder.name, exc, on_error)
            continue
        if track is not None:
            yield track
        else:
            log.warning("%s: no source files (%s); not a track, skipped", folder,
                        ", ".join(suffix[1:] for suffix in AUDIO_SUFFIXES))


def _audio_files(folder: Path) -> List[Path]:
    """The audio files of a track folder (the mixture's too), without hidden ones: any format training reads."""
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES and not hidden(path, folder))


def _source_files(folder: Path) -> Dict[str, Path]:
    """The source files of a track folder (not the mixture), by source name."""
    return {path.stem: path for path in _audio_files(folder) if path.stem != "mixture"}


def folder_track(folder: Path) -> Optional[Track]:
    """The track in ``folder`` (``None`` when it holds no source file).

    Raises:
        AudioError: a file that cannot be read.
        OpenUnmixLikeError: files of different sample rates, channel counts or lengths (the
            scores would compare unrelated samples), naming the file that differs from the others.
    """
    from .audio import load

    files = _audio_files(folder)
    for stem, count in collections.Counter(path.stem for path in files).items():
        if count > 1:
            raise OpenUnmixLikeError(f"{' and '.join(str(p) for p in files if p.stem == stem)}: one "
                                     f"{stem} file in a track folder, not {count}; keep one")
    if not any(path.stem != "mixture" for path in files):
        return None
    audio = {path: load(path) for path in files}
    _check_same(folder, {p: rate for p, (_, rate) in audio.items()}, "{} Hz", "resample it to {} Hz")
    _check_same(folder, {p: a.shape[0] for p, (a, _) in audio.items()}, "{} channel(s)", "convert it to {} channel(s)")
    _check_same(folder, {p: a.shape[-1] for p, (a, _) in audio.items()}, "{} samples",
                "re-export it with {} samples, as long as the others", tolerance=LENGTH_SLACK)
    # Lengths within the slack (exports that round differently): all cut to the shortest.
    shortest = min(a.shape[-1] for a, _ in audio.values())
    audio = {p: (a[..., :shortest], rate) for p, (a, rate) in audio.items()}
    refs = {p.stem: a for p, (a, _) in audio.items() if p.stem != "mixture"}
    mixture = next((a for p, (a, _) in audio.items() if p.stem == "mixture"), None)
    if mixture is None:
        mixture = torch.stack(list(refs.values())).sum(0)
    return Track(folder.name, int(next(iter(audio.values()))[1]), mixture, refs, str(folder), sources=dict(refs))


# Length differences within a track folder taken for rounding: 1 % or 4,608 samples, whichever is more.
LENGTH_SLACK = (0.01, 4608)


def _check_same(folder: Path, values: Dict[Path, int], unit: str, fix: str,
                tolerance: Tuple[float, int] = (0.0, 0)) -> None:
    """Raise naming the first file whose value differs from the most common one (on a tie, the first
    file's) by more than ``tolerance`` (a share of the usual value, or an amount, whichever is more)."""
    listed = list(values.values())
    counts = collections.Counter(listed)
    usual = max(counts, key=lambda v: (counts[v], -listed.index(v)))
    slack = max(tolerance[0] * usual, tolerance[1])
    for path, value in values.items():
        if abs(value - usual) > slack:
            raise OpenUnmixLikeError(f"{path}: {unit.format(value)}, the other files of track {folder.name} have "
                                     f"{unit.format(usual)}; {fix.format(usual)}")


def slakh_tracks(root: str, split: str = "valid", targets: Sequence[str] = (), residual: Optional[str] = None,
                 names: Optional[Sequence[str]] = None, skip: Optional[Callable[[str], bool]] = None,
                 on_error: Optional[Callable[[str, OpenUnmixLikeError], None]] = None) -> Iterator[Track]:
    """The Slakh2100 tracks of one folder, ``split`` ``valid`` (``validation/``), ``test`` or ``train``.

    Each track's stems are summed per instrument class as training sums them (``drums``: the
    ``is_drum`` stems; unrendered stems skipped); the mixture is the sum of every rendered stem
    (``mix.flac`` is not read). See :func:`stem_tracks` for ``targets``, ``residual``, ``names``,
    ``skip`` and ``on_error``.
    """
    try:
        import yaml  # noqa: F401 - checked once here, used for every track
    except ImportError as exc:
        raise OpenUnmixLikeError("Slakh2100 evaluation reads metadata.yaml with PyYAML: "
                                 "pip install 'openunmix-like[slakh]'") from exc
    folder = _dataset(slakh_split_dir, root, split)
    # Track folders: those with metadata (and those named as Slakh names them, so that one missing it is
    # reported); anything else there (.ipynb_checkpoints, notes) is not a track.
    tracks = sorted(d for d in folder.iterdir() if d.is_dir() and ((d / "metadata.yaml").is_file()
                                                                    or d.name.startswith("Track")))
    return stem_tracks("slakh", tracks, str(folder), targets, residual, names=names, skip=skip, on_error=on_error)


def moisesdb_tracks(root: str, split: Optional[str] = "valid", valid_tracks: Optional[int] = None,
                    stem_grouping: str = "four", targets: Sequence[str] = (), residual: Optional[str] = None,
                    names: Optional[Sequence[str]] = None, skip: Optional[Callable[[str], bool]] = None,
                    on_error: Optional[Callable[[str, OpenUnmixLikeError], None]] = None) -> Iterator[Track]:
    """MoisesDB tracks: ``split`` ``valid``, the validation tracks of the split training makes
    (:func:`~openunmix_like.data.moisesdb_split` with the same ``valid_tracks``), ``train`` the others,
    ``None`` every track.

    Each stem is the sum of its files; ``stem_grouping`` groups stems as training does
    (``four``: vocals, bass, drums and other, the rest). See :func:`stem_tracks` for the other arguments.
    """
    folders = _dataset(moisesdb_track_dirs, root)
    where = f"{root} ({len(folders)} track(s))"
    if split is not None:
        train, valid = _dataset(moisesdb_split, folders, valid_tracks)
        folders = valid if split == "valid" else train
        where = f"{root} (the {len(folders)} {'validation' if split == 'valid' else 'training'} track(s) of its split)"
    return stem_tracks("moisesdb", folders, where, targets, residual, stem_grouping, names, skip, on_error)


def medleydb_tracks(root: str, split: Optional[str] = "valid", valid_tracks: Optional[int] = None,
                    stem_grouping: str = "four", include_bleed: bool = False, targets: Sequence[str] = (),
                    residual: Optional[str] = None, names: Optional[Sequence[str]] = None,
                    skip: Optional[Callable[[str], bool]] = None,
                    on_error: Optional[Callable[[str, OpenUnmixLikeError], None]] = None) -> Iterator[Track]:
    """MedleyDB tracks: ``split`` ``valid``, the validation tracks of the split training makes
    (:func:`~openunmix_like.data.hash_split` with the same ``valid_tracks``), ``train`` the others, ``None``
    every track; those whose metadata says ``has_bleed: 'yes'`` are left out unless ``include_bleed``, as
    training leaves them out.

    Each stem is keyed by its instrument label; ``stem_grouping`` groups them as training does (``four``:
    vocals, drums, bass and other, the rest). The mixture is the sum of the stems (``_MIX.wav`` is not read).
    See :func:`stem_tracks` for the other arguments.
    """
    try:
        import yaml  # noqa: F401 - checked once here, used for every track
    except ImportError as exc:
        raise OpenUnmixLikeError("MedleyDB evaluation reads <TrackName>_METADATA.yaml with PyYAML: "
                                 "pip install 'openunmix-like[medleydb]'") from exc
    folders = _dataset(medleydb_track_dirs, root)
    chosen = f"{len(folders)} track(s)"
    if split is not None:
        train, valid = _dataset(hash_split, folders, valid_tracks, "MedleyDB")
        folders = valid if split == "valid" else train
        chosen = f"the {len(folders)} {'validation' if split == 'valid' else 'training'} track(s) of its split"
    if not include_bleed:  # a track whose metadata cannot be read stays, to be reported when it is scored
        kept = [f for f in folders if not _has_bleed(f)]
        bled = len(folders) - len(kept)
        folders = kept
        chosen += f"; {bled} with has_bleed: yes left out, which --include-bleed scores" if bled else ""
    return stem_tracks("medleydb", folders, f"{root} ({chosen})", targets, residual, stem_grouping, names, skip,
                       on_error)


def _has_bleed(folder: Path) -> bool:
    read = medleydb_metadata(folder, [])
    return read is not None and medleydb_has_bleed(read[1])


def dsd100_tracks(root: str, split: str = "test", valid_tracks: Optional[int] = None, targets: Sequence[str] = (),
                  residual: Optional[str] = None, names: Optional[Sequence[str]] = None,
                  skip: Optional[Callable[[str], bool]] = None,
                  on_error: Optional[Callable[[str, OpenUnmixLikeError], None]] = None) -> Iterator[Track]:
    """DSD100 tracks: ``split`` ``test``, ``Sources/Test`` (the data set's test set); ``valid``, the validation
    tracks of the split training makes of ``Sources/Dev`` (:func:`~openunmix_like.data.hash_split` with the
    same ``valid_tracks``); ``train`` the other ``Sources/Dev`` tracks.

    The references are the four source files; the mixture is their sum (DSD100's ``mixture.wav`` is that sum,
    and ``Mixtures/`` is not read). See :func:`stem_tracks` for the other arguments.
    """
    if split == "test":
        folders = _dataset(dsd100_track_dirs, root, "Test")
        where = str(Path(root) / "Sources" / "Test")
    else:
        train, valid = _dataset(hash_split, _dataset(dsd100_track_dirs, root, "Dev"), valid_tracks,
                                "DSD100's Sources/Dev")
        folders = valid if split == "valid" else train
        where = (f"{root} (the {len(folders)} {'validation' if split == 'valid' else 'training'} track(s) of its "
                 "split of Sources/Dev)")
    return stem_tracks("dsd100", folders, where, targets, residual, names=names, skip=skip, on_error=on_error)


def stem_tracks(layout: str, folders: Sequence[Path], where: str, targets: Sequence[str] = (),
                residual: Optional[str] = None, stem_grouping: str = "all", names: Optional[Sequence[str]] = None,
                skip: Optional[Callable[[str], bool]] = None,
                on_error: Optional[Callable[[str, OpenUnmixLikeError], None]] = None) -> Iterator[Track]:
    """Tracks of a metadata layout (``slakh``, ``moisesdb``, ``medleydb``, ``dsd100``) from their track folders.

    The references are the sums of each group of stems (every group of the track, so that an oracle
    shares the mixture among them all); a target the track lacks is a silent reference. With a
    ``residual`` name, the stems of no target are summed into that one reference instead. The mixture
    is the sum of every stem. ``names``, ``skip`` and ``on_error`` choose tracks and report bad ones as in
    :func:`musdb_tracks`; a name not among ``folders`` raises.

    Every chosen track's metadata is read before any audio: a target that none of them holds raises
    :class:`OpenUnmixLikeError` (naming ``where``) before anything is scored.
    """
    _check_names(names, [f.name for f in folders], where)
    parsed = []
    for folder in folders:
        if names and folder.name not in names:
            continue
        try:
            parsed.append((folder, _stem_sources(layout, folder)))
        except OpenUnmixLikeError as exc:
            if not (skip and skip(folder.name)):  # a track scored before is not reported
                _failed(folder.name, exc, on_error)
    _check_targets(targets, {stem_group(k, stem_grouping, layout) for _, sources in parsed for k, _ in sources},
                   where, stem_grouping if layout in GROUPED_LAYOUTS else None, bool(names))
    for folder, sources in parsed:
        if skip and skip(folder.name):
            continue
        try:
            yield _stem_track(folder, sources, targets, residual, stem_grouping, layout)
        except OpenUnmixLikeError as exc:
            _failed(folder.name, exc, on_error)


def _stem_sources(layout: str, folder: Path):
    try:
        return stem_track_sources(layout, folder)
    except DatasetError as exc:
        raise OpenUnmixLikeError(f"{exc}; repair or re-download that track") from None


def _check_targets(targets: Sequence[str], found: set, where: str, stem_grouping: Optional[str],
                   chosen: bool) -> None:
    """Refuse a target no track holds (every score of it would be NaN), saying what the tracks hold."""
    missing = [t for t in targets if t not in found]
    if not missing or not found:  # nothing found: every track failed, and was reported
        return
    if stem_grouping == "four" and missing[0] not in MOISESDB_FOUR:
        hint = (f"with --stem-grouping four the stems are {', '.join(MOISESDB_FOUR)} (other: all but the first "
                "three); add --stem-grouping all to score other stems")
    else:
        kept = [t for t in targets if t not in missing]
        hint = (f"score the others alone with --targets {' '.join(kept)}" if kept
                else "score a model trained on these stems, or an oracle with --targets")
    raise OpenUnmixLikeError(f"{where}: no{' chosen' if chosen else ''} track holds a {missing[0]!r} stem; the "
                             f"stems found are {', '.join(sorted(found))}; {hint}")


def _stem_track(folder: Path, sources, targets: Sequence[str], residual: Optional[str], stem_grouping: str,
                layout: str = "moisesdb") -> Track:
    def group(key: str) -> str:
        name = stem_group(key, stem_grouping, layout)
        return name if not residual or name in targets else residual

    rate = next(f for _, files in sources for f in files).sample_rate  # others are resampled to it, as in training
    try:
        mixture, parts = read_stem_track(sources, rate, STEM_CHANNELS, group)
    except DatasetError as exc:
        raise OpenUnmixLikeError(f"{exc}; repair or re-download that track") from None
    parts = {name: parts[name] for name in sorted(parts, key=_target_order)}
    references = dict(parts)
    for target in [*targets, *([residual] if residual else [])]:
        references.setdefault(target, torch.zeros_like(mixture))
    return Track(folder.name, int(rate), mixture, references, str(folder), sources=parts)


# Channels the stems are read with, as training reads them (Slakh's mono stems as two equal channels).
STEM_CHANNELS = 2
# The layouts whose stems --stem-grouping groups.
GROUPED_LAYOUTS = ("moisesdb", "medleydb")


def _dataset(function, *args):
    """``function(*args)``, its :class:`~openunmix_like.data.DatasetError` as an :class:`OpenUnmixLikeError`."""
    try:
        return function(*args)
    except DatasetError as exc:
        raise OpenUnmixLikeError(str(exc)) from None


def _check_names(names: Optional[Sequence[str]], found: Sequence[str], where: str) -> None:
    """Refuse a ``--tracks`` name that is none of the tracks ``found`` (a typo would leave its track out unsaid)."""
    unknown = sorted(set(names or ()) - set(found))
    if unknown:
        raise OpenUnmixLikeError(f"--tracks {unknown[0]}: no such track in {where}; give track names from there")


def _failed(name: str, exc: OpenUnmixLikeError, on_error) -> None:
    if on_error is None:
        raise exc
    on_error(name, exc)


def _tensor(audio: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(audio, dtype=np.float32).T))


# ---------------------------------------------------------------- oracles


def oracle(method: str, track: Track, targets: Sequence[str], n_fft: int = 4096, n_hop: int = 1024,
           eps: float = 1e-10) -> Dict[str, Tensor]:
    """Oracle estimates from the true sources (SiSEC 2018 definitions).

    ``irm1``/``irm2``: ratio masks ``|S_j|^a / sum_k |S_k|^a`` (a = 1, 2) over the
    sources; ``ibm1``/``ibm2``: binary masks, 1 where ``|S_j|^a / |X|^a >= 0.5``;
    ``mwf``: the multichannel Wiener filter with each source's power spectral
    density and spatial covariance (over the whole track) taken from the truth;
    ``mix``: the mixture as every estimate. Masks apply to the mixture STFT.

    The sources ``S_k`` are the parts of the track's mixture (``track.sources``), whatever the targets
    estimated: ``irm2`` of vocals alone is the vocals' share of the whole mixture. A target made of
    several sources (MUSDB's accompaniment) is the sum of their estimates, as in SiSEC 2018's reference
    code (sigsep-mus-oracle), so targets may overlap (drums beside accompaniment). A target the track
    cannot express in its sources is a source of its own, sharing the mixture with the sources no
    other target is made of.

    The STFTs are taken, masked and inverted a block of frames at a time (``mwf`` reads the track
    twice: its covariances first), so the memory beyond the estimates does not grow with the track.
    """
    if method not in ORACLES:
        raise OpenUnmixLikeError(f"--oracle {method!r}: choose from {', '.join(ORACLES)}")
    if method == "mix":
        return {t: track.mixture.clone() for t in targets}
    made_of = _made_of(track, targets)
    if made_of is None:
        covered = {k for t in targets for k in track.components.get(t, (t,))}
        parts = {**{t: track.references[t] for t in targets},
                 **{k: a for k, a in track.sources.items() if k not in covered}}
        made_of = {t: (t,) for t in targets}
    else:
        parts = track.sources
    frames = _Frames(track.mixture.shape[-1], n_fft, n_hop, track.name)
    inverses = {t: _OverlapAdd(frames, track.mixture.shape[0]) for t in targets if made_of[t]}
    if method == "mwf":
        _mwf(frames, track.mixture, parts, made_of, inverses, eps)
    else:
        alpha = 1.0 if method.endswith("1") else 2.0
        wanted = {k for t in targets for k in made_of[t]}
        for a, b in frames.blocks():
            x = frames.spectrum(track.mixture, a, b)
            powers = {}
            if method.startswith("irm"):
                total = None
                for k in parts:
                    power = frames.spectrum(parts[k], a, b).abs() ** alpha
                    total = power.clone() if total is None else total.add_(power)
                    if k in wanted:
                        powers[k] = power
                total += eps
            else:
                total = eps + x.abs() ** alpha
                powers = {k: frames.spectrum(parts[k], a, b).abs() ** alpha for k in wanted}
            for t, inverse in inverses.items():  # the sum of a target's sources' estimates (the inverse is linear)
                estimate = torch.zeros_like(x)
                for k in made_of[t]:
                    mask = powers[k] / total
                    if method.startswith("ibm"):
                        mask = (mask >= 0.5).double()
                    estimate += mask * x
                inverse.add(estimate, a, b)
    return {t: inverses[t].out if t in inverses else torch.zeros_like(track.mixture) for t in targets}


def _mwf(frames: _Frames, mixture: Tensor, parts: Mapping[str, Tensor], made_of: Mapping[str, Tuple[str, ...]],
         inverses: Mapping[str, _OverlapAdd], eps: float) -> None:
    """The oracle multichannel Wiener filter (one EM step from the true sources, as
    :func:`openunmix_like.filtering.expectation_maximization` takes it): the spatial covariances
    summed over the whole track first, then each block filtered with them."""
    from .filtering import invert_hermitian

    names = list(parts)

    def sources(a: int, b: int) -> Tensor:  # (frames, bins, channels, sources), EM's layout
        return torch.stack([frames.spectrum(parts[k], a, b).permute(2, 1, 0) for k in names], dim=-1)

    weight, r = None, None
    for a, b in frames.blocks():
        y = sources(a, b)
        v = (y.real.square() + y.imag.square()).mean(dim=2).sum(dim=0)  # (bins, sources)
        yy = torch.einsum("tfcj,tfdj->fcdj", y, y.conj())
        weight, r = (v, yy) if r is None else (weight.add_(v), r.add_(yy))
    r /= (eps + weight)[:, None, None, :]
    regularization = eps ** 0.5 * torch.eye(mixture.shape[0], dtype=torch.complex128)
    for a, b in frames.blocks():
        y = sources(a, b)
        v = (y.real.square() + y.imag.square()).mean(dim=2).to(y.dtype)  # (frames, bins, sources)
        x = frames.spectrum(mixture, a, b).permute(2, 1, 0)
        cxx = torch.einsum("tfj,fcdj->tfcd", v, r) + regularization
        z = torch.einsum("tfcd,tfd->tfc", invert_hermitian(cxx, eps), x)
        filtered = v[:, :, None, :] * torch.einsum("fcej,tfe->tfcj", r, z)  # (frames, bins, channels, sources)
        for t, inverse in inverses.items():
            estimate = filtered[..., [names.index(k) for k in made_of[t]]].sum(dim=-1)
            inverse.add(estimate.permute(2, 1, 0), a, b)


class _Frames:
    """The frames of the centred, reflect-padded STFT (periodic Hann window) of a track's signals, in
    float64, a block of frames at a time: equal to :class:`~openunmix_like.transforms.STFT` of the whole
    signal, without holding it."""

    block = 256  # frames (6 s at 44.1 kHz and a hop of 1024)

    def __init__(self, nb_samples: int, n_fft: int, n_hop: int, name: str):
        if nb_samples <= n_fft // 2:
            raise OpenUnmixLikeError(f"{name}: {nb_samples} samples is too short for an oracle with --nfft {n_fft} "
                                     f"(it needs more than {n_fft // 2}); use a smaller --nfft")
        self.n, self.n_fft, self.n_hop = nb_samples, n_fft, n_hop
        self.pad = n_fft // 2
        self.nb_frames = nb_samples // n_hop + 1
        self.window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)

    def blocks(self) -> Iterator[Tuple[int, int]]:
        for a in range(0, self.nb_frames, self.block):
            yield a, min(a + self.block, self.nb_frames)

    def spectrum(self, audio: Tensor, a: int, b: int) -> Tensor:
        """Complex ``(channels, bins, b - a)``: frames ``a`` to ``b`` of ``audio`` ``(channels, samples)``."""
        # Positions in the padded signal, mapped back into the signal as reflect padding does.
        positions = (torch.arange(a * self.n_hop, (b - 1) * self.n_hop + self.n_fft) - self.pad).abs()
        positions = torch.where(positions >= self.n, 2 * (self.n - 1) - positions, positions)
        frames = audio[:, positions].double().unfold(-1, self.n_fft, self.n_hop)  # (channels, b - a, n_fft)
        return torch.fft.rfft(frames * self.window).transpose(1, 2)


class _OverlapAdd:
    """The inverse of :class:`_Frames`, a block at a time, into a float32 ``(channels, samples)`` output
    (``out``): the samples before a block's last ``n_fft - n_hop`` are final once it is added, so only
    one block's span is held in float64."""

    def __init__(self, frames: _Frames, nb_channels: int):
        self.frames = frames
        self.out = torch.zeros((nb_channels, frames.n), dtype=torch.float32)
        self.tail = torch.zeros((nb_channels, max(frames.n_fft - frames.n_hop, 0)), dtype=torch.float64)

    def add(self, spec: Tensor, a: int, b: int) -> None:
        """Add frames ``a`` to ``b`` (complex ``(channels, bins, b - a)``); blocks come in order."""
        f = self.frames
        pieces = torch.fft.irfft(spec.transpose(1, 2), n=f.n_fft) * f.window  # (channels, b - a, n_fft)
        span = torch.zeros((pieces.shape[0], (b - a - 1) * f.n_hop + f.n_fft), dtype=torch.float64)
        span[:, : self.tail.shape[1]] += self.tail
        square = f.window.square()
        envelope = torch.zeros(span.shape[1], dtype=torch.float64)
        for t in range(b - a):
            span[:, t * f.n_hop : t * f.n_hop + f.n_fft] += pieces[:, t]
        # Every frame that reaches into the span, earlier blocks' included, adds its window's square.
        for t in range(max(a - (f.n_fft - 1) // f.n_hop, 0), b):
            lo = t * f.n_hop - a * f.n_hop
            envelope[max(lo, 0) : lo + f.n_fft] += square[max(-lo, 0) :]
        final = span.shape[1] if b == f.nb_frames else (b - a) * f.n_hop
        self.tail = span[:, final:].clone()
        start = a * f.n_hop - f.pad  # the span's first sample in the signal
        lo, hi = max(start, 0), min(start + final, f.n)
        if hi > lo:
            self.out[:, lo:hi] = (span[:, lo - start : hi - start] / envelope[lo - start : hi - start].clamp_min(1e-11))


def _made_of(track: Track, targets: Sequence[str]) -> Optional[Dict[str, Tuple[str, ...]]]:
    """Each target's sources in ``track.sources`` (none for a silent reference the track lacks), or None
    where a target is not the sum of some of them."""
    made_of = {}
    for t in targets:
        parts = track.components.get(t, (t,))
        if all(k in track.sources for k in parts):
            made_of[t] = tuple(parts)
        elif t not in track.sources and t in track.references and not track.references[t].any():
            made_of[t] = ()
        else:
            return None
    return made_of


# ---------------------------------------------------------------- scoring


def estimates_fn_for(separator, segment: Optional[float] = 30.0,
                     overlap: float = 2.0) -> Callable[[Track], Dict[str, Tensor]]:
    """Separate a track with a separator (segment-wise, any rate)."""
    from .inference import separate_tensor

    def run(track: Track) -> Dict[str, Tensor]:
        est = separate_tensor(separator, track.mixture, track.rate, segment, overlap)
        return {name: est[j] for j, name in enumerate(separator.target_names)}

    return run
