"""File and track names that real music libraries and object stores hold: spaces, quotes, ``# % ? & [ ] *``,
a leading dash or dot, emoji and CJK, one name in NFC and NFD, names differing in case, names near the
file system's 255 bytes, line breaks and tabs, bytes that are not UTF-8, deep paths and symbolic links.

Every song is separated into stems named after it, or refused with one line naming it while the rest
of the batch goes on; records (``_failures.csv``, manifests) give the names back as they were.
"""
import csv
import io
import json
import os
import subprocess
import sys
import unicodedata
import zipfile
from pathlib import Path
from urllib.parse import unquote

import pytest
import soundfile as sf

from helpers import music_like
from openunmix_like.catalogue import records
from openunmix_like.cli.separate import main
from openunmix_like.errors import shown

RATE = 16000
TARGETS = ("vocals", "drums")
# Names as bytes: a Linux file name is any bytes but "/" and NUL.
NAMES = [b"with space", b"quote's \"double\"", b"#1 hash", b"100% & ?", b"[live] *star*", b"-dash",
         "emoji \U0001f3b5 \u6b4c".encode(), unicodedata.normalize("NFC", "caf\u00e9").encode(),
         unicodedata.normalize("NFD", "caf\u00e9").encode(), b"Case", b"case", b"L" * 246, b"new\nline",
         b"tab\there", b"bad\xff\xfebytes"]


@pytest.fixture
def model(model_dir):
    return model_dir("model", sample_rate=RATE, targets=TARGETS, hidden_size=8)


def make_song(folder: Path, name: bytes, ext: bytes = b".wav", seed: int = 0) -> Path:
    """A 0.5 s song named ``name + ext`` in ``folder``; skips the test where the file system refuses the name."""
    path = os.path.join(os.fsencode(folder), name + ext)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(path, "wb") as f:
            sf.write(f, music_like(0.5, RATE, 2, seed).T, RATE, format="WAV")
    except OSError as exc:
        pytest.skip(f"this file system refuses the name {name!r} ({exc.strerror})")
    return Path(os.fsdecode(path))


def stems_of(out: Path, track: str):
    return [out / track / f"{target}.wav" for target in TARGETS]


def test_a_folder_of_odd_names_is_separated_each_into_stems_named_after_it(tmp_path, model):
    # A name that is not UTF-8 stopped the whole batch with a traceback (UnicodeEncodeError) when its
    # "song -> stems" line was printed to a UTF-8 terminal (strict, as under en_US.UTF-8); the other
    # tracks were not separated. A line break in a name split that line, and the progress bar's.
    songs = [make_song(tmp_path / "in", name, seed=k) for k, name in enumerate(NAMES)]
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    result = subprocess.run([sys.executable, "-m", "openunmix_like.cli.separate", str(tmp_path / "in"), "--model",
                             str(model), "--outdir", str(out), "--jobs", "2"], capture_output=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    for song in songs:
        for stem in stems_of(out, song.stem):
            assert sf.info(os.fsencode(stem)).frames == RATE // 2, stem
    lines = result.stdout.decode().splitlines()
    assert len(lines) == len(NAMES)  # one line each, "new\nline" too
    assert any(line.startswith(f"{tmp_path}/in/bad\\xff\\xfebytes.wav -> ") for line in lines), lines
    assert any(line.startswith(f"{tmp_path}/in/new\\nline.wav -> ") for line in lines), lines
    assert "new\\nline.wav: " in result.stderr.decode()  # the progress bar's
    assert not any(name.startswith(".") for _, _, names in os.walk(out) for name in names)  # no partial files


def test_a_file_that_fails_is_one_line_naming_it_whatever_its_name(tmp_path, model, capsys):
    folder = tmp_path / "in"
    for name in (b"new\nline.wav", b"bad\xffbytes.wav"):
        make_song(folder, b"ok")
        (Path(os.fsdecode(os.fsencode(folder) + b"/" + name))).write_bytes(b"not audio")
    assert main([str(folder), "--model", str(model), "--outdir", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.splitlines()
    # Before, also: "unexpected UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff" (ffprobe's message
    # quotes the name).
    assert err == [f"umx-separate: error: {folder}/{name}: not a readable audio file; convert it to wav/flac/mp3"
                   for name in ("bad\\xffbytes.wav", "new\\nline.wav")], err
    assert all(stem.is_file() for stem in stems_of(tmp_path / "out", "ok"))


def test_shown_escapes_what_cannot_be_printed_and_keeps_the_rest():
    assert shown("emoji \U0001f3b5 \u6b4c caf\u00e9 [x] 100% #") == "emoji \U0001f3b5 \u6b4c caf\u00e9 [x] 100% #"
    assert shown(os.fsdecode(b"a\xff\tb\nc\x1b")) == "a\\xff\\tb\\nc\\x1b"


def test_stem_names_longer_than_the_file_system_takes_are_refused_before_separating(tmp_path, model, capsys):
    # Before: "unexpected OSError: [Errno 36] File name too long ... (run with --verbose for details)",
    # after the song had been separated.
    long_song = make_song(tmp_path / "in", b"L" * 246)
    make_song(tmp_path / "in", b"short")
    out = tmp_path / "out"
    code = main([str(tmp_path / "in"), "--model", str(model), "--outdir", str(out), "--quiet",
                 "--filename", "{track}_{target}.{ext}"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"umx-separate: error: {long_song}: its output {out}/{'L' * 246}_vocals.wav has a "
                             "name of 257 bytes, and the file system takes at most 255; "), err
    assert err[0].endswith("(--filename '{track}/{target}.{ext}')")
    assert sorted(os.listdir(out)) == ["short_drums.wav", "short_vocals.wav"]
    # The default template gives the long name a folder of its own: it fits.
    assert main([str(long_song), "--model", str(model), "--outdir", str(out), "--quiet"]) == 0
    assert all(stem.is_file() for stem in stems_of(out, long_song.stem))


def test_a_path_too_long_to_write_is_refused_before_separating(tmp_path, model, capsys):
    # libsndfile refuses paths of 1024 bytes or more: the stems were separated, then one line blamed
    # the output folder's permissions ("check the output folder is writable").
    song = make_song(tmp_path, b"song")
    out = tmp_path.joinpath(*["d" * 200] * 5)
    assert main([str(song), "--model", str(model), "--outdir", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "stems are written at paths of at most 960; give a shorter --outdir or --filename" \
        in err[0], err
    assert not (tmp_path / ("d" * 200)).exists()


def test_manifests_give_back_every_name_as_it_is_on_disk(tmp_path, model, monkeypatch):
    # Bytes that are not UTF-8 were read as U+FFFD: "no such file or folder".
    monkeypatch.chdir(tmp_path)
    names = [n for n in NAMES if b"\n" not in n]
    songs = [make_song(tmp_path / "in", name, seed=k) for k, name in enumerate(names)]
    with open(tmp_path / "list.txt", "wb") as f:
        f.write(b"# the catalogue\n" + b"".join(os.fsencode(song) + b"\n" for song in songs))
    assert main(["--manifest", "list.txt", "--model", str(model), "--outdir", "text", "--quiet"]) == 0
    # A table quotes what needs it: commas, quotes, line breaks.
    songs.append(make_song(tmp_path / "in", b"new\nline, \"q\""))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerows([("path", "title"), *((str(song), "a, b") for song in songs)])
    (tmp_path / "list.csv").write_bytes(buffer.getvalue().encode("utf-8", "surrogateescape"))
    assert main(["--manifest", "list.csv", "--model", str(model), "--outdir", "table", "--quiet"]) == 0
    for out, listed in ((tmp_path / "text", songs[:-1]), (tmp_path / "table", songs)):
        assert all(stem.is_file() for song in listed for stem in stems_of(out, song.stem))


def test_failures_csv_gives_back_every_path_as_it_was():
    paths = [os.fsdecode(b"/music/bad\xff.wav"), 'a "quoted", comma.wav', "new\nline.wav", "s3://b/a+b%20c.wav"]
    rows = [(path, "decode", f"{path}: not audio\nat all") for path in paths]
    listed = records.read_failures(records.failures_csv(rows))
    assert [row["path"] for row in listed] == paths
    assert [row["reason"] for row in listed] == [f"{' '.join(path.split())}: not audio at all" for path in paths]


def test_linked_folders_are_searched_once_and_a_broken_link_is_named(tmp_path, model, capsys):
    # Songs in a linked folder were left out without a word, and so was a link to a missing file.
    library = tmp_path / "library"
    make_song(tmp_path / "elsewhere" / "[2020] Album", b"01 Intro")
    library.mkdir()
    (library / "album").symlink_to(tmp_path / "elsewhere")
    (library / "loop").symlink_to(library)
    (library / "gone.wav").symlink_to(tmp_path / "missing.wav")
    make_song(library, b"song")
    out = tmp_path / "out"
    assert main([str(library), "--model", str(model), "--outdir", str(out), "--quiet",
                 "--filename", "{folder}/{track}/{target}.{ext}"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"umx-separate: error: {library}/gone.wav: a link to {tmp_path}/missing.wav, which does not "
                   "exist; fix or remove the link"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav")) == [
        "album/[2020] Album/01 Intro/drums.wav", "album/[2020] Album/01 Intro/vocals.wav",
        "song/drums.wav", "song/vocals.wav"]


def test_a_pattern_whose_folder_has_brackets_says_how_to_match_them(tmp_path, model, capsys):
    song = make_song(tmp_path / "[2020] Album", b"01")
    out = tmp_path / "out"
    assert main([f"{tmp_path}/[2020] Album/*.wav", "--model", str(model), "--outdir", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.strip().endswith("pattern matches no files; [ ] in a pattern match one of the characters between "
                                "them: write [[] for a [ in a file or folder name"), err
    assert main([f"{tmp_path}/[[]2020] Album/*.wav", "--model", str(model), "--outdir", str(out), "--quiet"]) == 0
    assert all(stem.is_file() for stem in stems_of(out, song.stem))


def test_an_object_named_with_wildcard_characters_is_that_object(tmp_path):
    # A URL naming "[live] x.wav" was taken for a pattern ("[live]" one of l, i, v, e) and matched nothing.
    from openunmix_like.storage import expand_url

    song = make_song(tmp_path, b"[live] x")
    assert expand_url(f"file://{song}", [".wav"]) == ([f"file://{song}"], [])
    assert expand_url(f"file://{tmp_path}/[l]ive*.wav", [".wav"])[0] == []


def test_training_data_in_folders_named_with_bytes_that_are_not_utf8_is_read(tmp_path):
    # The files were "unreadable ('utf-8' codec can't encode character '\udcff' ...)" and left out.
    from openunmix_like.data import scan

    song = make_song(tmp_path / os.fsdecode(b"Bj\xf6rk"), b"vocals")
    problems = []
    found = scan(song, problems)
    assert problems == [] and found is not None and found.nb_frames == RATE // 2


def test_the_ray_engine_lists_failed_tracks_whose_names_are_not_utf8_or_hold_line_breaks(tmp_path, model,
                                                                                         ray_cluster, capsys):
    # Writing _failures.csv raised UnicodeEncodeError at the end of the run: a traceback, and no list.
    # A track failing with such a name killed the Ray worker (its message could not be encoded), four
    # times, and was listed as "a worker was lost".
    first = make_song(tmp_path / "in", b"bad\xff name", b".wav")
    second = make_song(tmp_path / "in", b"bad\xff name", b".flac")
    broken = [Path(os.fsdecode(os.fsencode(tmp_path / "in") + b"/" + name)) for name in (b"broken\xff.wav",
                                                                                        b"new\nline.wav")]
    for path in broken:
        path.write_bytes(b"not audio")
    out = tmp_path / "out"
    code = main([str(first), str(second), *map(str, broken), "--engine", "ray", "--address", ray_cluster, "--model",
                 str(model), "--outdir", str(out), "--quiet", "--actor-cpus", "1", "--io-cpus", "0"])
    assert code == 1
    listed = records.read_failures((out / records.FAILURES_NAME).read_bytes())
    assert sorted(row["path"] for row in listed) == sorted(str(p.resolve()) for p in (second, *broken))
    rows = {row["path"]: row for row in listed}
    assert rows[str(broken[0].resolve())]["stage"] == "decode"
    assert rows[str(broken[0].resolve())]["reason"].startswith(f"{tmp_path.resolve()}/in/broken\\xff.wav: decode "
                                                               "failed: not a readable audio file")
    assert rows[str(broken[1].resolve())]["reason"].startswith(f"{tmp_path.resolve()}/in/new\\nline.wav: decode "
                                                               "failed: not a readable audio file")
    assert "\n" not in "".join(row["reason"] for row in listed)
    done = json.loads((out / first.stem / records.DONE_NAME).read_bytes())
    assert done["input"] == str(first.resolve())
    assert all(stem.is_file() for stem in stems_of(out, first.stem))


def test_a_long_upload_name_gives_downloads_and_a_zip_that_fit_a_file_system(tmp_path, model_dir):
    # 200 CJK characters (600 bytes) named the zip's folder: "File name too long" on extracting it.
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from openunmix_like.web.app import create_app
    from openunmix_like.web.jobs import Job, JobManager, clean_filename
    from openunmix_like.web.models import discover_models

    model = model_dir("tiny", sample_rate=RATE, targets=TARGETS, hidden_size=8)
    models = discover_models([str(model)])
    client = TestClient(create_app(JobManager(tmp_path / "jobs", models), models))
    job = Job(id="0" * 32, filename=clean_filename("\u6b4c" * 300 + ".wav"), created=0.0, status="done",
              stems=list(TARGETS), input="input.wav")
    folder = tmp_path / "jobs" / job.id / "stems"
    folder.mkdir(parents=True)
    for stem in TARGETS:
        sf.write(folder / f"{stem}.wav", music_like(0.1, RATE, 2).T, RATE)
    (folder.parent / "job.json").write_text(json.dumps(job.__dict__))
    client.app.state.manager._jobs[job.id] = job
    response = client.get(f"/api/jobs/{job.id}/zip")
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        archive.extractall(tmp_path / "unzipped")
        names = archive.namelist()
    song = "\u6b4c" * 66  # 198 bytes
    assert names == [f"{song}/{stem}.wav" for stem in TARGETS]
    disposition = client.get(f"/api/jobs/{job.id}/stems/vocals").headers["content-disposition"]
    assert disposition.endswith("-vocals.wav") and len(unquote(disposition.split("''", 1)[1]).encode()) <= 255


def test_a_track_name_too_long_for_its_record_says_so(tmp_path, model, capsys):
    # "cannot write it (File name too long); free space or give another --evaldir": neither helps.
    from openunmix_like.cli.evaluate import main as evaluate_main

    for track in ("M" * 253, "short"):
        for k, source in enumerate(("vocals", "drums", "bass", "other")):
            make_song(tmp_path / "data" / track, source.encode(), seed=k)
    code = evaluate_main(["--root", str(tmp_path / "data"), "--layout", "folder", "--model", str(model), "--evaldir",
                          str(tmp_path / "eval"), "--quiet", "--targets", *TARGETS, "--nfft", "256", "--nhop", "64"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("umx-evaluate: error:")]
    assert code == 1 and len(err) == 1, err
    assert err[0].endswith("(File name too long); the track's name is too long for a file name there; rename its "
                           "folder (at most 250 bytes)"), err
    assert (tmp_path / "eval" / "model" / "short.json").is_file()
