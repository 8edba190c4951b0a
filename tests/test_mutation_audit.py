"""Behaviour that a hand-made mutation audit found untested: each test here fails on a mutant that all others pass.

The mutants were of ``writer.py`` (clip policy, peak, cleanup, mp3 encoder errors),
``cli/separate.py`` (option checks, clashes, the batch's exit status), ``fileio.py``
(partial files' mode and removal, ``writable_folder``) and ``catalogue/records.py``
(what makes a track finished).
"""
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import openunmix_like.cli.separate as cli
from openunmix_like import AudioError
from openunmix_like import fileio
from openunmix_like.catalogue import records
from openunmix_like.errors import OpenUnmixLikeError
from openunmix_like.writer import StemWriter, format_problem

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
RATE = 44100
STEMS = ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]


def tone(peak, n=4000, freq=440.0, channels=2):
    """A ``(channels, n)`` float32 sine whose peak is ``peak``."""
    t = np.arange(n) / RATE
    x = peak * np.sin(2 * np.pi * freq * t + 0.1) / np.abs(np.sin(2 * np.pi * freq * t + 0.1)).max()
    return torch.tensor(np.stack([x] * channels), dtype=torch.float32)


def write_stems(folder, chunks, ext="wav", **options):
    """Write ``chunks`` (a list of {stem: (2, n) tensor}) with a StemWriter; return stem -> path."""
    paths = {name: folder / f"{name}.{ext}" for name in chunks[0]}
    with StemWriter(paths, RATE, 2, ext, **options) as writer:
        for chunk in chunks:
            writer.write(chunk)
        writer.finish()
    return paths


def read(path):
    return sf.read(path, dtype="float32", always_2d=True)[0].T


def fake_ffmpeg(folder, monkeypatch, script):
    """Put an ``ffmpeg`` running the shell ``script`` first on PATH."""
    fake = folder / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")


def run_cli(*args):
    return cli.main([str(a) for a in args])


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture
def model(model_dir):
    return model_dir()


# ---------------------------------------------------------------- writer: clip policy


def test_rescale_takes_the_loudest_peak_of_every_chunk_and_stem(tmp_path):
    loud, quiet = tone(4.0), tone(0.5, freq=220.0)
    chunks = [{"a": loud, "b": quiet}, {"a": quiet, "b": quiet}]  # the loudest peak is in the first chunk
    paths = write_stems(tmp_path, chunks, bits=32)
    for name, first, second in (("a", loud, quiet), ("b", quiet, quiet)):
        expected = torch.cat([first, second], dim=1).numpy() / 4.0  # one gain for the whole track
        np.testing.assert_allclose(read(paths[name]), expected, rtol=0, atol=1e-6)


def test_rescale_leaves_a_track_within_full_scale_as_computed(tmp_path):
    chunk = tone(0.5)
    paths = write_stems(tmp_path, [{"a": chunk}], bits=32)
    np.testing.assert_array_equal(read(paths["a"]), chunk.numpy())


def test_clamp_cuts_samples_to_full_scale_even_in_float_wav(tmp_path):
    chunk = tone(0.5)
    chunk[0, 10], chunk[1, 20] = 1.5, -2.5
    paths = write_stems(tmp_path, [{"a": chunk}], bits=32, clip="clamp")
    np.testing.assert_array_equal(read(paths["a"]), chunk.clamp(-1.0, 1.0).numpy())


def test_clip_none_keeps_float_wav_beyond_full_scale(tmp_path):
    chunk = tone(1.5)
    paths = write_stems(tmp_path, [{"a": chunk}], bits=32, clip="none")
    np.testing.assert_array_equal(read(paths["a"]), chunk.numpy())


@needs_ffmpeg
def test_clip_none_still_clips_mp3_stems(tmp_path):
    paths = write_stems(tmp_path, [{"a": tone(2.0, n=RATE)}], ext="mp3", clip="none")
    peak = np.abs(read(paths["a"])).max()
    assert 0.9 < peak < 1.2, peak  # unclipped, the decoded stem would peak near 2


# ---------------------------------------------------------------- writer: formats and mp3 encoding


@needs_ffmpeg
def test_mp3_stems_of_the_writer_are_320_kbps_unless_told(tmp_path):
    paths = write_stems(tmp_path, [{"a": tone(0.5, n=RATE)}], ext="mp3")
    probed = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=bit_rate", "-of", "csv=p=0",
                             str(paths["a"])], capture_output=True, text=True, check=True).stdout
    assert probed.strip() == "320000"


def test_flac_holds_up_to_eight_channels(tmp_path):
    assert format_problem("flac", RATE, 8) is None
    assert format_problem("flac", RATE, 9) == "9 channels, and FLAC holds at most 8; use --ext wav"
    path = tmp_path / "eight.flac"
    with StemWriter({"a": path}, RATE, 8, "flac") as writer:
        writer.write({"a": tone(0.5, channels=8)})
        writer.finish()
    assert sf.info(str(path)).channels == 8


def test_an_encoder_reporting_a_full_disk_says_so(tmp_path, monkeypatch):
    fake_ffmpeg(tmp_path, monkeypatch, "cat > /dev/null\necho 'file:out.mp3: No space left on device' >&2\nexit 1\n")
    out = tmp_path / "out"
    with pytest.raises(AudioError, match=r"a\.mp3: disk full while writing; free space and run again"):
        write_stems(out, [{"a": tone(0.5)}], ext="mp3")
    assert not out.exists()


def test_an_encoder_that_stops_reading_is_an_error_even_with_status_0(tmp_path, monkeypatch):
    fake_ffmpeg(tmp_path, monkeypatch, "exit 0\n")  # reads nothing: the stem would be an empty file
    out = tmp_path / "out"
    with pytest.raises(AudioError, match=r"a\.mp3: cannot encode mp3 \(ffmpeg stopped with status 0\)"):
        write_stems(out, [{"a": tone(0.5, n=2 * RATE)}], ext="mp3")  # 700 kB: far more than a pipe holds
    assert not out.exists()


# ---------------------------------------------------------------- writer: failures leave nothing


def test_samples_that_are_not_finite_are_refused_and_nothing_is_left(tmp_path):
    chunk = tone(0.5)
    chunk[1, 7] = float("nan")
    out = tmp_path / "out"
    with pytest.raises(AudioError, match=r"a\.wav: the separation gave NaN or infinite samples"):
        write_stems(out, [{"a": tone(0.5)}, {"a": chunk}])
    assert not out.exists()


def test_a_failed_rename_removes_the_stems_already_renamed(tmp_path, monkeypatch):
    real_replace, renamed = os.replace, []

    def second_rename_fails(src, dst):
        if renamed:
            raise OSError(errno.EACCES, "Permission denied")
        renamed.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    out = tmp_path / "out" / "song"
    with pytest.raises(AudioError, match=r"b\.wav: cannot write"):
        write_stems(out, [{"a": tone(0.5), "b": tone(0.5)}])
    assert renamed == [out / "a.wav"]
    assert not (tmp_path / "out").exists()  # a.wav, the partial files and the folders made are gone


@pytest.mark.parametrize("failing", [1, 2])  # the set-aside rename of b, or the rename of the new b.wav
def test_a_failed_rename_puts_back_every_stem_an_earlier_run_wrote(tmp_path, monkeypatch, failing):
    out = tmp_path / "song"
    out.mkdir()
    for name in "abc":
        (out / f"{name}.wav").write_bytes(f"earlier {name}".encode())
    real_replace, calls = os.replace, []

    def fails(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2 + failing:  # a: aside and into place; then b's rename number `failing`
            raise OSError(errno.EACCES, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fails)
    with pytest.raises(AudioError, match=r"b\.wav: cannot write"):
        write_stems(out, [{"a": tone(0.5), "b": tone(0.5), "c": tone(0.5)}])
    assert sorted(p.name for p in out.iterdir()) == ["a.wav", "b.wav", "c.wav"]  # no hidden file left either
    assert [(out / f"{n}.wav").read_bytes() for n in "abc"] == [b"earlier a", b"earlier b", b"earlier c"]


def test_replacing_an_earlier_run_leaves_only_the_new_stems(tmp_path):
    out = tmp_path / "song"
    out.mkdir()
    (out / "a.wav").write_bytes(b"earlier")
    paths = write_stems(out, [{"a": tone(0.5), "b": tone(0.5)}])
    assert sorted(p.name for p in out.iterdir()) == ["a.wav", "b.wav"]
    assert np.allclose(read(paths["a"]), tone(0.5).numpy(), atol=1e-4)


def test_a_stem_that_cannot_be_opened_leaves_no_partial_file_of_the_others(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    paths = {"a": tmp_path / "out" / "a.wav", "b": blocker / "b.wav"}
    with pytest.raises(AudioError, match="cannot write"):
        StemWriter(paths, RATE, 2).__enter__()
    assert not (tmp_path / "out").exists()


def test_stems_get_the_permissions_of_a_plain_open(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    paths = write_stems(tmp_path, [{"a": tone(0.5)}])
    assert paths["a"].stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------- umx-separate


@pytest.mark.parametrize("options,message", [
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--batch-segments", "0"], "--batch-segments must be at least 1"),
    (["--aggregate", "{}"], '--aggregate: expected an object like {"accompaniment": ["drums", "bass"]}'),
    (["--filename", "{track}.{ext}"], "--filename '{track}.{ext}' gives the same file for several targets; "
                                      "include {target}"),
])
def test_more_options_no_track_could_use_are_one_line_before_any_work(model, tmp_path, wav_file, capsys, options,
                                                                      message):
    out = tmp_path / "out"
    assert run_cli(wav_file(seconds=0.2), "--model", model, "--outdir", out, "--quiet", *options) == 1
    assert error_lines(capsys) == [f"umx-separate: error: {message}"]
    assert not out.exists()


def test_an_mp3_bitrate_mp3_cannot_hold_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        run_cli(tmp_path / "x.wav", "--ext", "mp3", "--mp3-bitrate", "100")
    assert stopped.value.code == 2
    assert "--mp3-bitrate: invalid choice: 100" in capsys.readouterr().err


def test_tracks_of_one_name_from_two_folders_are_refused_after_the_first(model, tmp_path, wav_file, capsys):
    first = wav_file("a/song.wav", seconds=0.2)
    second = wav_file("b/song.wav", seconds=0.2, seed=1)
    out = tmp_path / "out"
    assert run_cli(first, second, "--model", model, "--outdir", out, "--quiet") == 1
    assert error_lines(capsys) == [f"umx-separate: error: {second}: would write the same files as {first}; tell "
                                   "them apart with {folder} in --filename, e.g. --filename "
                                   "'{folder}/{track}/{target}.{ext}'"]
    assert sorted(p.name for p in (out / "song").iterdir()) == STEMS
    # The remedy works: searched folders are mirrored below --outdir, a pattern's tree below its fixed part.
    library = tmp_path / "library"
    for name in ("a/song.wav", "b/song.wav", "top.wav"):
        wav_file(f"library/{name}", seconds=0.2, seed=len(name))
    template = ["--filename", "{folder}/{track}/{target}.{ext}", "--model", model, "--quiet"]
    assert run_cli(library, *template, "--outdir", tmp_path / "mirror") == 0
    assert sorted(str(p.parent.relative_to(tmp_path / "mirror")) for p in (tmp_path / "mirror").rglob("vocals.wav")) \
        == ["a/song", "b/song", "top"]
    assert run_cli(f"{library}/*/song.wav", *template, "--outdir", tmp_path / "globbed") == 0
    assert sorted(str(p.parent.relative_to(tmp_path / "globbed")) for p in (tmp_path / "globbed").rglob("bass.wav")) \
        == ["a/song", "b/song"]
    # Two files of one name in one folder still clash, and the message says so.
    wav_file("library/a/song.flac", seconds=0.2, seed=3)
    assert run_cli(library / "a", *template, "--outdir", tmp_path / "twice") == 1
    assert "they have one name in one folder (e.g. song.mp3 and song.flac)" in error_lines(capsys)[-1]


def test_an_unexpected_error_fails_its_track_only_and_the_run(model, tmp_path, wav_file, capsys, monkeypatch):
    import openunmix_like.stems as stems

    real = stems.iter_separate

    def fails_on_bad(*args, **kwargs):
        if kwargs["desc"] == "bad.wav":
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(stems, "iter_separate", fails_on_bad)
    bad, good = wav_file("bad.wav", seconds=0.2), wav_file("good.wav", seconds=0.2, seed=1)
    out = tmp_path / "out"
    assert run_cli(bad, good, "--model", model, "--outdir", out, "--quiet") == 1
    assert error_lines(capsys) == [f"umx-separate: error: {bad}: unexpected RuntimeError: boom (run with --verbose "
                                   "for details)"]
    assert sorted(p.name for p in out.iterdir()) == ["good"]


def test_separate_file_refuses_to_write_over_its_input(tmp_path, wav_file):
    song = wav_file("song.wav", seconds=0.2)
    before = song.read_bytes()
    args = cli.build_parser().parse_args([str(song), "--force"])
    with pytest.raises(AudioError, match="output would overwrite the input"):
        cli.separate_file(song, None, args, None, {"vocals": tmp_path / "." / "song.wav"})
    assert song.read_bytes() == before


# ---------------------------------------------------------------- fileio


def test_a_partial_file_of_another_users_running_process_is_kept(tmp_path, monkeypatch):
    target = tmp_path / "vocals.wav"
    theirs = tmp_path / f".vocals.wav.4242-{fileio.HOST_TAG}-abc123.partial.wav"
    theirs.write_bytes(b"")

    def not_permitted(pid, sig):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "kill", not_permitted)
    assert fileio.remove_stale_partials(target) == []
    assert theirs.exists()


def test_atomic_path_removes_its_file_on_ctrl_c(tmp_path):
    path = tmp_path / "model.json"
    path.write_text("earlier")
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]
    assert path.read_text() == "earlier"


def test_writable_folder_makes_missing_parents(tmp_path):
    folder = tmp_path / "a" / "b" / "c"
    assert fileio.writable_folder("--out", folder) == folder
    assert folder.is_dir() and list(folder.iterdir()) == []  # the probe file is gone


def test_writable_folder_refuses_a_folder_where_no_file_can_be_made(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fileio.tempfile, "TemporaryFile", read_only)
    with pytest.raises(OpenUnmixLikeError) as refused:
        fileio.writable_folder("--out", tmp_path)
    assert str(refused.value) == (f"--out {tmp_path}: cannot write there (Read-only file system); give another "
                                  "folder or fix its permissions")


# ---------------------------------------------------------------- catalogue records


def settings_of(*options):
    args = cli.build_parser().parse_args(["in.wav", "--engine", "ray", *options])
    cli.check_options(args)
    return records.settings_of(args)


@pytest.mark.parametrize("options", [["--clip", "clamp"], ["--bits", "24"], ["--ext", "flac"], ["--keep-model-rate"],
                                     ["--niter", "0"], ["--softmask"], ["--targets", "vocals"], ["--start", "1"]])
def test_each_option_that_changes_the_stems_is_a_setting_of_the_record(options):
    assert settings_of(*options) != settings_of()


def finished(record, stem, **changes):
    call = dict(source="in.wav", input_size=10, model_sha256="abc", settings={"niter": 1},
                stem_urls={"vocals": str(stem)})
    return records.is_finished(record, **{**call, **changes})


def test_a_record_is_of_its_own_input_path_and_stem_names_only(tmp_path):
    stems = {name: tmp_path / f"{name}.wav" for name in ("vocals", "bass")}
    for path in stems.values():
        path.write_bytes(b"x")
    described = {name: {"path": str(path)} for name, path in stems.items()}
    record = json.loads(json.dumps(records.make_record("in.wav", 10, "m", "abc", {"niter": 1}, described, 1.0,
                                                       RATE)))
    both = {name: str(path) for name, path in stems.items()}
    assert finished(record, stems["vocals"], stem_urls=both)
    assert not finished(record, stems["vocals"], stem_urls=both, source="other.wav")  # same size, another file
    assert not finished(record, stems["vocals"])  # the record lists a stem this run does not write


def test_a_done_file_that_is_not_a_record_of_ours_means_redo(tmp_path):
    path = tmp_path / records.DONE_NAME
    for data in (b'{"format": "openunmix-like/catalogue-done/1"', b"\xff\xfe not json",
                 json.dumps({"format": "something/else/1", "input": "in.wav"}).encode(), b"[1, 2]"):
        path.write_bytes(data)
        assert records.read_record(str(path)) is None, data
    record = records.make_record("in.wav", 10, "m", "abc", {}, {}, 1.0, RATE)
    path.write_text(json.dumps(record))
    assert records.read_record(str(path)) == record


def test_failures_csv_has_a_header_and_each_reason_on_one_line():
    data = records.failures_csv([("a.wav", "decode", "a.wav: not audio\n  Traceback:\r\n\tline 3")])
    assert data.decode().splitlines() == ["path,stage,reason", "a.wav,decode,a.wav: not audio Traceback: line 3"]
    assert records.read_failures(data) == [{"path": "a.wav", "stage": "decode",
                                            "reason": "a.wav: not audio Traceback: line 3"}]


def test_the_record_says_when_it_finished_in_utc(monkeypatch):
    import time
    from types import SimpleNamespace

    # A machine whose local time is an hour ahead of UTC.
    clock = SimpleNamespace(strftime=time.strftime, gmtime=lambda: time.gmtime(86400),
                            localtime=lambda: time.gmtime(86400 + 3600))
    monkeypatch.setattr(records, "time", clock)
    assert records.make_record("in.wav", 10, "m", "abc", {}, {}, 1.0, RATE)["finished"] == "1970-01-02T00:00:00Z"
