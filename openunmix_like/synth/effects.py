"""Per-stem effects for the synthetic corpus: EQ, compression, drive, panning, reverb.

Every effect takes and returns float32 arrays of shape ``(channels, time)``.
Random settings are drawn by :func:`random_chain` so that a stem's processing
is a plain, reproducible function of the song's random generator.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np
from scipy import signal


def biquad(kind: str, freq: float, sample_rate: int, q: float = 0.707,
           gain_db: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Second-order filter coefficients ``(b, a)`` after the RBJ audio-EQ formulas.

    ``kind`` is one of ``lowpass``, ``highpass``, ``peak``, ``lowshelf``, ``highshelf``.
    """
    w = 2 * np.pi * min(freq, 0.45 * sample_rate) / sample_rate
    cos, sin = np.cos(w), np.sin(w)
    alpha = sin / (2 * q)
    amp = 10 ** (gain_db / 40)
    if kind == "lowpass":
        b = [(1 - cos) / 2, 1 - cos, (1 - cos) / 2]
        a = [1 + alpha, -2 * cos, 1 - alpha]
    elif kind == "highpass":
        b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
        a = [1 + alpha, -2 * cos, 1 - alpha]
    elif kind == "peak":
        b = [1 + alpha * amp, -2 * cos, 1 - alpha * amp]
        a = [1 + alpha / amp, -2 * cos, 1 - alpha / amp]
    elif kind in ("lowshelf", "highshelf"):
        sq = 2 * np.sqrt(amp) * alpha
        sign = 1 if kind == "lowshelf" else -1
        b = [amp * ((amp + 1) - sign * (amp - 1) * cos + sq),
             sign * 2 * amp * ((amp - 1) - sign * (amp + 1) * cos),
             amp * ((amp + 1) - sign * (amp - 1) * cos - sq)]
        a = [(amp + 1) + sign * (amp - 1) * cos + sq,
             -sign * 2 * ((amp - 1) + sign * (amp + 1) * cos),
             (amp + 1) + sign * (amp - 1) * cos - sq]
    else:
        raise ValueError(f"unknown filter kind {kind!r}")
    b, a = np.asarray(b, float), np.asarray(a, float)
    return b / a[0], a / a[0]


def equalize(x: np.ndarray, sample_rate: int, bands: List[Tuple[str, float, float, float]]) -> np.ndarray:
    """Apply ``(kind, freq, q, gain_db)`` filters in series."""
    y = x.astype(np.float64)
    for kind, freq, q, gain in bands:
        b, a = biquad(kind, freq, sample_rate, q, gain)
        y = signal.lfilter(b, a, y, axis=-1)
    return y.astype(np.float32)


def compressor_gain(x: np.ndarray, sample_rate: int, threshold_db: float, ratio: float,
                    attack: float = 0.01, release: float = 0.15, knee_db: float = 6.0) -> np.ndarray:
    """Gain curve (linear, one value per sample) of a stereo-linked feed-forward compressor.

    The level is an RMS detector smoothed with a fast one-pole filter (attack)
    and a slow one (release); taking the larger of the two lets the gain drop
    quickly on peaks and recover slowly, as an attack/release detector does.
    Half the median gain reduction is given back as make-up gain.
    """
    power = np.mean(x.astype(np.float64) ** 2, axis=0)
    smooth = []
    for tau in (attack, release):
        k = np.exp(-1.0 / (tau * sample_rate))
        smooth.append(signal.lfilter([1 - k], [1, -k], power))
    level = 10 * np.log10(np.maximum(np.maximum(*smooth), 1e-12))
    over = level - threshold_db
    # Soft knee: quadratic between -knee/2 and +knee/2 around the threshold.
    reduction = np.where(over <= -knee_db / 2, 0.0,
                         np.where(over >= knee_db / 2, over, (over + knee_db / 2) ** 2 / (2 * knee_db)))
    gain_db = -reduction * (1 - 1 / ratio)
    active = level > -70
    makeup = -np.median(gain_db[active]) if active.any() else 0.0
    return (10 ** ((gain_db + 0.5 * makeup) / 20)).astype(np.float32)


def compress(x: np.ndarray, sample_rate: int, threshold_db: float, ratio: float, **kwargs) -> np.ndarray:
    """Apply :func:`compressor_gain` to ``x``."""
    return (x * compressor_gain(x, sample_rate, threshold_db, ratio, **kwargs)).astype(np.float32)


def drive(x: np.ndarray, amount: float) -> np.ndarray:
    """Soft saturation; ``amount`` 0 leaves the signal unchanged."""
    if amount <= 0:
        return x
    peak = float(np.max(np.abs(x))) or 1.0
    g = 1 + 8 * amount
    return (np.tanh(g * x / peak) / np.tanh(g) * peak).astype(np.float32)


def pan(x: np.ndarray, position: float, width: float = 1.0) -> np.ndarray:
    """Constant-power pan of a stereo signal to ``position`` in [-1, 1], scaling its width."""
    mid = (x[0] + x[1]) / 2
    side = (x[0] - x[1]) / 2 * width
    angle = (position + 1) * np.pi / 4
    left, right = np.cos(angle) * np.sqrt(2), np.sin(angle) * np.sqrt(2)
    return np.stack([(mid + side) * left, (mid - side) * right]).astype(np.float32)


def reverb_ir(sample_rate: int, rt60: float, predelay: float, damping: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic stereo room response: decorrelated noise with an exponential decay.

    High frequencies decay faster than low ones (``damping`` in 0..1 sets how
    much faster), and a few early reflections precede the diffuse tail.
    """
    n = int(sample_rate * (rt60 * 1.2 + predelay)) + 1
    t = np.arange(n) / sample_rate
    noise = rng.standard_normal((2, n))
    b, a = biquad("lowpass", 3000.0, sample_rate)
    low = signal.lfilter(b, a, noise, axis=-1)
    high = noise - low
    decay_low = np.exp(-6.91 * t / rt60)
    decay_high = np.exp(-6.91 * t / (rt60 * (1 - 0.7 * damping)))
    ir = low * decay_low + high * decay_high
    start = int(predelay * sample_rate)
    ir[:, :start] = 0
    fade = min(int(0.005 * sample_rate), n - start)
    ir[:, start:start + fade] *= np.linspace(0, 1, fade)
    for _ in range(6):  # early reflections
        tap = start + int(rng.uniform(0.002, 0.04) * sample_rate)
        if tap < n:
            ir[rng.integers(2), tap] += rng.uniform(2, 6) * rng.choice([-1, 1])
    ir /= np.sqrt(np.sum(ir ** 2, axis=-1, keepdims=True))
    return ir.astype(np.float32)


def reverb(x: np.ndarray, ir: np.ndarray, wet: float) -> np.ndarray:
    """Mix a convolution reverb into ``x`` (stereo) at ``wet`` (0..1)."""
    if wet <= 0:
        return x
    length = x.shape[-1]
    mono = x.mean(axis=0)
    tail = np.stack([signal.oaconvolve(mono, ir[c])[:length] for c in range(2)])
    return ((1 - wet) * x + wet * tail).astype(np.float32)


@dataclass
class Chain:
    """Settings of one stem's (or accompaniment part's) effects, drawn by :func:`random_chain`."""

    eq: List[Tuple[str, float, float, float]] = field(default_factory=list)
    threshold_db: float = -20.0
    ratio: float = 1.0
    drive: float = 0.0
    rt60: float = 0.5
    predelay: float = 0.01
    damping: float = 0.5
    wet: float = 0.0

    def apply(self, x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        y = drive(x, self.drive)
        y = equalize(y, sample_rate, self.eq)
        if self.ratio > 1:
            y = compress(y, sample_rate, self.threshold_db, self.ratio)
        if self.wet > 0:
            y = reverb(y, reverb_ir(sample_rate, self.rt60, self.predelay, self.damping, rng), self.wet)
        return y


def random_chain(rng: np.random.Generator, kind: str) -> Chain:
    """Plausible random settings for a stem of ``kind`` (vocals, drums, bass, other)."""
    eq = []
    if kind != "bass":
        eq.append(("highpass", float(rng.uniform(40, 140)), 0.707, 0.0))
    eq.append(("lowshelf", float(rng.uniform(80, 250)), 0.707, float(rng.uniform(-4, 4))))
    eq.append(("peak", float(np.exp(rng.uniform(np.log(300), np.log(5000)))), float(rng.uniform(0.5, 2)),
               float(rng.uniform(-5, 5))))
    eq.append(("highshelf", float(rng.uniform(4000, 10000)), 0.707, float(rng.uniform(-4, 4 if kind != "bass" else 0))))
    if kind == "bass":
        eq.append(("lowpass", float(rng.uniform(2500, 9000)), 0.707, 0.0))
    wet_range = {"vocals": (0.08, 0.35), "drums": (0.0, 0.2), "bass": (0.0, 0.06), "other": (0.05, 0.3)}[kind]
    return Chain(
        eq=eq,
        threshold_db=float(rng.uniform(-30, -12)),
        ratio=float(rng.choice([1.0, rng.uniform(1.5, 6)], p=[0.2, 0.8])),
        drive=float(rng.choice([0.0, rng.uniform(0.05, 0.4)], p=[0.8, 0.2])),
        rt60=float(rng.uniform(0.3, 2.5)),
        predelay=float(rng.uniform(0.0, 0.05)),
        damping=float(rng.uniform(0.2, 0.9)),
        wet=float(rng.uniform(*wet_range)) if rng.random() < 0.85 else 0.0,
    )
