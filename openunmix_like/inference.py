"""Separating whole tracks of any length, at any sample rate.

Long inputs are cut into overlapping segments that are separated one after the
other and cross-faded with complementary raised-cosine ramps, so memory does
not grow with the track's length. Each segment is resampled to the model's rate
and back, so the track itself is never resampled as a whole.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from . import level
from .audio import MAX_PEAK, MAX_RATE, MIN_RATE  # the limits audio files are checked against too
from .audio import TensorSource  # noqa: F401 - part of this module's interface
from .progress import bar as progress_bar
from .separator import (Separator, WienerSettings, aggregate_estimates, check_aggregate, check_device,
                        check_wiener_keywords, resolve_precision)
from .settings import DEFAULT_OVERLAP, DEFAULT_SEGMENT, check_segmenting  # noqa: F401 - part of this module's interface


@dataclasses.dataclass(frozen=True)
class Segment:
    """One piece of a long input.

    The segment reads input samples ``[in_start, in_end)`` and produces output
    samples ``[start, end)`` (output rate); it is responsible for the output in
    ``[core_start, core_end)`` and gives context beyond that to the model.
    ``frame_offset`` is the model-rate STFT frame at which it starts.
    """

    in_start: int
    in_end: int
    start: int
    end: int
    core_start: int
    core_end: int
    frame_offset: int


def plan_segments(
    nb_timesteps: int,
    sample_rate: float,
    model_rate: float,
    n_hop: int,
    wiener_win_len: Optional[int],
    segment: Optional[float],
    overlap: float,
    out_rate: Optional[float] = None,
) -> List[Segment]:
    """Cut a track into segments whose STFT frames and Wiener windows fall on the
    whole track's grid (exactly when the input is at the model's rate).

    Cores are whole multiples of ``n_hop * wiener_win_len`` model samples, close
    to ``segment`` seconds; each segment extends ``overlap / 2`` seconds beyond
    its core on both sides. Output positions are at ``out_rate`` (default: the
    input's rate).
    """
    check_segmenting(segment, overlap)
    out_rate = sample_rate if out_rate is None else out_rate
    nb_out = int(round(nb_timesteps * out_rate / sample_rate))
    if not segment or nb_timesteps <= segment * sample_rate:
        return [Segment(0, nb_timesteps, 0, nb_out, 0, nb_out, 0)]
    grid = n_hop * (wiener_win_len or 1)
    step = max(1, round(segment * model_rate / grid)) * grid
    context = math.ceil(overlap / 2 * model_rate / n_hop) * n_hop
    total = math.ceil(nb_timesteps * model_rate / sample_rate)

    def to_in(m: int) -> int:
        return min(nb_timesteps, int(round(m * sample_rate / model_rate)))

    def to_out(m: int) -> int:
        return min(nb_out, int(round(m * out_rate / model_rate)))

    plan = []
    for core in range(0, total, step):
        start, end = max(0, core - context), core + step + context
        plan.append(Segment(to_in(start), to_in(end), to_out(start), to_out(end),
                            to_out(core), to_out(core + step), start // n_hop))
    last = plan[-1]
    if len(plan) > 1 and last.core_end - last.core_start <= last.core_start - last.start:
        # A tail shorter than the context: let the previous segment take it.
        prev = plan[-2]
        plan[-2:] = [Segment(prev.in_start, last.in_end, prev.start, last.end,
                             prev.core_start, last.core_end, prev.frame_offset)]
    return plan


def crossfade_ramp(length: int, dtype=torch.float32) -> Tensor:
    """Fade-in weights over ``length`` samples; ``1 - ramp`` is the matching fade-out."""
    t = (torch.arange(length, dtype=torch.float64) + 0.5) / max(length, 1)
    return torch.sin(0.5 * math.pi * t).square().to(dtype)


def matching_gain(separator: Separator, source, sample_rate: float) -> float:
    """The gain that brings a track to ``separator.input_level`` (1 without level matching, or for silence),
    measured in one extra pass over ``source`` (a :class:`TensorSource` or an ``AudioSource``)."""
    target = getattr(separator, "input_level", None)
    if target is None:
        return 1.0
    return level.matching_gain(level.source_level(source, sample_rate), target)


def _separate_segments(separator: Separator, pieces: List[Tensor], segments: Sequence[Segment], rate: float,
                       out_rate: float, gains: Optional[Sequence[float]] = None) -> List[Tensor]:
    """Separate several segments, batching those of equal length into one call of the separator.

    Args:
        pieces: each segment's input ``(nb_channels, n)`` at ``rate``.
        gains: each segment's level-matching gain (:func:`matching_gain`): the separator sees the
            segment turned by it, and its estimate is turned back.

    Returns:
        each segment's ``(nb_targets, nb_channels, end - start)`` at ``out_rate``.
    """
    from .audio import resample

    device = next(separator.parameters()).device
    model_rate = separator.sample_rate
    inputs = [resample(piece, rate, model_rate) for piece in pieces]
    by_shape: Dict[tuple, List[int]] = {}
    for i, x in enumerate(inputs):
        by_shape.setdefault(tuple(x.shape), []).append(i)
    results: List[Optional[Tensor]] = [None] * len(inputs)
    for members in by_shape.values():
        batch = torch.stack([inputs[i] for i in members]).to(device)
        scale = None if gains is None or all(gains[i] == 1.0 for i in members) else \
            torch.tensor([gains[i] for i in members], dtype=batch.dtype).view(-1, 1, 1)
        if scale is not None:  # in place, on the stacked copy: no second copy of the input or output
            batch.mul_(scale.to(batch.device))
        est = separator(batch, frame_offset=[segments[i].frame_offset for i in members]).cpu()
        if scale is not None:
            est.div_(scale.to(est.dtype).unsqueeze(-1))
        for j, i in enumerate(members):
            results[i] = _fit(resample(est[j], model_rate, out_rate), segments[i].end - segments[i].start)
    return results


def _fit(est: Tensor, length: int) -> Tensor:
    if est.shape[-1] < length:
        est = torch.nn.functional.pad(est, (0, length - est.shape[-1]))
    return est[..., :length]


def auto_batch_segments(separator: Separator, segment: Optional[float]) -> int:
    """How many segments to separate at once: one on the CPU, whose models are bound by
    arithmetic, not by their sequential frames (batches of 2 and 4 measured no faster there,
    docs/benchmarks.md), and on a GPU as many segments as fit in a quarter of its free memory
    (at most 32; counting what torch's allocator holds unused), where one segment leaves most of the
    device idle."""
    device = next(separator.parameters()).device
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    # Memory torch's allocator holds but does not use is free to this process too: without it, a call
    # after a large one (a benchmark's timed call after its warm-up) would pick a smaller batch.
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    # A whole 600 s forward of four umxhq models peaked at 7.6 GB on an H200 (0.38 GB per 30 s);
    # twice that per segment leaves room for the models' own activations at larger widths.
    per_segment = 0.76e9 * (segment or DEFAULT_SEGMENT) / 30.0
    return int(max(1, min(32, 0.25 * free // per_segment)))


def _batch_size(separator: Separator, batch_segments: Optional[int], segment: Optional[float]) -> int:
    if batch_segments is not None and (isinstance(batch_segments, bool) or
                                       not isinstance(batch_segments, numbers.Integral) or batch_segments < 1):
        raise ValueError(f"batch_segments must be at least 1, a whole number of segments (or None: automatic), "
                         f"got {batch_segments!r}")
    return batch_segments or auto_batch_segments(separator, segment)


def iter_separate(
    separator: Separator,
    audio,
    sample_rate: float,
    segment: Optional[float] = DEFAULT_SEGMENT,
    overlap: float = DEFAULT_OVERLAP,
    progress: bool = False,
    desc: Optional[str] = None,
    out_rate: Optional[float] = None,
    batch_segments: Optional[int] = None,
) -> Iterator[Tensor]:
    """Separate ``audio`` segment by segment, yielding finished consecutive chunks.

    ``batch_segments`` consecutive segments are read and separated at once (those
    of equal length as one batch through each model), so memory is bounded by
    that many segments, whatever the track's length. Batching changes no result
    beyond float rounding: the segments are the same either way.

    Args:
        separator: a :class:`Separator` (any device).
        audio: ``(nb_channels, nb_timesteps)`` tensor at ``sample_rate``, or an
            :class:`~openunmix_like.audio.AudioSource`.
        sample_rate: the audio's rate.
        segment: approximate segment length in seconds; ``None`` or 0
            separates in one go.
        overlap: seconds shared by consecutive segments; the output is
            cross-faded over the middle half of each shared part.
        progress: show a tqdm bar of the seconds of audio done, in whole
            seconds (``110/133 s``); it ends on the total.
        out_rate: rate of the yielded chunks (default ``sample_rate``).
        batch_segments: segments separated at once; ``None``: :func:`auto_batch_segments`.

    Yields:
        ``(nb_targets, nb_channels, n)`` chunks whose concatenation along the
        last axis is the separated track.
    """
    source = TensorSource(audio) if isinstance(audio, Tensor) else audio
    gain = matching_gain(separator, source, sample_rate)
    out_rate = sample_rate if out_rate is None else out_rate
    plan = plan_segments(source.nb_frames, sample_rate, separator.sample_rate, separator.n_hop,
                         separator.wiener_win_len, segment, overlap, out_rate)
    batch = _batch_size(separator, batch_segments, segment)
    total, done = plan[-1].end, 0

    def seconds(frames: int) -> int:
        # Whole seconds of the frames done so far (not a sum of rounded chunk lengths: that drifts).
        return round(frames / out_rate)

    with torch.inference_mode(), progress_bar(progress, total=seconds(total), unit="s", desc=desc, leave=False) as bar:
        for chunk in _stitch(plan, _separated(separator, source, plan, sample_rate, out_rate, batch, gain)):
            done += chunk.shape[-1]
            bar.update(seconds(done) - bar.n)
            if done >= total:
                bar.refresh()  # show the total, even within tqdm's minimum interval of the last update
            yield chunk


def _stitch(plan: List[Segment], estimates: Iterable[Tensor]) -> Iterator[Tensor]:
    """Cross-fade the estimates of ``plan``'s segments, given in order, into consecutive finished chunks."""
    emitted, pending = 0, None
    for k, (seg, est) in enumerate(zip(plan, estimates)):
        a = emitted - seg.start
        if pending is not None:
            n = pending.shape[-1]
            ramp = crossfade_ramp(n, est.dtype)
            est[..., a : a + n] = pending * (1 - ramp) + est[..., a : a + n] * ramp
        if k + 1 == len(plan):
            yield est[..., a:]
        else:
            half = min(seg.end - seg.core_end, seg.core_end - plan[k + 1].start) // 2
            cut = seg.core_end - half - seg.start
            chunk, pending = est[..., a:cut], est[..., cut : cut + 2 * half].clone()
            emitted = seg.core_end - half
            yield chunk


def _separated(separator: Separator, source, plan: List[Segment], rate: float, out_rate: float,
               batch: int, gain: float = 1.0) -> Iterator[Tensor]:
    """The estimate of each segment of ``plan`` in order, separated ``batch`` at a time.

    A reader thread decodes the next batch's input while this one is separated (decoding
    releases the GIL), so the separator does not wait for the disk or the decoder.
    """
    from concurrent.futures import ThreadPoolExecutor

    groups = [plan[first : first + batch] for first in range(0, len(plan), batch)]

    def read(group: List[Segment]) -> List[Tensor]:
        return [source.read(seg.in_start, seg.in_end) for seg in group]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="umx-read") as reader:
        upcoming = reader.submit(read, groups[0])
        for g, group in enumerate(groups):
            pieces = upcoming.result()
            if g + 1 < len(groups):
                upcoming = reader.submit(read, groups[g + 1])
            yield from _separate_segments(separator, pieces, group, rate, out_rate, [gain] * len(group))


def separate_tensor(
    separator: Separator,
    audio: Tensor,
    sample_rate: float,
    segment: Optional[float] = DEFAULT_SEGMENT,
    overlap: float = DEFAULT_OVERLAP,
    progress: bool = False,
    batch_segments: Optional[int] = None,
) -> Tensor:
    """Separate one track held in memory: ``(nb_channels, nb_timesteps)`` ->
    ``(nb_targets, nb_channels, nb_timesteps)`` at the same rate."""
    chunks = list(iter_separate(separator, audio, sample_rate, segment, overlap, progress,
                                batch_segments=batch_segments))
    return torch.cat(chunks, dim=-1)


def separate_tracks(
    separator: Separator,
    tracks: Sequence[Tensor],
    sample_rates: Sequence[float],
    segment: Optional[float] = DEFAULT_SEGMENT,
    overlap: float = DEFAULT_OVERLAP,
    out_rates: Optional[Sequence[float]] = None,
    batch_segments: Optional[int] = None,
) -> List[Tensor]:
    """Separate several tracks held in memory, batching segments across tracks.

    Each track is cut into the same segments as :func:`iter_separate` would cut
    it; segments of equal length from any of the tracks (the first segments of
    tracks at one rate, the full-length middle ones) go through the models
    ``batch_segments`` at a time. Short tracks, which have few segments each,
    thus fill batches that one track alone could not. Each result equals that
    of :func:`separate_tensor` on its track beyond float rounding.

    Args:
        tracks: ``(nb_channels, nb_timesteps)`` tensors (lengths and rates may differ).
        sample_rates: each track's rate.
        out_rates: each result's rate (default: its track's).
        batch_segments: segments separated at once; ``None``: :func:`auto_batch_segments`.

    Returns:
        per track, ``(nb_targets, nb_channels, n)`` at its output rate.
    """
    if len(sample_rates) != len(tracks) or (out_rates is not None and len(out_rates) != len(tracks)):
        raise ValueError("separate_tracks: give one sample rate (and output rate) per track")
    out_rates = list(sample_rates) if out_rates is None else list(out_rates)
    batch = _batch_size(separator, batch_segments, segment)
    gains = [matching_gain(separator, TensorSource(track), rate) for track, rate in zip(tracks, sample_rates)]
    plans = [plan_segments(track.shape[-1], rate, separator.sample_rate, separator.n_hop, separator.wiener_win_len,
                           segment, overlap, out_rate)
             for track, rate, out_rate in zip(tracks, sample_rates, out_rates)]
    # Segments that can share a batch: same input rate, length and channels, same output rate.
    groups: Dict[tuple, List[Tuple[int, int]]] = {}
    for t, plan in enumerate(plans):
        for k, seg in enumerate(plan):
            key = (sample_rates[t], out_rates[t], tracks[t].shape[0], seg.in_end - seg.in_start)
            groups.setdefault(key, []).append((t, k))
    estimates: List[List[Optional[Tensor]]] = [[None] * len(plan) for plan in plans]
    with torch.inference_mode():
        for (rate, out_rate, _, _), jobs in groups.items():
            for first in range(0, len(jobs), batch):
                members = jobs[first : first + batch]
                segments = [plans[t][k] for t, k in members]
                pieces = [tracks[t][..., seg.in_start : seg.in_end] for (t, _), seg in zip(members, segments)]
                found = _separate_segments(separator, pieces, segments, rate, out_rate, [gains[t] for t, _ in members])
                for (t, k), est in zip(members, found):
                    estimates[t][k] = est
        return [torch.cat(list(_stitch(plan, found)), dim=-1) for plan, found in zip(plans, estimates)]


def separate(
    audio: Tensor,
    sample_rate: float,
    model: Union[str, Path, Separator, None] = None,
    targets: Optional[Sequence[str]] = None,
    wiener: Optional[WienerSettings] = None,
    aggregate: Optional[Mapping[str, Sequence[str]]] = None,
    segment: Optional[float] = DEFAULT_SEGMENT,
    overlap: float = DEFAULT_OVERLAP,
    device: Union[str, torch.device, None] = None,
    progress: bool = False,
    batch_segments: Optional[int] = None,
    precision: Optional[str] = None,
    input_level: Union[str, float, None] = "auto",
    **wiener_options,
) -> Dict[str, Tensor]:
    """Separate audio in one call.

    Args:
        audio: ``(nb_timesteps,)``, ``(nb_channels, nb_timesteps)`` or
            ``(nb_samples, nb_channels, nb_timesteps)`` at ``sample_rate``.
        sample_rate: the audio's rate in Hz; estimates come back at this rate.
        model: a :class:`Separator`, a model name or folder, or ``None`` for
            the bundled model (``targets`` and the Wiener settings then apply).
        targets: subset of the model's targets (default: all); only with a model
            loaded here (a ``ValueError`` with a :class:`Separator`, which has its own).
        wiener, **wiener_options: the Wiener filter's settings (``niter``,
            ``softmask``, ``residual``, ``wiener_win_len``), see :class:`Separator`;
            like ``targets``, only with a model loaded here.
        aggregate: sum groups of targets, see :meth:`Separator.to_dict`.
        segment, overlap, batch_segments: segmented processing (see :func:`iter_separate`).
        device: where to run a model loaded here (default ``cpu``); with a :class:`Separator`,
            only its own device (``separator.to(device)`` moves it). The audio may be on any device;
            the estimates come back on the CPU.
        precision: the target models' arithmetic for a model loaded here (default ``auto``, see
            :meth:`Separator.from_pretrained`); with a :class:`Separator`, only its own.
        input_level: level matching for a model loaded here (``auto``: the model's own, see
            :meth:`Separator.from_pretrained`; a level in dBFS; ``None``: off); each track (each
            sample of a batch) is matched on its own. With a :class:`Separator`, its :attr:`~Separator.input_level`.

    Returns:
        target name -> tensor shaped like ``audio``.

    Example:
        >>> stems = separate(torch.rand(2, 44100 * 5), 44100, model="my-model/")
        >>> stems["vocals"].shape
        torch.Size([2, 220500])
    """
    sample_rate = check_rate(sample_rate)
    audio = check_audio(audio)
    check_aggregate(aggregate)  # before separating, not after
    model = separator_for(model, targets, wiener, device, precision, progress, wiener_options, input_level)
    shape = audio.shape
    batch = audio.reshape((-1,) + shape[-2:]) if audio.dim() == 3 else audio.reshape(1, -1, shape[-1])
    results = [separate_tensor(model, x, sample_rate, segment, overlap, progress, batch_segments)
               for x in batch.float()]
    stacked = torch.stack(results, dim=0)  # (nb_samples, nb_targets, nb_channels, nb_timesteps)
    named = {
        name: stacked[:, j].reshape(shape)
        for j, name in enumerate(model.target_names)
    }
    return aggregate_estimates(named, aggregate)


def separator_for(model: Union[str, Path, Separator, None], targets: Optional[Sequence[str]],
                  wiener: Optional[WienerSettings], device: Union[str, torch.device, None], precision: Optional[str],
                  progress: bool, wiener_options: Mapping,
                  input_level: Union[str, float, None] = "auto") -> Separator:
    """The separator ``model`` names, loaded with these settings; or ``model`` itself when it is a
    :class:`Separator` and none of them is given (a ``ValueError`` otherwise: they would be ignored)."""
    check_wiener_keywords(wiener_options)
    if not isinstance(model, Separator):
        return Separator.from_pretrained(model, targets=targets, device="cpu" if device is None else device,
                                         wiener=wiener, progress=progress,
                                         precision="auto" if precision is None else precision,
                                         input_level=input_level, **wiener_options)
    given = [name for name, value in (("targets", targets), ("wiener", wiener)) if value is not None]
    if not (isinstance(input_level, str) and input_level == "auto"):
        given.append(f"input_level={input_level!r} (set separator.input_level)")
    if device is not None and _same_index(check_device(device)) != _device_of(model):
        given.append(f"device={str(device)!r} (it is on {_device_of(model)}; move it with .to())")
    if precision is not None and resolve_precision(precision, _device_of(model)) != model.precision:
        given.append(f"precision={precision!r} (it runs {model.precision})")
    if given or wiener_options:
        # They would be ignored: the separator's own targets and settings are what it runs.
        raise ValueError(f"{', '.join(given + list(wiener_options))} would not change a Separator passed as "
                         "model; give them when building it (Separator.from_pretrained(name, ...)), or pass "
                         "the model's name or folder as model")
    return model


def _device_of(separator: Separator) -> torch.device:
    return _same_index(next(iter(separator.parameters()), torch.empty(0)).device)


def _same_index(device: torch.device) -> torch.device:
    """``cuda`` as ``cuda:<current>``, so that two names of one device compare equal."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def check_rate(sample_rate) -> Union[int, float]:
    """``sample_rate`` as a Python number (NumPy scalars included).

    Raises:
        AudioError: not a number of Hz from ``MIN_RATE`` to ``MAX_RATE``.
    """
    from .errors import AudioError

    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real) or \
            not math.isfinite(sample_rate) or not MIN_RATE <= sample_rate <= MAX_RATE:
        raise AudioError(f"sample_rate {sample_rate!r}: pass the audio's rate in Hz ({MIN_RATE} to {MAX_RATE})")
    return int(sample_rate) if isinstance(sample_rate, numbers.Integral) else float(sample_rate)


def check_audio(audio) -> Tensor:
    """Validate audio given to :func:`separate` and return it as a float tensor.

    Accepts tensors or arrays shaped ``(nb_timesteps,)``, ``(nb_channels,
    nb_timesteps)`` or ``(nb_samples, nb_channels, nb_timesteps)``; integer PCM
    (uint8, int16, int32) is scaled to [-1, 1).

    Raises:
        AudioError: anything else, with what is wrong and what to pass instead.
    """
    from .errors import AudioError

    if not isinstance(audio, Tensor):
        try:
            audio = torch.as_tensor(np.asarray(audio))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise AudioError(f"audio of type {type(audio).__name__} is not an array of samples ({exc})") from None
    if audio.is_complex() or audio.dtype == torch.bool:
        raise AudioError(f"audio has dtype {audio.dtype}; pass real-valued samples (float or integer PCM)")
    scale = {torch.uint8: 128.0, torch.int16: 32768.0, torch.int32: 2147483648.0}
    if audio.dtype in scale:
        offset = 128.0 if audio.dtype == torch.uint8 else 0.0
        audio = (audio.double() - offset) / scale[audio.dtype]
    elif not audio.is_floating_point():
        raise AudioError(f"audio has dtype {audio.dtype}; pass float samples or uint8/int16/int32 PCM")
    if audio.dim() not in (1, 2, 3):
        raise AudioError(f"audio has shape {tuple(audio.shape)}; pass (nb_timesteps,), (nb_channels, nb_timesteps) "
                         "or (nb_samples, nb_channels, nb_timesteps)")
    if audio.numel() == 0:
        raise AudioError(f"audio has shape {tuple(audio.shape)}: no samples to separate")
    audio = audio.float()
    if not torch.isfinite(audio).all():
        raise AudioError("audio holds NaN or infinite samples; replace them (e.g. torch.nan_to_num) first")
    peak = float(audio.abs().max())
    if peak > MAX_PEAK:
        raise AudioError(f"audio peaks at {peak:.3g}; samples are expected roughly in [-1, 1]: divide by the peak")
    return audio
