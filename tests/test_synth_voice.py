"""Sung vocal lines (openunmix_like.synth.voice): length, determinism, silence, bandwidth, pitch, errors.

These need the espeak-ng and flite Debian packages; without them the tests fail
with the SynthError that names the package to install.
"""
import warnings
from collections import OrderedDict

import numpy as np
import pytest
from scipy.signal import welch

from openunmix_like.synth import voice
from openunmix_like.synth.voice import SungNote, SynthError, VoiceSpec, available_voices, random_voice, sing

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pyworld

SR = 44100
REST = 2.0  # seconds between the two phrases


def _melody():
    """Two phrases on a C major line, a melisma ("" hold) on "young", a long rest between."""
    notes, t = [], 1.0
    for word, pitch, beats in [("the", 60, 1), ("night", 62, 1), ("is", 64, 1), ("young", 65, 2), ("", 67, 1)]:
        notes.append(SungNote(t, 0.3 * beats * 0.95, float(pitch), word))
        t += 0.3 * beats
    t += REST
    for word, pitch, beats in [("and", 67, 1), ("we", 65, 1), ("are", 64, 1), ("free", 60, 3)]:
        notes.append(SungNote(t, 0.3 * beats * 0.95, float(pitch), word))
        t += 0.3 * beats
    return notes, int((t + 0.5) * SR)


NOTES, LENGTH = _melody()
VOICES = {
    "espeak": VoiceSpec("espeak", "en-us+f3", 1.05, 0.25, 5.5, 0.3),
    "flite": VoiceSpec("flite", "slt", 1.0, 0.25, 5.2, 0.3),
}


@pytest.fixture(scope="module", params=sorted(VOICES))
def rendered(request):
    spec = VOICES[request.param]
    return spec, sing(NOTES, spec, LENGTH, SR, rng=np.random.default_rng(7))


@pytest.mark.slow
def test_exact_length_and_level(rendered):
    spec, y = rendered
    assert y.shape == (LENGTH,) and y.dtype == np.float32
    assert np.isfinite(y).all()
    assert 0.45 <= np.abs(y).max() <= 0.55
    for length in (0, 1000, int(1.7 * SR)):  # notes past the end are cut
        assert sing(NOTES, spec, length, SR, rng=np.random.default_rng(0)).shape == (length,)


@pytest.mark.slow
def test_deterministic_for_a_seed(rendered):
    spec, y = rendered
    assert np.array_equal(y, sing(NOTES, spec, LENGTH, SR, rng=np.random.default_rng(7)))
    assert not np.array_equal(y, sing(NOTES, spec, LENGTH, SR, rng=np.random.default_rng(8)))


@pytest.mark.slow
def test_silent_outside_notes_except_breaths(rendered):
    _, y = rendered
    end1 = NOTES[4].start + NOTES[4].duration
    start2, end2 = NOTES[5].start, NOTES[-1].start + NOTES[-1].duration

    def part(a, b):
        return y[int(a * SR):int(b * SR)]

    assert not part(0, NOTES[0].start - 0.7).any()
    assert not part(end1 + 0.05, start2 - 0.7).any()
    assert not part(end2 + 0.05, LENGTH / SR).any()
    sung = np.sqrt(np.mean(part(start2, end2) ** 2))
    breath = np.sqrt(np.mean(part(start2 - 0.7, start2 - 0.1) ** 2))
    assert 0 < breath < 0.3 * sung  # an inhale before the phrase, quieter than the singing


@pytest.mark.slow
def test_energy_above_8khz(rendered):
    _, y = rendered
    freqs, power = welch(y, SR, nperseg=4096)
    assert power[freqs > 8000].sum() / power.sum() > 0.005


@pytest.mark.slow
def test_pitch_follows_melody(rendered):
    _, y = rendered
    x = y.astype(np.float64)
    f0, times = pyworld.dio(x, SR, f0_floor=70, f0_ceil=900, frame_period=5)
    f0 = pyworld.stonemask(x, f0, times, SR)
    errors = []
    for note in NOTES:  # skip the glide into each note and the release
        inside = (times >= note.start + 0.08) & (times < note.start + note.duration - 0.03) & (f0 > 0)
        errors.append(1200 * np.log2(f0[inside] / (440 * 2 ** ((note.pitch - 69) / 12))))
    errors = np.concatenate(errors)
    assert len(errors) > 0.5 * sum(n.duration for n in NOTES) / 0.005  # mostly voiced
    assert np.median(np.abs(errors)) < 50


def test_disk_cache_gives_same_audio(tmp_path, monkeypatch):
    notes = NOTES[:3]
    monkeypatch.setattr(voice, "_ANALYSES", OrderedDict())  # start without in-memory analyses
    first = sing(notes, VOICES["flite"], SR * 3, SR, rng=np.random.default_rng(1), cache_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "flite" / "slt").iterdir()) == ["is.wav", "night.wav", "the.wav"]
    voice._ANALYSES.clear()  # force re-analysis from the cached wavs
    again = sing(notes, VOICES["flite"], SR * 3, SR, rng=np.random.default_rng(1), cache_dir=tmp_path)
    assert np.array_equal(first, again)


def test_random_voice_is_installed_and_varied():
    installed = {(v.engine, v.name) for v in available_voices()}
    specs = [random_voice(np.random.default_rng(seed)) for seed in range(20)]
    assert all((s.engine, s.name) in installed for s in specs)
    assert {"espeak", "flite"} <= {s.engine for s in specs}
    assert all(0.85 <= s.formant_shift <= 1.2 and 0 <= s.breathiness <= 1 for s in specs)
    assert random_voice(np.random.default_rng(3)) == random_voice(np.random.default_rng(3))


def test_missing_engine_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no synthesiser on PATH
    with pytest.raises(SynthError, match=r"espeak-ng not found: install the Debian package espeak-ng "
                                         r"\(scripts/install-synth-deps.sh\)"):
        available_voices()
    with pytest.raises(SynthError, match="espeak-ng not found"):
        random_voice(np.random.default_rng(0))
    with pytest.raises(SynthError, match="espeak-ng not found"):  # even when the words are cached
        sing(NOTES, VOICES["espeak"], LENGTH, SR)
    monkeypatch.setattr(voice.shutil, "which", lambda name: None if name == "flite" else "/usr/bin/" + name)
    with pytest.raises(SynthError, match="flite not found: install the Debian package flite"):
        sing(NOTES, VOICES["flite"], LENGTH, SR)


def test_unknown_engine_or_voice():
    with pytest.raises(SynthError, match="unknown TTS engine"):
        sing(NOTES, VoiceSpec("nosuch", "x", 1.0, 0.1, 5.0, 0.2), LENGTH, SR)
    with pytest.raises(SynthError, match="unknown flite voice"):
        sing(NOTES, VoiceSpec("flite", "nosuch", 1.0, 0.1, 5.0, 0.2), LENGTH, SR)
