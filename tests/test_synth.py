"""The corpus generator: layout, exact mixtures, stems where the plan says, determinism, clear errors, reruns and
interruption.
"""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from openunmix_like.cli import synth as synth_cli
from openunmix_like.synth import compose as compose_mod
from openunmix_like.synth import corpus as corpus_mod
from openunmix_like.synth import fluid
from openunmix_like.synth.corpus import MIN_DURATION, STEMS, make_track, plan_jobs
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


def test_a_corpus_keeps_to_the_soundfonts_and_voices_it_was_drawn_from(tmp_path, monkeypatch, capsys):
    root = tmp_path / "c"
    one = [str(root), "--train", "1", "--valid", "0", "--test", "0", "--duration", "2"]
    assert synth_cli.main(one) == 0
    plan_file = root / "train" / "synth-train-0000" / "plan.json"
    plan = json.loads(plan_file.read_text())
    assert plan["soundfonts"] == fluid.available_soundfonts() and plan["voice_engines"]
    # Another machine, with a soundfont fewer: its songs would be drawn differently, so it does not add any.
    monkeypatch.setattr(corpus_mod, "available_soundfonts", lambda: plan["soundfonts"][:-1])
    two = one[:2] + ["2"] + one[3:]
    assert synth_cli.main(two) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{plan_file}: the songs in {root} were drawn from soundfonts" in err[0]
    assert "install-synth-deps.sh" in err[0] and not (root / "train" / "synth-train-0001").exists()
    # Songs made before the set was recorded are taken as they are.
    plan_file.write_text(json.dumps({k: v for k, v in plan.items() if k not in ("soundfonts", "voice_engines")}))
    assert synth_cli.main(one) == 0


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
    assert synth_cli.main([str(tmp_path), "--train", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("umx-synth: error:")
    assert "musescore-general-soundfont" in err[0] and "install-synth-deps.sh" in err[0]
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


def _one_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("umx-synth: error: "), err
    return err[0]


@pytest.mark.parametrize("args, says", [
    (["--duration", "inf"], "--duration inf: give a finite number of seconds per song, 0.02 to 600"),
    (["--duration", "nan"], "--duration nan: give a finite number"),
    (["--duration", "0.001"], "--duration 0.001: a song lasts at least 0.02 s (its 10 ms fade-in and fade-out)"),
    (["--duration", "0"], "--duration 0: a song lasts at least 0.02 s"),
    (["--duration", "1e9"], "--duration 1e+09: a song lasts at most 600 s"),
    (["--train", "-1"], "--train -1: give a number of songs of 0 or more"),
    (["--test", "-3"], "--test -3: give a number of songs of 0 or more"),
    (["--seed", "-1"], "--seed -1: give a seed of 0 or more"),
    (["--jobs", "0"], "--jobs 0: give 1 or more"),
], ids=["duration-inf", "duration-nan", "duration-short", "duration-0", "duration-huge", "train-negative",
        "test-negative", "seed-negative", "jobs-0"])
def test_numbers_no_corpus_could_use_are_one_line_before_any_work(tmp_path, capsys, args, says):
    root = tmp_path / "corpus"
    assert synth_cli.main([str(root), "--train", "1", "--valid", "0", "--test", "0", "--duration", "1", *args]) == 1
    assert says in _one_error(capsys)
    assert not root.exists()


def test_an_output_folder_that_cannot_be_made_is_one_line_before_any_work(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    common = ["--train", "1", "--valid", "0", "--test", "0", "--duration", "1"]
    assert synth_cli.main([str(afile), *common]) == 1
    assert f"{afile}: is a file, not a folder" in _one_error(capsys)
    assert synth_cli.main([str(afile / "corpus"), *common]) == 1
    assert f"ROOT {afile / 'corpus'}: cannot write there (" in _one_error(capsys)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "valid").write_text("a file where a split folder goes")
    assert synth_cli.main([str(tmp_path / "c"), *common]) == 1
    assert f"{tmp_path / 'c' / 'valid'}: is a file, where the valid songs' folder goes" in _one_error(capsys)
    assert synth_cli.main([str(tmp_path / "d"), *common, "--cache-dir", str(afile)]) == 1
    assert f"--cache-dir {afile}: is a file" in _one_error(capsys)
    assert afile.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "c"]


def _fake_track(root, seed=0, duration=1.0):
    """A complete track as an earlier run leaves it (silent: only its plan.json is read)."""
    track = root / "train" / "synth-train-0000"
    track.mkdir(parents=True)
    for name in ("mixture", *STEMS):
        sf.write(track / f"{name}.wav", np.zeros((int(duration * 44100), 2), np.int16), 44100, subtype="PCM_16")
    (track / "plan.json").write_text(json.dumps({
        "name": track.name, "split": "train", "index": 0, "corpus_seed": seed, "duration": duration,
        "sample_rate": 44100, "style": "rock", "tempo": 120.0, "key": "C major"}))
    return track


def test_a_rerun_with_another_seed_or_duration_is_refused_not_mixed_in(tmp_path, capsys):
    root = tmp_path / "corpus"
    track = _fake_track(root, seed=0, duration=1.0)
    before = (track / "plan.json").read_bytes()
    common = [str(root), "--train", "2", "--valid", "0", "--test", "0"]
    for seed, duration in (("5", "3"), ("5", "1"), ("0", "3")):
        assert synth_cli.main([*common, "--seed", seed, "--duration", duration]) == 1
        err = _one_error(capsys)
        assert err.startswith(f"umx-synth: error: {track / 'plan.json'}: the songs in {root} were made with seed 0, "
                              f"duration 1 s, rate 44100 Hz, not seed {seed}, duration {duration} s"), err
        assert f"give another folder, or remove {root}" in err and "--seed 0 --duration 1 " in err
    assert (track / "plan.json").read_bytes() == before
    assert sorted(p.name for p in (root / "train").iterdir()) == ["synth-train-0000"]
    # The library refuses too, rather than return the other song's plan.
    [job] = plan_jobs(root, {"train": 1}, seed=5, duration=1.0)
    with pytest.raises(SynthError, match="made with seed 0"):
        make_track(job)
    # With its own settings the corpus is completed: the song there is kept (here: nothing to make).
    assert synth_cli.main([str(root), "--train", "1", "--valid", "0", "--test", "0", "--seed", "0",
                           "--duration", "1"]) == 0
    assert (track / "plan.json").read_bytes() == before
    (track / "plan.json").write_text("{not json")
    assert synth_cli.main([*common, "--duration", "1"]) == 1
    assert f"{track / 'plan.json'}: not a plan.json of umx-synth" in _one_error(capsys)


@pytest.mark.slow
def test_the_shortest_song_renders(tmp_path):
    [job] = plan_jobs(tmp_path, {"valid": 1}, seed=3, duration=MIN_DURATION)
    make_track(job)
    mixture, rate = _read(job.path / "mixture.wav")
    assert mixture.shape == (2, round(MIN_DURATION * rate))
    assert np.array_equal(mixture, sum(_read(job.path / f"{s}.wav")[0] for s in STEMS))


# Loaded by the child and its spawned workers: noise instead of instruments (fast), and with
# SLOW_SONGS set, every song but the first sleeps once half-written until it is stopped.
# multiprocessing's resource tracker is left as it is: it starts fast and ignores Ctrl+C.
SITECUSTOMIZE = """
import sys
if not any("resource_tracker" in arg for arg in sys.orig_argv):
    import os, time
    import numpy as np
    import soundfile
    from openunmix_like.synth import corpus

    def render(plan, duration, offset, sample_rate, rng, cache_dir=None):
        n = int(round(duration * sample_rate))
        stems = {s: rng.standard_normal((2, n)).astype(np.float32) * 0.05 for s in corpus.STEMS}
        return stems, {"intervals": {s: [] for s in corpus.STEMS}, "gains_db": {}}

    write = soundfile.write
    def slow_write(file, *args, **kwargs):
        write(file, *args, **kwargs)
        if os.environ.get("SLOW_SONGS") and "synth-train-0000" not in str(file):
            print("half-written", file, flush=True)
            time.sleep(60)

    corpus.render_track = render
    soundfile.write = slow_write
"""


@pytest.mark.slow
@pytest.mark.parametrize("jobs, signum, group", [(1, signal.SIGINT, True), (2, signal.SIGINT, True),
                                                 (2, signal.SIGTERM, False)],
                         ids=["ctrl-c", "ctrl-c-jobs-2", "sigterm-jobs-2"])
def test_an_interrupted_run_keeps_finished_songs_only_and_a_rerun_makes_the_rest(tmp_path, jobs, signum, group):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    root = tmp_path / "corpus"
    command = [sys.executable, "-m", "openunmix_like.cli.synth", str(root), "--train", "3", "--valid", "0",
               "--test", "0", "--duration", "1", "--jobs", str(jobs)]
    # Ctrl+C in a terminal reaches the whole process group; a scheduler's SIGTERM only the main process.
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**env, "SLOW_SONGS": "1"}, start_new_session=True)
    try:
        seen = []
        while not (any(line.startswith("[1/3]") for line in seen) and any("half-written" in line for line in seen)):
            seen.append(child.stdout.readline())
            assert seen[-1], seen  # the child ended early
        sent = time.monotonic()
        if group:
            os.killpg(child.pid, signum)
        else:
            child.send_signal(signum)
        _, err = child.communicate(timeout=50)
        stopped_after = time.monotonic() - sent
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 130, err
    assert stopped_after < 30, stopped_after  # the workers were stopped, not waited for (they sleep 60 s)
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        "umx-synth: error: interrupted: 1 of 3 songs complete; the songs in hand were discarded, nothing "
        "half-written is kept; run the same command again to make the rest"]
    first = root / "train" / "synth-train-0000"
    assert [p.name for p in (root / "train").iterdir()] == [first.name]  # no partial folder
    assert sorted(p.name for p in first.iterdir()) == sorted([f"{s}.wav" for s in ("mixture", *STEMS)] + ["plan.json"])
    stamp = (first / "plan.json").stat().st_mtime_ns
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in (root / "train").iterdir()) == [f"synth-train-000{k}" for k in range(3)]
    assert all((root / "train" / f"synth-train-000{k}" / "plan.json").is_file() for k in range(3))
    assert (first / "plan.json").stat().st_mtime_ns == stamp


SECOND_SIGTERM = """
import os, shutil, signal, sys
from pathlib import Path

import numpy as np

from openunmix_like.synth import corpus

corpus._init_worker()
final = Path(sys.argv[1]) / "synth-train-0001"
remove, write = shutil.rmtree, corpus.sf.write


def rmtree(path, *args, **kwargs):
    if str(path).endswith(".partial") and Path(path).exists():  # the cleanup, not the first tidy-up
        os.kill(os.getpid(), signal.SIGTERM)  # the pool's SIGTERM to every worker, as one of them exits
    return remove(path, *args, **kwargs)


def stopped_write(*args, **kwargs):
    write(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)  # the run stopping this worker mid-song


corpus.shutil.rmtree, corpus.sf.write = rmtree, stopped_write
stems = {name: np.zeros((2, 800), np.int16) for name in corpus.STEMS}
try:
    corpus._write_track(final, stems, np.zeros((2, 800), np.int16), {}, 8000)
except SystemExit as exc:
    print("stopped", exc.code)
print(*sorted(p.name for p in final.parent.iterdir()))
"""


def test_a_second_sigterm_during_a_stopped_workers_cleanup_leaves_no_partial_folder(tmp_path):
    # The CI flake of the interrupted-run test with two jobs: the pool sends SIGTERM to every worker as soon
    # as it sees one gone, which could cut short the cleanup of a worker stopped by the first SIGTERM.
    done = subprocess.run([sys.executable, "-c", SECOND_SIGTERM, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["stopped", str(128 + signal.SIGTERM)], done.stdout
