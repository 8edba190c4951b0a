"""umx-separate on inputs and options that must fail cleanly, and on runs that must lose nothing.

Every case here was once a defect: an option value that wrote empty stems, a file
taken for truncated or not, an input overwritten, stems of stems, earlier stems
lost, a traceback instead of a line, Ctrl+C that did not stop.
"""
import errno
import hashlib
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import music_like
from openunmix_like import AudioError
from openunmix_like.audio import load
from openunmix_like.cli.separate import main as separate_main
from openunmix_like.fileio import new_partial, remove_stale_partials

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
STEMS = ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]


def run_cli(*args):
    return separate_main([str(a) for a in args])


@pytest.fixture
def model(model_dir):
    return model_dir()


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stems(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- option values


@pytest.mark.parametrize("options,message", [
    (["--overlap", "-1"], "--overlap -1: give a number of seconds, 0 or more"),
    (["--overlap", "inf"], "--overlap inf"),
    (["--segment", "nan"], "--segment nan"),
    (["--segment", "-2"], "--segment -2"),
    (["--start", "-0.5"], "--start -0.5"),
    (["--duration", "inf"], "--duration inf: give a number of seconds above 0"),
    (["--duration", "0"], "--duration 0"),
    (["--ext", "flac", "--bits", "32"], "cannot write flac with 32 bits"),
    (["--ext", "mp3", "--bits", "24"], "--bits 24 is for wav and flac; mp3 stems take --mp3-bitrate"),
    (["--mp3-bitrate", "128"], "--mp3-bitrate is for --ext mp3, and the stems are wav; leave it out"),
    (["--residual", "vocals"], "residual name 'vocals' is already a model target"),
    (["--targets", "vocals", "bass", "vocals"], "target(s) vocals asked for more than once"),
    (["--filename", "{track.x}/{target}.{ext}"], "bad template"),
    (["--filename", "{track[x]}/{target}.{ext}"], "bad template"),
])
def test_an_option_no_track_could_use_is_one_line_before_any_work(model, tmp_path, wav_file, capsys, options,
                                                                   message):
    songs = [wav_file("a.wav", seconds=0.5), wav_file("b.wav", seconds=0.5, seed=1)]
    out = tmp_path / "out"
    assert run_cli(*songs, "--model", model, "--outdir", out, "--quiet", *options) == 1
    lines = error_lines(capsys)
    assert len(lines) == 1, lines  # once, not once per file
    assert lines[0].startswith("umx-separate: error: ") and message in lines[0]
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_the_machine_lacks_is_one_line_before_any_work(model, tmp_path, wav_file, capsys):
    out = tmp_path / "out"
    assert run_cli(wav_file(), "--model", model, "--outdir", out, "--device", "cuda") == 1
    assert error_lines(capsys) == ["umx-separate: error: --device cuda: device 'cuda': this machine has no CUDA; "
                                   "use 'cpu' or an existing GPU"]
    assert not out.exists()


# ---------------------------------------------------------------- audio files


def test_samples_far_beyond_full_scale_are_refused_not_written_as_nan(model, tmp_path, capsys):
    data = music_like(1.0).T.copy()
    data[1000, 0] = 1e25
    spike = tmp_path / "spike.wav"
    sf.write(spike, data, 44100, subtype="FLOAT")
    out = tmp_path / "out"
    assert run_cli(spike, "--model", model, "--outdir", out, "--quiet", "--bits", "32", "--clip", "none") == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and "spike.wav: samples reach 1e+25" in lines[0] and "normalise" in lines[0]
    assert not out.exists()
    with pytest.raises(AudioError, match="samples reach"):
        load(spike)


# Lengths whose ffprobe duration (which counts the mp3 encoder's delay and padding) exceeds
# the decoded length by more than 2,048 samples: once refused as truncated.
@pytest.mark.parametrize("seconds,rate", [(0.5, 44100), (2.9, 44100), (0.05, 48000), (0.7, 48000)])
def test_short_mp3s_are_not_taken_for_truncated(tmp_path, seconds, rate):
    path = tmp_path / "clip.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"sine=duration={seconds}:sample_rate={rate}",
                    "-ac", "2", str(path)], check=True)
    audio, found = load(path)
    assert found == rate and abs(audio.shape[-1] - seconds * rate) <= 1152


@pytest.mark.parametrize("fmt,name", [("WAV", "t.wav"), ("RF64", "t-rf64.wav"), ("W64", "t.w64"),
                                      ("AIFF", "t.aiff"), ("AU", "t.au")])
def test_truncated_files_whose_header_states_their_length_are_refused(tmp_path, fmt, name):
    whole = tmp_path / f"whole-{name}"
    sf.write(whole, music_like(1.0).T, 44100, format=fmt, subtype="PCM_16")
    assert load(whole)[0].shape == (2, 44100)
    data = whole.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=f"{name}: truncated .* re-export or re-download it"):
        load(cut)


@pytest.mark.parametrize("rate", [1, 999, 800000])
def test_a_sample_rate_outside_what_is_separated_is_one_line(model, tmp_path, capsys, rate):
    path = tmp_path / "odd.wav"
    sf.write(path, np.zeros((2000, 1), np.float32), rate)
    assert run_cli(path, "--model", model, "--outdir", tmp_path / "out", "--quiet") == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and f"odd.wav: sample rate {rate} Hz is outside 1000 to 768000 Hz" in lines[0]


def test_more_channels_than_flac_holds_is_refused_before_separating(model, tmp_path, capsys, monkeypatch):
    import openunmix_like.stems as stems

    path = tmp_path / "ten.wav"
    sf.write(path, music_like(0.5, channels=10).T, 44100)
    monkeypatch.setattr(stems, "iter_separate", lambda *a, **k: pytest.fail("separated before refusing"))
    assert run_cli(path, "--model", model, "--outdir", tmp_path / "out", "--quiet", "--ext", "flac") == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and "ten.wav: 10 channels, and FLAC holds at most 8; use --ext wav" in lines[0]
    assert not (tmp_path / "out").exists()


def test_file_names_that_are_not_utf8_are_read_and_written(model, tmp_path, wav_file):
    song = wav_file("song.wav", seconds=0.5)
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9.wav")
    try:
        os.link(os.fsencode(song), odd)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "out"
    assert run_cli(os.fsdecode(odd), "--model", model, "--outdir", out, "--quiet") == 0
    assert stems(out / os.fsdecode(b"caf\xe9")) == STEMS


def test_a_long_output_name_leaves_room_for_its_partial_files(model, tmp_path, wav_file):
    track = "x" * 235
    song = wav_file(f"{track}.wav", seconds=0.5)
    out = tmp_path / "out"
    assert run_cli(song, "--model", model, "--outdir", out, "--quiet", "--filename", "{track}-{target}.{ext}") == 0
    assert stems(out) == sorted(f"{track}-{name}" for name in STEMS)


def test_partial_files_of_long_names_are_found_again(tmp_path):
    target = tmp_path / ("y" * 250 + ".wav")
    mine = new_partial(target, ".wav")
    assert len(os.fsencode(mine.name)) <= 255
    dead = mine.with_name(mine.name.replace(f".{os.getpid()}-", ".999999999-"))
    dead.write_bytes(b"")
    assert remove_stale_partials(target) == [dead]
    assert mine.exists()


# ---------------------------------------------------------------- inputs and outputs


def test_an_input_is_never_overwritten_by_another_inputs_stems(model, tmp_path, wav_file, capsys):
    out = tmp_path / "out"
    song = wav_file("x.wav", seconds=0.5)
    earlier = wav_file("out/x/vocals.wav", seconds=0.5, seed=3)  # an input where x's vocals would go
    before = digest(earlier)
    assert run_cli(song, earlier, "--model", model, "--outdir", out, "--quiet", "--force") == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and "x.wav: its output" in lines[0] and "would overwrite the input" in lines[0]
    assert digest(earlier) == before
    assert stems(out / "vocals") == STEMS  # the other input is separated


@pytest.mark.parametrize("outdir", ["inside", "same"])
def test_a_rerun_on_a_folder_holding_the_output_takes_no_stems_for_songs(model, tmp_path, wav_file, outdir):
    folder = tmp_path / "music"
    wav_file("music/song.wav", seconds=0.5)
    (folder / ".song.wav.1234-abcdef01-xyz.partial.wav").write_bytes(b"")  # hidden: never an input
    out = folder / "separated" if outdir == "inside" else folder
    for _ in range(2):
        assert run_cli(folder, "--model", model, "--outdir", out, "--quiet", "--force") == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.wav") if p.parent != folder)
    assert written == [f"song/{name}" for name in STEMS]


def test_a_failed_rerun_with_force_keeps_the_earlier_stems(model, tmp_path, wav_file, monkeypatch, capsys):
    song = wav_file("song.wav", seconds=0.5)
    out = tmp_path / "out"
    assert run_cli(song, "--model", model, "--outdir", out, "--quiet") == 0
    before = {name: digest(out / "song" / name) for name in STEMS}
    real_write = sf.SoundFile.write

    def disk_full_on_the_last_stem(self, data):
        # The last stem's encoding (a WAV; the chunks go to RF64 files) fails as on a full disk.
        if b"/.other.wav." in os.fsencode(self.name) and self.format == "WAV":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(sf.SoundFile, "write", disk_full_on_the_last_stem)
    assert run_cli(song, "--model", model, "--outdir", out, "--quiet", "--force", "--niter", "0") == 1
    assert "disk full while writing" in capsys.readouterr().err
    assert {name: digest(out / "song" / name) for name in STEMS} == before
    assert stems(out / "song") == STEMS  # and no partial files


def test_a_folder_where_a_stem_goes_is_refused_before_anything_is_replaced(model, tmp_path, wav_file, capsys):
    song = wav_file("song.wav", seconds=0.5)
    out = tmp_path / "out"
    assert run_cli(song, "--model", model, "--outdir", out, "--quiet") == 0
    before = {name: digest(out / "song" / name) for name in STEMS if name != "other.wav"}
    (out / "song" / "other.wav").unlink()
    (out / "song" / "other.wav").mkdir()
    assert run_cli(song, "--model", model, "--outdir", out, "--quiet", "--force", "--niter", "0") == 1
    assert "other.wav: is a folder" in capsys.readouterr().err
    assert {name: digest(out / "song" / name) for name in before} == before


def test_skip_existing_leaves_finished_tracks_alone_and_does_the_rest(model, tmp_path, wav_file, capsys):
    songs = [wav_file(f"s{i}.wav", seconds=0.5, seed=i) for i in range(3)]
    out = tmp_path / "out"
    assert run_cli(songs[0], "--model", model, "--outdir", out, "--quiet") == 0
    before = {name: (out / "s0" / name).stat().st_mtime_ns for name in STEMS}
    (out / "s1").mkdir()
    (out / "s1" / "vocals.wav").write_bytes(b"not a whole set")  # e.g. an earlier --targets vocals run
    assert run_cli(*songs, "--model", model, "--outdir", out, "--skip-existing") == 1
    captured = capsys.readouterr()
    assert "1 of 3 tracks skipped: their stems exist (--skip-existing)" in captured.out
    assert {name: (out / "s0" / name).stat().st_mtime_ns for name in STEMS} == before
    errors = [line for line in captured.err.splitlines() if line.startswith("umx-separate: error:")]
    assert errors == [f"umx-separate: error: {out / 's1' / 'vocals.wav'}: exists; "
                      "pass --force to overwrite it or choose another --outdir"]  # a partial set is not skipped
    assert stems(out / "s2") == STEMS
    assert run_cli(*songs[::2], "--model", model, "--outdir", out, "--skip-existing", "--quiet") == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("options,message", [
    (["--force"], "--skip-existing and --force contradict each other"),
    (["--engine", "ray"], "--skip-existing is what --engine ray does already"),
])
def test_skip_existing_with_an_option_it_contradicts_is_one_line(model, tmp_path, wav_file, capsys, options, message):
    out = tmp_path / "out"
    assert run_cli(wav_file(), "--model", model, "--outdir", out, "--skip-existing", *options) == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("umx-separate: error: " + message)
    assert not out.exists()


# ---------------------------------------------------------------- interruption

# Each chunk written is said on stdout, and the writer then waits for the test: until it closes the child's
# stdin, after the child has said it is stopping (then each further chunk is written at once).
SLOW_CHILD = ("import sys\n"
              "from openunmix_like import writer\n"
              "from openunmix_like.cli.separate import main\n"
              "write = writer.StemWriter.write\n"
              "def slow(self, chunks):\n"
              "    write(self, chunks)\n"
              "    print('chunk', flush=True)\n"
              "    sys.stdin.readline()\n"
              "writer.StemWriter.write = slow\n"
              "sys.exit(main(sys.argv[1:]))\n")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_stops_at_the_next_segment_and_keeps_nothing_unfinished(model, tmp_path, wav_file,
                                                                                    signum):
    song = wav_file("song.wav", seconds=8.0)
    later = wav_file("later.wav", seconds=0.5, seed=1)
    mp3 = tmp_path / "song.mp3"  # decoded by ffmpeg into a temporary file, which must go too
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(song), str(mp3)], check=True)
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = tmp_path / "out"
    # 8 s cut into segments of 0.5 s: many chunks, of which the first is written, and held, when the signal comes.
    child = subprocess.Popen([sys.executable, "-c", SLOW_CHILD, str(mp3), str(later), "--model", str(model),
                              "--outdir", str(out), "--quiet", "--segment", "0.5", "--overlap", "0.1"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "TMPDIR": str(temp)})
    try:
        assert child.stdout.readline().strip() == "chunk"
        assert list(temp.iterdir())  # the decoded mp3 is there while it is separated
        child.send_signal(signum)
        said = []
        while not said or "stopping after the segment in hand" not in said[-1]:
            said.append(child.stderr.readline())
            assert said[-1], said  # the child ended without saying it stops
        rest, err = child.communicate(timeout=60)  # closes stdin: the chunk held, and any after it, go on
        err = "".join(said) + err
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 130, err
    # At most the chunk separated meanwhile is written: the rest of the song (over ten chunks) is not.
    assert rest.split() in ([], ["chunk"]), rest
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("umx-separate: error: interrupted: 0 of 2 tracks finished and written; "
                                            "the others wrote nothing (run the same command with --skip-existing "
                                            "to do only those)")
    assert list(out.rglob("*")) == [] or all(p.is_dir() for p in out.rglob("*"))
    assert list(temp.iterdir()) == []
