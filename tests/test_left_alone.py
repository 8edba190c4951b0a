"""Small defects earlier reviews left alone: output names the Ray engine checked only when writing, a broken link
named on the command line, spaces at the ends of manifest lines, long upload names and a model gone in umx-web,
an ONNX error naming a hidden file, and umx-evaluate's warning on records of an older release."""
import csv
import io
import json
import os
import types

import pytest
import soundfile as sf

from helpers import music_like, tiny_folder, write
from openunmix_like import storage
from openunmix_like.catalogue.plan import KEY_MAX, check_output_names
from openunmix_like.cli.evaluate import load_done
from openunmix_like.cli.separate import main
from openunmix_like.errors import OpenUnmixLikeError
from openunmix_like.evaluate import METRICS
from openunmix_like.modeldir import AudioSettings

SETTINGS = AudioSettings(22050, 512, 128, 2)


def errors(capsys) -> list:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("umx-separate: error:")]


# ---------------------------------------------------------------- output names with --engine ray


def test_ray_refuses_a_stem_name_too_long_for_the_file_system_before_separating(tmp_path, capsys):
    """Was: the track was separated by Ray, then failed to be written ("File name too long" naming a hidden
    partial file)."""
    ray = pytest.importorskip("ray")
    model = tiny_folder(tmp_path, "umx", SETTINGS)
    track = "a" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 9)  # "<track>_vocals.wav" is 2 bytes too long
    song = tmp_path / "in" / f"{track}.wav"
    write(song, 0.5, seed=0)
    out = tmp_path / "out"
    assert main([str(song.parent), "--model", str(model), "--engine", "ray", "--quiet", "--outdir", str(out),
                 "--filename", "{track}_{target}.{ext}"]) == 1
    refused = (f"{song}: its output {out / (track + '_vocals.wav')} has a name of {len(track) + 11} bytes, and the "
               f"file system takes at most {len(track) + 9}; shorten the input's name, or put {{track}} in a folder "
               "name of its own (--filename '{track}/{target}.{ext}')")
    assert errors(capsys) == [f"umx-separate: error: {refused}",
                              f"umx-separate: error: 1 track failed; listed in {out / '_failures.csv'}"]
    assert not ray.is_initialized()  # refused while planning: Ray was not even started
    with open(out / "_failures.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [{"path": str(song), "stage": "plan", "reason": refused}]
    assert sorted(p.name for p in out.iterdir()) == ["_failures.csv"]


def test_object_keys_are_held_to_the_object_stores_limit_not_the_file_systems():
    """A stem named by a URL is encoded under a short temporary name, then uploaded: only its key's length counts."""
    long_name = "s3://bucket/stems/" + "a" * 300 + "_vocals.wav"  # too long for a file name, fine for a key
    check_output_names("song.wav", {"vocals": long_name})
    key = "k/" * (KEY_MAX // 2) + "vocals.wav"
    assert len(key) == KEY_MAX + 10
    with pytest.raises(OpenUnmixLikeError) as caught:
        check_output_names("song.wav", {"vocals": f"s3://bucket/{key}"})
    assert str(caught.value) == (f"song.wav: its output s3://bucket/{key} has an object key of {KEY_MAX + 10} bytes, "
                                 f"and object storage takes at most {KEY_MAX}; give a shorter --outdir or --filename")


def test_ray_refuses_an_object_key_too_long_before_separating(tmp_path, s3_server, capsys):
    ray = pytest.importorskip("ray")
    model = tiny_folder(tmp_path, "umx", SETTINGS)
    song = tmp_path / "in" / ("b" * 210 + ".wav")
    write(song, 0.5, seed=0)
    outdir = "s3://catalogue/stems"
    template = "{track}/{track}/{track}/{track}/{track}/{target}.{ext}"  # a key of 5 x 211 + 16 bytes
    assert main([str(song), "--model", str(model), "--engine", "ray", "--quiet", "--outdir", outdir,
                 "--filename", template, "--storage-options", json.dumps(s3_server)]) == 1
    key = "stems/" + ("b" * 210 + "/") * 5 + "vocals.wav"
    assert errors(capsys)[0] == (f"umx-separate: error: {song}: its output s3://catalogue/{key} has an object key "
                                 f"of {len(key)} bytes, and object storage takes at most {KEY_MAX}; give a shorter "
                                 "--outdir or --filename")
    assert not ray.is_initialized()
    assert storage.read_bytes(f"{outdir}/_failures.csv", s3_server).decode().splitlines()[1].split(",")[1] == "plan"


# ---------------------------------------------------------------- a broken link named on the command line


def test_a_broken_link_named_on_the_command_line_says_where_it_leads(tmp_path, capsys):
    """Was: "broken-link.wav: no such file or folder", though the link is there."""
    model = tiny_folder(tmp_path, "umx", SETTINGS)
    link = tmp_path / "broken-link.wav"
    link.symlink_to(tmp_path / "moved" / "song.wav")
    assert main([str(link), "--model", str(model), "--quiet", "--outdir", str(tmp_path / "out")]) == 1
    assert errors(capsys) == [f"umx-separate: error: {link}: a link to {tmp_path / 'moved' / 'song.wav'}, which "
                              "does not exist; fix or remove the link"]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- spaces at the ends of manifest lines


def test_a_text_manifest_takes_each_line_as_written_but_for_its_ending(tmp_path):
    manifest = tmp_path / "list.txt"
    manifest.write_bytes(b"# songs\r\n intro.wav\r\nouter .wav \n\n   \nplain.wav")
    assert storage.read_manifest(str(manifest)) == [" intro.wav", "outer .wav ", "plain.wav"]
    table = tmp_path / "list.csv"
    table.write_text('path\n" intro.wav"\nouter .wav \n')
    assert storage.read_manifest(str(table)) == [" intro.wav", "outer .wav "]


def test_a_file_whose_name_begins_with_a_space_is_separated_from_a_manifest(tmp_path, monkeypatch):
    model = tiny_folder(tmp_path, "umx", SETTINGS)
    write(tmp_path / " intro.wav", 0.5, seed=0)
    (tmp_path / "list.txt").write_text(" intro.wav\n")
    monkeypatch.chdir(tmp_path)  # the manifest's relative paths are relative to it
    out = tmp_path / "out"
    assert main(["--manifest", str(tmp_path / "list.txt"), "--model", str(model), "--quiet", "--outdir", str(out)]) == 0
    assert sorted(p.name for p in (out / " intro").iterdir()) == ["drums.wav", "vocals.wav"]


# ---------------------------------------------------------------- umx-web


def wav_bytes(seconds=0.5):
    buf = io.BytesIO()
    sf.write(buf, music_like(seconds, 22050, 2).T, 22050, format="WAV")
    buf.seek(0)
    return buf


def test_a_long_upload_name_keeps_its_extension(tmp_path):
    """Was: cut at 200 characters, extension and all; the stored input had no extension either."""
    from openunmix_like.web.jobs import FILENAME_CHARS, JobManager

    manager = JobManager(tmp_path, {"tiny": {"arg": None, "targets": ["vocals"]}})
    job = manager.submit("Live at the Hall " * 20 + "(remaster).flac", wav_bytes())
    assert len(job.filename) == FILENAME_CHARS and job.filename.endswith("\u2026.flac")
    assert job.filename.startswith("Live at the Hall Live") and job.input == "input.flac"
    assert manager.submit("short name.wav", wav_bytes()).filename == "short name.wav"


def test_a_queued_job_whose_model_is_gone_after_a_restart_says_what_to_do(tmp_path):
    from openunmix_like.web.jobs import JobManager

    job = JobManager(tmp_path, {"choir": {"arg": None, "targets": ["vocals"]}}).submit("song.wav", wav_bytes())
    restarted = JobManager(tmp_path, {"default": {"arg": None, "targets": ["vocals"]}})
    restarted._jobs[job.id] = job  # as start() finds it on disk, without starting worker processes
    restarted._queue.append(job.id)
    restarted._workers = [types.SimpleNamespace(job=None)]
    restarted._dispatch()
    assert restarted.get(job.id).status == "failed"
    assert restarted.get(job.id).error == ("song.wav: model 'choir' is not offered by this server any more; restart "
                                           "umx-web with --model naming that model or its folder, or upload the song "
                                           "again and choose another model")


# ---------------------------------------------------------------- umx-evaluate records of an older release


def test_records_of_an_older_release_are_named_as_such(tmp_path, capsys):
    identity = {"model_sha256": "a" * 64, "settings": {"niter": 1}}
    scores = {"targets": [{"name": "vocals", "frames": [{"metrics": {m: 1.0 for m in METRICS}}]}]}
    folder = tmp_path / "eval" / "model"
    folder.mkdir(parents=True)
    (folder / "old1.json").write_text(json.dumps(scores))
    (folder / "old2.json").write_text(json.dumps(scores))
    (folder / "other.json").write_text(json.dumps({**scores, **identity, "model_sha256": "b" * 64}))
    (folder / "same.json").write_text(json.dumps({**scores, **identity}))
    done = load_done(tmp_path / "eval", {"model": types.SimpleNamespace(identity=identity)})
    assert list(done["model"]) == ["same"]
    keep = ("are not used; those of the tracks this run scores are replaced (with --tracks, the others stay). To "
            "keep them, give another --evaldir")
    assert capsys.readouterr().err.splitlines() == [
        f"umx-evaluate: warning: {folder}: 2 of its 4 track results were made by an older umx-evaluate, which did not "
        f"record the model and settings that made them, and {keep}",
        f"umx-evaluate: warning: {folder}: 1 of its 4 track results were made with another model or other settings "
        f"and {keep}",
    ]
