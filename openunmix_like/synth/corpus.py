"""Rendering composed songs to MUSDB18-HQ-layout stem folders.

Each track is ``<root>/<split>/<name>/{mixture,vocals,drums,bass,other}.wav``
(44.1 kHz, stereo, 16-bit) plus ``plan.json`` describing what was composed and
when each stem plays. The stems are quantised first and the mixture is their
integer sum, so ``mixture == vocals + drums + bass + other`` holds exactly.
A track is written into a hidden folder and renamed into place when complete;
an interrupted track removes that folder, so an interrupted run leaves no
half-written track and resumes where it stopped. A corpus folder holds songs of
one seed, duration and rate: a run asking for others is refused, not mixed in.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
from scipy.ndimage import maximum_filter1d, minimum_filter1d

from ..fileio import FileInUse, replace_file, write_json_atomic
from ..processes import children_ignore_ctrl_c
from .compose import SongPlan, compose, voice_dict
from .effects import compressor_gain, pan, random_chain
from .fluid import NoteEvent, available_soundfonts, shared_renderer
from .voice import SungNote, SynthError, VoiceSpec, _pyworld, available_voices, random_voice, sing

STEMS = ("vocals", "drums", "bass", "other")
SPLITS = ("train", "valid", "test")
PREROLL = 2.0  # seconds rendered before the excerpt so held notes and reverbs are under way
REFERENCE_DB = -20.0
FADE = 0.01  # seconds of fade-in and fade-out at the cuts
MIN_DURATION = 2 * FADE  # room for the whole fade-in and fade-out
MAX_DURATION = 600.0  # a song is rendered in memory: 600 s peaked at 4.7 GB


@dataclass(frozen=True)
class TrackJob:
    root: str
    split: str
    index: int
    seed: int
    duration: float
    sample_rate: int = 44100
    cache_dir: Optional[str] = None

    @property
    def name(self) -> str:
        return f"synth-{self.split}-{self.index:04d}"

    @property
    def path(self) -> Path:
        return Path(self.root) / self.split / self.name


def check_dependencies() -> Dict[str, List[str]]:
    """Installed soundfonts and voices; raises :class:`SynthError` naming what is missing."""
    fonts = available_soundfonts()
    voices = available_voices()
    _pyworld()  # the vocoder that turns speech into song
    shared_renderer()  # loads libfluidsynth
    return {"soundfonts": fonts, "voices": sorted({f"{v.engine}:{v.name}" for v in voices})}


def _seed_sequence(seed: int, split: str, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, SPLITS.index(split) if split in SPLITS else 99, index])


def _shift(events: Sequence[NoteEvent], offset: float, length: float) -> List[NoteEvent]:
    out = []
    for e in events:
        t = e.time - offset
        if e.pitch < 0:
            out.append(NoteEvent(max(0.0, t), 0.0, e.pitch, e.velocity))
        elif 0 <= t < length:
            out.append(NoteEvent(t, e.duration, e.pitch, e.velocity))
    return out


def _intervals(spans: Sequence[Tuple[float, float]], length: float, gap: float = 0.3) -> List[List[float]]:
    """Union of ``(start, end)`` spans clipped to ``[0, length]``, merging gaps below ``gap``."""
    spans = sorted((max(0.0, a), min(length, b)) for a, b in spans if b > 0 and a < length)
    merged: List[List[float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [[round(a, 3), round(b, 3)] for a, b in merged]


def _level(x: np.ndarray, sample_rate: int) -> float:
    """RMS in dB over the 50 ms blocks that are not silent (the stem's playing level)."""
    block = int(0.05 * sample_rate)
    n = x.shape[-1] // block
    if n == 0:
        return -120.0
    power = np.mean(x[:, :n * block].reshape(x.shape[0], n, block) ** 2, axis=(0, 2))
    loud = power[power > 1e-8]
    return float(10 * np.log10(np.mean(loud))) if loud.size else -120.0


def _normalise(x: np.ndarray, sample_rate: int, gain_db: float) -> np.ndarray:
    level = _level(x, sample_rate)
    if level <= -100:
        return x
    return x * np.float32(10 ** ((REFERENCE_DB + gain_db - level) / 20))


def render_track(plan: SongPlan, duration: float, offset: float, sample_rate: int,
                 rng: np.random.Generator, cache_dir: Optional[str] = None) -> Tuple[Dict[str, np.ndarray], Dict]:
    """Render the excerpt ``[offset, offset + duration)`` of ``plan`` to float stems.

    Returns the stems (``(2, samples)`` arrays) and the activity intervals, in
    seconds, where each stem has notes.
    """
    n = int(round(duration * sample_rate))
    pre = min(PREROLL, offset)
    total = n + int(round(pre * sample_rate))
    start = offset - pre
    renderer = shared_renderer(sample_rate)
    stems = {s: np.zeros((2, total), np.float32) for s in STEMS}
    activity: Dict[str, List] = {s: [] for s in STEMS}
    for part in plan.parts:
        events = _shift(part.events, start, total / sample_rate)
        notes = [e for e in events if e.pitch >= 0]
        if not notes:
            continue
        audio = renderer.render(events, total, part.soundfont, part.program, drums=part.drums)
        if part.stem == "other":
            audio = pan(audio, part.pan, part.width)
            audio = random_chain(rng, "other").apply(audio, sample_rate, rng)
        audio = _normalise(audio, sample_rate, part.gain_db if part.stem == "other" else 0.0)
        stems[part.stem] += audio
        activity[part.stem] += [(e.time - pre, e.time - pre + e.duration) for e in notes]
    for line in plan.vocals:
        notes = [SungNote(x.start - start, x.duration, x.pitch, x.word) for x in line.notes
                 if 0 <= x.start - start < total / sample_rate]
        if not notes:
            continue
        mono = sing(notes, VoiceSpec(**line.voice), total, sample_rate, rng=rng, cache_dir=cache_dir)
        stereo = pan(np.stack([mono, mono]).astype(np.float32), line.pan, 1.0)
        stems["vocals"] += stereo * np.float32(10 ** (line.gain_db / 20))
        activity["vocals"] += [(x.start - pre, x.start - pre + x.duration) for x in notes]
    gains = {"vocals": rng.uniform(-2, 4), "drums": rng.uniform(-3, 3), "bass": rng.uniform(-4, 2),
             "other": rng.uniform(-3, 3)}
    for stem in STEMS:
        if stem != "other":  # the accompaniment parts had their own chains
            stems[stem] = random_chain(rng, stem).apply(stems[stem], sample_rate, rng)
        stems[stem] = _normalise(stems[stem], sample_rate, float(gains[stem]))[:, total - n:]
    fade = int(FADE * sample_rate)
    ramp = np.linspace(0, 1, fade, dtype=np.float32)
    for stem in STEMS:
        stems[stem][:, :fade] *= ramp
        stems[stem][:, -fade:] *= ramp[::-1]
    intervals = {s: _intervals(activity[s], duration) for s in STEMS}
    return stems, {"intervals": intervals, "gains_db": {k: round(float(v), 2) for k, v in gains.items()}}


def master(stems: Dict[str, np.ndarray], sample_rate: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Bus compression of the mix, applied as the same gain curve to every stem.

    A gain that multiplies all stems alike keeps the mixture their sum, as a
    mastering compressor on the summed mix would sound.
    """
    mix = sum(stems.values())
    gain = compressor_gain(mix, sample_rate, threshold_db=_level(mix, sample_rate) - float(rng.uniform(2, 10)),
                           ratio=float(rng.uniform(1.5, 4)), attack=0.003, release=float(rng.uniform(0.08, 0.3)))
    mix = mix * gain
    # Peak limiter: reduce the loudest peaks by 2-6 dB with a 5 ms look-around gain.
    envelope = maximum_filter1d(np.max(np.abs(mix), axis=0), int(0.005 * sample_rate))
    ceiling = float(envelope.max()) * 10 ** (-float(rng.uniform(2, 6)) / 20)
    limit = minimum_filter1d(np.minimum(1.0, ceiling / np.maximum(envelope, 1e-9)), int(0.01 * sample_rate))
    window = int(0.005 * sample_rate)
    limit = np.convolve(limit, np.ones(window) / window, mode="same")
    gain = (gain * limit).astype(np.float32)
    return {k: v * gain for k, v in stems.items()}


def quantise_mix(stems: Dict[str, np.ndarray], peak: float) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Scale the mix to ``peak``, quantise each stem to 16 bits and sum them exactly."""
    mix = sum(stems.values())
    top = float(np.max(np.abs(mix))) or 1.0
    top_stem = max(float(np.max(np.abs(v))) for v in stems.values()) or 1.0
    scale = min(peak / top, 0.99 / top_stem) * 32767  # no stem may clip either
    ints = {k: np.round(v * scale).astype(np.int32) for k, v in stems.items()}
    mixture = sum(ints.values())
    if np.max(np.abs(mixture)) > 32767:  # cannot happen for peak <= 0.99: rounding adds at most 2 LSB
        raise ValueError(f"mix peak {peak} leaves no room for rounding")
    return {k: v.astype(np.int16) for k, v in ints.items()}, mixture.astype(np.int16)


def _excerpt_times(summary: Dict, offset: float, duration: float) -> Dict:
    """Section starts in the excerpt's time (sections entirely outside it left out)."""
    sections = summary["sections"]
    ends = [s["start"] for s in sections[1:]] + [float("inf")]
    summary["sections"] = [dict(s, start=round(s["start"] - offset, 3)) for s, end in zip(sections, ends)
                           if end > offset and s["start"] < offset + duration]
    return summary


def _settings(job: TrackJob) -> Dict:
    """What, besides the split and index, decides a track's audio, under its ``plan.json`` names."""
    return {"corpus_seed": job.seed, "duration": job.duration, "sample_rate": job.sample_rate}


def inventory() -> Dict[str, List[str]]:
    """The soundfonts and singing engines songs are drawn from here: with another set installed, the
    same seed draws other songs, so a corpus records them (``plan.json``) and keeps to one set."""
    return {"soundfonts": available_soundfonts(), "voice_engines": sorted({v.engine for v in available_voices()})}


def _check_inventory(plan_file: Path, meta: Dict, here: Dict[str, List[str]], root: str) -> None:
    made = {key: meta[key] for key in here if key in meta}  # plans made before they were recorded have none
    if made and made != {key: here[key] for key in made}:
        def listed(kinds: Dict[str, List[str]]) -> str:
            return "; ".join(f"{key.replace('_', ' ')} {', '.join(names) or 'none'}" for key, names in kinds.items())

        raise SynthError(f"{plan_file}: the songs in {root} were drawn from {listed(made)}, but this machine has "
                         f"{listed(here)}; the same seed would draw other songs here. Install the same set "
                         "(scripts/install-synth-deps.sh), or give another folder")


def _seconds(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _describe(settings: Dict) -> str:
    return (f"seed {settings['corpus_seed']}, duration {_seconds(settings['duration'])} s, "
            f"rate {settings['sample_rate']} Hz")


def _check_plan(job: TrackJob, plan_file: Path) -> Dict:
    """The complete track's plan; :class:`SynthError` when it was made with other settings than ``job``'s."""
    try:
        meta = json.loads(plan_file.read_text())
        made = {key: meta[key] for key in _settings(job)}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SynthError(f"{plan_file}: not a plan.json of umx-synth ({exc}); remove {plan_file.parent} "
                         "to make that song again") from exc
    if made != _settings(job):
        raise SynthError(f"{plan_file}: the songs in {job.root} were made with {_describe(made)}, not "
                         f"{_describe(_settings(job))}; give another folder, or remove {job.root} to make them "
                         f"again (rerun with --seed {made['corpus_seed']} --duration "
                         f"{_seconds(made['duration'])} to complete that corpus)")
    _check_inventory(plan_file, meta, inventory(), job.root)
    return meta


def make_track(job: TrackJob) -> Dict:
    """Compose, render and write one track (skipped when already complete).

    Raises :class:`SynthError` when a complete track is there that was made
    with another seed, duration or rate.
    """
    final = job.path
    if (final / "plan.json").is_file():
        return _check_plan(job, final / "plan.json")
    began = time.perf_counter()
    seq = _seed_sequence(job.seed, job.split, job.index)
    compose_rng, voice_rng, mix_rng = (np.random.default_rng(s) for s in seq.spawn(3))
    here = inventory()
    fonts = here["soundfonts"]
    voice = voice_dict(random_voice(voice_rng))
    plan = compose(compose_rng, job.duration * 2.0 + 8.0, fonts, voice, seed=job.seed)
    offset = float(compose_rng.uniform(0, max(0.0, plan.length - job.duration - 1.0)))
    stems, info = render_track(plan, job.duration, offset, job.sample_rate, mix_rng, job.cache_dir)
    stems = master(stems, job.sample_rate, mix_rng)
    ints, mixture = quantise_mix(stems, float(mix_rng.uniform(0.6, 0.95)))
    meta = {"name": job.name, "split": job.split, "index": job.index, "corpus_seed": job.seed,
            "duration": job.duration, "sample_rate": job.sample_rate, **here, "offset": round(offset, 3),
            **_excerpt_times(plan.summary(), offset, job.duration), **info,
            "render_seconds": round(time.perf_counter() - began, 2)}
    _write_track(final, ints, mixture, meta, job.sample_rate)
    return meta


def _write_track(final: Path, ints: Dict[str, np.ndarray], mixture: np.ndarray, meta: Dict,
                 sample_rate: int) -> None:
    """Write the track into a hidden folder and rename it to ``final`` when complete."""
    tmp = final.parent / f".{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed outright
    try:
        tmp.mkdir(parents=True)
        sf.write(tmp / "mixture.wav", mixture.T, sample_rate, subtype="PCM_16")
        for stem in STEMS:
            sf.write(tmp / f"{stem}.wav", ints[stem].T, sample_rate, subtype="PCM_16")
        write_json_atomic(tmp / "plan.json", meta)
        _replace_folder(tmp, final)
    except BaseException:  # Ctrl+C, a stopped worker or a failed write: no half-written track stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_folder(tmp: Path, final: Path) -> None:
    """Rename the folder ``tmp`` to ``final``; an incomplete track there is moved aside whole first, so that one
    whose files cannot be removed (open in another program, on Windows) stays as it was, never half-deleted."""
    if not final.exists():
        os.replace(tmp, final)
        return
    aside = final.parent / f".{final.name}.replaced"
    shutil.rmtree(aside, ignore_errors=True)  # left by a run killed outright
    try:
        replace_file(final, aside, name=final)
    except FileInUse as exc:
        raise SynthError(f"cannot be replaced ({exc.strerror}); is a file in it open in another program? Close it "
                         "and run the same command again") from None
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def check_request(counts: Dict[str, int], seed: int, duration: float) -> None:
    """:class:`SynthError` naming the option when no corpus could be made with these numbers."""
    for split in SPLITS:
        if counts.get(split, 0) < 0:
            raise SynthError(f"--{split} {counts[split]}: give a number of songs of 0 or more")
    if seed < 0:
        raise SynthError(f"--seed {seed}: give a seed of 0 or more")
    if not math.isfinite(duration):
        raise SynthError(f"--duration {duration}: give a finite number of seconds per song, "
                         f"{_seconds(MIN_DURATION)} to {_seconds(MAX_DURATION)}")
    if duration < MIN_DURATION:
        raise SynthError(f"--duration {_seconds(duration)}: a song lasts at least {_seconds(MIN_DURATION)} s "
                         f"(its {_seconds(FADE * 1000)} ms fade-in and fade-out); give a longer --duration")
    if duration > MAX_DURATION:
        raise SynthError(f"--duration {_seconds(duration)}: a song lasts at most {_seconds(MAX_DURATION)} s "
                         "(songs are rendered in memory: 600 s take about 5 GB); give a shorter --duration")


def check_root(jobs: Sequence[TrackJob]) -> None:
    """:class:`SynthError` when the corpus folder cannot take ``jobs``: a file in the way, or songs made otherwise.

    Every complete song already in the folder, requested or not, must have
    the jobs' seed, duration and rate: a folder is one corpus.
    """
    if not jobs:
        return
    root = Path(jobs[0].root)
    if root.exists() and not root.is_dir():
        raise SynthError(f"{root}: is a file, not a folder; give a folder for the corpus")
    for split in SPLITS:
        folder = root / split
        if folder.exists() and not folder.is_dir():
            raise SynthError(f"{folder}: is a file, where the {split} songs' folder goes; move it away or give "
                             "another folder")
        for plan_file in sorted(folder.glob(f"synth-{split}-*/plan.json")) if folder.is_dir() else []:
            _check_plan(jobs[0], plan_file)


def plan_jobs(root: str, counts: Dict[str, int], seed: int, duration: float,
              sample_rate: int = 44100, cache_dir: Optional[str] = None) -> List[TrackJob]:
    """One job per song; :class:`SynthError` for numbers no corpus could be made with (see :func:`check_request`)."""
    check_request(counts, seed, duration)
    return [TrackJob(str(root), split, index, seed, float(duration), sample_rate, cache_dir)
            for split in SPLITS for index in range(counts.get(split, 0))]


def _init_worker() -> None:
    """Workers leave Ctrl+C to the main process, which stops them with SIGTERM (see :func:`generate`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_worker)


def _stop_worker(signum, frame) -> None:
    # A second SIGTERM must not cut the cleanup short: the pool sends one to every worker as soon as it sees
    # one of them gone, which can be while this one removes its partial folder (which then stayed).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)  # unwinds the song in hand, which removes its partial folder


def _make_track_in_worker(job: TrackJob) -> Dict:
    try:
        return make_track(job)
    except SystemExit as exc:  # stopped: leave now instead of reporting back and taking the next song
        os._exit(exc.code if isinstance(exc.code, int) else 1)


def generate(jobs: Sequence[TrackJob], workers: int = 1) -> Iterator[Tuple[TrackJob, Optional[Dict], Optional[str]]]:
    """Make every job, yielding ``(job, plan, error)`` as tracks finish.

    With several workers, Ctrl+C (a ``KeyboardInterrupt`` here) or closing the
    generator stops them at once; the songs in hand are abandoned and leave
    nothing behind, the finished ones stay.
    """
    if workers <= 1:
        for job in jobs:
            try:
                yield job, make_track(job), None
            except (SynthError, OSError, ValueError, RuntimeError) as exc:
                yield job, None, str(exc)
        return
    ctx = multiprocessing.get_context("spawn")
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)
    futures = {}
    try:
        with children_ignore_ctrl_c():  # a worker still starting must not die of Ctrl+C on the terminal
            futures = {pool.submit(_make_track_in_worker, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                yield job, future.result(), None
            except (SynthError, OSError, ValueError, RuntimeError) as exc:
                yield job, None, str(exc)
    except BaseException:
        for future in futures:
            future.cancel()
        for process in set(multiprocessing.active_children()) - before:
            process.terminate()  # SIGTERM: the worker removes its partial folder and exits
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
