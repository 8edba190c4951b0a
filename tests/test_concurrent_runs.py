"""Two commands at once on shared folders: each process's files stay whole and consistent.

The races are made deterministic: one process is paused at a known point (it says so on stdout and
waits for a line on stdin) while the other runs; a process that finds a lock held says so through
an event before it waits on the lock (``waits_on_locks``).
"""
import csv
import fcntl
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import track_folders, web_server, write
from openunmix_like import fileio
from openunmix_like.catalogue import engine, records
from openunmix_like.catalogue.stages import Options, Track, store
from openunmix_like.cli.separate import main as separate_main
from openunmix_like.cli.train import main as train_main
from openunmix_like.modeldir import AudioSettings, read_target_json, update_separator_json

STEMS = ("vocals", "drums")
RATE = 8000
# A process that writes a track's stems (value 0.25) or updates separator.json, and pauses where told:
# after its first stem is renamed into place ("writer", "store"), or after reading separator.json
# ("separator"), until a line comes on stdin.
PAUSED = r"""
import sys
from pathlib import Path
import torch
from openunmix_like import modeldir, writer
from openunmix_like.catalogue import stages
from openunmix_like.catalogue.stages import Options, Track

mode, out = sys.argv[1], Path(sys.argv[2])

def pause():
    print("paused", flush=True)
    sys.stdin.readline()

if mode == "separator":
    read = modeldir.read_target_json
    def read_then_pause(path):
        data = read(path)
        if path.name == "separator.json" and not getattr(pause, "done", False):
            pause.done = True
            pause()
        return data
    modeldir.read_target_json = read_then_pause
    modeldir.update_separator_json(out, "drums", modeldir.AudioSettings(8000.0, 512, 128, 1))
    sys.exit(0)

place = writer.StemWriter._place
def place_then_pause(self, encoded, path):
    place(self, encoded, path)
    if path.name.startswith("vocals"):
        pause()
writer.StemWriter._place = place_then_pause
chunks = [torch.full((2, 1, 800), 0.25)]
if mode == "writer":
    with writer.StemWriter({n: out / f"{n}.wav" for n in ("vocals", "drums")}, 8000, 1) as w:
        w.write(dict(zip(("vocals", "drums"), chunks[0])))
        w.finish()
else:
    track, options = eval(sys.stdin.readline())
    stages.store(track, chunks, 8000, 1, ["vocals", "drums"], options)
"""


def start_paused(mode: str, out: Path, first_line: str = "") -> subprocess.Popen:
    """The :data:`PAUSED` process, once it has paused."""
    process = subprocess.Popen([sys.executable, "-c", PAUSED, mode, str(out)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    if first_line:
        process.stdin.write(first_line + "\n")
        process.stdin.flush()
    line = process.stdout.readline()
    if line != "paused\n":
        process.kill()
        raise AssertionError(f"the other process did not pause: {line!r}, status {process.wait()}")
    return process


def resume(process: subprocess.Popen) -> None:
    process.stdin.write("\n")
    process.stdin.flush()
    assert process.wait(60) == 0


@pytest.fixture
def waits_on_locks(monkeypatch):
    """An event set when this process finds a lock file held and starts waiting for it."""
    waiting = threading.Event()

    class Flock:
        LOCK_EX, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

        @staticmethod
        def flock(fd, operation):
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
            except BlockingIOError:
                if operation & fcntl.LOCK_NB:
                    raise
                waiting.set()
                fcntl.flock(fd, operation)

    monkeypatch.setattr(fileio, "fcntl", Flock)
    return waiting


def run_beside(other: subprocess.Popen, work, waiting: threading.Event) -> None:
    """Run ``work`` in a thread until it finishes or waits on a lock, then let the paused ``other`` go on;
    both are finished when this returns."""
    stopped, errors = threading.Event(), []

    def run():
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            stopped.set()

    def tell():
        waiting.wait()
        stopped.set()

    thread = threading.Thread(target=run)
    thread.start()
    threading.Thread(target=tell, daemon=True).start()
    stopped.wait()
    resume(other)
    thread.join(60)
    waiting.set()  # ends the teller thread
    assert not errors, errors


def stem_values(folder: Path) -> dict:
    return {name: round(float(np.mean(sf.read(str(folder / f"{name}.wav"))[0])), 2) for name in STEMS}


def options(model: str) -> Options:
    return Options(0.0, None, None, 0.0, None, False, None, "wav", 16, "rescale", model, f"sha-{model}",
                   {"run": model}, None, None, None)


# ---------------------------------------------------------------- stems of one track


def test_two_processes_renaming_one_tracks_stems_leave_one_runs_whole_set(tmp_path, waits_on_locks):
    from openunmix_like.writer import StemWriter

    out = tmp_path / "out"
    out.mkdir()
    other = start_paused("writer", out)  # its vocals (0.25) are in place, its drums not yet

    def write_ours():
        with StemWriter({n: out / f"{n}.wav" for n in STEMS}, RATE, 1) as writer:
            writer.write({n: torch.full((1, 800), 0.5) for n in STEMS})
            writer.finish()

    run_beside(other, write_ours, waits_on_locks)
    assert stem_values(out) == {"vocals": 0.5, "drums": 0.5}  # ours, renamed after the other's: never a mix
    assert sorted(p.name for p in out.iterdir()) == ["drums.wav", "vocals.wav"]  # no lock or partial file left


def test_two_catalogue_writers_of_one_track_leave_a_record_of_the_stems_beside_it(tmp_path, waits_on_locks):
    out = tmp_path / "out" / "song"
    track = Track("/music/song.wav", "song", 1234, {n: str(out / f"{n}.wav") for n in STEMS},
                  str(out / records.DONE_NAME))
    other = start_paused("store", out, repr((track, options("other"))))  # its vocals in place, no record yet
    run_beside(other, lambda: store(track, [torch.full((2, 1, 800), 0.5)], RATE, 1, list(STEMS), options("ours")),
               waits_on_locks)
    record = records.read_record(track.done)
    assert stem_values(out) == {"vocals": 0.5, "drums": 0.5}
    assert record["model"] == "ours" and record["settings"] == {"run": "ours"}
    assert {n: s["sha256"] for n, s in record["stems"].items()} == {
        n: records.file_sha256(out / f"{n}.wav") for n in STEMS}
    assert records.is_finished(record, track.source, 1234, "sha-ours", {"run": "ours"}, track.stems)


def test_a_record_never_describes_stems_that_another_run_replaced(tmp_path, monkeypatch):
    out = tmp_path / "out" / "song"
    track = Track("/music/song.wav", "song", 1234, {n: str(out / f"{n}.wav") for n in STEMS},
                  str(out / records.DONE_NAME))
    store(track, [torch.full((2, 1, 800), 0.25)], RATE, 1, list(STEMS), options("old"))
    assert records.read_record(track.done)["model"] == "old"

    def stopped(url, data, storage_options=None):  # the run is stopped once its stems are in place
        raise KeyboardInterrupt

    monkeypatch.setattr("openunmix_like.storage.write_bytes", stopped)
    with pytest.raises(KeyboardInterrupt):
        store(track, [torch.full((2, 1, 800), 0.5)], RATE, 1, list(STEMS), options("new"))
    assert stem_values(out) == {"vocals": 0.5, "drums": 0.5}
    # The old record would make a rerun with the old settings skip the track, keeping the new stems.
    assert not Path(track.done).exists()


def test_two_umx_separate_with_force_on_one_folder_both_succeed_with_one_runs_stems(tmp_path, model_dir, wav_file,
                                                                                     waits_on_locks, capsys):
    model, song = model_dir(sample_rate=RATE), wav_file("song.wav", seconds=0.2, rate=RATE, channels=1)
    args = [str(song), "--model", str(model), "--targets", *STEMS, "--force", "--quiet", "--niter", "0"]
    assert separate_main([*args, "--outdir", str(tmp_path / "alone")]) == 0
    out = tmp_path / "out"
    (out / "song").mkdir(parents=True)
    other = start_paused("writer", out / "song")  # another run's vocals in place, its drums not yet
    run_beside(other, lambda: separate_main([*args, "--outdir", str(out)]), waits_on_locks)
    for name in STEMS:  # ours, whole
        assert (out / "song" / f"{name}.wav").read_bytes() == (tmp_path / "alone" / "song" / f"{name}.wav").read_bytes()
    assert "error" not in capsys.readouterr().err


# ---------------------------------------------------------------- _failures.csv of two catalogue drivers


def test_two_catalogue_drivers_on_one_outdir_both_list_their_failures(tmp_path, model_dir, ray_cluster, monkeypatch,
                                                                     capsys):
    model = model_dir(sample_rate=RATE, nb_channels=1)
    out = tmp_path / "out"
    commands = {}
    for run in ("a", "b"):
        folder = tmp_path / run
        write(folder / f"{run}-good.wav", 0.3, seed=1, channels=1, rate=RATE)
        (folder / f"{run}-bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio" * 8)
        commands[run] = [str(folder), "--engine", "ray", "--model", str(model), "--outdir", str(out), "--quiet",
                         "--niter", "0"]
    real_execute = engine.execute

    def b_runs_meanwhile(*args, **kwargs):  # driver a is about to separate when driver b runs from start to end
        if "b" in commands:
            assert separate_main(commands.pop("b")) == 1
        return real_execute(*args, **kwargs)

    monkeypatch.setattr(engine, "execute", b_runs_meanwhile)
    assert separate_main(commands["a"]) == 1
    failures = records.read_failures((out / records.FAILURES_NAME).read_bytes())
    assert sorted(Path(f["path"]).name for f in failures) == ["a-bad.wav", "b-bad.wav"]
    assert sorted(p.parent.name for p in out.glob(f"*/{records.DONE_NAME}")) == ["a-good", "b-good"]
    # A later run replaces the list with its own failures (a-bad is fixed meanwhile).
    write(tmp_path / "a" / "a-bad.wav", 0.3, seed=2, channels=1, rate=RATE)
    assert separate_main(commands["a"]) == 0
    assert not (out / records.FAILURES_NAME).exists()
    assert not list(out.glob(".umx-*.lock"))


def test_rows_another_driver_wrote_meanwhile_are_kept_but_for_this_runs_tracks(tmp_path):
    out = str(tmp_path)
    earlier = records.failures_csv([("/m/old.wav", "decode", "an earlier run's")])
    (tmp_path / records.FAILURES_NAME).write_bytes(earlier)
    # Both drivers read the earlier list when they start; b finishes first.
    engine.write_failures(out, [("/b/1.wav", "decode", "b's")], None, earlier, {"/b/1.wav", "/b/2.wav", "/m/x.wav"})
    engine.write_failures(out, [("/a/1.wav", "write", "a's")], None, earlier, {"/a/1.wav", "/m/x.wav", "/b/2.wav"})
    rows = [(r["path"], r["reason"]) for r in records.read_failures((tmp_path / records.FAILURES_NAME).read_bytes())]
    assert rows == [("/b/1.wav", "b's"), ("/a/1.wav", "a's")]
    # Another driver's row of a track this one did is this one's to replace; none left: no file.
    engine.write_failures(out, [], None, earlier, {"/a/1.wav", "/b/1.wav"})
    assert not (tmp_path / records.FAILURES_NAME).exists()
    assert engine._rows(b"\xff\xfe not csv") == []


# ---------------------------------------------------------------- umx-train


TINY_TRAIN = ["--hidden-size", "8", "--nfft", "512", "--nhop", "128", "--batch-size", "2", "--seq-dur", "0.5",
              "--sample-rate", "22050", "--quiet", "--epochs", "1", "--samples-per-track", "1"]
HOLD = "import sys; from openunmix_like.fileio import held_lock\nwith held_lock(sys.argv[1]):\n" \
       "    print('paused', flush=True); sys.stdin.readline()"


def train_args(root: Path, out: Path, target: str):
    other = "drums" if target == "vocals" else "vocals"
    return ["--dataset", "trackfolder_fix", "--root", str(root), "--target", target, "--target-file", f"{target}.wav",
            "--interferer-files", f"{other}.wav", "--output", str(out), *TINY_TRAIN]


def test_a_second_umx_train_of_the_same_target_and_folder_is_refused_in_one_line(tmp_path, capsys):
    root = track_folders(tmp_path / "data", tracks=1, seconds=1.0)
    out = tmp_path / "model"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(out / ".vocals.train.lock")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # a run training vocals into the folder
    try:
        assert other.stdout.readline() == "paused\n"
        assert train_main(train_args(root, out, "vocals")) == 1
        err = capsys.readouterr().err
        assert err == (f"umx-train: error: --output {out}: another umx-train (pid {other.pid}) is training its "
                       "'vocals' model; wait for it to finish, or give another --output\n")
        assert sorted(p.name for p in out.iterdir()) == [".vocals.train.lock"]  # nothing of ours written
        # A run of another target into the folder goes on beside it.
        assert train_main(train_args(root, out, "drums")) == 0
    finally:
        resume(other)
    assert read_target_json(out / "separator.json")["targets"] == ["drums"]
    assert not list(out.glob(".*.lock"))


def test_two_runs_adding_targets_to_one_separator_json_keep_both(tmp_path, waits_on_locks):
    out = tmp_path / "model"
    out.mkdir()
    other = start_paused("separator", out)  # it has read separator.json (none yet) and is about to write it
    run_beside(other, lambda: update_separator_json(out, "vocals", AudioSettings(8000.0, 512, 128, 1)),
               waits_on_locks)
    assert sorted(json.loads((out / "separator.json").read_text())["targets"]) == ["drums", "vocals"]
    assert sorted(p.name for p in out.iterdir()) == ["separator.json"]


# ---------------------------------------------------------------- umx-web


def test_a_second_umx_web_on_one_jobs_folder_is_refused_in_one_line(tmp_path, model_dir):
    model, jobs = model_dir(), tmp_path / "jobs"
    with web_server(jobs, model) as (first, _):
        second = subprocess.Popen([sys.executable, "-m", "openunmix_like.cli.web", "--port", "0", "--model",
                                   str(model), "--jobs-dir", str(jobs)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            said = second.stdout.readline()  # the error line, or "serving on ..." where it is not refused
        finally:
            if "serving on" in said:
                second.kill()
        assert second.wait(60) == 1
        assert said == (f"umx-web: error: --jobs-dir {jobs}: used by another umx-web (pid {first.pid}); stop it, "
                        "or give this server another --jobs-dir\n")
        assert first.poll() is None
    # Killed, the first server leaves its lock file, which binds nobody: the next server starts.
    assert (jobs / ".umx-web.lock").exists()
    with web_server(jobs, model) as (again, _):
        again.terminate()  # stopped as Ctrl+C stops it: the lock file goes too
        again.wait(60)
    assert not (jobs / ".umx-web.lock").exists()


def test_umx_evaluate_summarises_the_results_another_run_wrote_into_its_folder_meanwhile(tmp_path, monkeypatch):
    # Two runs on one --evaldir with other --tracks: the one that summarised last counted only its own tracks
    # and those there when it started.
    from helpers import make_tracks
    from openunmix_like.cli import evaluate as evaluate_cli

    root, evaldir = make_tracks(tmp_path / "data", n=2), tmp_path / "eval"

    def run(track):
        return evaluate_cli.main(["--root", str(root), "--layout", "folder", "--oracle", "irm2", "--nfft", "512",
                                  "--nhop", "128", "--tracks", track, "--evaldir", str(evaldir), "--quiet"])

    assert run("song1") == 0
    other = evaldir / "IRM2" / "song1.json"
    aside = other.rename(tmp_path / "song1.json")  # written by the other run while this one scores song0:
    score_tracks = evaluate_cli.score_tracks

    def scoring_while_the_other_run_finishes(*args):
        score_tracks(*args)
        aside.rename(other)

    monkeypatch.setattr(evaluate_cli, "score_tracks", scoring_while_the_other_run_finishes)
    assert run("song0") == 0
    summary = list(csv.DictReader((evaldir / "results.csv").open()))
    assert {row["tracks"] for row in summary} == {"2"}, summary
    assert not (evaldir / ".umx-evaluate.lock").exists()


# A catalogue driver that pauses once its actors and decode/write tasks are reserved (until a line on stdin),
# and one that says at once when it waits for room; both joining the Ray cluster at argv[1].
RAY_DRIVER = r"""
import sys
from openunmix_like.catalogue import engine
from openunmix_like.cli.separate import main

mode = sys.argv.pop(1)
if mode == "paused":
    reserve = engine.reserve
    def reserve_then_pause(*args):
        reserved = reserve(*args)
        print("paused", flush=True)
        sys.stdin.readline()
        return reserved
    engine.reserve = reserve_then_pause
else:
    engine.RESERVE_NOTICE_S = 0.1
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_catalogue_drivers_on_a_cluster_with_room_for_one_take_turns(tmp_path, model_dir, ray_cluster):
    # Each driver placed its actor on the 2-CPU cluster, which left no CPU for either's decode tasks: both hung.
    model = model_dir(sample_rate=RATE, nb_channels=1)
    commands = {}
    for run in ("a", "b"):
        write(tmp_path / run / f"{run}.wav", 0.3, seed=1, channels=1, rate=RATE)
        commands[run] = [str(tmp_path / run), "--engine", "ray", "--address", ray_cluster, "--model", str(model),
                         "--outdir", str(tmp_path / "out"), "--quiet", "--niter", "0"]
    a = subprocess.Popen([sys.executable, "-c", RAY_DRIVER, "paused", *commands["a"]], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    b = None
    try:
        assert a.stdout.readline() == "paused\n"
        b = subprocess.Popen([sys.executable, "-c", RAY_DRIVER, "notice", *commands["b"]], stderr=subprocess.PIPE,
                             text=True)
        lines = iter(b.stderr.readline, "")  # b cannot have its actor while a holds the cluster's room
        line = next((line for line in lines if line.startswith("umx-separate: waiting")), "")
        assert line.startswith("umx-separate: waiting for room on the cluster for 1 actors (1 CPU each) and "), line
        a.stdin.write("\n")
        a.stdin.flush()
        assert a.wait(120) == 0
        rest = b.communicate(timeout=120)[1]  # read to the end: a full pipe would stop b
        assert b.returncode == 0, rest
    finally:
        for process in (a, b):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert sorted(p.parent.name for p in (tmp_path / "out").glob(f"*/{records.DONE_NAME}")) == ["a", "b"]


def test_a_model_saved_again_while_it_is_loaded_is_read_again(tmp_path, monkeypatch):
    # umx-train --force of another size replaces vocals.json and the weights one after the other: a load that
    # read the old vocals.json and the new weights said they disagree, and to fix or delete vocals.json.
    from helpers import make_models
    from openunmix_like import modeldir

    settings = AudioSettings(8000.0, 512, 128, 1)

    def model(hidden):
        return make_models(("vocals",), nb_channels=1, hidden_size=hidden)["vocals"]

    modeldir.save_target(tmp_path, "vocals", model(16), settings)
    read_state_dict = modeldir.read_state_dict

    def saved_again_meanwhile(path):  # vocals.json is read: the run saves the new model before the weights are
        if not hasattr(saved_again_meanwhile, "done"):
            saved_again_meanwhile.done = True
            modeldir.save_target(tmp_path, "vocals", model(8), settings)
        return read_state_dict(path)

    monkeypatch.setattr(modeldir, "read_state_dict", saved_again_meanwhile)
    loaded = modeldir.load_target(tmp_path / "vocals.safetensors", "vocals")
    assert loaded.hidden_size == 8
