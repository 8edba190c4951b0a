"""``openunmix_like.stems.separate_file``: umx-separate's files from Python, with its guarantees."""
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from openunmix_like import AudioError, Separator, separate, separate_file
from openunmix_like.cli.separate import main
from openunmix_like.stems import Cancelled, folder_name, track_name

TARGETS = ["vocals", "drums", "bass", "other"]


def read(path):
    return sf.read(str(path), dtype="float32", always_2d=True)


def test_the_files_equal_umx_separates_to_the_bit(model_dir, wav_file, tmp_path):
    model, song = model_dir(), wav_file("song.flac", seconds=3.0, rate=48000)
    # Short segments, so that the file goes through several chunks and cross-fades.
    options = dict(segment=1.0, overlap=0.25, ext="flac", bits=24, start=0.3, duration=2.2)
    written = separate_file(song, tmp_path / "py", str(model), **options)
    assert main([str(song), "--model", str(model), "--outdir", str(tmp_path / "cli"), "--quiet", "--segment", "1",
                 "--overlap", "0.25", "--ext", "flac", "--bits", "24", "--start", "0.3", "--duration", "2.2"]) == 0
    assert written == {t: tmp_path / "py" / "song" / f"{t}.flac" for t in TARGETS}
    for target, path in written.items():
        ours, rate = read(path)
        theirs, _ = read(tmp_path / "cli" / "song" / f"{target}.flac")
        assert rate == 48000 and ours.shape == (round(2.2 * 48000), 2)
        assert np.array_equal(ours, theirs), target
        assert sf.info(str(path)).subtype == "PCM_24"


def test_the_stems_are_the_separation_of_the_file(model_dir, wav_file, tmp_path):
    separator = Separator.from_pretrained(str(model_dir()), precision="fp32")
    song = wav_file("song.wav", seconds=2.0)
    written = separate_file(song, tmp_path, separator, ext="wav", bits=32, clip="none", segment=None)
    audio, rate = read(song)
    expected = separate(np.ascontiguousarray(audio.T), rate, model=separator, segment=None)
    for target, path in written.items():
        assert np.allclose(read(path)[0].T, expected[target].numpy(), atol=1e-6), target


def test_templates_aggregates_and_the_model_name(model_dir, wav_file, tmp_path):
    model, song = model_dir(name="my-model"), wav_file("take 1.stem.mp4.wav", seconds=1.0)
    written = separate_file(song, tmp_path, model, filename="{model}/{track}-{target}.{ext}",
                            aggregate={"accompaniment": ["drums", "bass", "other"], "vocals": ["vocals"]})
    assert written == {"accompaniment": tmp_path / "my-model" / "take 1.stem.mp4-accompaniment.wav",
                       "vocals": tmp_path / "my-model" / "take 1.stem.mp4-vocals.wav"}
    assert all(p.is_file() for p in written.values())
    assert track_name("x/Song.STEM.MP4") == "Song" and track_name("a.b.wav") == "a.b"
    bundled = separate_file(song, tmp_path / "b", targets=["bass"], filename="{model}_{target}.{ext}", niter=0)
    assert list(bundled.values()) == [tmp_path / "b" / "default_bass.wav"]


def test_folder_is_the_inputs_folder_below_its_root_and_never_leaves_the_outdir():
    assert folder_name("/music/Artist/Album/01.mp3", root="/music") == "Artist/Album"
    assert folder_name("music/Artist/01.mp3", root="music/") == "Artist"
    assert folder_name("music/01.mp3", root="music") == ""
    assert folder_name("s3://bucket/pre/A/01.mp3", root="s3://bucket/pre") == "A"
    assert folder_name("file:///srv/pre/A/01.mp3", root="file:///srv/pre/") == "A"
    # Named directly: the folder as written, without a scheme, a leading "/" or "..".
    assert folder_name("song.mp3") == "" and folder_name("./a/song.mp3") == "a"
    assert folder_name("/data/a/song.mp3") == "data/a" and folder_name("s3://bucket/a/song.mp3") == "bucket/a"
    assert folder_name("../../x/song.mp3") == "x" and folder_name(b"a/b/song.wav") == "a/b"
    assert folder_name("file:///srv/a/song.wav") == "srv/a"



@pytest.mark.parametrize("template", ["ABS/{track}/{target}.{ext}", "{track}/../../{target}.{ext}", "../{target}.wav"])
def test_a_template_leaving_the_outdir_is_refused_before_any_work(model_dir, wav_file, tmp_path, capsys, template):
    song = wav_file("song.wav", 1.0)
    template = template.replace("ABS", str(tmp_path / "abs"))
    out = str(tmp_path / "out")
    assert main([str(song), "--model", str(model_dir()), "--outdir", out, "--filename", template]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--filename {template!r} gives" in err[0] and "outside the output folder" in err[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "abs").exists()
    # ".." that stays inside the output folder is a path like any other.
    assert main([str(song), "--model", str(model_dir()), "--outdir", str(tmp_path / "out"),
                 "--filename", "{track}/x/../{target}.{ext}", "--quiet"]) == 0
    assert (tmp_path / "out" / "song" / "vocals.wav").is_file()


def test_the_folder_placeholder_keeps_the_inputs_folder(model_dir, wav_file, tmp_path, monkeypatch):
    model, song = model_dir(), wav_file("Artist/Album/01 Intro.wav", seconds=1.0)
    monkeypatch.chdir(tmp_path)
    written = separate_file(Path("Artist/Album/01 Intro.wav"), "out", model, targets=["bass"],
                            filename="{folder}/{track}/{target}.{ext}", niter=0)
    assert written == {"bass": Path("out/Artist/Album/01 Intro/bass.wav")} and written["bass"].is_file()
    # A file in the current folder has no folder: no empty part, no absolute path.
    shutil.copy(song, tmp_path / "top.wav")
    top = separate_file("top.wav", "out", model, targets=["bass"], filename="{folder}/{track}/{target}.{ext}",
                        niter=0)
    assert top == {"bass": Path("out/top/bass.wav")} and top["bass"].is_file()


def test_existing_stems_are_kept_unless_overwrite(model_dir, wav_file, tmp_path):
    model, song = model_dir(), wav_file("song.wav", seconds=1.0)
    vocals = tmp_path / "out" / "song" / "vocals.wav"
    vocals.parent.mkdir(parents=True)
    vocals.write_bytes(b"earlier")
    with pytest.raises(AudioError, match=r"vocals\.wav: exists; pass overwrite=True to overwrite it"):
        separate_file(song, tmp_path / "out", model)
    assert vocals.read_bytes() == b"earlier" and sorted(p.name for p in vocals.parent.iterdir()) == ["vocals.wav"]
    separate_file(song, tmp_path / "out", model, overwrite=True)
    assert sf.info(str(vocals)).frames == 44100


def test_an_unreadable_file_names_itself_and_writes_nothing(model_dir, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav file at all")
    with pytest.raises(AudioError, match="bad.wav"):
        separate_file(bad, tmp_path / "out", model_dir())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(ext="ogg"), "ext='ogg': choose from wav, flac, mp3"),
    (dict(ext="mp3", bits=24), "bits=24 is for wav and flac"),
    (dict(mp3_bitrate=128), "mp3_bitrate is for ext='mp3'"),
    (dict(ext="mp3", mp3_bitrate=100), "mp3_bitrate=100: choose from"),
    (dict(ext="flac", bits=32), "ext='flac', bits=32"),
    (dict(start=-1), "start must be"),
    (dict(duration=0), "duration must be"),
    (dict(segment=float("nan")), "segment must be"),
    (dict(filename="{track}.{ext}"), "filename '{track}.{ext}' gives the same file for several targets"),
    (dict(filename="{track.x}/{target}"), "filename '{track.x}/{target}': bad template"),
    (dict(aggregate={}), "aggregate={}: name at least one stem"),
    (dict(aggregate={"all": ["guitar"]}), "unknown targets"),
])
def test_arguments_no_file_could_use_are_one_line_value_errors(model_dir, wav_file, tmp_path, kwargs, message):
    song = wav_file("song.wav", seconds=0.5)
    with pytest.raises(ValueError, match=re.escape(message)):
        separate_file(song, tmp_path / "out", model_dir(), **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_separator_keeps_its_own_settings(model_dir, wav_file, tmp_path):
    separator = Separator.from_pretrained(str(model_dir()))
    song = wav_file("song.wav", seconds=0.5)
    with pytest.raises(ValueError, match="targets, niter would not change a Separator"):
        separate_file(song, tmp_path, separator, targets=["vocals"], niter=0)
    with pytest.raises(ValueError, match=r"\{model\} needs the model's name"):
        separate_file(song, tmp_path, separator, filename="{model}/{target}.{ext}")


def test_progress_and_cancelling(model_dir, wav_file, tmp_path):
    model, song = model_dir(), wav_file("song.wav", seconds=3.0)
    seen = []
    separate_file(song, tmp_path / "a", model, segment=1.0, overlap=0.1, on_progress=seen.append)
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == pytest.approx(1.0)

    cancel = threading.Event()
    with pytest.raises(Cancelled):
        separate_file(song, tmp_path / "b", model, segment=1.0, overlap=0.1,
                      on_progress=lambda fraction: cancel.set(), cancel=cancel)
    assert not (tmp_path / "b").exists()  # no stems, no partial files, no folders


def test_an_interrupt_while_renaming_puts_back_the_earlier_stems(model_dir, wav_file, tmp_path, monkeypatch):
    model, song = model_dir(), wav_file("song.wav", seconds=1.0)
    earlier = {t: p.read_bytes() for t, p in separate_file(song, tmp_path / "out", model).items()}
    real_replace, calls = os.replace, []

    def interrupted(src, dst):  # vocals: aside and into place; then Ctrl+C as drums is moved aside
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        separate_file(song, tmp_path / "out", model, overwrite=True, bits=24)
    folder = tmp_path / "out" / "song"
    assert {p.stem: p.read_bytes() for p in folder.iterdir()} == earlier  # the earlier stems, and nothing else


def test_an_interrupt_while_opening_the_stems_leaves_nothing(model_dir, wav_file, tmp_path, monkeypatch):
    model, song = model_dir(), wav_file("song.wav", seconds=1.0)
    real_open, opened = sf.SoundFile, []

    def second_stem_interrupted(file, mode="r", *args, **kwargs):
        if mode == "w":
            opened.append(file)
            if len(opened) == 2:
                raise KeyboardInterrupt
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(sf, "SoundFile", second_stem_interrupted)
    with pytest.raises(KeyboardInterrupt):
        separate_file(song, tmp_path / "out", model)
    assert not (tmp_path / "out").exists()  # no partial files, no folders


def test_a_file_made_at_an_output_meanwhile_is_kept_without_overwrite(model_dir, wav_file, tmp_path):
    model, song = model_dir(), wav_file("song.wav", seconds=2.0)
    vocals = tmp_path / "out" / "song" / "vocals.wav"

    def someone_writes_vocals(fraction):
        vocals.write_bytes(b"made meanwhile")

    with pytest.raises(AudioError, match=r"vocals\.wav: exists \(written while this file was being separated\), "
                                         r"and was kept; pass overwrite=True"):
        separate_file(song, tmp_path / "out", model, segment=1.0, on_progress=someone_writes_vocals)
    assert vocals.read_bytes() == b"made meanwhile"
    assert [p.name for p in vocals.parent.iterdir()] == ["vocals.wav"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_runs_at_once_leave_one_runs_whole_set(model_dir, wav_file, tmp_path, monkeypatch, overwrite):
    from openunmix_like.writer import StemWriter

    model, song = model_dir(), wav_file("song.wav", seconds=1.0)
    real_finish, real_replace = StemWriter.finish, os.replace
    both_encoded = threading.Barrier(2, timeout=60)

    def finish_together(writer):
        both_encoded.wait()
        real_finish(writer)

    def slow_replace(src, dst):  # the 16-bit run stalls before its 2nd stem, while the 24-bit run renames all
        me = threading.current_thread().name
        time.sleep(0.3 if me == "16" and Path(dst).name == "drums.wav" else 0.05 if me == "24" else 0)
        real_replace(src, dst)

    monkeypatch.setattr(StemWriter, "finish", finish_together)
    monkeypatch.setattr(os, "replace", slow_replace)
    results = {}

    def run(bits):
        try:
            results[bits] = separate_file(song, tmp_path / "out", model, bits=bits, overwrite=overwrite)
        except AudioError as exc:
            results[bits] = exc

    threads = [threading.Thread(target=run, args=(bits,), name=str(bits)) for bits in (16, 24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    folder = tmp_path / "out" / "song"
    assert sorted(p.name for p in folder.iterdir()) == [f"{t}.wav" for t in sorted(TARGETS)]
    assert len({sf.info(str(p)).subtype for p in folder.iterdir()}) == 1  # all of one run
    failed = [r for r in results.values() if isinstance(r, AudioError)]
    assert len(failed) == (0 if overwrite else 1)
    if failed:
        assert "exists (written while this file was being separated)" in str(failed[0])


def test_a_missing_input_is_named_before_the_model_is_loaded(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: no such file"):
        separate_file(tmp_path / "nope.wav", tmp_path / "out", tmp_path / "no-such-model")  # or one to download
    (tmp_path / "folder.wav").mkdir()
    with pytest.raises(AudioError, match=r"folder\.wav: is a folder"):
        separate_file(tmp_path / "folder.wav", tmp_path / "out", tmp_path / "no-such-model")
    assert not (tmp_path / "out").exists()


def test_an_outdir_that_is_a_file_is_named(model_dir, wav_file, tmp_path):
    song, blocker = wav_file("song.wav", seconds=0.5), tmp_path / "blocker"
    blocker.write_text("x")
    for outdir in (blocker, blocker / "sub"):
        with pytest.raises(AudioError, match=rf"{re.escape(str(outdir))}: cannot write there, .*blocker is a file "
                                             "and not a folder; give another outdir"):
            separate_file(song, outdir, model_dir())
    assert blocker.read_text() == "x"


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="mp3 stems need ffmpeg")
@pytest.mark.parametrize("channels, rate, message", [
    (6, 44100, "six.wav: 6 channels, and mp3 holds at most 2; use ext='wav' or ext='flac'"),
    (2, 96000, "six.wav: stems at 96000 Hz, and mp3 holds only 8000, 11025, 12000, 16000, 22050, 24000, 32000, "
               "44100, 48000 Hz; use keep_model_rate=True (the model's rate) or ext='flac'"),
])
def test_formats_the_file_cannot_take_are_refused_in_python_terms(model_dir, wav_file, tmp_path, monkeypatch,
                                                                  channels, rate, message):
    from openunmix_like import stems

    song = wav_file("six.wav", seconds=0.5, channels=channels, rate=rate)
    monkeypatch.setattr(stems, "iter_separate", None)  # refused before separating
    with pytest.raises(AudioError, match=re.escape(message)):
        separate_file(song, tmp_path / "out", model_dir(), ext="mp3")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(bits="24"), ValueError, "ext='wav', bits='24': wav stems take bits=16, 24 or 32 (float)"),
    (dict(aggregate={"v": ["vocals"], "./v": ["drums"]}), ValueError,
     "gives one file, 'song/v.wav', for the stems 'v' and './v'"),
    (dict(filename="{target}", aggregate={"a": ["vocals"], "a/b": ["drums"]}), ValueError,
     "one stem's file would be another's folder"),
    (dict(aggregate={"x": []}), ValueError, "aggregate['x'] is empty: list the targets it sums"),
    (dict(aggregate={"x": 5}), TypeError, "aggregate['x'] must be a target name or a list of them"),
    (dict(aggregate=[("x", ["drums"])]), TypeError, "aggregate must map new names to lists of targets"),
    (dict(filename=None), TypeError, "filename must be a template string"),
    (dict(on_progress=5), TypeError, "on_progress must be a function taking the fraction done, got int"),
    (dict(cancel=True), TypeError, "cancel must be a threading.Event"),
    (dict(nitre=0), TypeError, "separate_file() got unexpected keyword arguments 'nitre'; the Wiener settings"),
])
def test_bad_arguments_are_refused_before_separating(model_dir, wav_file, tmp_path, monkeypatch, kwargs, error,
                                                     message):
    from openunmix_like import stems

    song = wav_file("song.wav", seconds=0.5)
    monkeypatch.setattr(stems, "iter_separate", None)
    with pytest.raises(error, match=re.escape(message)):
        separate_file(song, tmp_path / "out", model_dir(), **kwargs)
    assert not (tmp_path / "out").exists()


def test_paths_may_be_str_bytes_or_path(model_dir, wav_file, tmp_path):
    model, song = model_dir(), wav_file("song.wav", seconds=0.5)
    written = separate_file(bytes(song), os.fsencode(tmp_path / "out"), str(model), targets="vocals")
    assert written == {"vocals": tmp_path / "out" / "song" / "vocals.wav"} and written["vocals"].is_file()
    with pytest.raises(TypeError, match="outdir must be a path"):
        separate_file(song, None, model)
