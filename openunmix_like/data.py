"""Training datasets: the nine layouts of the training guide.

Every dataset yields ``(mixture, target)`` pairs of float32 tensors
``(nb_channels, nb_timesteps)`` at ``sample_rate``. Folder datasets read
``<root>/train`` and ``<root>/valid``. Files are scanned once when a dataset is
built: unreadable files, tracks shorter than the excerpt length and missing
targets are reported once, with their paths, and left out (or, with
``silence_missing_targets``, given a silent target) instead of failing later.

Excerpts are read with soundfile, frame-exactly, without decoding whole files
(wav, flac, ogg and mp3 all seek). Randomness comes from a ``random.Random``
derived from ``(seed, epoch, index)``: the same item is the same whatever the
number of data-loader workers, and :meth:`set_epoch` gives new draws per epoch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import operator
import random
import re
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .audio import conform_channels, sf_path
from .augment import Compose
from .choices import STEM_GROUPINGS
from .errors import OpenUnmixLikeError

log = logging.getLogger("openunmix_like.data")
Pair = Tuple[Tensor, Tensor]
MUSDB_SOURCES = ("vocals", "drums", "bass", "other")
# Targets built from several MUSDB sources.
MUSDB_GROUPS = {"accompaniment": ("drums", "bass", "other")}


class DatasetError(OpenUnmixLikeError, ValueError):
    """A dataset folder cannot be used (names the folder and what is missing). An ``OpenUnmixLikeError``, as every
    error a user's files cause, so that a program catching those catches it; a ``ValueError`` as before."""


@dataclasses.dataclass(frozen=True)
class AudioFile:
    path: Path
    nb_frames: int
    sample_rate: int
    nb_channels: int

    def duration(self) -> float:
        return self.nb_frames / self.sample_rate


def scan(path: Path, problems: List[str]) -> Optional[AudioFile]:
    """Describe an audio file, or record why it cannot be used."""
    import soundfile as sf

    try:
        info = sf.info(sf_path(path))  # bytes: a name that is not UTF-8 opens too
    except Exception as exc:  # noqa: BLE001 - any libsndfile failure means "unusable"
        problems.append(f"{path}: unreadable ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc})")
        return None
    if info.frames <= 0:
        problems.append(f"{path}: no audio samples")
        return None
    return AudioFile(path, int(info.frames), int(info.samplerate), int(info.channels))


def report(problems: List[str], what: str) -> None:
    """Report collected problems once."""
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        log.warning("%s: %d file(s) or track(s) left out:\n  %s%s", what, len(problems), shown, more)


def none_usable(where: Path, what: str, problems: List[str]) -> DatasetError:
    """The error for a data set left with nothing: the first reason, and what to do."""
    if not problems:
        return DatasetError(f"{where}: no {what}")
    more = f" (and {len(problems) - 1} more, listed above)" if len(problems) > 1 else ""
    hint = ("; lower --seq-dur or give longer files" if any("shorter than --seq-dur" in p for p in problems)
            else "; fix or replace the files")
    return DatasetError(f"{where}: no usable {what}: {problems[0]}{more}{hint}")


def read_excerpt(file: AudioFile, start: float, duration: Optional[float], sample_rate: int,
                 nb_channels: int) -> Tensor:
    """Read ``duration`` seconds from ``start`` (whole file if ``None``) at ``sample_rate``.

    Returns exactly ``round(duration * sample_rate)`` samples (zero-padded past the end).
    """
    import soundfile as sf

    first = int(round(start * file.sample_rate))
    frames = -1 if duration is None else int(round(duration * file.sample_rate))
    try:
        data, _ = sf.read(sf_path(file.path), start=first, frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise RuntimeError(f"{file.path}: cannot decode ({str(exc).strip()})") from exc
    if not np.isfinite(data).all():
        raise RuntimeError(f"{file.path}: NaN or infinite samples")
    audio = torch.from_numpy(np.ascontiguousarray(data.T))
    if file.sample_rate != sample_rate:
        from .audio import resample

        audio = resample(audio, file.sample_rate, sample_rate)
    if duration is not None:
        n = int(round(duration * sample_rate))
        audio = torch.nn.functional.pad(audio, (0, max(0, n - audio.shape[-1])))[:, :n]
    return conform_channels(audio, nb_channels)


class Preloaded:
    """Decoded audio of a data set's files, held on a device, with :func:`read_excerpt`'s arithmetic.

    Args:
        files: the files to decode.
        sample_rate, nb_channels: what every file is converted to once.
        device: where the decoded audio lives.
    """

    def __init__(self, files: Sequence[AudioFile], sample_rate: int, nb_channels: int,
                 device: Union[str, torch.device] = "cpu"):
        self.sample_rate = int(sample_rate)
        # Paths that lead to one file (a track folder linked several times) share its decoded audio.
        decoded: Dict[Path, Tensor] = {}
        self.audio: Dict[Path, Tensor] = {}
        for f in files:
            real = f.path.resolve()
            if real not in decoded:
                try:
                    decoded[real] = read_excerpt(f, 0.0, None, self.sample_rate, nb_channels).to(device)
                except RuntimeError as exc:  # read_excerpt's errors name the file
                    raise DatasetError(f"{exc}; preloading needs every file readable: fix or remove it, or "
                                       "train with --preload off (which skips such samples)") from None
            self.audio[f.path] = decoded[real]

    @staticmethod
    def size(file: AudioFile, sample_rate: int, nb_channels: int) -> int:
        return 4 * nb_channels * int(round(file.nb_frames * sample_rate / file.sample_rate))

    def excerpt(self, file: AudioFile, start: float, duration: Optional[float]) -> Tensor:
        """As :func:`read_excerpt`: ``round(duration * sample_rate)`` samples, zero-padded past the end."""
        audio = self.audio[file.path]
        if duration is None:
            return audio
        first = int(round(start * self.sample_rate))
        n = int(round(duration * self.sample_rate))
        out = audio[:, first : first + n]
        return torch.nn.functional.pad(out, (0, n - out.shape[-1])) if out.shape[-1] < n else out


class _Base(torch.utils.data.Dataset):
    """Shared settings: excerpt length, rate, channels, augmentations, seeded randomness."""

    def __init__(self, seq_duration: Optional[float], sample_rate: int, nb_channels: int,
                 source_augmentations: Optional[Callable] = None, random_chunks: bool = True, seed: int = 42):
        self.seq_duration = seq_duration if seq_duration and seq_duration > 0 else None
        self.sample_rate = int(sample_rate)
        self.nb_channels = nb_channels
        self.source_augmentations = source_augmentations or Compose()
        self.random_chunks = random_chunks
        self.seed = seed
        self.epoch = 0
        self._reported: set = set()
        self.preloaded: Optional[Preloaded] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> Pair:
        """The item, or, when one of its files fails to decode, the next readable one.

        Indices work as for a sequence: ``-1`` is the last item, and an index
        outside ``[-len, len)`` raises :class:`IndexError` (which ends a plain
        ``for`` loop over the data set). A file that fails is reported once (per
        process) and the run goes on with the following items, wrapping round
        within the data set.
        """
        size = len(self)
        index = operator.index(index)
        if not -size <= index < size:
            raise IndexError(f"index {index} is out of range for a data set of {size} items")
        index %= size
        for attempt in range(min(size, 20)):
            try:
                return self._item((index + attempt) % size)
            except (RuntimeError, OSError, ValueError) as exc:  # libsndfile errors are RuntimeErrors
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if message not in self._reported:
                    self._reported.add(message)
                    log.warning("skipping a sample: %s", message)
        raise DatasetError(f"20 samples in a row failed to load (last: {message}); check the data set files")

    def _item(self, index: int) -> Pair:
        raise NotImplementedError

    def rng(self, index: int) -> random.Random:
        return random.Random((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)

    def start_in(self, duration: float, rng: random.Random) -> float:
        """Excerpt start within ``duration`` seconds: random, or 0 when chunks are fixed."""
        if self.seq_duration is None or not self.random_chunks:
            return 0.0
        return rng.uniform(0, max(0.0, duration - self.seq_duration))

    def excerpt(self, file: AudioFile, start: float) -> Tensor:
        """``seq_duration`` seconds of ``file`` from ``start`` (the whole file if ``None``) at the data
        set's rate and channels: sliced from memory once :meth:`preload` ran, else decoded from the file."""
        if self.preloaded is not None:
            return self.preloaded.excerpt(file, start, self.seq_duration)
        return read_excerpt(file, start, self.seq_duration, self.sample_rate, self.nb_channels)

    def load_source(self, file: AudioFile, start: float, rng: Optional[random.Random]) -> Tensor:
        audio = self.excerpt(file, start)
        return self.source_augmentations(audio, rng) if rng is not None else audio

    def audio_files(self) -> List[AudioFile]:
        """Every audio file the data set draws from (each once)."""
        found: Dict[Path, AudioFile] = {}

        def walk(value) -> None:
            if isinstance(value, AudioFile):
                found.setdefault(value.path, value)
            elif isinstance(value, dict):
                for v in value.values():
                    walk(v)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    walk(v)

        for name, value in vars(self).items():
            if name != "preloaded":
                walk(value)
        return list(found.values())

    def preload_bytes(self) -> int:
        """Memory the decoded audio takes once preloaded (float32 at the data set's rate and channels)."""
        unique = {f.path.resolve(): f for f in self.audio_files()}  # linked copies are held once
        return sum(Preloaded.size(f, self.sample_rate, self.nb_channels) for f in unique.values())

    def preload(self, device: Union[str, torch.device] = "cpu") -> None:
        """Decode every file once and keep it on ``device``: excerpts are then slices of memory
        (on a GPU, the items come out on the GPU). The draws stay those of ``(seed, epoch, index)``,
        so the items are the same as without preloading (exactly for files at the data set's rate)."""
        self.preloaded = Preloaded(self.audio_files(), self.sample_rate, self.nb_channels, device)

    def too_short(self, file: AudioFile) -> bool:
        return self.seq_duration is not None and file.duration() < self.seq_duration

    # Whether the input statistics may read whole tracks (every layout whose sources of an item
    # share one length; not sourcefolder, whose items are excerpts of unrelated files).
    whole_tracks_for_stats = True

    def iter_mixtures(self, limit: int = 1000, whole_tracks: bool = False) -> Iterator[Tensor]:
        """Mixtures for input statistics: no augmentation, no random mixing, fixed draws.

        Args:
            limit: at most this many mixtures (see :meth:`stats_indices`).
            whole_tracks: whole tracks instead of ``seq_duration`` excerpts, as the reference
                recipe's statistics read them (where the layout has tracks).
        """
        saved = {k: getattr(self, k) for k in ("source_augmentations", "random_track_mix", "random_interferer_mix")
                 if hasattr(self, k)}
        if whole_tracks and self.whole_tracks_for_stats:
            saved["seq_duration"] = self.seq_duration
            self.seq_duration = None
        self.source_augmentations = Compose()
        for k in saved:
            if k not in ("source_augmentations", "seq_duration"):
                setattr(self, k, False)
        try:
            for index in self.stats_indices()[:limit]:
                yield self[index][0]
        finally:
            for k, v in saved.items():
                setattr(self, k, v)

    def stats_indices(self) -> List[int]:
        return list(range(len(self)))


def hidden(path: Path, top: Path) -> bool:
    """Whether ``path`` (below ``top``) is hidden: a name starting with ``.`` on its way from ``top``.

    The folder layouts leave such names out: an interrupted writer's partial folder (``umx-synth``'s
    ``.name.partial``), macOS's ``._name.wav`` resource forks, ``.ipynb_checkpoints``.
    """
    return any(part.startswith(".") for part in path.relative_to(top).parts)


def track_dirs(folder: Path) -> List[Path]:
    """The track folders in ``folder``: its folders that are not hidden, sorted."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not hidden(d, folder))


def _split_dir(root: Path, split: str) -> Path:
    folder = Path(root) / split
    if not folder.is_dir():
        raise DatasetError(f"{folder}: missing; folder datasets need {Path(root)}/train and {Path(root)}/valid")
    return folder


def parallel_pairs(inputs: Path, outputs: Path, problems: List[str]) -> List[Tuple[Path, Path]]:
    """``(input, output)`` paths of the files of the same relative name below two parallel folders
    (hidden names left out); an output without an input of its name is recorded in ``problems``."""
    def files(top: Path) -> List[Path]:
        return sorted(p.relative_to(top) for p in top.rglob("*") if p.is_file() and not hidden(p, top))

    names = files(inputs)
    if outputs.is_dir():
        known = set(names)
        problems.extend(f"{outputs / n}: no {inputs / n} to pair it with" for n in files(outputs) if n not in known)
    return [(inputs / n, outputs / n) for n in names]


class AlignedDataset(_Base):
    """Input/output pairs that are already aligned: mixture -> vocals, noisy -> clean, raw -> mixed.

    Two layouts: track folders ``<split>/<track>/{input_file, output_file}``; or
    two parallel folders ``<split>/<input_file>/`` and ``<split>/<output_file>/``
    holding files with the same relative names (e.g. ``raw/`` and ``mixed/``).
    """

    def __init__(self, root, split: str, input_file: str, output_file: str, **kw):
        super().__init__(**kw)
        folder = _split_dir(root, split)
        problems: List[str] = []
        if (folder / input_file).is_dir():
            pairs = parallel_pairs(folder / input_file, folder / output_file, problems)
        else:
            pairs = [(d / input_file, d / output_file) for d in track_dirs(folder)]
        self.pairs: List[Tuple[AudioFile, AudioFile]] = []
        for inp, out in pairs:
            if not inp.exists() or not out.exists():
                problems.append(f"{inp if not inp.exists() else out}: missing")
                continue
            a, b = scan(inp, problems), scan(out, problems)
            if a is None or b is None:
                continue
            short = [f for f in (a, b) if self.too_short(f)]
            if short:  # name the file that is short, not always the input
                problems.append(f"{short[0].path}: shorter than --seq-dur {self.seq_duration} s "
                                f"({short[0].duration():.3g} s)")
                continue
            self.pairs.append((a, b))
        report(problems, f"aligned dataset {folder}")
        if not self.pairs:
            what = (f"{input_file} / {output_file} pairs" if pairs or (folder / input_file).is_dir() else
                    f"{input_file} / {output_file} pairs (neither a folder {folder / input_file} nor track "
                    f"folders holding {input_file})")
            raise none_usable(folder, what, problems)

    def __len__(self) -> int:
        return len(self.pairs)

    def _item(self, index: int) -> Pair:
        rng = self.rng(index)
        inp, out = self.pairs[index]
        start = self.start_in(min(inp.duration(), out.duration()), rng)
        if inp.sample_rate != out.sample_rate:
            # A start on both files' sample grids: each file's excerpt then begins at the same instant
            # (rounded separately, files at 44.1 and 48 kHz would be up to a sample apart, differently
            # for every excerpt).
            common = math.gcd(inp.sample_rate, out.sample_rate)
            start = math.floor(start * common) / common
        x, y = self.excerpt(inp, start), self.excerpt(out, start)
        if self.seq_duration is None:  # whole files: cut to the shorter
            n = min(x.shape[-1], y.shape[-1])
            x, y = x[:, :n], y[:, :n]
        return x, y


class SourceFolderDataset(_Base):
    """One folder per source; each item mixes a random target file with one random file per interferer folder."""

    whole_tracks_for_stats = False  # files of different lengths: the statistics read excerpts

    def __init__(self, root, split: str, target_dir: str, interferer_dirs: Sequence[str], ext: str = ".wav",
                 nb_samples: int = 1000, **kw):
        super().__init__(**kw)
        folder = _split_dir(root, split)
        if self.seq_duration is None:
            raise DatasetError("sourcefolder needs a positive --seq-dur (sources have different lengths)")
        problems: List[str] = []
        self.files: Dict[str, List[AudioFile]] = {}
        for name in [target_dir, *interferer_dirs]:
            paths = sorted(p for p in (folder / name).rglob(f"*{ext}")
                           if not hidden(p, folder / name)) if (folder / name).is_dir() else []
            usable = []
            for p in paths:
                f = scan(p, problems)
                if f is not None and self.too_short(f):
                    problems.append(f"{p}: shorter than --seq-dur {self.seq_duration} s")
                elif f is not None:
                    usable.append(f)
            if not usable:
                report(problems, f"sourcefolder dataset {folder}")
                raise none_usable(folder / name, f"*{ext} files", [q for q in problems if str(folder / name) in q])
            self.files[name] = usable
        report(problems, f"sourcefolder dataset {folder}")
        self.target_dir, self.interferer_dirs, self.nb_samples = target_dir, list(interferer_dirs), nb_samples

    def __len__(self) -> int:
        return self.nb_samples

    def _item(self, index: int) -> Pair:
        rng = self.rng(index)
        sources = []
        for name in [self.target_dir, *self.interferer_dirs]:
            file = rng.choice(self.files[name])
            sources.append(self.load_source(file, self.start_in(file.duration(), rng), rng))
        return torch.stack(sources).sum(0), sources[0]


class _DrawsPerTrack:
    """Datasets whose epoch is ``samples_per_track`` draws from each of ``tracks``: item ``i`` draws
    from track ``i // samples_per_track``."""

    tracks: list
    samples_per_track: int

    def __len__(self) -> int:
        return len(self.tracks) * self.samples_per_track

    def stats_indices(self) -> List[int]:
        return list(range(0, len(self), self.samples_per_track))  # one excerpt per track

    def track_of(self, index: int):
        return self.tracks[index // self.samples_per_track]


class FixedSourcesTrackFolderDataset(_DrawsPerTrack, _Base):
    """Track folders that all hold the same source files; the mixture is their sum.

    With ``random_track_mix`` each interferer comes from a random track (with
    its own random excerpt); an epoch sees every track's target once. Several
    target files (a list for ``target_file``) give stacked targets
    ``(nb_targets, nb_channels, nb_timesteps)``; with ``random_track_mix`` the
    first comes from the item's track and the others, like the interferers, from
    random tracks. ``samples_per_track`` items per track make one epoch (each
    its own draw), so that an epoch can be long where the tracks are few.
    """

    def __init__(self, root, split: str, target_file: Union[str, Sequence[str]], interferer_files: Sequence[str],
                 random_track_mix: bool = False, samples_per_track: int = 1, **kw):
        super().__init__(**kw)
        if samples_per_track < 1:
            raise DatasetError(f"samples_per_track {samples_per_track}: give at least 1 item per track and epoch")
        self.samples_per_track = samples_per_track
        folder = _split_dir(root, split)
        problems: List[str] = []
        self.tracks: List[List[AudioFile]] = []
        target_files = [target_file] if isinstance(target_file, str) else list(target_file)
        self.nb_targets = None if isinstance(target_file, str) else len(target_files)
        names = [*target_files, *interferer_files]
        for track in track_dirs(folder):
            missing = [n for n in names if not (track / n).exists()]
            if missing:
                problems.append(f"{track}: missing {', '.join(missing)}")
                continue
            files = [scan(track / n, problems) for n in names]
            if any(f is None for f in files):
                continue
            if any(self.too_short(f) for f in files):
                problems.append(f"{track}: shorter than --seq-dur {self.seq_duration} s")
                continue
            self.tracks.append(files)
        report(problems, f"trackfolder_fix dataset {folder}")
        if not self.tracks:
            raise none_usable(folder, f"track folder holding all of {', '.join(names)}", problems)
        self.random_track_mix = random_track_mix

    def _item(self, index: int) -> Pair:
        rng = self.rng(index)
        files = self.track_of(index)
        start = self.start_in(min(f.duration() for f in files), rng)
        # Whole tracks (--seq-dur <= 0) are augmented too; validation sets have no augmentations.
        target = self.load_source(files[0], start, rng)
        sources = [target]
        for k in range(1, len(files)):
            if self.random_track_mix:
                other = rng.choice(self.tracks)[k]
                sources.append(self.load_source(other, self.start_in(other.duration(), rng), rng))
            else:
                sources.append(self.load_source(files[k], start, rng))
        n = min(s.shape[-1] for s in sources)
        x = torch.stack([s[:, :n] for s in sources]).sum(0)
        if self.nb_targets is not None:
            return x, torch.stack([s[:, :n] for s in sources[: self.nb_targets]])
        return x, target[:, :n]


class VariableSourcesTrackFolderDataset(_Base):
    """Track folders with any number of sources (``*<ext>``, ``mixture*`` excluded); the target file is one of them.

    Tracks without the target are left out, or get a silent target with
    ``silence_missing_targets``. With ``random_interferer_mix`` the interferers
    come from another random track.
    """

    def __init__(self, root, split: str, target_file: str, ext: str = ".wav",
                 silence_missing_targets: bool = False, random_interferer_mix: bool = False, **kw):
        super().__init__(**kw)
        folder = _split_dir(root, split)
        problems: List[str] = []
        self.tracks: List[Tuple[Optional[AudioFile], List[AudioFile]]] = []
        for track in track_dirs(folder):
            target_path = track / target_file
            others = [p for p in sorted(track.glob(f"*{ext}"))
                      if p.name != target_file and not p.stem.startswith("mixture") and not hidden(p, track)]
            if not target_path.exists() and not silence_missing_targets:
                problems.append(f"{track}: no {target_file}")
                continue
            target = scan(target_path, problems) if target_path.exists() else None
            files = [f for f in (scan(p, problems) for p in others) if f is not None]
            if (target_path.exists() and target is None) or not (files or target):
                continue
            if any(self.too_short(f) for f in files + ([target] if target else [])):
                problems.append(f"{track}: shorter than --seq-dur {self.seq_duration} s")
                continue
            self.tracks.append((target, files))
        report(problems, f"trackfolder_var dataset {folder}")
        if not self.tracks:
            raise none_usable(folder, f"track folders with {target_file}", problems)
        self.random_interferer_mix = random_interferer_mix

    def __len__(self) -> int:
        return len(self.tracks)

    def _length(self, target: Optional[AudioFile], files: List[AudioFile]) -> float:
        return min(f.duration() for f in files + ([target] if target else []))

    def _item(self, index: int) -> Pair:
        rng = self.rng(index)
        target, files = self.tracks[index]
        start = self.start_in(self._length(target, files), rng)
        # Whole tracks (--seq-dur <= 0) are augmented too; validation sets have no augmentations.
        y = self.load_source(target, start, rng) if target else None
        if self.random_interferer_mix:
            own, (_, files) = files, rng.choice(self.tracks)
            if target is None and not files:  # a silent target and no interferer: the track's own
                files = own
            start = self.start_in(min(f.duration() for f in files), rng) if files else 0.0
        sources = [self.load_source(f, start, rng) for f in files]
        if y is None:
            y = torch.zeros_like(sources[0])
        n = min(s.shape[-1] for s in sources + [y])
        x = y[:, :n] + sum(s[:, :n] for s in sources) if sources else y[:, :n].clone()
        return x, y[:, :n]


# ---------------------------------------------------------------- targets summed from files chosen by metadata


def stem_key(name: str) -> str:
    """A stem or instrument-class name as targets spell it: lower case, words joined by ``_``.

    ``"Synth Pad"`` -> ``synth_pad``, ``"Strings (continued)"`` -> ``strings_continued``,
    ``"other keys"`` -> ``other_keys``: a target matches whatever case and separators the metadata uses.
    """
    return "_".join(re.findall(r"[a-z0-9]+", str(name).lower()))


class StemTrack(NamedTuple):
    """A track of a metadata layout: the files of each target (summed; none: a silent target)
    and of each other source (each a sum of files too)."""

    path: Path
    targets: Tuple[Tuple[AudioFile, ...], ...]
    interferers: Tuple[Tuple[AudioFile, ...], ...]

    def files(self) -> List[AudioFile]:
        return [f for group in self.targets + self.interferers for f in group]

    def duration(self) -> float:
        return min(f.duration() for f in self.files())


# A track's sources as a layout reads them: (stem key, files summed into that source).
Sources = List[Tuple[str, Tuple[AudioFile, ...]]]


class _StemsDataset(_DrawsPerTrack, _Base):
    """Tracks whose target is the sum of several files chosen by metadata or by name (``slakh``, ``moisesdb``,
    ``medleydb``, ``dsd100``).

    Each item mixes, at one random position, the target (the sum of the files of
    every stem that belongs to it, augmented as one source) with every other
    source of the track (each augmented on its own); the mixture is their sum.
    With ``random_track_mix`` the other sources come, together, from a random
    track at their own position, and each further target of a list from a random
    track that holds it. Several targets (a list for ``target``) give stacked
    targets ``(nb_targets, nb_channels, nb_timesteps)``. Tracks missing a target
    are left out, or kept with a silent one with ``silence_missing_targets``.
    """

    layout = ""

    def __init__(self, target: Union[str, Sequence[str]], random_track_mix: bool = False, samples_per_track: int = 1,
                 silence_missing_targets: bool = False, **kw):
        super().__init__(**kw)
        if samples_per_track < 1:
            raise DatasetError(f"samples_per_track {samples_per_track}: give at least 1 item per track and epoch")
        self.targets = [stem_key(t) for t in ([target] if isinstance(target, str) else target)]
        self.nb_targets = None if isinstance(target, str) else len(self.targets)
        self.samples_per_track = samples_per_track
        self.random_track_mix = random_track_mix
        self.silence_missing_targets = silence_missing_targets
        self.tracks: List[StemTrack] = []
        self.holders: List[List[int]] = []

    def in_target(self, key: str, target: str) -> bool:
        """Whether the stem ``key`` is part of ``target``."""
        return key == target

    def _add_tracks(self, found: Iterable[Tuple[Path, Optional[Sources]]], where: Union[Path, str],
                    problems: List[str], notes: List[str], hint: str = "") -> None:
        """Keep the usable tracks of ``found`` (``None``: already reported), then report what was left out.
        ``where`` names them in messages; ``hint`` follows the error for a target no track holds.

        Raises:
            DatasetError: no track holds a target, or none is usable.
        """
        seen, missing = set(), 0
        for path, sources in found:
            if sources is None:
                continue
            files = [f for _, group in sources for f in group]
            if not files:
                problems.append(f"{path}: no audio stems")
                continue
            seen.update(key for key, _ in sources)
            if any(self.too_short(f) for f in files):
                problems.append(f"{path}: shorter than --seq-dur {self.seq_duration} s")
                continue
            targets = tuple(tuple(f for key, group in sources if self.in_target(key, t) for f in group)
                            for t in self.targets)
            if not all(targets) and not self.silence_missing_targets:
                missing += 1
                continue
            interferers = tuple(group for key, group in sources
                                if not any(self.in_target(key, t) for t in self.targets))
            self.tracks.append(StemTrack(path, targets, interferers))
        what = f"{self.layout} dataset {where}"
        report(problems, what)
        if missing:
            notes.append(f"{missing} track(s) without {' or '.join(self.targets)} left out "
                         "(--silence-missing-targets keeps them with a silent target)")
        if notes:
            log.info("%s: %s", what, "; ".join(notes))
        unknown = [t for t in self.targets if seen and not any(self.in_target(key, t) for key in seen)]
        if unknown:
            raise DatasetError(f"{where}: no track holds a {unknown[0]!r} stem; the stems found are "
                               f"{', '.join(sorted(seen))}{hint}")
        if not self.tracks:
            raise none_usable(where, f"{self.layout} tracks holding {' and '.join(self.targets)}", problems)
        everyone = list(range(len(self.tracks)))
        self.holders = [[i for i, t in enumerate(self.tracks) if t.targets[k]] or everyone
                        for k in range(len(self.targets))]

    def _source(self, files: Tuple[AudioFile, ...], start: float, rng: random.Random) -> Optional[Tensor]:
        """The sum of ``files`` from ``start``, augmented as one source (``None`` for no files: silent)."""
        if not files:
            return None
        parts = [self.excerpt(f, start) for f in files]
        n = min(p.shape[-1] for p in parts)  # whole files may differ by a few samples
        audio = parts[0] if len(parts) == 1 else torch.stack([p[:, :n] for p in parts]).sum(0)
        return self.source_augmentations(audio, rng)

    def _item(self, index: int) -> Pair:
        rng = self.rng(index)
        track = self.track_of(index)
        start = self.start_in(track.duration(), rng)
        # Whole tracks (--seq-dur <= 0) are augmented too; validation sets have no augmentations.
        targets = [self._source(track.targets[0], start, rng)]
        for k in range(1, len(self.targets)):
            other, at = track, start
            if self.random_track_mix:
                other = self.tracks[rng.choice(self.holders[k])]
                at = self.start_in(other.duration(), rng)
            targets.append(self._source(other.targets[k], at, rng))
        other, at = track, start
        if self.random_track_mix:
            other = rng.choice(self.tracks)
            at = self.start_in(other.duration(), rng)
            if not other.interferers and all(t is None for t in targets):  # nothing to mix: the track's own
                other, at = track, start
        sources = [s for s in targets if s is not None] + [self._source(g, at, rng) for g in other.interferers]
        n = min(s.shape[-1] for s in sources)
        x = torch.stack([s[:, :n] for s in sources]).sum(0)
        ys = [torch.zeros_like(x) if y is None else y[:, :n] for y in targets]
        return (x, torch.stack(ys)) if self.nb_targets is not None else (x, ys[0])


def _metadata_stems(meta: Path, load: Callable[[Path], object], kind: type, missing: str,
                    problems: List[str]) -> Optional[tuple]:
    """``(document, its "stems" entry)`` of the metadata file ``meta`` read by ``load``; ``None``, with the
    reason in ``problems``, when it cannot be read or its ``stems`` is not a ``kind`` (saying ``missing``)."""
    try:
        doc = load(meta)
    except Exception as exc:  # noqa: BLE001 - any read or parse failure makes the metadata unusable
        said = str(exc).strip().splitlines()
        problems.append(f"{meta}: unreadable ({said[0] if said else type(exc).__name__})")
        return None
    stems = doc.get("stems") if isinstance(doc, dict) else None
    if not isinstance(stems, kind):
        problems.append(f"{meta}: {missing}")
        return None
    return doc, stems


def _load_yaml(path: Path):
    import yaml

    with open(path, "rb") as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


SLAKH_SPLITS = {"train": "train", "valid": "validation", "test": "test"}  # the package's splits -> Slakh2100's folders


def slakh_split_dir(root, split: str) -> Path:
    """``<root>/train``, ``<root>/validation`` or ``<root>/test``, checked to hold Slakh2100 track folders.

    Raises:
        DatasetError: ``root`` is not a Slakh2100 folder (one line naming what was expected).
    """
    root = Path(root)
    folder = root / SLAKH_SPLITS[split]
    expected = (f"expected {folder} holding TrackNNNNN/ folders with metadata.yaml and stems/SNN.flac "
                "(Slakh2100 or slakh2100_flac_redux)")
    if not folder.is_dir():
        raise DatasetError(f"{root}: not a Slakh2100 folder: {folder.name}/ is missing; {expected}")
    if not any((d / "metadata.yaml").is_file() for d in folder.iterdir() if d.is_dir()):
        raise DatasetError(f"{folder}: no track folder holds a metadata.yaml; {expected}")
    return folder


class SlakhDataset(_StemsDataset):
    """Slakh2100 (``slakh2100_flac_redux`` or the original): ``<root>/{train,validation}/TrackNNNNN/``
    with ``metadata.yaml`` and ``stems/SNN.flac``.

    A target is an instrument class of the metadata (``inst_class``, matched as
    :func:`stem_key` spells it: ``bass``, ``guitar``, ``synth_pad``, ...) or
    ``drums`` (the stems with ``is_drum: true``); the other rendered stems of the
    track are the interferers and the mixture is the sum of them all (``mix.flac``
    is not read). Stems with ``audio_rendered: false`` have no audio and are skipped.
    ``split="valid"`` reads ``validation/``.
    """

    layout = "slakh"

    def __init__(self, root, split: str, target: Union[str, Sequence[str]], **kw):
        super().__init__(target, **kw)
        try:
            import yaml  # noqa: F401 - checked once here, used for every track
        except ImportError as exc:
            raise DatasetError("the slakh dataset reads metadata.yaml with PyYAML: "
                               "pip install 'openunmix-like[slakh]'") from exc
        folder = slakh_split_dir(root, split)
        problems: List[str] = []
        skipped = [0]
        found = [(t, self._sources(t, problems, skipped)) for t in track_dirs(folder)]
        self._add_tracks(found, folder, problems,
                         [f"{skipped[0]} stem(s) with audio_rendered: false skipped"] if skipped[0] else [])

    @staticmethod  # no state of the data set: stem_track_sources reads one track with it too
    def _sources(track: Path, problems: List[str], skipped: List[int]) -> Optional[Sources]:
        """Each rendered stem of ``track`` as ``(class key, (file,))``; ``None`` (reported) if one is unusable."""
        meta = track / "metadata.yaml"
        if not meta.is_file():
            problems.append(f"{track}: no metadata.yaml")
            return None
        found = _metadata_stems(meta, _load_yaml, dict, "no 'stems:' mapping", problems)
        if found is None:
            return None
        doc, stems = found
        # audio_dir is documented as always "stems", but some releases hold other values (slakh2100_flac_redux's
        # train/Track00616 names the renderer's own folder, Volumes/data/.../Track00001/stems): the folder named
        # where it exists, else the track's stems/.
        audio_dir = track / str(doc.get("audio_dir") or "stems")
        if not audio_dir.is_dir():
            audio_dir = track / "stems"
        sources: Sources = []
        for sid, info in sorted(stems.items(), key=lambda item: str(item[0])):
            if isinstance(info, dict) and info.get("audio_rendered", True) is False:
                skipped[0] += 1  # not in the mixture either: what it would have been does not matter
                continue
            named = isinstance(info, dict) and (info.get("is_drum") is True or isinstance(info.get("inst_class"), str))
            if not named:
                problems.append(f"{meta}: stem {sid} has no inst_class")
                return None
            path = next((p for p in (audio_dir / f"{sid}{s}" for s in AUDIO_SUFFIXES) if p.is_file()), None)
            if path is None:
                problems.append(f"{audio_dir / sid}.flac: missing (audio_rendered is true in metadata.yaml)")
                return None
            file = scan(path, problems)
            if file is None:
                return None
            sources.append(("drums" if info.get("is_drum") is True else stem_key(info["inst_class"]), (file,)))
        return sources


MOISESDB_STEMS = ("vocals", "bass", "drums", "other", "guitar", "other_plucked", "percussion", "piano",
                  "other_keys", "bowed_strings", "wind")  # the top-level stems of the moisesdb package's taxonomy
MOISESDB_FOUR = ("vocals", "bass", "drums", "other")  # its mix_4_stems: other is every stem but the first three


def moisesdb_track_dirs(root) -> List[Path]:
    """The track folders of a MoisesDB root: ``<root>/<provider>/<track_id>/data.json`` (the package's
    layout) or ``<root>/<track_id>/data.json``.

    Raises:
        DatasetError: no track folder is found (one line naming what was expected).
    """
    root = Path(root)
    found = sorted({p.parent for pattern in ("*/data.json", "*/*/data.json") for p in root.glob(pattern)
                    if not hidden(p, root)} if root.is_dir() else [])
    if not found:
        raise DatasetError(f"{root}: not a MoisesDB folder: expected <root>/<provider>/<track_id>/data.json (or "
                           "<root>/<track_id>/data.json) with a folder of audio files per stem (vocals/, bass/, ...)")
    return found


def hash_split(tracks: Sequence[Path], valid_tracks: Optional[int] = None,
               what: str = "MoisesDB") -> Tuple[List[Path], List[Path]]:
    """The training and validation tracks of a data set without an official validation split: the
    ``valid_tracks`` track folders (default 10 %, at least 1) whose ids (folder names) have the smallest
    SHA-1, the others for training. ``what`` names the data set in messages.

    The split depends on the track ids only, so every target, seed and machine gets the same one, and
    ``umx-evaluate`` scores the validation tracks ``umx-train`` held out.

    Raises:
        DatasetError: fewer than 2 tracks, or ``valid_tracks`` leaves no training or no validation track.
    """
    if len(tracks) < 2:
        where = f" ({tracks[0].parent})" if tracks else ""
        raise DatasetError(f"{what} holds {len(tracks)} track folder(s){where}: training and validation need at "
                           "least 2 (one for each)")
    n = max(1, round(0.1 * len(tracks))) if valid_tracks is None else valid_tracks
    if not 1 <= n < len(tracks):
        raise DatasetError(f"--valid-tracks {n}: give from 1 to {len(tracks) - 1} (the data set has "
                           f"{len(tracks)} track(s), and training needs at least one)")
    order = sorted(tracks, key=lambda p: (hashlib.sha1(p.name.encode()).hexdigest(), str(p)))
    valid = set(order[:n])
    return [t for t in tracks if t not in valid], [t for t in tracks if t in valid]


def moisesdb_split(tracks: Sequence[Path], valid_tracks: Optional[int] = None) -> Tuple[List[Path], List[Path]]:
    """MoisesDB's training and validation tracks (:func:`hash_split`)."""
    return hash_split(tracks, valid_tracks, "MoisesDB")


def _split_tracks(root, split: str, train: List[Path], valid: List[Path], of: str = "its split"
                  ) -> Tuple[List[Path], str, str, str]:
    """The tracks of ``split`` (``train`` or ``valid``) of a :func:`hash_split`, how messages name them, the hint
    for a stem none of them holds, and the note saying how many they are. ``of`` names what was split."""
    tracks = train if split == "train" else valid
    # Named as the split's tracks: a stem that only some tracks hold may be in none of the validation ones.
    where = f"{root} (the {len(tracks)} {'training' if split == 'train' else 'validation'} track(s) of {of})"
    hint = ("; another --valid-tracks N validates on other tracks (those whose ids have the N smallest SHA-1)"
            if split != "train" else "")
    return tracks, where, hint, f"{split} split: {len(tracks)} of {len(train) + len(valid)} track folders"


def check_grouping(targets: Sequence[str], stem_grouping: str) -> str:
    """``stem_grouping``, checked to be one of :data:`STEM_GROUPINGS` and, for ``four``, to hold ``targets``.

    Raises:
        DatasetError: another grouping, or a target that ``four`` does not make.
    """
    if stem_grouping not in STEM_GROUPINGS:
        raise DatasetError(f"stem grouping {stem_grouping!r}: choose one of {', '.join(STEM_GROUPINGS)}")
    if stem_grouping == "four":
        for t in targets:
            if t not in MOISESDB_FOUR:
                raise DatasetError(f"target {t!r}: with --stem-grouping four the targets are "
                                   f"{', '.join(MOISESDB_FOUR)} (other: every stem but the first three); "
                                   f"train {t} with --stem-grouping all")
    return stem_grouping


class MoisesDBDataset(_StemsDataset):
    """MoisesDB as the ``moisesdb`` package lays it out: ``<root>/<provider>/<track_id>/data.json`` (or
    ``<root>/<track_id>/data.json``) and ``<track>/<stemName>/<id>.<extension>`` for every file that
    data.json lists under a stem.

    A stem is the sum of its files. ``stem_grouping="four"``: the targets are
    ``vocals``, ``bass``, ``drums`` and ``other`` (the sum of every other stem), as
    the package's ``mix_4_stems``; ``"all"``: a target is one top-level stem
    (``guitar``, ``piano``, ``other_keys``, ...). The other stems are the
    interferers. There is no official validation split: :func:`moisesdb_split`
    makes one from the track ids.
    """

    layout = "moisesdb"

    def __init__(self, root, split: str, target: Union[str, Sequence[str]], stem_grouping: str = "four",
                 valid_tracks: Optional[int] = None, **kw):
        super().__init__(target, **kw)
        self.stem_grouping = check_grouping(self.targets, stem_grouping)
        train, valid = moisesdb_split(moisesdb_track_dirs(root), valid_tracks)
        problems: List[str] = []
        tracks, where, hint, note = _split_tracks(root, split, train, valid)
        self._add_tracks(((t, self._sources(t, problems)) for t in tracks), where, problems, [note], hint)

    def in_target(self, key: str, target: str) -> bool:
        if self.stem_grouping == "four" and target == "other":
            return key not in MOISESDB_FOUR[:3]
        return key == target

    @staticmethod  # no state of the data set: stem_track_sources reads one track with it too
    def _sources(track: Path, problems: List[str]) -> Optional[Sources]:
        """Each stem data.json lists as ``(stem key, its files)``; ``None`` (reported) if one is unusable."""
        meta = track / "data.json"
        # Bytes: JSON is UTF-8 (or -16/-32, with or without a BOM) whatever the locale's encoding.
        found = _metadata_stems(meta, lambda path: json.loads(path.read_bytes()), list, "no 'stems' list", problems)
        if found is None:
            return None
        stems = found[1]
        paths: Dict[str, List[Path]] = {}
        for stem in stems:
            name = stem.get("stemName") if isinstance(stem, dict) else None
            entries = stem.get("tracks") if isinstance(stem, dict) else None
            if not isinstance(name, str) or not isinstance(entries, list) or not all(
                    isinstance(e, dict) and "id" in e for e in entries):
                problems.append(f"{meta}: a stem without stemName or tracks (each with an id)")
                return None
            paths.setdefault(name, []).extend(track / name / f"{e['id']}.{e.get('extension') or 'wav'}"
                                              for e in entries)
        sources: Sources = []
        for name, group in paths.items():
            if not group:  # a stem that lists no file (tracks: []) has no audio: no stem at all
                continue
            missing = [p for p in group if not p.is_file()]
            if missing:
                problems.append(f"{missing[0]}: missing (listed in data.json)")
                return None
            files = [scan(p, problems) for p in group]
            if any(f is None for f in files):
                return None
            sources.append((stem_key(name), tuple(files)))
        return sources


# ---------------------------------------------------------------- MedleyDB

# The instrument labels of MedleyDB's metadata (the taxonomy.yaml of the medleydb package) that make the vocals,
# drums and bass of --stem-grouping four; every other label is other. Vocals: the taxonomy's voices but crowd
# (an audience), as the package's own vocal-free remix leaves them out. Drums: its percussion but the pitched
# idiophones (xylophone, vibraphone, marimba, glockenspiel, chimes) and whistle, and the drum machine.
MEDLEYDB_VOCALS = ("male singer", "female singer", "male speaker", "female speaker", "male rapper", "female rapper",
                   "beatboxing", "vocalists",
                   "choir", "male screamer", "female screamer")  # labels of MedleyDB 2.0 that taxonomy.yaml lacks
MEDLEYDB_DRUMS = ("drum set", "kick drum", "snare drum", "bass drum", "toms", "timpani", "bongo", "conga",
                  "tambourine", "darbuka", "doumbek", "tabla", "auxiliary percussion",
                  "high hat", "cymbal", "gong", "triangle", "sleigh bells", "cowbell", "cabasa", "guiro", "gu",
                  "castanet", "claps", "rattle", "shaker", "maracas",
                  "drum machine", "snaps")  # snaps: a label of MedleyDB 2.0 that taxonomy.yaml lacks
MEDLEYDB_BASS = ("electric bass", "double bass")
# Stem key (the label as stem_key spells it) -> its group under --stem-grouping four (others: other).
MEDLEYDB_GROUPS = {stem_key(label): group for group, labels in (("vocals", MEDLEYDB_VOCALS),
                                                                ("drums", MEDLEYDB_DRUMS), ("bass", MEDLEYDB_BASS))
                   for label in labels}
MEDLEYDB_EXPECTED = ("expected <root>/<TrackName>/ (or <root>/Audio/<TrackName>/, <root>/V2/<TrackName>/, ...) "
                     "holding <TrackName>_STEMS/<TrackName>_STEM_NN.wav and <TrackName>_METADATA.yaml "
                     "(MedleyDB 1.0 or 2.0 as released)")


def _is_medleydb_track(folder: Path) -> bool:
    """Whether ``folder`` is a MedleyDB track folder: it holds ``<name>_STEMS/``, ``<name>_METADATA.yaml``
    or ``<name>_MIX.wav`` (so that one whose metadata or stems are lost is still found, and reported)."""
    name = folder.name
    return ((folder / f"{name}_STEMS").is_dir() or (folder / f"{name}_METADATA.yaml").is_file()
            or (folder / f"{name}_MIX.wav").is_file())


def medleydb_track_dirs(root) -> List[Path]:
    """The track folders of a MedleyDB root: ``<root>/<TrackName>/`` or one level further down
    (``<root>/Audio/<TrackName>/`` as the medleydb package reads it, ``<root>/V1/`` and ``<root>/V2/``).

    Raises:
        DatasetError: no track folder is found (one line naming what was expected).
    """
    root = Path(root)
    found: List[Path] = []
    for folder in track_dirs(root) if root.is_dir() else []:
        if _is_medleydb_track(folder):
            found.append(folder)
        else:
            found.extend(d for d in track_dirs(folder) if _is_medleydb_track(d))
    if not found:
        raise DatasetError(f"{root}: not a MedleyDB folder: {MEDLEYDB_EXPECTED}")
    return sorted(found)


def medleydb_metadata_path(track: Path) -> Optional[Path]:
    """``<TrackName>_METADATA.yaml`` of a track folder: in it, or else in a ``Metadata/`` folder beside the track
    folder or beside its parent (where copies that keep the metadata apart, as the medleydb package does in its
    ``data/Metadata``, put it); ``None`` when there is none."""
    name = f"{track.name}_METADATA.yaml"
    places = (track / name, track.parent / "Metadata" / name, track.parent.parent / "Metadata" / name)
    return next((p for p in places if p.is_file()), None)


def medleydb_metadata(track: Path, problems: List[str]) -> Optional[Tuple[Path, dict, dict]]:
    """``(path, document, its stems)`` of a track's metadata; ``None``, with the reason in ``problems``, when it is
    missing or unreadable."""
    meta = medleydb_metadata_path(track)
    if meta is None:
        problems.append(f"{track / (track.name + '_METADATA.yaml')}: missing (nor in a Metadata/ folder beside the "
                        "track folder or above it); copy it there from the medleydb package's data/Metadata")
        return None
    found = _metadata_stems(meta, _load_yaml, dict, "no 'stems:' mapping", problems)
    return None if found is None else (meta, *found)


def medleydb_has_bleed(doc: dict) -> bool:
    """Whether a track's metadata says other instruments leak into its stems (``has_bleed: 'yes'``)."""
    return str(doc.get("has_bleed", "")).strip().lower() in ("yes", "true")


def _instrument_labels(value) -> List[str]:
    """A stem's ``instrument``: one label or a list of them (the first names the stem)."""
    labels = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [label for label in labels if isinstance(label, str) and stem_key(label)]


def medleydb_stems(track: Path, meta: Path, doc: dict, stems: dict, problems: List[str]) -> Optional[Sources]:
    """Each stem the metadata lists as ``(key of its first instrument label, (file,))``; ``None`` (reported) if one
    is unusable. The files are ``<track>/<stem_dir>/<filename>`` (``<TrackName>_STEMS/`` where ``stem_dir``
    names no folder); the raw files (``_RAW/``) and the mix (``_MIX.wav``) are not read."""
    stem_dir = track / str(doc.get("stem_dir") or f"{track.name}_STEMS")
    if not stem_dir.is_dir():
        stem_dir = track / f"{track.name}_STEMS"
    sources: Sources = []
    for sid, info in sorted(stems.items(), key=lambda item: str(item[0])):
        labels = _instrument_labels(info.get("instrument") if isinstance(info, dict) else None)
        if not labels:
            problems.append(f"{meta}: stem {sid} has no instrument")
            return None
        path = stem_dir / str(info.get("filename") or f"{track.name}_STEM_{str(sid).lstrip('S')}.wav")
        if not path.is_file():
            problems.append(f"{path}: missing (listed in {meta.name})")
            return None
        file = scan(path, problems)
        if file is None:
            return None
        sources.append((stem_key(labels[0]), (file,)))
    return sources


class MedleyDBDataset(_StemsDataset):
    """MedleyDB 1.0 or 2.0 as released: track folders ``<TrackName>/`` (at ``<root>/`` or one level below) holding
    ``<TrackName>_METADATA.yaml`` and ``<TrackName>_STEMS/<TrackName>_STEM_NN.wav``.

    Each stem is keyed by its instrument label (the first, for a list), as :func:`stem_key` spells it.
    ``stem_grouping="four"``: the targets are ``vocals``, ``drums`` and ``bass`` (the labels of
    :data:`MEDLEYDB_GROUPS`) and ``other`` (every other label); ``"all"``: a target is one label (``female_singer``,
    ``acoustic_guitar``, ...). The mixture is the sum of the stems (the ``_MIX.wav``, which weights them, is not
    read). Tracks whose metadata says ``has_bleed: 'yes'`` are left out unless ``include_bleed``. There is no
    official validation split: :func:`hash_split` makes one from the track names.
    """

    layout = "medleydb"

    def __init__(self, root, split: str, target: Union[str, Sequence[str]], stem_grouping: str = "four",
                 valid_tracks: Optional[int] = None, include_bleed: bool = False, **kw):
        super().__init__(target, **kw)
        try:
            import yaml  # noqa: F401 - checked once here, used for every track
        except ImportError as exc:
            raise DatasetError("the medleydb dataset reads <TrackName>_METADATA.yaml with PyYAML: "
                               "pip install 'openunmix-like[medleydb]'") from exc
        self.stem_grouping = check_grouping(self.targets, stem_grouping)
        train, valid = hash_split(medleydb_track_dirs(root), valid_tracks, "MedleyDB")
        tracks, where, hint, note = _split_tracks(root, split, train, valid)
        problems: List[str] = []
        found, bled = [], 0
        for track in tracks:
            read = medleydb_metadata(track, problems)
            if read is not None and medleydb_has_bleed(read[1]) and not include_bleed:
                bled += 1  # its stems hold other instruments too: targets that are not what they say
                continue
            found.append((track, None if read is None else medleydb_stems(track, *read, problems)))
        if bled:
            note += f"; {bled} track(s) with has_bleed: yes left out (--include-bleed keeps them)"
        self._add_tracks(found, where, problems, [note], hint)

    def in_target(self, key: str, target: str) -> bool:
        return stem_group(key, self.stem_grouping, self.layout) == target


# ---------------------------------------------------------------- DSD100

def dsd100_track_dirs(root, folder: str = "Dev") -> List[Path]:
    """The track folders of ``<root>/Sources/<folder>`` (``Dev`` or ``Test``) of DSD100.

    Raises:
        DatasetError: ``root`` is not a DSD100 folder (one line naming what was expected).
    """
    root = Path(root)
    sources = root / "Sources" / folder
    expected = (f"expected {sources}/<NNN - Artist - Title>/ holding {', '.join(f'{s}.wav' for s in MUSDB_SOURCES)} "
                "(DSD100 or DSD100subset as released)")
    if not sources.is_dir():
        raise DatasetError(f"{root}: not a DSD100 folder: Sources/{folder}/ is missing; {expected}")
    tracks = track_dirs(sources)
    if not tracks:
        raise DatasetError(f"{sources}: no track folders; {expected}")
    return tracks


def dsd100_sources(track: Path, problems: List[str]) -> Optional[Sources]:
    """The four sources of a DSD100 track as ``(name, (file,))``; ``None`` (reported) if one is missing or
    unreadable."""
    sources: Sources = []
    for name in MUSDB_SOURCES:
        path = track / f"{name}.wav"
        if not path.is_file():
            problems.append(f"{path}: missing (a DSD100 track holds {', '.join(f'{s}.wav' for s in MUSDB_SOURCES)})")
            return None
        file = scan(path, problems)
        if file is None:
            return None
        sources.append((name, (file,)))
    return sources


class DSD100Dataset(_StemsDataset):
    """DSD100 (SiSEC 2016): ``<root>/Sources/{Dev,Test}/<NNN - Artist - Title>/{vocals,drums,bass,other}.wav``.

    The targets are the four sources; the mixture is their sum (``Mixtures/``, whose ``mixture.wav`` is that sum,
    is not read). ``split`` ``train`` and ``valid`` split ``Sources/Dev`` by :func:`hash_split` of the track
    names; ``test`` is ``Sources/Test``, the data set's test set.
    """

    layout = "dsd100"

    def __init__(self, root, split: str, target: Union[str, Sequence[str]], valid_tracks: Optional[int] = None,
                 **kw):
        super().__init__(target, **kw)
        for t in self.targets:
            if t not in MUSDB_SOURCES:
                raise DatasetError(f"target {t!r}: DSD100's sources are {', '.join(MUSDB_SOURCES)}; train one of them")
        if split == "test":
            tracks, notes, hint = dsd100_track_dirs(root, "Test"), [], ""
            where = str(Path(root) / "Sources" / "Test")
        else:
            train, valid = hash_split(dsd100_track_dirs(root, "Dev"), valid_tracks, "DSD100's Sources/Dev")
            tracks, where, hint, note = _split_tracks(root, split, train, valid, "its split of Sources/Dev")
            notes = [note]
        problems: List[str] = []
        self._add_tracks(((t, dsd100_sources(t, problems)) for t in tracks), where, problems, notes, hint)


# ---------------------------------------------------------------- whole tracks of the metadata layouts (evaluation)


def stem_track_sources(layout: str, track) -> Sources:
    """The stems of one ``slakh``, ``moisesdb``, ``medleydb`` or ``dsd100`` track folder as its data set reads them.

    Returns:
        ``(stem key, files)`` per stem: Slakh, each rendered stem's file, keyed by its class (``drums`` for
        ``is_drum``); MoisesDB, the files data.json lists under each ``stemName``; MedleyDB, each stem's file,
        keyed by its (first) instrument label, whatever ``has_bleed`` says; DSD100, its four source files.

    Raises:
        DatasetError: the metadata is missing or unreadable, a file it lists is missing or unreadable, or the
            track has no audio stem (the first such problem, naming the path).
    """
    track = Path(track)
    problems: List[str] = []
    if layout == "slakh":
        sources = SlakhDataset._sources(track, problems, [0])
    elif layout == "moisesdb":
        sources = MoisesDBDataset._sources(track, problems)
    elif layout == "medleydb":
        read = medleydb_metadata(track, problems)
        sources = None if read is None else medleydb_stems(track, *read, problems)
    elif layout == "dsd100":
        sources = dsd100_sources(track, problems)
    else:
        raise DatasetError(f"layout {layout!r}: choose slakh, moisesdb, medleydb or dsd100")
    if sources is None:
        raise DatasetError(problems[0])
    if not any(files for _, files in sources):
        raise DatasetError(f"{track}: no audio stems")
    return sources


def stem_group(key: str, stem_grouping: str = "all", layout: str = "moisesdb") -> str:
    """The target a stem belongs to, as the data set of ``layout`` groups stems: the stem itself, or with
    ``stem_grouping="four"`` one of vocals, bass, drums and other: for MoisesDB ``other`` for every stem but
    vocals, bass and drums (``stem_group("piano", "four")`` is ``other``), for MedleyDB the group of the
    instrument label in :data:`MEDLEYDB_GROUPS`, else ``other`` (``stem_group("male_singer", "four", "medleydb")``
    is ``vocals``). Slakh's and DSD100's stem keys are their own groups."""
    if stem_grouping != "four":
        return key
    if layout == "medleydb":
        return MEDLEYDB_GROUPS.get(key, "other")
    return "other" if key not in MOISESDB_FOUR[:3] else key


def read_stem_track(sources: Sources, sample_rate: int, nb_channels: int = 2,
                    group: Optional[Callable[[str], str]] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
    """A whole track of a metadata layout, summed as training sums it: the mixture and each group of stems.

    Every file is read whole, converted as :func:`read_excerpt` converts it, and cut to the track's
    shortest file (as whole-track validation items are). One file is decoded at a time.

    Args:
        sources: the track's stems, as :func:`stem_track_sources` gives them.
        sample_rate, nb_channels: what every file is converted to.
        group: the name of the sum a stem key goes into (default: the key itself; see :func:`stem_group`).

    Returns:
        The mixture ``(nb_channels, nb_timesteps)``, the sum of every file, and group name -> the sum of its
        files, same shape, in the order the groups first appear; the groups add up to the mixture.

    Raises:
        DatasetError: a file that cannot be decoded, or holds NaN or infinite samples, naming it.
    """
    mixture: Optional[Tensor] = None
    groups: Dict[str, Tensor] = {}
    for key, files in sources:
        name = group(key) if group else key
        for file in files:
            try:
                audio = read_excerpt(file, 0.0, None, sample_rate, nb_channels)
            except RuntimeError as exc:  # read_excerpt's errors name the file
                raise DatasetError(str(exc)) from None
            n = audio.shape[-1] if mixture is None else min(audio.shape[-1], mixture.shape[-1])
            groups = {k: v[:, :n] for k, v in groups.items()}
            groups[name] = groups[name] + audio[:, :n] if name in groups else audio[:, :n]
            mixture = audio[:, :n].clone() if mixture is None else mixture[:, :n] + audio[:, :n]
    if mixture is None:
        raise DatasetError("the track has no audio stems")
    return mixture, groups


def default_musdb_cache(root: Path) -> Path:
    """``<cache>/musdb/<name>-<hash of the absolute root>``: never inside the (maybe read-only) dataset."""
    import hashlib

    from .pretrained import cache_dir

    resolved = str(root.resolve())
    return cache_dir() / "musdb" / f"{root.resolve().name}-{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"


class MUSDBDataset(_DrawsPerTrack, _Base):
    """MUSDB18 (``.stem.mp4``) or MUSDB18-HQ (``is_wav``) through the ``musdb`` package.

    Balanced sampling: ``samples_per_track`` items per track per epoch, each a
    random excerpt; with ``random_track_mix`` every source comes from a random
    track; the mixture is the sum of the sources. ``split="valid"`` is musdb's
    fixed 14-track validation split, served as full tracks of the released
    mixture (``mixture.wav``, or the ``.stem.mp4``'s mixture stream; the sum of the
    sources where a wav track has none), as the reference validates.
    ``.stem.mp4`` files are decoded once into ``cache_dir``
    (16-bit wav; default under the package cache, see :func:`default_musdb_cache`)
    so later reads are frame-exact excerpts rather than whole decodes.

    Targets: a MUSDB source or ``accompaniment`` (everything but the vocals).
    """

    def __init__(self, root, target: str = "vocals", split: str = "train", is_wav: bool = False,
                 samples_per_track: int = 64, random_track_mix: bool = False, subsets: str = "train",
                 cache_dir: Optional[Path] = None, **kw):
        super().__init__(**kw)
        # Several targets: the items' targets are stacked, (nb_targets, nb_channels, nb_timesteps).
        self.targets = None if isinstance(target, str) else list(target)
        for name in self.targets or [target]:
            if name not in MUSDB_SOURCES and name not in MUSDB_GROUPS:
                raise DatasetError(f"target {name!r} is not a MUSDB source; choose from "
                                   f"{', '.join(MUSDB_SOURCES + tuple(MUSDB_GROUPS))}")
        self.target_sources = MUSDB_GROUPS.get(target, (target,)) if self.targets is None else None
        listed = musdb_layout(Path(root), subsets, split, is_wav)
        if not listed:
            hq = not is_wav and any(Path(root).glob(f"{subsets}/*/mixture.wav"))
            raise DatasetError(f"{root}: no MUSDB tracks for subset {subsets!r}, split {split!r}"
                               f"{' (is this MUSDB18-HQ? drop --is-wav)' if is_wav else ''}"
                               f"{' (this looks like MUSDB18-HQ: add --is-wav)' if hq else ''}")
        self.cache_dir = Path(cache_dir) if cache_dir else default_musdb_cache(Path(root))
        self.split = split
        problems: List[str] = []
        unreadable: List[Path] = []
        self.tracks: List[Dict[str, AudioFile]] = []
        for track in listed:
            files = self._source_files(track, problems, unreadable)
            if files is None:
                continue
            if self.too_short(files["vocals"]):
                problems.append(f"{track.path}: shorter than --seq-dur {self.seq_duration} s")
                continue
            self.tracks.append(files)
        if unreadable:  # as the musdb package lists a data set: a file ffprobe cannot read stops it
            more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
            raise DatasetError(f"{unreadable[0]}{more}: not a readable .stem.mp4; re-download it, "
                               f"or move it out of {root}")
        report(problems, f"musdb {split} split of {root}")
        if not self.tracks:
            raise none_usable(Path(root), f"MUSDB tracks in the {split} split", problems)
        self.samples_per_track = samples_per_track if split == "train" else 1
        self.random_track_mix = random_track_mix

    def _source_files(self, track: "MusdbTrack", problems: List[str],
                      unreadable: List[Path]) -> Optional[Dict[str, AudioFile]]:
        """The track's source files by name, and outside the training split its ``mixture``."""
        if track.is_wav:
            paths = {name: track.sources[name] for name in MUSDB_SOURCES if track.sources[name].is_file()}
            missing = [f"{name}.wav" for name in MUSDB_SOURCES if name not in paths]
            if missing:
                problems.append(f"{track.path.parent}: missing {', '.join(missing)}")  # path: its mixture
                return None
            if self.split != "train" and track.path.is_file():
                paths["mixture"] = track.path
        else:
            paths = self._decoded(track, problems, unreadable)
            if paths is None:
                return None
        files = {name: scan(p, problems) for name, p in paths.items()}
        return None if any(f is None for f in files.values()) else files

    def _decoded(self, track: "MusdbTrack", problems: List[str],
                 unreadable: List[Path]) -> Optional[Dict[str, Path]]:
        """Decode a ``.stem.mp4`` once into 16-bit wav files in the cache (the samples the ``musdb``
        package reads, as it reads them: 16-bit)."""
        from .audio import AudioError, _ffmpeg_binary, _ffprobe, decode_streams
        from .fileio import write_json_atomic

        folder = self.cache_dir / track.name
        paths = {name: folder / f"{name}.wav" for name in MUSDB_SOURCES}
        if self.split != "train":  # dot-named: the folder layouts that read linked cache folders skip it
            paths["mixture"] = folder / ".mixture.wav"
        # What the cache was decoded from: a .stem.mp4 replaced under the same name is decoded again.
        stat = track.path.stat()
        source = {"path": str(track.path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        stamp = folder / "source.json"
        if all(p.exists() for p in paths.values()) and _read_json(stamp) == source:
            return paths
        _ffmpeg_binary("ffmpeg", "decode MUSDB18's .stem.mp4 files")  # not a fault of the file
        _ffmpeg_binary("ffprobe", "decode MUSDB18's .stem.mp4 files")
        folder.mkdir(parents=True, exist_ok=True)
        stamp.unlink(missing_ok=True)
        streams = {track.stem_ids[name]: path for name, path in paths.items()}
        try:
            decode_streams(track.path, streams)
        except AudioError as exc:
            try:
                _ffprobe(track.path)
            except AudioError:
                unreadable.append(track.path)
                return None
            problems.append(f"{track.path}: cannot decode ({exc})")
            return None
        write_json_atomic(stamp, source)
        return paths

    def _item(self, index: int) -> Pair:
        rng = self.rng(index)
        track = self.track_of(index)
        augment = rng if self.split == "train" else None
        start = self.start_in(track["vocals"].duration(), rng)
        sources = {}
        for name in MUSDB_SOURCES:
            files = rng.choice(self.tracks) if self.random_track_mix else track
            s = start if not self.random_track_mix else self.start_in(files[name].duration(), rng)
            sources[name] = self.load_source(files[name], s, augment)
        released = self.excerpt(track["mixture"], start) if "mixture" in track else None  # outside training
        n = min(s.shape[-1] for s in sources.values())
        if released is not None:
            n = min(n, released.shape[-1])
        x = released[:, :n] if released is not None else torch.stack([s[:, :n] for s in sources.values()]).sum(0)
        if self.targets is not None:
            groups = [MUSDB_GROUPS.get(t, (t,)) for t in self.targets]
            return x, torch.stack([torch.stack([sources[s][:, :n] for s in g]).sum(0) for g in groups])
        y = torch.stack([sources[name][:, :n] for name in self.target_sources]).sum(0)
        return x, y


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class MusdbTrack(NamedTuple):
    """One track of a MUSDB18 folder as listed, before any audio is read."""

    name: str
    path: Path  # the .stem.mp4, or (MUSDB18-HQ) the folder's mixture.wav
    is_wav: bool
    sources: Dict[str, Path]  # MUSDB18-HQ: each source's wav, present or not
    stem_ids: Dict[str, int]  # .stem.mp4: the audio stream of each source and of the mixture


def musdb_layout(root: Path, subsets: str = "train", split: Optional[str] = "train",
                 is_wav: bool = False) -> List[MusdbTrack]:
    """The tracks of a MUSDB18 (or, ``is_wav``, MUSDB18-HQ) folder, in the ``musdb`` package's order and
    with its train/valid split and stream numbers (its ``mus.yaml``), without opening any file.

    The ``musdb`` package probes each track's file with ffprobe as it lists them (the ``.stem.mp4``, or
    MUSDB18-HQ's ``mixture.wav``: 94 probes, 12 s, for the 7-second preview's train folder), which each
    training run would pay before its first step; what the files hold is checked where they are read.
    """
    try:
        import musdb
        import yaml
    except ImportError as exc:
        raise DatasetError("the musdb dataset needs the musdb package: pip install 'openunmix-like[musdb]'") from exc
    with open(Path(musdb.__path__[0]) / "configs" / "mus.yaml") as f:
        setup = yaml.safe_load(f)
    if split is not None and subsets != "train":
        raise DatasetError(f"{root}: MUSDB's {split} split is part of the train subset, not {subsets!r}")
    valid = set(setup["validation_tracks"])
    folder = Path(root) / subsets
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name) if folder.is_dir() else []
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot list it ({exc.strerror or exc})") from None
    tracks = []
    for entry in entries:
        if is_wav:
            if not entry.is_dir():
                continue
            name = entry.name
        elif entry.name.endswith(".stem.mp4"):
            name = entry.name[: -len(".stem.mp4")]
        else:
            continue
        if split is not None and (split == "valid") != (name in valid):
            continue
        if is_wav:
            tracks.append(MusdbTrack(name, entry / setup["mixture"], True,
                                     {src: entry / file for src, file in setup["sources"].items()}, {}))
        else:
            tracks.append(MusdbTrack(name, entry, False, {}, dict(setup["stem_ids"])))
    return tracks


class TargetView(torch.utils.data.Dataset):
    """One target of a data set whose items hold stacked targets: ``(mixture, targets[index])``."""

    def __init__(self, dataset: _Base, index: int):
        self.dataset, self.index = dataset, index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int) -> Pair:
        x, y = self.dataset[item]
        return x, y[self.index]

    @property
    def preloaded(self) -> Optional[Preloaded]:
        return self.dataset.preloaded

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def iter_mixtures(self, limit: int = 1000, whole_tracks: bool = False) -> Iterator[Tensor]:
        return self.dataset.iter_mixtures(limit, whole_tracks)


# ---------------------------------------------------------------- default file and folder names

# What soundfile reads, so what the folder datasets can use.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".w64", ".au", ".caf")


def _audio_files(track: Path) -> List[Path]:
    return sorted(p for p in track.iterdir()
                  if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not hidden(p, track))


def default_track_files(root, target: str, target_file: Optional[str] = None,
                        interferer_files: Optional[Sequence[str]] = None) -> Tuple[str, List[str]]:
    """The ``trackfolder_fix`` file names a track folder implies, where they are not given.

    The target file is ``<target>.<ext>`` (any audio extension; the first
    training track folder holding the target decides which), the interferers
    the other audio files, except a ``mixture.*``, that at least half of the
    track folders holding the target have: a track folder lacking one of them is
    then reported and left out by the data set, rather than the file being
    dropped from every mixture; files only a few folders have are reported.

    Raises:
        DatasetError: no track folder holds the target, or one holds it twice.
    """
    folder = Path(root) / "train"
    if not folder.is_dir():
        raise DatasetError(f"{folder}: missing; trackfolder_fix needs {Path(root)}/train and {Path(root)}/valid "
                           f"holding track folders with {target}.<ext> and the other sources (or name the files "
                           "with --target-file and --interferer-files)")
    chosen: Optional[str] = None
    counts: Dict[str, int] = {}
    holding = 0
    for track in track_dirs(folder):
        files = _audio_files(track)
        if chosen is None:
            if target_file is None:
                matches = [p.name for p in files if p.stem == target]
                if len(matches) > 1:
                    raise DatasetError(f"{track}: {', '.join(matches)} all could be the {target!r} target; "
                                       "name one with --target-file")
                if not matches:
                    continue
                chosen = matches[0]
            elif (track / target_file).is_file():
                chosen = target_file
            else:
                continue
        if not (track / chosen).is_file():
            continue
        holding += 1
        for p in files:
            if p.name != chosen and p.stem.lower() != "mixture":
                counts[p.name] = counts.get(p.name, 0) + 1
    if chosen is None:
        wanted = target_file or f"{target}.<ext> ({', '.join(s[1:] for s in AUDIO_SUFFIXES)})"
        raise DatasetError(f"{folder}: no track folder holds {wanted}; name the target file with --target-file "
                           "and the others with --interferer-files")
    if interferer_files is not None:
        return chosen, list(interferer_files)
    common = sorted(name for name, n in counts.items() if 2 * n >= holding)
    rare = sorted(name for name, n in counts.items() if 2 * n < holding)
    if rare:
        log.warning("%s: %s in fewer than half of the %d track folders, left out of the mixtures (name the "
                    "sources with --interferer-files to choose)", folder, ", ".join(rare), holding)
    return chosen, common


def default_source_dirs(root, target: str, target_dir: Optional[str] = None,
                        interferer_dirs: Optional[Sequence[str]] = None) -> Tuple[str, List[str]]:
    """The ``sourcefolder`` folder names, where they are not given: ``<target>/`` holds the
    target's files and every other folder of ``<root>/train`` is an interferer.

    Raises:
        DatasetError: ``<root>/train/<target>`` does not exist.
    """
    folder = _split_dir(root, "train")
    chosen = target_dir or target
    if not (folder / chosen).is_dir():
        raise DatasetError(f"{folder / chosen}: missing; the sourcefolder layout needs a folder per source "
                           "(or name the target's folder with --target-dir)")
    if interferer_dirs is not None:
        return chosen, list(interferer_dirs)
    others = [d.name for d in track_dirs(folder) if d.name != chosen]
    if not others:
        raise DatasetError(f"{folder}: {chosen}/ is the only source folder; the mixture needs interferers "
                           "(add their folders, or name them with --interferer-dirs)")
    return chosen, others
