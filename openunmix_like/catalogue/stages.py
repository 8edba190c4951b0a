"""The three stages of a catalogue run, as plain functions and one class.

:mod:`.engine` runs them as Ray tasks (decode, write) and actors (separate);
nothing here imports Ray, so each stage can be tested and reused on its own.
Every failure a user can cause leaves a stage as :class:`StageError`, which
names the stage and carries a one-line reason for ``_failures.csv``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import storage
from ..errors import OpenUnmixLikeError, shown
from ..fileio import no_room_in_temporary_folder, temporary_folder
from . import records

# Decode and write tasks run in processes of their own, which import this module and no torch (it takes
# seconds, and about 180 MB in each): only the separation actor needs it.
if TYPE_CHECKING:
    import torch


class StageError(OpenUnmixLikeError):
    """A track failed in one stage; ``stage`` is ``decode``, ``separate`` or ``write``."""

    def __init__(self, stage: str, source: str, reason: str):
        reason = str(reason)
        if reason.startswith(f"{source}: "):  # library errors already name the file
            reason = reason[len(source) + 2:]
        # Printable: Ray kills the worker whose task raises a message it cannot encode (a name not UTF-8).
        reason = shown(records.one_line(reason))
        super().__init__(f"{shown(source)}: {stage} failed: {reason}")
        self.stage, self.source, self.reason = stage, source, reason

    def __reduce__(self):  # Ray sends exceptions between processes by pickling them
        return StageError, (self.stage, self.source, self.reason)


class NotShared(StageError):
    """The node running a stage does not see the driver's local ``--outdir``: what it wrote would land on its
    own disk, out of the driver's sight. Stops the run (every track that node writes would be lost)."""

    def __init__(self, source: str, outdir: str, host: str):
        super().__init__("write", source, f"--outdir {outdir} is not shared with node {host}")
        self.outdir, self.host = outdir, host

    def __reduce__(self):
        return NotShared, (self.source, self.outdir, self.host)


@dataclasses.dataclass(frozen=True)
class Track:
    """One input and where its outputs go.

    ``stems`` maps each output stem name to its final path or URL; ``done`` is
    the ``_done.json`` path or URL, written last.
    """

    source: str
    name: str
    input_size: int
    stems: Dict[str, str]
    done: str


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A decoded track, or (``audio`` None) word that it is long and is streamed by the separation actor."""

    audio: Optional[np.ndarray]  # (nb_channels, nb_timesteps) float32
    sample_rate: int
    channel_map: Optional[Tuple[int, ...]] = None  # the input's speakers (5.1, ...), for its stems


@dataclasses.dataclass(frozen=True)
class Separated:
    """A track's stems, or (``stems`` None) the record of a long track the actor already wrote."""

    stems: Optional[np.ndarray]  # (nb_targets, nb_channels, nb_timesteps) float32
    sample_rate: int
    record: Optional[dict] = None
    channel_map: Optional[Tuple[int, ...]] = None


@dataclasses.dataclass(frozen=True)
class Options:
    """What the stages need to know of the command line (small, sent with every task)."""

    start: float
    duration: Optional[float]
    segment: Optional[float]
    overlap: float
    batch_segments: Optional[int]
    keep_model_rate: bool
    aggregate: Optional[dict]
    ext: str
    bits: int
    clip: str
    model: str
    model_sha256: str
    settings: dict
    storage_options: Optional[dict] = None
    stream_over: Optional[float] = None  # seconds; longer tracks are streamed inside the actor
    mp3_bitrate: Optional[int] = None  # kbit/s, with ext "mp3"
    # A hidden file the driver keeps in a local --outdir while it runs: a node that does not see it would write
    # the stems onto a disk of its own (the folder is not shared), so it writes nothing.
    shared_marker: Optional[str] = None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OpenUnmixLikeError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc}"


def decode(track: Track, options: Options) -> Decoded:
    """Read (the excerpt of) one input into memory, downloading it first when it is a URL."""
    from ..audio import AudioSource

    if not storage.is_url(track.source) and not os.path.exists(track.source):  # the driver found it: not shared?
        raise StageError("decode", track.source, f"not found on node {socket.gethostname()}, though the driver found "
                         "it when the run started: moved since, or not shared with that node (inputs must be "
                         "reachable from every node: use a folder every node mounts, or an s3:// URL)")
    try:
        with storage.local_copy(track.source, options.storage_options) as local:
            with AudioSource(local, start=options.start, duration=options.duration) as source:
                if options.stream_over is not None and source.nb_frames > options.stream_over * source.sample_rate:
                    return Decoded(None, source.sample_rate, source.channel_map)
                audio = source.read_array(0, source.nb_frames)
                return Decoded(audio, source.sample_rate, source.channel_map)
    except Exception as exc:
        raise StageError("decode", track.source, _reason(exc)) from None


def decode_or_error(track: Track, options: Options) -> Union[Decoded, StageError]:
    """:func:`decode`, returning its failure instead of raising it: a track that shares a
    separation call with others must not fail them (:meth:`SeparationWorker.separate_group`)."""
    try:
        return decode(track, options)
    except StageError as exc:
        return exc


class SeparationWorker:
    """Holds one separator (loaded once) and separates decoded tracks with it.

    Tracks that :func:`decode` found longer than ``Options.stream_over`` come
    without audio: the worker reads, separates and stores them piece by piece.

    The model comes with each call and is loaded by the first one: a restarted
    worker (its process was killed) loads it again without help from the driver.

    Args:
        device: ``cpu`` or ``cuda``.
        threads: torch's intra-op threads on the CPU (the CPUs this worker holds).
    """

    def __init__(self, device: str = "cpu", threads: int = 1):
        import torch

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.device = device
        self.separator = None

    def _load(self, model) -> None:
        import torch

        separator = model() if callable(model) and not isinstance(model, torch.nn.Module) else model
        self.separator = separator.to(self.device).eval()

    def separate(self, track: Track, decoded: Decoded, options: Options, model) -> Separated:
        """The track's stems at the output rate (the input's, or the model's with ``keep_model_rate``).

        ``model``: the :class:`~openunmix_like.separator.Separator`, or a function without
        arguments returning it (the engine's fetches the driver's model from Ray's object
        store, so worker nodes need no model files); used by the first call only.
        """
        import torch

        from ..inference import iter_separate

        try:
            if self.separator is None:
                self._load(model)
            out_rate = self._out_rate(decoded.sample_rate, options)
            if decoded.audio is None:
                return Separated(None, out_rate, self._stream(track, out_rate, options))
            audio = shared_tensor(decoded.audio)
            chunks = [c.cpu() for c in iter_separate(self.separator, audio, decoded.sample_rate,
                                                     options.segment or None, options.overlap,
                                                     out_rate=out_rate, batch_segments=options.batch_segments)]
            return Separated(torch.cat(chunks, dim=-1).numpy(), int(out_rate), channel_map=decoded.channel_map)
        except NotShared:
            raise
        except Exception as exc:
            raise StageError("separate", track.source, _reason(exc)) from None

    def separate_group(self, tracks: Sequence[Track], options: Options, model,
                       *decoded: Union[Decoded, StageError]) -> Union[Separated, StageError, tuple]:
        """Several tracks in one call: their segments of equal length share batches.

        Each track's result (:class:`Separated`, or the :class:`StageError` of its
        decode or separation, returned rather than raised so that one bad track
        does not fail the others) comes in the order of ``tracks``; a single track's
        alone, for a Ray call with one return. Long tracks are streamed one by one.
        When separating them together fails, each track is separated on its own,
        so the failure lands on the track that causes it.
        """
        results: List[Union[Separated, StageError, None]] = [None] * len(tracks)
        together = []
        for i, (track, item) in enumerate(zip(tracks, decoded)):
            if isinstance(item, StageError):
                results[i] = item
            elif item.audio is None or len(tracks) == 1:
                results[i] = self._separate_or_error(track, item, options, model)
            else:
                together.append(i)
        if together:
            try:
                for i, separated in zip(together, self._separate_together([decoded[i] for i in together], options,
                                                                          model)):
                    results[i] = separated
            except Exception:
                for i in together:
                    results[i] = self._separate_or_error(tracks[i], decoded[i], options, model)
        return results[0] if len(tracks) == 1 else tuple(results)

    def _out_rate(self, rate: int, options: Options) -> int:
        """The stems' rate: the input's, or the model's with ``keep_model_rate``."""
        return int(self.separator.sample_rate) if options.keep_model_rate else rate

    def _separate_or_error(self, track: Track, decoded: Decoded, options: Options, model):
        try:
            return self.separate(track, decoded, options, model)
        except StageError as exc:
            return exc

    def _separate_together(self, decoded: Sequence[Decoded], options: Options, model) -> List[Separated]:
        from ..inference import separate_tracks

        if self.separator is None:
            self._load(model)
        rates = [item.sample_rate for item in decoded]
        out_rates = [self._out_rate(rate, options) for rate in rates]
        stems = separate_tracks(self.separator, [shared_tensor(item.audio) for item in decoded], rates,
                                options.segment or None, options.overlap, out_rates, options.batch_segments)
        return [Separated(s.cpu().numpy(), int(rate), channel_map=item.channel_map)
                for s, rate, item in zip(stems, out_rates, decoded)]

    def _stream(self, track: Track, out_rate: int, options: Options) -> dict:
        """Decode, separate and store a long track piece by piece, as ``--engine local`` does (bounded memory)."""
        from ..audio import AudioSource
        from ..inference import iter_separate

        with storage.local_copy(track.source, options.storage_options) as local:
            with AudioSource(local, start=options.start, duration=options.duration) as source:
                chunks = iter_separate(self.separator, source, source.sample_rate, options.segment or None,
                                       options.overlap, out_rate=out_rate, batch_segments=options.batch_segments)
                return store(track, (c.cpu() for c in chunks), out_rate, source.nb_channels,
                             self.separator.target_names, options, source.channel_map)

    def pid(self) -> int:
        import os

        return os.getpid()


def shared_tensor(array) -> torch.Tensor:
    """A tensor on ``array``'s memory. Ray hands arrays out of its object store read-only, which torch warns
    of (under --verbose the user saw it once per track); nothing here writes to them."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.as_tensor(array)


# Frames of whole stems handed to the writer at a time (2 MB of stereo float32 a stem).
BLOCK_FRAMES = 1 << 18


def blocks_of(stems: np.ndarray) -> Iterator[np.ndarray]:
    """``(nb_targets, nb_channels, n)`` stems as consecutive views of at most :data:`BLOCK_FRAMES` frames, so that
    the writer's per-chunk work (peak, aggregation, the contiguous copy libsndfile needs) stays that size."""
    for start in range(0, max(stems.shape[-1], 1), BLOCK_FRAMES):
        yield stems[..., start:start + BLOCK_FRAMES]


def write(track: Track, separated: Separated, target_names, options: Options) -> dict:
    """Encode and store every stem (each one atomically), then the ``_done.json`` record; return it.

    ``target_names``: the separator's targets, in the order of ``separated.stems``
    (``--aggregate`` sums them into the stems of ``track.stems``).
    """
    if isinstance(separated, StageError):  # its decode or separation failed (separate_group returns failures)
        raise separated
    if separated.record is not None:  # a long track, stored by its actor
        return separated.record
    try:
        stems = separated.stems
        return store(track, blocks_of(stems), separated.sample_rate, stems.shape[1], target_names, options,
                     separated.channel_map)
    except NotShared:
        raise
    except Exception as exc:
        raise StageError("write", track.source, _reason(exc)) from None


def check_shared(track: Track, options: Options) -> None:
    """Raise :class:`NotShared` when this node does not see the driver's ``Options.shared_marker``."""
    if options.shared_marker is not None and not os.path.exists(options.shared_marker):
        raise NotShared(track.source, os.path.dirname(options.shared_marker), socket.gethostname())


def store(track: Track, chunks, rate: int, nb_channels: int, target_names, options: Options,
          channel_map: Optional[Tuple[int, ...]] = None) -> dict:
    """Encode ``(nb_targets, nb_channels, n)`` chunks into the track's stems, store them, then ``_done.json``;
    ``channel_map``: the input's speakers (:class:`openunmix_like.writer.StemWriter`).

    An earlier ``_done.json`` is removed before the first stem is replaced, so that a run stopped midway
    leaves no record describing stems it replaced. Local stems and their record are written while other
    runs writing the same track wait (:meth:`~openunmix_like.writer.StemWriter.finish`), so that the
    record always describes the stems beside it, whichever run wrote them last.
    """
    from ..naming import aggregate_estimates
    from ..writer import DiskFull, StemWriter

    check_shared(track, options)
    names, frames = list(target_names), 0
    remote = any(storage.is_url(url) for url in track.stems.values())
    # Stems bound for object storage are written in the temporary folder first, then uploaded.
    folder = Path(tempfile.mkdtemp(prefix="umx-stems-", dir=temporary_folder())) if remote else None
    record: Dict[str, object] = {}

    def drop_record() -> None:
        storage.remove(track.done, options.storage_options)

    def write_record() -> None:
        described = {name: {"path": track.stems[name], "sha256": records.file_sha256(path),
                            "bytes": path.stat().st_size} for name, path in local.items()}
        if remote:
            drop_record()
            for name, path in local.items():
                storage.put_file(path, track.stems[name], options.storage_options)
        record.update(records.make_record(track.source, track.input_size, options.model, options.model_sha256,
                                          options.settings, described, frames / rate, int(rate),
                                          writer.rescaled_db))
        storage.write_bytes(track.done, (json.dumps(record, indent=2) + "\n").encode(), options.storage_options)

    try:
        local = ({name: folder / f"{name}.{options.ext}" for name in track.stems} if remote
                 else {name: Path(url) for name, url in track.stems.items()})
        with StemWriter(local, rate, nb_channels, options.ext, options.bits, options.clip,
                        options.mp3_bitrate, channel_map=channel_map) as writer:
            for chunk in chunks:
                writer.write(aggregate_estimates(dict(zip(names, chunk)), options.aggregate))
                frames += chunk.shape[-1]
            if remote:
                writer.finish()
            else:
                writer.finish(before=drop_record, after=write_record)
        if remote:  # object storage has no locks: the stems are uploaded, then their record
            write_record()
    except DiskFull as exc:
        if folder is None:
            raise
        raise OpenUnmixLikeError(no_room_in_temporary_folder(folder.parent, "the stems before their upload")) from exc
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return record
