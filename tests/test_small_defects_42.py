"""Small defects found after earlier reviews: what ``umx-train`` leaves when it stops before training, files that
another program holds open (Windows refuses to replace or move them), and ``~`` that no shell expanded."""
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_folder, write
from openunmix_like import fileio
from openunmix_like.cli import separate
from openunmix_like.errors import AudioError, OpenUnmixLikeError

IN_USE = "The process cannot access the file because it is being used by another process"


def held_open(monkeypatch, *held: Path) -> None:
    """Renaming from or onto one of ``held`` fails, as on Windows while a player, a DAW or an editor has it open."""
    real_replace = os.replace
    names = {os.path.abspath(p) for p in held}

    def replace(src, dst):
        if os.path.abspath(src) in names or os.path.abspath(dst) in names:
            exc = PermissionError(13, IN_USE, str(src))
            exc.winerror = 32  # ERROR_SHARING_VIOLATION; set by Python on Windows only
            raise exc
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def partials(folder: Path) -> list:
    return [p.name for p in folder.rglob("*") if ".partial" in p.name or ".kept" in p.name or ".replaced" in p.name]


# ---------------------------------------------------------------- umx-train stopping before it trains


TRAIN = ["--dataset", "trackfolder_fix", "--epochs", "1", "--hidden-size", "8", "--nfft", "512", "--nhop", "128",
         "--batch-size", "2", "--seq-dur", "0.5", "--sample-rate", "22050", "--quiet", "--device", "cpu"]


def train_data(root: Path) -> Path:
    for split in ("train", "valid"):
        for name in ("vocals", "drums"):
            write(root / split / "t0" / f"{name}.wav", 1.0, seed=len(name) + (5 if split == "valid" else 0))
    return root


def train(*argv) -> int:
    from openunmix_like.cli.train import main

    return main([*TRAIN, *map(str, argv)])


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_output_folder_made_for_a_run_with_no_data_is_removed_again(tmp_path, capsys):
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    for out, data in ((tmp_path / "new" / "deep" / "model", tmp_path / "missing"), (tmp_path / "kept", tmp_path)):
        assert train("--root", data, "--target", "vocals", "--output", out) == 1
        assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "new").exists()
    assert snapshot(tmp_path / "kept") == {"notes.txt": b"mine"}  # a folder that was there stays, as it was


@pytest.mark.parametrize("late", [["--root", "typo"], ["--device", "cuda:999"], ["--seq-dur", "100"],
                                  ["--model", "no-such-model"]])
def test_force_keeps_the_earlier_run_resumable_when_the_new_one_stops_before_training(tmp_path, capsys, late):
    # --force removed the earlier run's checkpoints in the output check, before the data was read: a mistyped
    # --root (or a device, a --seq-dur the tracks are too short for) lost the run that --resume auto continues.
    data = train_data(tmp_path / "data")
    out = tmp_path / "model"
    assert train("--root", data, "--target", "vocals", "--output", out) == 0
    before = snapshot(out)
    assert "vocals.chkpnt" in before
    argv = ["--root", data, "--target", "vocals", "--output", out, "--force", *late]
    capsys.readouterr()
    assert train(*argv) == 1
    assert capsys.readouterr().err.startswith("umx-train: error: ")
    assert snapshot(out) == before


def test_force_with_targets_keeps_every_checkpoint_when_the_data_is_missing(tmp_path):
    data = train_data(tmp_path / "data")
    out = tmp_path / "model"
    assert train("--root", data, "--targets", "vocals", "drums", "--output", out) == 0
    before = snapshot(out)
    assert {"vocals.chkpnt", "drums.chkpnt"} <= set(before)
    assert train("--root", tmp_path / "typo", "--targets", "vocals", "drums", "--output", out, "--force") == 1
    assert snapshot(out) == before


def test_force_still_starts_afresh_once_training_starts(tmp_path, caplog):
    data = train_data(tmp_path / "data")
    out = tmp_path / "model"
    assert train("--root", data, "--target", "vocals", "--output", out, "--epochs", "2") == 0
    with caplog.at_level("INFO", logger="openunmix_like.training"):
        assert train("--root", data, "--target", "vocals", "--output", out, "--force") == 0
    assert "--force: starting vocals" in caplog.text and "afresh (its checkpoints removed)" in caplog.text
    assert json.loads((out / "vocals.json").read_text())["epochs_trained"] == 1


def test_a_forced_model_with_other_settings_is_refused_before_an_epoch_is_trained(tmp_path, capsys):
    # separator.json keeps the folder's settings: the first save refused the replacing model, after its epoch,
    # and --force had removed the checkpoint by then.
    data = train_data(tmp_path / "data")
    out = tmp_path / "model"
    assert train("--root", data, "--target", "vocals", "--output", out) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert train("--root", data, "--target", "vocals", "--output", out, "--force", "--nfft", "1024") == 1
    error = capsys.readouterr().err
    assert error.startswith(f"umx-train: error: --output {out}: its separator.json has ")
    assert "n_fft=1024" in error and "use another --output" in error and error.count("\n") == 1
    assert snapshot(out) == before


# ---------------------------------------------------------------- files open in another program


def test_a_file_in_use_is_named_with_what_to_do(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text("old")
    held_open(monkeypatch, path)
    with pytest.raises(fileio.FileInUse) as caught:
        fileio.write_json_atomic(path, {"new": 1})
    assert str(caught.value) == (f"{path}: cannot be replaced ({IN_USE}); is it open in another program? Close it "
                                 "and run the same command again")
    assert isinstance(caught.value, PermissionError) and isinstance(caught.value, OpenUnmixLikeError)
    assert path.read_text() == "old" and partials(tmp_path) == []


@pytest.mark.parametrize("exists, winerror", [(False, 32), (True, None)])
def test_a_permission_error_is_called_in_use_only_for_a_file_there_on_windows(tmp_path, monkeypatch, exists,
                                                                               winerror):
    # A new file cannot be open elsewhere; a POSIX EACCES (no winerror) is the folder's permissions.
    if exists:
        (tmp_path / "x.bin").write_bytes(b"old")

    def refuse(src, dst):
        exc = PermissionError(13, "Permission denied", str(src))
        if winerror is not None:
            exc.winerror = winerror
        raise exc

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError) as caught:
        fileio.write_bytes_atomic(tmp_path / "x.bin", b"x")
    assert not isinstance(caught.value, fileio.FileInUse)


def test_files_replaced_together_are_all_put_back_when_one_is_in_use(tmp_path, monkeypatch):
    finals = {tmp_path / name: f"old {name}" for name in ("a.pt", "b.pt", "export.json")}
    for path, text in finals.items():
        path.write_text(text)
    staged = {}
    for path in [*finals, tmp_path / "new.pt"]:
        staged[path] = fileio.new_partial(path)
        staged[path].write_text("new")
    held_open(monkeypatch, tmp_path / "export.json")
    with pytest.raises(fileio.FileInUse, match="export.json: cannot be replaced"):
        fileio.replace_together(staged)
    assert {p: p.read_text() for p in finals} == finals
    assert not (tmp_path / "new.pt").exists()
    monkeypatch.undo()
    fileio.replace_together(staged)  # once closed
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == dict.fromkeys(("a.pt", "b.pt", "export.json",
                                                                                 "new.pt"), "new")


def test_a_failed_rename_after_others_puts_every_file_back(tmp_path, monkeypatch):
    # Nothing is held, but the last rename fails (a disk error): the files renamed before it are undone.
    for name in ("a.pt", "b.pt"):
        (tmp_path / name).write_text(f"old {name}")
    staged = {tmp_path / name: fileio.new_partial(tmp_path / name) for name in ("a.pt", "b.pt")}
    for tmp in staged.values():
        tmp.write_text("new")
    real_replace = os.replace

    def replace(src, dst):
        if str(src) == str(staged[tmp_path / "b.pt"]):
            raise OSError(5, "Input/output error", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Input/output error"):
        fileio.replace_together(staged)
    assert {name: (tmp_path / name).read_text() for name in ("a.pt", "b.pt")} == {"a.pt": "old a.pt",
                                                                                 "b.pt": "old b.pt"}


def two_songs(tmp_path: Path) -> Path:
    for k, name in enumerate(("a", "b")):
        write(tmp_path / "songs" / f"{name}.wav", 0.5, seed=k)
    return tmp_path / "songs"


def test_a_stem_open_in_a_player_stops_its_track_only(tmp_path, monkeypatch, capsys):
    # umx-separate --force over stems one of which a player had open: "cannot write (...); check the output
    # folder is writable", which it was.
    model = tiny_folder(tmp_path, "umx")
    argv = [str(two_songs(tmp_path)), "--model", str(model), "--outdir", str(tmp_path / "out"), "--device", "cpu",
            "--quiet"]
    assert separate.main(argv) == 0
    before = snapshot(tmp_path / "out")
    times = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.wav")}
    held = tmp_path / "out" / "a" / "vocals.wav"
    held_open(monkeypatch, held)
    capsys.readouterr()
    assert separate.main([*argv, "--force", "--filename", "{track}/{target}.{ext}"]) == 1
    error = capsys.readouterr().err
    assert error == (f"umx-separate: error: {held}: cannot be replaced ({IN_USE}); is it open in another program? "
                     "Close it and run the same command again\n")
    after = snapshot(tmp_path / "out")
    assert {k: after[k] for k in before if k.startswith("a/")} == {k: v for k, v in before.items()
                                                                    if k.startswith("a/")}
    assert all(p.stat().st_mtime_ns != times[p] for p in (tmp_path / "out" / "b").iterdir())  # b was written
    assert partials(tmp_path / "out") == []


def test_separate_file_names_the_stem_in_use(tmp_path, monkeypatch):
    from openunmix_like import separate_file

    model = tiny_folder(tmp_path, "umx")
    song = two_songs(tmp_path) / "a.wav"
    written = separate_file(song, tmp_path / "out", str(model), device="cpu")
    before = snapshot(tmp_path / "out")
    held_open(monkeypatch, written["drums"])
    with pytest.raises(AudioError, match="drums.wav: cannot be replaced .*; is it open in another program"):
        separate_file(song, tmp_path / "out", str(model), device="cpu", overwrite=True)
    assert snapshot(tmp_path / "out") == before


def test_an_export_file_in_use_leaves_the_whole_export_as_it_was(tmp_path, monkeypatch, capsys):
    # The renames ran one after another: export.json held open left a new vocals.pt beside the old export.json,
    # and a traceback.
    from openunmix_like.cli.export import main

    out = tmp_path / "out"
    first = tiny_folder(tmp_path, "umx")
    assert main([str(first), "--format", "torchscript", "--outdir", str(out), "--no-check"]) == 0
    before = snapshot(out)
    second = tiny_folder(tmp_path / "other", "umx", targets=("drums", "vocals"))  # other weights for each target
    held_open(monkeypatch, out / "export.json")
    capsys.readouterr()
    assert main([str(second), "--format", "torchscript", "--outdir", str(out), "--no-check"]) == 1
    error = capsys.readouterr().err
    assert error == (f"umx-export: error: {out / 'export.json'}: cannot be replaced ({IN_USE}); is it open in "
                     "another program? Close it and run the same command again\n")
    assert snapshot(out) == before and partials(out) == []
    monkeypatch.undo()
    assert main([str(second), "--format", "torchscript", "--outdir", str(out), "--no-check"]) == 0
    assert snapshot(out)["vocals.pt"] != before["vocals.pt"]


def test_a_synth_track_folder_in_use_is_not_half_removed(tmp_path, monkeypatch):
    # An incomplete track folder (no plan.json) is made again; rmtree removed its files one by one and stopped
    # at the one open elsewhere, leaving neither the old folder nor the new one.
    from openunmix_like.synth import corpus
    from openunmix_like.synth.voice import SynthError

    final = tmp_path / "train" / "song-0000"
    final.mkdir(parents=True)
    for name in ("mixture.wav", "vocals.wav"):
        (final / name).write_text(f"old {name}")
    silence = np.zeros((2, 100), dtype=np.int16)

    def write_track():
        corpus._write_track(final, dict.fromkeys(corpus.STEMS, silence), silence, {"name": "song-0000"}, 8000)

    held_open(monkeypatch, final)  # Windows refuses to move a folder holding an open file
    with pytest.raises(SynthError, match=r"^cannot be replaced .*; is a file in it open in another program\? "):
        write_track()
    assert sorted(p.name for p in final.iterdir()) == ["mixture.wav", "vocals.wav"]
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["song-0000"]
    monkeypatch.undo()
    write_track()
    assert sorted(p.name for p in final.iterdir()) == sorted(["mixture.wav", "plan.json",
                                                              *(f"{stem}.wav" for stem in corpus.STEMS)])
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["song-0000"]


# ---------------------------------------------------------------- ~ that no shell expanded


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home folder of its own, and a working folder elsewhere, where a literal "~" folder would appear."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USERPROFILE", str(tmp_path / "home"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "home"


def test_an_input_under_home_given_with_a_tilde_is_found(tmp_path, home, capsys):
    model = tiny_folder(tmp_path, "umx")
    two_songs(home)
    assert separate.main(["~/songs/a.wav", "~/songs", "--model", str(model), "--device", "cpu", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "work" / "separated").iterdir()) == ["a", "b"]
    assert not (tmp_path / "work" / "~").exists()


def test_an_outdir_under_home_given_with_a_tilde_is_made_there(tmp_path, home):
    model = tiny_folder(tmp_path, "umx")
    songs = two_songs(tmp_path)
    assert separate.main([str(songs / "a.wav"), "--model", str(model), "--outdir", "~/stems", "--device", "cpu",
                          "--quiet"]) == 0
    assert sorted(p.name for p in (home / "stems" / "a").iterdir()) == ["drums.wav", "vocals.wav"]
    assert os.listdir(tmp_path / "work") == []


def test_a_manifest_line_under_home_is_read_there(tmp_path, home):
    model = tiny_folder(tmp_path, "umx")
    two_songs(home)
    manifest = home / "list.txt"
    manifest.write_text("~/songs/b.wav\n")
    assert separate.main(["--manifest", "~/list.txt", "--model", str(model), "--device", "cpu", "--quiet"]) == 0
    assert [p.name for p in (tmp_path / "work" / "separated").iterdir()] == ["b"]
    assert not (tmp_path / "work" / "~").exists()


def test_a_folder_named_tilde_is_still_reached_as_dot_slash_tilde(tmp_path, home):
    model = tiny_folder(tmp_path, "umx")
    two_songs(tmp_path / "work" / "~")
    assert separate.main(["./~/songs/a.wav", "--model", str(model), "--device", "cpu", "--quiet"]) == 0
    assert [p.name for p in (tmp_path / "work" / "separated").iterdir()] == ["a"]


def test_the_ray_engine_reads_manifest_lines_under_home_as_the_local_one_does(tmp_path, home):
    from openunmix_like.catalogue.plan import gather_sources

    manifest = tmp_path / "list.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["path"], ["~/songs/a.wav"], ["s3://bucket/~x.wav"]])
    sources, failures = gather_sources([], str(manifest))
    assert list(sources) == [str(home / "songs" / "a.wav"), "s3://bucket/~x.wav"] and failures == []
