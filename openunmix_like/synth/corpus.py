"""Rendering composed songs to MUSDB18-HQ-layout stem folders.

Each track is ``<root>/<split>/<name>/{mixture,vocals,drums,bass,other}.wav``
(44.1 kHz, stereo, 16-bit) plus ``plan.json`` describing what was composed and
when each stem plays. The stems are quantised first and the mixture is their
integer sum, so ``mixture == vocals + drums + bass + other`` holds exactly.
A track is written into a hidden folder and renamed into place when complete,
so an interrupted run leaves no half-written track and resumes where it stopped.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
from scipy.ndimage import maximum_filter1d, minimum_filter1d

from ..fileio import write_json_atomic
from .compose import SongPlan, compose, voice_dict
from .effects import compressor_gain, pan, random_chain
from .fluid import NoteEvent, available_soundfonts, shared_renderer
from .voice import SungNote, SynthError, VoiceSpec, _pyworld, available_voices, random_voice, sing

STEMS = ("vocals", "drums", "bass", "other")
SPLITS = ("train", "valid", "test")
PREROLL = 2.0  # seconds rendered before the excerpt so held notes and reverbs are under way
REFERENCE_DB = -20.0


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
    fade = int(0.01 * sample_rate)
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


def make_track(job: TrackJob) -> Dict:
    """Compose, render and write one track (skipped when already complete)."""
    final = job.path
    if (final / "plan.json").is_file():
        return json.loads((final / "plan.json").read_text())
    began = time.perf_counter()
    seq = _seed_sequence(job.seed, job.split, job.index)
    compose_rng, voice_rng, mix_rng = (np.random.default_rng(s) for s in seq.spawn(3))
    fonts = available_soundfonts()
    voice = voice_dict(random_voice(voice_rng))
    plan = compose(compose_rng, job.duration * 2.0 + 8.0, fonts, voice, seed=job.seed)
    offset = float(compose_rng.uniform(0, max(0.0, plan.length - job.duration - 1.0)))
    stems, info = render_track(plan, job.duration, offset, job.sample_rate, mix_rng, job.cache_dir)
    stems = master(stems, job.sample_rate, mix_rng)
    ints, mixture = quantise_mix(stems, float(mix_rng.uniform(0.6, 0.95)))
    tmp = final.parent / f".{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sf.write(tmp / "mixture.wav", mixture.T, job.sample_rate, subtype="PCM_16")
    for stem in STEMS:
        sf.write(tmp / f"{stem}.wav", ints[stem].T, job.sample_rate, subtype="PCM_16")
    meta = {"name": job.name, "split": job.split, "index": job.index, "corpus_seed": job.seed,
            "duration": job.duration, "sample_rate": job.sample_rate, "offset": round(offset, 3),
            **_excerpt_times(plan.summary(), offset, job.duration), **info,
            "render_seconds": round(time.perf_counter() - began, 2)}
    write_json_atomic(tmp / "plan.json", meta)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return meta


def plan_jobs(root: str, counts: Dict[str, int], seed: int, duration: float,
              sample_rate: int = 44100, cache_dir: Optional[str] = None) -> List[TrackJob]:
    return [TrackJob(str(root), split, index, seed, duration, sample_rate, cache_dir)
            for split in SPLITS for index in range(counts.get(split, 0))]


def generate(jobs: Sequence[TrackJob], workers: int = 1) -> Iterator[Tuple[TrackJob, Optional[Dict], Optional[str]]]:
    """Make every job, yielding ``(job, plan, error)`` as tracks finish."""
    if workers <= 1:
        for job in jobs:
            try:
                yield job, make_track(job), None
            except (SynthError, OSError, ValueError, RuntimeError) as exc:
                yield job, None, str(exc)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {pool.submit(make_track, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                yield job, future.result(), None
            except (SynthError, OSError, ValueError, RuntimeError) as exc:
                yield job, None, str(exc)
