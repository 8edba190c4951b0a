"""Sung vocal lines built from speech synthesisers and the WORLD vocoder.

Each word is spoken once by a text-to-speech engine (espeak-ng, flite or
festival) and analysed with WORLD into voicing, spectral envelope and
aperiodicity. To sing a line, every word is fitted to its note(s): consonants
keep their natural length (leading ones start just before the beat), vowels
stretch or shrink to fill the note. F0 is replaced by the melody with
portamento, delayed vibrato, drift and jitter; the envelope is warped by the
voice's formant shift and continued above the engine's band edge so that the
result has a full-band spectrum; aspiration is added through the
aperiodicity. Phrases are synthesised at the output rate, shaped with gentle
dynamics and preceded by an inhale when there is room.

>>> voice = random_voice(np.random.default_rng(1))
>>> notes = [SungNote(0.5, 0.4, 60, "hello"), SungNote(0.9, 0.8, 64, "world")]
>>> audio = sing(notes, voice, length=44100 * 2)      # mono float32, 2 s
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile as sf
from scipy.signal import butter, sosfilt

from ..errors import OpenUnmixLikeError

INSTALL_HINT = "scripts/install-synth-deps.sh"
FRAME = 0.005  #: WORLD frame period in seconds, for analysis and synthesis
PHRASE_GAP = 0.3  #: a rest longer than this (seconds) starts a new phrase
_F0_RANGE = (60.0, 700.0)  # F0 search range when analysing spoken words
_MAX_LEAD = 0.1  # leading consonants start at most this long before the note
_AIR_DB = -22.0  # level at 8 kHz of the high-band floor, relative to the mean 0-3 kHz level
_DB = np.log(10) / 10  # dB -> natural log of power
_CACHE_SIZE = 256  # word analyses kept in memory (up to ~0.6 MB each)


class SynthError(OpenUnmixLikeError, RuntimeError):
    """A synthesiser, or a system package it needs, is missing or failed."""


@dataclass(frozen=True)
class SungNote:
    """One note of a vocal line; ``word == ""`` holds the previous word's vowel."""

    start: float  # seconds from the start of the song
    duration: float  # seconds
    pitch: float  # MIDI note number
    word: str  # one lowercase English word, or "" (melisma)


@dataclass(frozen=True)
class VoiceSpec:
    """A singer: a TTS engine voice plus timbre and vibrato settings."""

    engine: str  # "espeak" | "flite" | "festival"
    name: str  # engine voice, e.g. "en-us+f3" (espeak) or "slt" (flite)
    formant_shift: float  # spectral-envelope frequency warp factor, ~0.85..1.2
    breathiness: float  # 0..1, aspiration noise mixed into voiced sound
    vibrato_rate: float  # Hz
    vibrato_depth: float  # semitones, peak


@dataclass(frozen=True)
class _Engine:
    binary: str  # executable looked up on PATH
    package: str  # Debian package that provides it
    voices: Tuple[str, ...]  # voices offered by available_voices()
    band_edge: float  # Hz; the engine's output holds little real energy above
    weight: float  # relative probability in random_voice()


_ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
ENGINES: Dict[str, _Engine] = {
    "espeak": _Engine("espeak-ng", "espeak-ng",
                      tuple(f"{lang}+{v}" for lang in ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland")
                            for v in _ESPEAK_VARIANTS), 8000.0, 0.45),
    "flite": _Engine("flite", "flite", ("slt", "rms", "awb", "kal16"), 6800.0, 0.45),
    "festival": _Engine("text2wave", "festival", ("kal_diphone",), 6800.0, 0.1),
}


@dataclass(frozen=True)
class _Word:
    """WORLD analysis of one spoken word, trimmed and level-normalised."""

    logsp: np.ndarray  # (T, bins) spectral envelope in dB, vowel level ~ 0 dB
    ap: np.ndarray  # (T, bins) aperiodicity
    voiced: np.ndarray  # (T,) bool
    weight: np.ndarray  # (T,) how much each frame stretches: 0 consonant .. 1 vowel
    base: np.ndarray  # (T,) natural duration of each frame in frames (< 1 in drawn-out voiced consonants)
    onset: int  # first vowel frame; frames before it are leading consonants
    fs: int
    fft_size: int
    edge: float

    @property
    def lead_frames(self) -> float:
        """Natural duration of the leading consonants, in frames."""
        return float(self.base[:self.onset].sum())


_ANALYSES: "OrderedDict[Tuple[str, str, str], _Word]" = OrderedDict()


def _missing(engine: _Engine) -> str:
    return f"{engine.binary} not found: install the Debian package {engine.package} ({INSTALL_HINT})"


def _pyworld() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation notice
            import pyworld
    except ImportError as exc:
        raise SynthError("pyworld not installed: pip install pyworld (it needs setuptools<81)") from exc
    return pyworld


def available_voices() -> List[VoiceSpec]:
    """Base voice specs (neutral timbre) of every installed TTS engine.

    Raises :class:`SynthError` naming the Debian packages to install when no
    engine is found on ``PATH``.
    """
    specs = [VoiceSpec(key, name, 1.0, 0.15, 5.5, 0.3)
             for key, engine in ENGINES.items() if shutil.which(engine.binary) for name in engine.voices]
    if not specs:
        raise SynthError("; ".join(_missing(e) for e in ENGINES.values()))
    return specs


def random_voice(rng: np.random.Generator) -> VoiceSpec:
    """Draw an installed engine and voice, with random timbre and vibrato."""
    voices = available_voices()
    engines = [key for key in ENGINES if any(v.engine == key for v in voices)]
    weights = np.array([ENGINES[key].weight for key in engines])
    engine = engines[int(rng.choice(len(engines), p=weights / weights.sum()))]
    names = [v.name for v in voices if v.engine == engine]
    return VoiceSpec(engine, names[int(rng.integers(len(names)))],
                     formant_shift=float(rng.uniform(0.88, 1.16)), breathiness=float(rng.uniform(0.05, 0.45)),
                     vibrato_rate=float(rng.uniform(4.8, 6.3)), vibrato_depth=float(rng.uniform(0.15, 0.5)))


# ----------------------------------------------------------------------------------------------------------------
# Speaking and analysing words


def _clean_word(word: str) -> str:
    return re.sub(r"[^a-z0-9']+", "", word.lower()).strip("'") or "ah"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9+_.-]", "_", text)[:80]


def _engine(voice: VoiceSpec) -> _Engine:
    engine = ENGINES.get(voice.engine)
    if engine is None:
        raise SynthError(f"unknown TTS engine {voice.engine!r}; expected one of {sorted(ENGINES)}")
    if voice.engine != "espeak" and voice.name not in engine.voices:
        raise SynthError(f"unknown {voice.engine} voice {voice.name!r}; expected one of {list(engine.voices)}")
    if shutil.which(engine.binary) is None:
        raise SynthError(_missing(engine))
    return engine


def _command(engine: str, binary: str, name: str, word: str, out: str) -> Tuple[List[str], Optional[bytes]]:
    """Command line (and stdin) that speaks ``word`` slowly into the wav file ``out``."""
    if engine == "espeak":
        return [binary, "-v", name, "-s", "120", "-w", out, word], None
    if engine == "flite":
        return [binary, "-voice", name, "--setf", "duration_stretch=1.2", "-t", word, "-o", out], None
    return ([binary, "-o", out, "-eval", f"(begin (voice_{name}) (Parameter.set 'Duration_Stretch 1.2))"],
            word.encode())


def _speak(engine: str, name: str, word: str, cache_dir: Optional[Path]) -> Tuple[np.ndarray, int]:
    """Mono waveform of ``word`` spoken by an engine voice (from the disk cache if there)."""
    spec = ENGINES[engine]
    target = cache_dir / engine / _safe_name(name) / f"{_safe_name(word)}.wav" if cache_dir else None
    if target is not None and target.is_file():
        try:
            x, fs = sf.read(str(target), dtype="float64", always_2d=True)
            return x.mean(axis=1), int(fs)
        except (RuntimeError, sf.LibsndfileError):
            pass  # unreadable (e.g. truncated by a crash): render again
    binary = shutil.which(spec.binary)
    if binary is None:
        raise SynthError(_missing(spec))
    with tempfile.TemporaryDirectory(prefix="umx-voice-") as tmp:
        out = os.path.join(tmp, "word.wav")
        argv, stdin = _command(engine, binary, name, word, out)
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SynthError(f"{spec.binary} failed on {word!r} with voice {name!r}: {exc}") from exc
        if proc.returncode != 0 or not os.path.isfile(out):
            message = proc.stderr.decode(errors="replace").strip()[:300]
            raise SynthError(f"{spec.binary} failed on {word!r} with voice {name!r}: {message}")
        x, fs = sf.read(out, dtype="float64", always_2d=True)
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.{os.getpid()}.part")
            try:
                shutil.copyfile(out, partial)
                os.replace(partial, target)  # atomic: concurrent workers may share the cache
            except BaseException:  # Ctrl+C or a full disk: leave no partial file in the cache
                partial.unlink(missing_ok=True)
                raise
    return x.mean(axis=1), int(fs)


def _analyse(x: np.ndarray, fs: int, edge: float) -> _Word:
    """WORLD analysis of a spoken word, trimmed to its audible part."""
    pw = _pyworld()
    x = np.ascontiguousarray(x, dtype=np.float64)
    if not np.any(np.abs(x) > 1e-4):
        raise SynthError("the TTS engine produced silence")
    f0, times = pw.dio(x, fs, f0_floor=_F0_RANGE[0], f0_ceil=_F0_RANGE[1], frame_period=FRAME * 1000)
    f0 = pw.stonemask(x, f0, times, fs)
    sp = pw.cheaptrick(x, f0, times, fs)
    ap = pw.d4c(x, f0, times, fs, threshold=0.0)  # keep dio's voicing decisions
    fft_size = (sp.shape[1] - 1) * 2
    freqs = np.arange(sp.shape[1]) * fs / fft_size

    def level(lo: float, hi: float) -> np.ndarray:
        return 10 * np.log10(sp[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) + 1e-30)

    energy, mid = level(0, 5000), level(500, 3500)
    voiced = (f0 > 0) & (energy > energy.max() - 40)
    ref = np.percentile(energy[voiced], 90) if voiced.any() else energy.max()
    energy = energy - ref  # 0 dB: the word's vowel level
    mid = mid - (np.percentile(mid[voiced], 90) if voiced.any() else mid.max())
    # trim the engine's leading/trailing silence and breath: keep frames above -30 dB, plus 2 frames either side
    loud = np.flatnonzero(energy > min(-30.0, energy.max() - 10))
    keep = slice(max(loud[0] - 2, 0), loud[-1] + 3)
    sp, ap, voiced, energy, mid = sp[keep], ap[keep], voiced[keep], energy[keep], mid[keep]
    # vowel-ness from the 0.5-3.5 kHz level, where nasals and glides are weak
    weight = np.where(voiced, np.clip((mid + 12) / 8, 0.0, 1.0), 0.0)
    vowels = np.flatnonzero(weight >= 0.6)
    # sung vowels are steadier than spoken ones: pull loud voiced frames most of the way to the vowel level
    steady = np.clip(-0.7 * weight * energy, -8, 8)
    logsp = 10 * np.log10(sp + 1e-30) - ref + steady[:, None]
    # stretch mostly the vowel itself, its nasal or liquid neighbours only a little
    weight = np.where(voiced, np.maximum(weight ** 3, 0.03), 0.0)
    # the engines draw voiced consonants out in isolated words: squeeze each run of them to at most 70 ms
    base = np.ones(len(weight))
    murmur = np.concatenate([[0], (voiced & (weight < 0.03 ** 0.5)).astype(int), [0]])
    for a, b in np.flatnonzero(np.diff(murmur)).reshape(-1, 2):
        base[a:b] = min(1.0, 14 / (b - a))
    return _Word(logsp.astype(np.float32), ap.astype(np.float32), voiced, weight, base,
                 int(vowels[0]) if len(vowels) else 0, fs, fft_size, min(edge, 0.45 * fs))


def _analysis(engine: str, name: str, word: str, cache_dir: Optional[Path]) -> _Word:
    key = (engine, name, word)
    if key in _ANALYSES:
        _ANALYSES.move_to_end(key)
        return _ANALYSES[key]
    x, fs = _speak(engine, name, word, cache_dir)
    try:
        result = _analyse(x, fs, ENGINES[engine].band_edge)
    except SynthError as exc:
        raise SynthError(f"{ENGINES[engine].binary} voice {name!r} on {word!r}: {exc}") from None
    _ANALYSES[key] = result
    while len(_ANALYSES) > _CACHE_SIZE:
        _ANALYSES.popitem(last=False)
    return result


def _to_output_axis(word: _Word, freqs: np.ndarray, shift: float, breathiness: float
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """Envelope (dB) and aperiodicity of ``word`` on the output bins ``freqs``.

    The frequency axis is warped by ``shift``; above the engine's band edge the
    envelope continues the straight line fitted to its top octave (slope held
    to -12..-6 dB/octave) and the aperiodicity turns into noise; above 15 kHz
    everything rolls off steeply. Breathiness raises aperiodicity, mostly in
    the upper bands.
    """
    hz = word.fs / word.fft_size
    edge = word.edge
    query = freqs / shift
    pos = np.minimum(query, edge) / hz
    i0 = np.minimum(pos.astype(int), word.logsp.shape[1] - 2)
    frac = (pos - i0).astype(np.float32)
    env = word.logsp[:, i0] * (1 - frac) + word.logsp[:, i0 + 1] * frac
    ap = word.ap[:, i0] * (1 - frac) + word.ap[:, i0 + 1] * frac

    band = np.arange(int(np.ceil(edge / 2 / hz)), int(edge / hz) + 1)
    octave = np.log2(band * hz / edge)
    centred = octave - octave.mean()
    top = word.logsp[:, band]
    slope = (top - top.mean(axis=1, keepdims=True)) @ centred / (centred @ centred)
    level = top.mean(axis=1) - slope * octave.mean()  # fitted level at the edge
    slope = np.clip(slope, -12.0, -6.0)
    env_ext = level[:, None] + slope[:, None] * np.log2(np.maximum(query, 1.0) / edge)[None]
    ap_top = word.ap[:, band[-max(1, len(band) // 5):]].mean(axis=1)
    ap_ext = 1 - (1 - ap_top)[:, None] * np.exp(-np.maximum(query - edge, 0.0) / 2000)[None]
    blend = np.clip((query - 0.8 * edge) / (0.2 * edge), 0.0, 1.0)[None]
    env = env * (1 - blend) + env_ext * blend
    # "air": a floor tied to each frame's 0-3 kHz level keeps dark TTS vowels from losing their top octaves in any
    # frame, but never rising above the 3-4.5 kHz level (no hissy shelf on voices with a steep tilt)
    def mean_db(lo: float, hi: float) -> np.ndarray:
        power = 10.0 ** (word.logsp[:, int(lo / hz):max(int(lo / hz) + 1, int(hi / hz))] / 10)
        return 10 * np.log10(power.mean(axis=1) + 1e-30)[:, None]

    octaves = np.log2(np.maximum(freqs, 1.0) / 8000)[None]
    floor = np.minimum(mean_db(0, 3000) + _AIR_DB + 6 * breathiness - 6 * octaves,
                       mean_db(3000, 4500) + 3 - 3 * (octaves + 1.1))
    floor -= (20 * np.clip((5000 - freqs) / 2000, 0, 1) ** 0.5 + 200 * (freqs < 3000))[None]
    env = np.logaddexp(env * _DB, floor * _DB) / _DB - 12 * (np.maximum(freqs - 15000, 0) / 3000)[None] ** 2
    ap = ap * (1 - blend) + ap_ext * blend
    aspiration = 0.85 * breathiness * (0.3 + 0.7 * np.clip((freqs - 800) / 3000, 0.0, 1.0))
    ap = 1 - (1 - ap) * (1 - aspiration)[None]
    return env.astype(np.float32), np.clip(ap, 1e-3, 0.999).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Timing


@dataclass
class _Group:
    """A word and the notes it is sung on (the first note plus any "" holds)."""

    word: str
    notes: List[SungNote]
    span: Tuple[int, int] = (0, 0)  # output frames [first, last) the word occupies
    lead: int = 0  # output frames given to its leading consonants

    @property
    def start(self) -> float:
        return self.notes[0].start

    @property
    def end(self) -> float:
        return max(n.start + n.duration for n in self.notes)


def _phrases(notes: Sequence[SungNote]) -> List[List[_Group]]:
    """Notes grouped into words, words into phrases (split at rests > PHRASE_GAP)."""
    phrases: List[List[_Group]] = []
    for note in notes:
        last = phrases[-1][-1] if phrases else None
        if last is not None and note.start - last.end > PHRASE_GAP:
            last = None
            phrases.append([])
        elif last is None:
            phrases.append([])
        if note.word.strip() == "" and last is not None:
            last.notes.append(note)
        else:
            phrases[-1].append(_Group(_clean_word(note.word), [note]))
    return phrases


def _stretch(weight: np.ndarray, base: np.ndarray, target: float) -> np.ndarray:
    """Output durations (natural ones ``base``) summing to ``target``; frames stretch in proportion to ``weight``."""
    natural, total = base.sum(), weight.sum()
    if total == 0:
        return base * (target / natural)
    if target >= natural:
        return base + (target - natural) / total * weight
    squeeze = 0.6 * weight * base  # vowels shrink first, down to 40 % ...
    durations = base - min(1.0, (natural - target) / squeeze.sum()) * squeeze
    return durations * (target / durations.sum())  # ... then everything shrinks alike


def _source_positions(word: _Word, frames: int, lead: int) -> np.ndarray:
    """Fractional source frame for each of ``frames`` output frames.

    The leading consonants fill the first ``lead`` output frames, the rest of
    the word the remainder, vowels taking up the slack.
    """
    n, onset = len(word.voiced), word.onset
    durations = np.empty(n)
    if onset:
        durations[:onset] = word.base[:onset] * (lead / word.base[:onset].sum())
    durations[onset:] = _stretch(word.weight[onset:], word.base[onset:], frames - lead)
    bounds = np.concatenate([[0.0], np.cumsum(np.maximum(durations, 1e-6))])
    pos = np.interp(np.arange(frames) + 0.5, bounds, np.arange(n + 1.0)) - 0.5
    return np.clip(pos, 0, n - 1)


def _place(phrase: List[_Group], words: Dict[str, _Word], earliest: float) -> None:
    """Set each word's output frame span and lead so that its vowel lands on the beat."""
    for k, group in enumerate(phrase):
        onset = int(round(group.start / FRAME))
        if k == 0:
            room = (group.start - earliest) / FRAME
        else:
            prev = phrase[k - 1]
            room = (group.start - prev.end) / FRAME + 0.3 * prev.notes[-1].duration / FRAME
        pre = int(max(0, min(words[group.word].lead_frames, _MAX_LEAD / FRAME, room)))
        group.span = (onset - pre, int(round(group.end / FRAME)))
    for group, following in zip(phrase, phrase[1:] + [None]):
        first, last = group.span
        if following is not None:
            last = min(last, following.span[0])
        last = max(last, first + 2)
        group.span = (first, last)
        onset = int(round(group.start / FRAME))
        note_frames = max(last - onset, 1)
        natural = int(round(words[group.word].lead_frames))
        group.lead = int(min(natural, max(onset - first, 0) + 0.4 * note_frames, last - first - 1))


# ----------------------------------------------------------------------------------------------------------------
# Pitch and level contours


def _smooth_noise(rng: np.random.Generator, n: int, width: float) -> np.ndarray:
    """Gaussian-smoothed white noise of unit standard deviation (``width`` in frames)."""
    half = int(3 * width) + 1
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / width) ** 2)
    kernel /= np.sqrt((kernel ** 2).sum())
    return np.convolve(rng.standard_normal(n + 2 * half), kernel, mode="valid")


def _melody(times: np.ndarray, notes: Sequence[SungNote], voice: VoiceSpec, rng: np.random.Generator
            ) -> Tuple[np.ndarray, np.ndarray]:
    """MIDI pitch per frame (glides, vibrato, drift, jitter) and the vibrato phase in -1..1."""
    starts = np.array([n.start for n in notes])
    ends = np.array([n.start + n.duration for n in notes])
    pitches = np.array([n.pitch for n in notes], dtype=np.float64)
    glides = rng.uniform(0.03, 0.08, len(notes))
    x = np.clip((times[:, None] - starts[None, 1:] + glides[None, 1:] / 2) / glides[None, 1:], 0, 1)
    midi = pitches[0] + (0.5 - 0.5 * np.cos(np.pi * x)) @ np.diff(pitches)
    wobble = np.zeros_like(times)
    after_rest = np.concatenate([[True], starts[1:] - ends[:-1] > 0.05])
    scoops = rng.uniform(0.0, 0.3, len(notes))
    for k, note in enumerate(notes):
        if after_rest[k]:  # approach from slightly below, leading consonants included
            since_rest = ends[k - 1] if k else -np.inf
            near = (times >= max(note.start - _MAX_LEAD, since_rest)) & (times < ends[k])
            midi[near] -= scoops[k] * np.exp(-np.maximum(times[near] - note.start, 0) / 0.06)
        inside = (times >= note.start) & (times < ends[k])
        since = times[inside] - note.start
        if note.duration >= 0.3:
            delay, rate = rng.uniform(0.15, 0.25), voice.vibrato_rate * rng.uniform(0.96, 1.04)
            ramp = np.clip((since - delay) / 0.25, 0, 1) * np.clip((ends[k] - times[inside]) / 0.06, 0, 1)
            phase = rng.uniform(-0.2, 0.2)
            wobble[inside] = ramp * rng.uniform(0.85, 1.1) * np.sin(2 * np.pi * (rate * (since - delay) + phase))
    jitter = np.convolve(rng.standard_normal(len(times)), [0.25, 0.5, 0.25], mode="same")
    midi += voice.vibrato_depth * wobble + 0.08 * _smooth_noise(rng, len(times), 50) + 0.04 * jitter
    return midi, wobble


def _levels_db(times: np.ndarray, notes: Sequence[SungNote], rng: np.random.Generator) -> np.ndarray:
    """Phrase and note dynamics in dB per frame (a few dB either way)."""
    starts = np.array([n.start for n in notes])
    durations = np.array([n.duration for n in notes])
    pitches = np.array([n.pitch for n in notes], dtype=np.float64)
    note_db = rng.uniform(-1.2, 1.2, len(notes)) + np.clip(0.3 * (pitches - np.median(pitches)), -3, 3)
    swell = np.where(durations > 0.5, rng.uniform(-1.5, 1.5, len(notes)), 0.0)
    index = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, len(notes) - 1)
    within = np.clip((times - starts[index]) / durations[index], 0, 1)
    span = np.clip((times - times[0]) / max(times[-1] - times[0], FRAME), 0, 1)
    phrase_db = rng.uniform(-2, 2) + rng.uniform(0, 1.5) * np.sin(np.pi * span) + rng.uniform(-1.5, 1) * span
    return phrase_db + note_db[index] + swell[index] * within + 0.4 * _smooth_noise(rng, len(times), 20)


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _render_phrase(phrase: List[_Group], axes: Dict[str, Tuple[np.ndarray, np.ndarray]],
                   words: Dict[str, _Word], voice: VoiceSpec, sample_rate: int, rng: np.random.Generator
                   ) -> Tuple[int, np.ndarray]:
    """Synthesise one phrase; returns its first sample index and the waveform."""
    pw = _pyworld()
    first = min(g.span[0] for g in phrase) - 2
    first -= first % 2  # even frame: integer sample offset at 44.1 kHz
    count = max(g.span[1] for g in phrase) + 4 - first
    n_bins = next(iter(axes.values()))[0].shape[1]
    env = np.full((count, n_bins), -200.0, dtype=np.float32)
    ap = np.full((count, n_bins), 0.999, dtype=np.float32)
    voiced = np.zeros(count, dtype=bool)
    active = np.zeros(count, dtype=bool)
    for group in phrase:
        a, b = group.span[0] - first, group.span[1] - first
        word = words[group.word]
        pos = _source_positions(word, b - a, group.lead)
        i0 = np.minimum(pos.astype(int), len(word.voiced) - 2) if len(word.voiced) > 1 else np.zeros(b - a, int)
        frac = np.clip(pos - i0, 0, 1).astype(np.float32)[:, None]
        w_env, w_ap = axes[group.word]
        i1 = np.minimum(i0 + 1, len(word.voiced) - 1)
        env[a:b] = w_env[i0] * (1 - frac) + w_env[i1] * frac
        ap[a:b] = w_ap[i0] * (1 - frac) + w_ap[i1] * frac
        voiced[a:b] = word.voiced[np.rint(pos).astype(int)]
        active[a:b] = True

    notes = [n for g in phrase for n in g.notes]
    times = (first + np.arange(count)) * FRAME
    midi, wobble = _melody(times, notes, voice, rng)
    f0 = np.where(voiced, 440.0 * 2.0 ** ((np.clip(midi, 20, 100) - 69) / 12), 0.0)
    level_db = _levels_db(times, notes, rng) + 0.8 * wobble  # slight tremolo with the vibrato
    level = np.where(active, 10 ** (level_db / 20), 0.0)
    hann = np.hanning(7)[1:-1]
    level = np.convolve(level, hann / hann.sum(), mode="same")

    sp = np.ascontiguousarray(10.0 ** (env.astype(np.float64) / 10))
    y = pw.synthesize(f0, sp, np.ascontiguousarray(ap, dtype=np.float64), sample_rate, FRAME * 1000)
    gain = np.interp(np.arange(len(y)) / sample_rate, np.arange(count) * FRAME, level, right=0.0)
    return int(round(first * FRAME * sample_rate)), y * gain


def _breath(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """An inhale: band-passed noise with a rising-falling envelope, unit RMS."""
    pad = 512
    nyquist = sample_rate / 2
    low, high = rng.uniform(400, 700), min(rng.uniform(5000, 7500), 0.9 * nyquist)
    body = sosfilt(butter(2, [low, high], btype="bandpass", fs=sample_rate, output="sos"),
                   rng.standard_normal(n + pad))
    air_band = [min(5000.0, 0.7 * nyquist), min(rng.uniform(9000, 12000), 0.95 * nyquist)]
    air = sosfilt(butter(2, air_band, btype="bandpass", fs=sample_rate, output="sos"), rng.standard_normal(n + pad))
    noise = (body + rng.uniform(0.2, 0.4) * air)[pad:]
    x = np.linspace(0, 1, n)
    envelope = x ** rng.uniform(1.0, 1.6) * (1 - x) ** rng.uniform(0.5, 0.9)
    noise *= envelope / envelope.max()
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def _inhale(out: np.ndarray, phrase: np.ndarray, begin: float, earliest: float, sample_rate: int,
            rng: np.random.Generator) -> None:
    """Add a breath ending just before ``begin`` (seconds) if it fits after ``earliest``.

    Its level is 17-23 dB below the RMS of the sung ``phrase``.
    """
    room = begin - earliest
    if room < 0.3:
        return
    gap = rng.uniform(0.03, 0.08)
    duration = min(rng.uniform(0.3, 0.5), room - gap - 0.02)
    if duration < 0.25:
        return
    sung = phrase[np.abs(phrase) > 1e-6]
    level = np.sqrt(np.mean(sung ** 2)) * 10 ** (-rng.uniform(17, 23) / 20) if len(sung) else 0.0
    breath = _breath(int(duration * sample_rate), sample_rate, rng)
    _add(out, breath * level, int(round((begin - gap - duration) * sample_rate)))


def sing(notes: Sequence[SungNote], voice: VoiceSpec, length: int, sample_rate: int = 44100,
         rng: Optional[np.random.Generator] = None, cache_dir: Union[str, Path, None] = None) -> np.ndarray:
    """Render a sung vocal line.

    Parameters
    ----------
    notes : the line's notes (any order); a note with ``word == ""`` holds the
        previous word's vowel at its own pitch.
    voice : engine voice and timbre, e.g. from :func:`random_voice`.
    length : number of output samples; notes past the end are cut.
    sample_rate : output rate in Hz.
    rng : randomness for expression (vibrato, dynamics, breaths); the output
        is deterministic for a given generator state (``None`` means seed 0).
    cache_dir : folder for an on-disk cache of spoken words, shared safely
        between processes; analyses are always cached in memory.

    Returns
    -------
    Mono float32 array of ``length`` samples, peak 0.5 (all zeros without
    notes), exactly silent outside the sung words and the inhales before phrases.
    """
    if voice.formant_shift <= 0 or not 0 <= voice.breathiness <= 1 or voice.vibrato_rate < 0:
        raise ValueError(f"invalid voice parameters: {voice}")
    if length < 0 or sample_rate < 8000:
        raise ValueError(f"invalid length {length} or sample rate {sample_rate}")
    _engine(voice)
    rng = np.random.default_rng(0) if rng is None else rng
    out = np.zeros(length, dtype=np.float64)
    horizon = length / sample_rate
    usable = sorted((n for n in notes if n.duration > 0 and n.start < horizon and n.start + n.duration > 0),
                    key=lambda n: (n.start, n.pitch))
    phrases = _phrases(usable)
    if not phrases:
        return out.astype(np.float32)
    cache = Path(cache_dir) if cache_dir is not None else None
    names = dict.fromkeys(group.word for phrase in phrases for group in phrase)
    words = {w: _analysis(voice.engine, voice.name, w, cache) for w in names}
    fft_size = _pyworld().get_cheaptrick_fft_size(sample_rate)
    freqs = np.arange(fft_size // 2 + 1) * sample_rate / fft_size
    axes = {w: _to_output_axis(a, freqs, voice.formant_shift, voice.breathiness) for w, a in words.items()}

    audible_end = 0.0
    for phrase in phrases:
        _place(phrase, words, earliest=audible_end)
        offset, y = _render_phrase(phrase, axes, words, voice, sample_rate, rng)
        _inhale(out, y, min(g.span[0] for g in phrase) * FRAME, audible_end, sample_rate, rng)
        _add(out, y, offset)
        audible_end = phrase[-1].span[1] * FRAME + 0.05
    peak = np.max(np.abs(out))
    return (out * (0.5 / peak) if peak > 0 else out).astype(np.float32)


def _add(out: np.ndarray, x: np.ndarray, offset: int) -> None:
    """Add ``x`` into ``out`` starting at sample ``offset``, cropped to ``out``."""
    a, b = max(offset, 0), min(offset + len(x), len(out))
    if b > a:
        out[a:b] += x[a - offset:b - offset]
