import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import openunmix_like.pretrained as pretrained
from helpers import MUSDB_7S, music_like, require
from openunmix_like.audio import info
from openunmix_like.cli.separate import main

TARGETS = ["vocals", "drums", "bass", "other"]
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def run(*args):
    return main([str(a) for a in args])


def outputs(outdir, track, names=TARGETS, ext="wav"):
    return [outdir / track / f"{n}.{ext}" for n in names]


def assert_like_input(files, rate, channels, frames):
    for f in files:
        i = sf.info(str(f))
        assert (i.samplerate, i.channels, i.frames) == (rate, channels, frames), f


@pytest.mark.slow
def test_wav_and_flac(model_dir, wav_file, tmp_path):
    model = model_dir()
    wav = wav_file("a.wav", seconds=2.0)
    flac = wav_file("b.flac", seconds=1.5, rate=48000, seed=1)
    out = tmp_path / "out"
    assert run(wav, flac, "--model", model, "--outdir", out, "--quiet") == 0
    assert_like_input(outputs(out, "a"), 44100, 2, 88200)
    assert_like_input(outputs(out, "b"), 48000, 2, 72000)
    assert sf.info(str(out / "a" / "vocals.wav")).subtype == "PCM_16"


@pytest.mark.slow
@needs_ffmpeg
def test_mp3_made_with_ffmpeg(model_dir, wav_file, tmp_path):
    wav = wav_file("src.wav", seconds=2.0)
    mp3 = tmp_path / "song.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-b:a", "128k", str(mp3)], check=True)
    out = tmp_path / "out"
    assert run(mp3, "--model", model_dir(), "--outdir", out, "--quiet") == 0
    expect = info(mp3)
    assert_like_input(outputs(out, "song"), expect.sample_rate, 2, expect.nb_frames)


@pytest.mark.slow
@needs_ffmpeg
def test_m4a_goes_through_ffmpeg(model_dir, wav_file, tmp_path):
    wav = wav_file("src.wav", seconds=1.0, rate=22050, channels=1)
    m4a = tmp_path / "voice.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), str(m4a)], check=True)
    out = tmp_path / "out"
    assert run(m4a, "--model", model_dir(), "--outdir", out, "--quiet", "--targets", "vocals") == 0
    i = sf.info(str(out / "voice" / "vocals.wav"))
    assert (i.samplerate, i.channels) == (22050, 1) and abs(i.frames - 22050) < 2048


@pytest.mark.slow
@pytest.mark.musdb
@needs_ffmpeg
def test_musdb_stem_mp4_mixture(model_dir, tmp_path):
    track = require(MUSDB_7S) / "ANiMAL - Clinic A.stem.mp4"
    out = tmp_path / "out"
    assert run(track, "--model", model_dir(), "--outdir", out, "--quiet") == 0
    expect = info(track)
    files = outputs(out, "ANiMAL - Clinic A")
    for f in files:
        i = sf.info(str(f))
        assert (i.samplerate, i.channels) == (44100, 2)
        assert abs(i.frames - expect.nb_frames) <= 2048  # container duration is approximate
    mix, _ = sf.read(str(files[0]))
    assert np.abs(mix).max() > 0


def test_mono_in_mono_out_and_float_flac(model_dir, wav_file, tmp_path):
    wav = wav_file("m.wav", seconds=1.0, rate=8000, channels=1)
    out = tmp_path / "out"
    assert run(wav, "--model", model_dir(), "--outdir", out, "--ext", "flac", "--bits", "24", "--quiet") == 0
    files = outputs(out, "m", ext="flac")
    assert_like_input(files, 8000, 1, 8000)
    assert sf.info(str(files[0])).subtype == "PCM_24"


@needs_ffmpeg
@pytest.mark.parametrize("rate,channels,kbps,written", [(44100, 2, 192, 192), (16000, 1, 320, 160)])
def test_mp3_stems_keep_length_rate_and_bitrate(model_dir, wav_file, tmp_path, rate, channels, kbps, written):
    wav = wav_file("m.wav", seconds=1.5, rate=rate, channels=channels)
    model = model_dir()
    assert run(wav, "--model", model, "--outdir", tmp_path / "mp3", "--ext", "mp3", "--mp3-bitrate", kbps,
               "--quiet") == 0
    assert run(wav, "--model", model, "--outdir", tmp_path / "wav", "--bits", "32", "--quiet") == 0
    for name in TARGETS:
        mp3 = tmp_path / "mp3" / "m" / f"{name}.mp3"
        probed = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,bit_rate",
                                 "-of", "csv=p=0", str(mp3)], capture_output=True, text=True, check=True).stdout
        assert probed.strip() == f"mp3,{written * 1000}"  # libmp3lame's ceiling below 32 kHz is 160
        decoded, got_rate = sf.read(mp3, always_2d=True)
        exact, _ = sf.read(tmp_path / "wav" / "m" / f"{name}.wav", always_2d=True)
        assert got_rate == rate and decoded.shape == exact.shape == (int(1.5 * rate), channels)  # gapless
        snr = 10 * np.log10(np.sum(exact ** 2) / np.sum((decoded - exact) ** 2))
        assert snr > 12, (name, snr)
    assert sorted(p.name for p in (tmp_path / "mp3" / "m").iterdir()) == [f"{n}.mp3" for n in sorted(TARGETS)]


@needs_ffmpeg
def test_mp3_refuses_what_it_cannot_hold_and_goes_on(model_dir, wav_file, tmp_path, capsys):
    many = wav_file("many.wav", seconds=0.5, channels=3)
    high = wav_file("high.wav", seconds=0.5, rate=96000, seed=1)
    fine = wav_file("fine.wav", seconds=0.5, seed=2)
    out = tmp_path / "out"
    assert run(many, high, fine, "--model", model_dir(), "--outdir", out, "--ext", "mp3", "--quiet") == 1
    err = capsys.readouterr().err.splitlines()
    assert sorted(err) == sorted([
        f"umx-separate: error: {many}: 3 channels, and mp3 holds at most 2; use --ext wav or flac",
        f"umx-separate: error: {high}: stems at 96000 Hz, and mp3 holds only 8000, 11025, 12000, 16000, 22050, "
        "24000, 32000, 44100, 48000 Hz; use --keep-model-rate (the model's rate) or --ext flac"])
    assert sorted(p.name for p in out.iterdir()) == ["fine"]
    assert run(high, "--model", model_dir(), "--outdir", out, "--ext", "mp3", "--keep-model-rate", "--quiet") == 0
    assert sf.info(str(out / "high" / "vocals.mp3")).samplerate == 44100


def test_a_failing_mp3_encoder_is_one_line_and_keeps_the_earlier_stems(model_dir, wav_file, tmp_path, capsys,
                                                                       monkeypatch):
    song = wav_file("song.wav", seconds=0.5)
    out = tmp_path / "out"
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho 'Unknown encoder libmp3lame' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{__import__('os').environ['PATH']}")
    (out / "song").mkdir(parents=True)
    (out / "song" / "vocals.mp3").write_bytes(b"an earlier run's")
    assert run(song, "--model", model_dir(), "--outdir", out, "--ext", "mp3", "--quiet", "--force") == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"umx-separate: error: {out / 'song' / 'vocals.mp3'}: cannot encode mp3 (Unknown encoder "
                   "libmp3lame)"]
    assert sorted(p.name for p in (out / "song").iterdir()) == ["vocals.mp3"]  # no partial files either
    assert (out / "song" / "vocals.mp3").read_bytes() == b"an earlier run's"


def test_mp3_without_ffmpeg_is_one_line_before_any_work(model_dir, wav_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    out = tmp_path / "out"
    assert run(wav_file(), "--model", model_dir(), "--outdir", out, "--ext", "mp3") == 1
    assert capsys.readouterr().err == ("umx-separate: error: --ext mp3 needs the ffmpeg program to encode; install "
                                       "it (e.g. apt-get install ffmpeg) or write wav or flac\n")
    assert not out.exists()


def test_many_channels_keep_their_count(model_dir, wav_file, tmp_path):
    wav = wav_file("six.wav", seconds=1.0, channels=6)
    out = tmp_path / "out"
    assert run(wav, "--model", model_dir(), "--outdir", out, "--quiet", "--bits", "32") == 0
    assert_like_input(outputs(out, "six"), 44100, 6, 44100)


def test_keep_model_rate(model_dir, wav_file, tmp_path):
    wav = wav_file("r.wav", seconds=1.0, rate=22050)
    out = tmp_path / "out"
    assert run(wav, "--model", model_dir(), "--outdir", out, "--keep-model-rate", "--quiet") == 0
    assert_like_input(outputs(out, "r"), 44100, 2, 44100)


def test_residual_aggregate_template_start_duration(model_dir, wav_file, tmp_path):
    wav = wav_file("t.wav", seconds=3.0)
    out = tmp_path / "out"
    agg = json.dumps({"karaoke": ["drums", "bass", "other"], "vox": ["vocals"]})
    code = run(wav, "--model", model_dir(), "--outdir", out, "--targets", "vocals", "drums", "bass", "other",
               "--aggregate", agg, "--filename", "{model}-{track}_{target}.{ext}", "--start", "0.5",
               "--duration", "1.25", "--niter", "0", "--softmask", "--clip", "none", "--bits", "32", "--quiet")
    assert code == 0
    files = {n: out / f"model-t_{n}.wav" for n in ("karaoke", "vox")}
    assert_like_input(files.values(), 44100, 2, int(1.25 * 44100))
    # Softmask without EM: stems sum to the excerpt of the input.
    excerpt = sf.read(str(wav), start=22050, frames=int(1.25 * 44100))[0]
    total = sum(sf.read(str(f))[0] for f in files.values())
    assert np.abs(total - excerpt).max() < 1e-4
    out2 = tmp_path / "out2"
    assert run(wav, "--model", model_dir("m2"), "--outdir", out2, "--targets", "vocals",
               "--residual", "instrumental", "--quiet") == 0
    assert sorted(p.name for p in (out2 / "t").iterdir()) == ["instrumental.wav", "vocals.wav"]


def test_rescale_keeps_stems_summing_to_mixture(model_dir, tmp_path):
    loud = tmp_path / "loud.wav"
    sf.write(loud, (music_like(1.0) * 10).T, 44100, subtype="FLOAT")  # peaks far above full scale
    out = tmp_path / "out"
    assert run(loud, "--model", model_dir(), "--outdir", out, "--niter", "0", "--softmask", "--bits", "32",
               "--quiet") == 0
    stems = [sf.read(str(f))[0] for f in outputs(out, "loud")]
    total = sum(stems)
    assert max(np.abs(s).max() for s in stems) <= 1.0 + 1e-6
    src = sf.read(str(loud))[0]
    gain = total[:, 0] @ src[:, 0] / (src[:, 0] @ src[:, 0])
    assert gain < 1 and np.abs(total - gain * src).max() < 1e-4


def test_folder_and_glob_inputs(model_dir, wav_file, tmp_path):
    wav_file("lib/one.wav", seconds=0.5)
    wav_file("lib/sub/two.flac", seconds=0.5)
    (tmp_path / "lib" / "notes.txt").write_text("not audio")
    wav_file("g/three.wav", seconds=0.5)
    out = tmp_path / "out"
    assert run(tmp_path / "lib", str(tmp_path / "g" / "*.wav"), "--model", model_dir(), "--outdir", out,
               "--targets", "bass", "--quiet", "--jobs", "2") == 0
    assert sorted(p.name for p in out.iterdir()) == ["one", "three", "two"]


def test_bad_inputs_do_not_stop_the_batch(model_dir, wav_file, tmp_path, capsys):
    good = wav_file("good.wav", seconds=0.5)
    fake = tmp_path / "fake.wav"
    fake.write_text("this is text, not audio")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    out = tmp_path / "out"
    code = run(tmp_path / "missing.wav", fake, empty_dir, good, "--model", model_dir(), "--outdir", out, "--quiet")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert (out / "good" / "vocals.wav").exists()
    assert not (out / "fake").exists()
    assert len(err) == 3 and all(line.startswith("umx-separate: error: ") for line in err)
    assert any("missing.wav: no such file" in line for line in err)
    assert any("fake.wav" in line for line in err)
    assert any("empty: folder holds no audio" in line for line in err)
    assert not list(out.rglob("*partial*"))


def test_existing_outputs_are_kept_unless_force(model_dir, wav_file, tmp_path, capsys):
    wav = wav_file("s.wav", seconds=0.5)
    out = tmp_path / "out"
    model = model_dir()
    assert run(wav, "--model", model, "--outdir", out, "--quiet") == 0
    (out / "s" / "vocals.wav").write_bytes(b"precious")
    assert run(wav, "--model", model, "--outdir", out, "--quiet") == 1
    assert "--force" in capsys.readouterr().err
    assert (out / "s" / "vocals.wav").read_bytes() == b"precious"
    assert run(wav, "--model", model, "--outdir", out, "--quiet", "--force") == 0
    assert sf.info(str(out / "s" / "vocals.wav")).frames == 22050


def test_output_equal_to_input_is_refused(model_dir, wav_file, tmp_path, capsys):
    wav = wav_file("same/vocals.wav", seconds=0.5)
    before = wav.read_bytes()
    code = run(wav, "--model", model_dir(), "--outdir", tmp_path, "--filename", "same/{target}.{ext}",
               "--targets", "vocals", "--force", "--quiet")
    assert code == 1 and "overwrite the input" in capsys.readouterr().err
    assert wav.read_bytes() == before


def test_unwritable_outdir(model_dir, wav_file, tmp_path, capsys):
    wav = wav_file("u.wav", seconds=0.5)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run(wav, "--model", model_dir(), "--outdir", blocker / "sub", "--quiet") == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and str(blocker / "sub") in err


def test_model_errors_exit_non_zero(wav_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pretrained, "BUNDLED_MODEL_DIR", tmp_path / "none")
    assert run(wav_file("x.wav", seconds=0.2), "--outdir", tmp_path / "o") == 1
    assert "no bundled model" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_runs(model_dir, wav_file, tmp_path):
    exe = shutil.which("umx-separate")
    cmd = [exe] if exe else [sys.executable, "-m", "openunmix_like.cli.separate"]
    wav = wav_file("c.wav", seconds=0.5)
    result = subprocess.run(cmd + [str(wav), "--model", str(model_dir()), "--outdir", str(tmp_path / "o")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "c.wav ->" in result.stdout


def test_glob_matching_nothing(model_dir, tmp_path, capsys):
    assert run(str(tmp_path / "nothing-*.wav"), "--model", model_dir(), "--outdir", tmp_path / "o") == 1
    assert "nothing-*.wav: pattern matches no files" in capsys.readouterr().err
