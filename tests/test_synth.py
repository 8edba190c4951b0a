"""The corpus generator: layout, exact mixtures, stems where the plan says, determinism, clear errors."""
import json
import pickle

import numpy as np
import pytest
import soundfile as sf

from openunmix_like.cli import synth as synth_cli
from openunmix_like.synth import compose as compose_mod
from openunmix_like.synth import fluid
from openunmix_like.synth.corpus import STEMS, make_track, plan_jobs
from openunmix_like.synth.effects import biquad, compress, random_chain
from openunmix_like.synth.voice import SynthError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    assert synth_cli.main([str(root), "--train", "2", "--valid", "0", "--test", "1", "--duration", "12",
                           "--seed", "7", "--jobs", "2"]) == 0
    return root


def _read(path):
    audio, rate = sf.read(path, dtype="int16", always_2d=True)
    return audio.T.astype(np.int32), rate


@pytest.mark.slow
def test_layout_rate_and_exact_sum(corpus):
    tracks = sorted(p for p in corpus.glob("*/*") if p.is_dir())
    assert [t.parent.name for t in tracks] == ["test", "train", "train"]
    for track in tracks:
        mixture, rate = _read(track / "mixture.wav")
        assert rate == 44100 and mixture.shape == (2, 12 * 44100)
        stems = [_read(track / f"{s}.wav")[0] for s in STEMS]
        assert np.array_equal(mixture, sum(stems)), track
        info = sf.info(str(track / "mixture.wav"))
        assert info.subtype == "PCM_16"


@pytest.mark.slow
def test_stems_sound_where_the_plan_says(corpus):
    checked = 0
    for plan_file in corpus.glob("*/*/plan.json"):
        plan = json.loads(plan_file.read_text())
        assert plan["style"] in {s.name for s in compose_mod.STYLES}
        assert len([p for p in plan["parts"] if p["stem"] == "other"]) >= 3
        for stem in STEMS:
            audio, rate = _read(plan_file.parent / f"{stem}.wav")
            audio = audio / 32768.0
            for start, end in plan["intervals"][stem]:
                if end - start < 0.5:
                    continue
                a, b = int(start * rate), int(end * rate)
                rms = np.sqrt(np.mean(audio[:, a:b] ** 2))
                assert 20 * np.log10(rms + 1e-12) > -60, (plan_file.parent.name, stem, start, end)
                checked += 1
            if not plan["intervals"][stem]:  # nothing planned: the stem is silent
                assert np.max(np.abs(audio)) == 0, (plan_file.parent.name, stem)
    assert checked >= 6


@pytest.mark.slow
def test_vocals_have_words_and_high_frequencies(corpus):
    sung = 0
    for plan_file in corpus.glob("*/*/plan.json"):
        plan = json.loads(plan_file.read_text())
        if not plan["vocals"] or not plan["intervals"]["vocals"]:
            continue
        assert len(plan["vocals"][0]["lyrics"].split()) >= 5
        audio, rate = _read(plan_file.parent / "vocals.wav")
        power = np.abs(np.fft.rfft(audio.mean(0))) ** 2
        freqs = np.fft.rfftfreq(audio.shape[1], 1 / rate)
        assert power[freqs > 8000].sum() / power.sum() > 1e-3
        sung += 1
    assert sung >= 1


@pytest.mark.slow
def test_same_seed_same_track(corpus, tmp_path):
    [job] = [j for j in plan_jobs(tmp_path, {"test": 1}, seed=7, duration=12.0)]
    make_track(job)
    for name in ("mixture", *STEMS):
        assert np.array_equal(_read(job.path / f"{name}.wav")[0], _read(corpus / "test" / job.name / f"{name}.wav")[0])
    other = plan_jobs(tmp_path / "other", {"test": 1}, seed=8, duration=12.0)[0]
    make_track(other)
    assert not np.array_equal(_read(other.path / "mixture.wav")[0], _read(job.path / "mixture.wav")[0])


@pytest.mark.slow
def test_resume_keeps_complete_tracks_and_ignores_partial_ones(corpus, tmp_path, capsys):
    root = tmp_path / "c"
    (root / "train" / ".synth-train-0000.partial").mkdir(parents=True)
    assert synth_cli.main([str(root), "--train", "1", "--valid", "0", "--test", "0", "--duration", "3"]) == 0
    track = root / "train" / "synth-train-0000"
    stamp = (track / "plan.json").stat().st_mtime_ns
    assert synth_cli.main([str(root), "--train", "1", "--valid", "0", "--test", "0", "--duration", "3"]) == 0
    assert (track / "plan.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_compositions_vary(tmp_path):
    fonts = fluid.available_soundfonts()
    voice = {"engine": "espeak", "name": "en-us", "formant_shift": 1.0, "breathiness": 0.2,
             "vibrato_rate": 5.5, "vibrato_depth": 0.3}
    plans = [compose_mod.compose(np.random.default_rng(k), 40.0, fonts, voice) for k in range(30)]
    assert len({p.style for p in plans}) >= 6
    assert len({p.key for p in plans}) >= 6
    assert all(p.length >= 40.0 for p in plans)
    programs = {part.program for p in plans for part in p.parts if part.stem == "other"}
    families = {prog // 8 for prog in programs}
    assert len(families) >= 6  # pianos, organs, guitars, strings, brass, reeds, pipes, synths ...
    kinds = {s.kind for p in plans for s in p.sections}
    assert {"verse", "chorus"} <= kinds and kinds & {"bridge", "break"}
    assert any(part.stem == "bass" and part.events for part in plans[0].parts)


def test_missing_soundfont_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(fluid.SOUNDFONTS, "musescore", ("/nonexistent/MuseScore_General.sf3",
                                                       "musescore-general-soundfont"))
    assert synth_cli.main([str(tmp_path), "--train", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "musescore-general-soundfont" in err[0] and "install-synth-deps.sh" in err[0]
    with pytest.raises(SynthError):
        fluid.available_soundfonts()


def test_effects_are_sane():
    rate = 44100
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, rate)).astype(np.float32) * 0.1
    b, a = biquad("lowpass", 1000, rate)
    assert abs(np.polyval(b[::-1], 1) / np.polyval(a[::-1], 1) - 1) < 1e-9  # unity gain at DC
    loud = np.concatenate([x * 0.05, x * 2], axis=1)
    y = compress(loud, rate, threshold_db=-30, ratio=4)
    before = 20 * np.log10(np.std(loud[:, rate:]) / np.std(loud[:, :rate]))
    after = 20 * np.log10(np.std(y[:, rate + 4410:]) / np.std(y[:, :rate]))
    assert after < before - 6  # the level difference shrinks
    for kind in STEMS:
        chain = random_chain(rng, kind)
        out = chain.apply(x, rate, rng)
        assert out.shape == x.shape and np.isfinite(out).all()
        pickle.loads(pickle.dumps(chain))
