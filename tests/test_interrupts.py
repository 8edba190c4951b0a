"""Ctrl+C and SIGTERM in every command that writes files: one line, status 130, nothing half-written, and the
same command run again finishes the job.

Interruptions come at chosen calls (a patched function raises the signal), never after a sleep.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import music_like, post_web_job, start_web_server, web_server
from openunmix_like.cli import export as export_cli
from openunmix_like.cli import separate as separate_cli
from openunmix_like.writer import EncoderStopped, StemWriter

SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


def run_patched(command, target, signum, argv, cwd, at_call=1):
    """``python -c``: the ``command`` module's ``main(argv)``, with ``target`` (``module:function``) raising
    ``signum`` at its ``at_call``-th call, before doing its work; a subprocess, since SIGTERM without a
    handler would end pytest itself."""
    module, function = target.split(":")
    code = f"""
import importlib, signal, sys
owner = importlib.import_module({module!r})
original, calls = getattr(owner, {function!r}), []
def patched(*args, **kwargs):
    calls.append(1)
    if len(calls) == {at_call}:
        signal.raise_signal({int(signum)})
    return original(*args, **kwargs)
setattr(owner, {function!r}, patched)
sys.exit(importlib.import_module({command!r}).main({list(map(str, argv))!r}))
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line(result, prog):
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: interrupted"), result.stderr


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------- umx-separate


@pytest.mark.parametrize("signum", SIGNALS)
def test_separate_stopped_while_the_model_loads_is_one_line_and_writes_nothing(tmp_path, model_dir, wav_file,
                                                                               signum):
    """Was: Ctrl+C while the model loaded printed a KeyboardInterrupt traceback, SIGTERM killed it silently."""
    model, song, out = model_dir(), wav_file(seconds=1.0), tmp_path / "out"
    argv = [song, "--model", model, "--outdir", out, "--quiet"]
    result = run_patched("openunmix_like.cli.separate", "openunmix_like.cli.separate:load_separator", signum, argv,
                         tmp_path)
    assert_one_line(result, "umx-separate")
    assert not out.exists()
    assert separate_cli.main(list(map(str, argv))) == 0
    assert files_under(out) == [f"song/{t}.wav" for t in ("bass", "drums", "other", "vocals")]


def test_an_encoder_stopped_by_ctrl_c_is_not_reported_as_the_tracks_fault(tmp_path, model_dir, wav_file,
                                                                          monkeypatch, capsys):
    """A Ctrl+C reaches ffmpeg too, which may stop before this process sees it: the track's error was reported
    (`cannot encode mp3 (ffmpeg stopped with status -2)`) beside the interruption's line.

    The first track's encoder is stopped by SIGINT; then, from the second track, this process gets the Ctrl+C.
    """
    songs = [wav_file(f"s{k}.wav", seconds=0.5, seed=k) for k in range(2)]
    calls = []

    def separate_file(path, separator, args, aggregate, outputs, on_progress=None, cancel=None):
        calls.append(path)
        if len(calls) == 1:
            raise EncoderStopped(f"{outputs['vocals']}: cannot encode mp3 (ffmpeg was stopped by SIGINT)",
                                 signal.SIGINT)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # the main thread sets cancel
        assert cancel.wait(60)
        raise separate_cli.Cancelled(str(path))

    monkeypatch.setattr(separate_cli, "separate_file", separate_file)
    code = separate_cli.main([*map(str, songs), "--model", str(model_dir()), "--outdir", str(tmp_path / "out"),
                              "--ext", "mp3", "--quiet"])
    err = capsys.readouterr().err
    assert code == 130 and len(calls) == 2
    assert "ffmpeg" not in err and "cannot encode" not in err, err


def fake_ffmpeg(tmp_path, monkeypatch):
    """An ``ffmpeg`` on PATH that is stopped by SIGINT as soon as it starts, as a Ctrl+C in a terminal does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").write_text("#!/bin/sh\nkill -INT $$\nsleep 60\n")
    (bin_dir / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_an_mp3_encoder_stopped_by_a_signal_is_told_apart_and_leaves_nothing(tmp_path, monkeypatch):
    fake_ffmpeg(tmp_path, monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(EncoderStopped, match=r"vocals\.mp3: cannot encode mp3 \(ffmpeg was stopped by SIGINT\)"):
        with StemWriter({"vocals": out / "vocals.mp3"}, 44100, 2, ext="mp3") as writer:
            writer.write({"vocals": torch.zeros(2, 4410)})
            writer.finish()
    assert not out.exists()


def test_an_encoder_stopped_by_a_signal_this_process_did_not_get_is_still_a_failure(tmp_path, model_dir,
                                                                                     wav_file, monkeypatch, capsys):
    """The error held back in case a Ctrl+C follows is reported when none does: status 1, the file named."""
    fake_ffmpeg(tmp_path, monkeypatch)
    song = wav_file(seconds=0.5)
    code = separate_cli.main([str(song), "--model", str(model_dir()), "--outdir", str(tmp_path / "out"),
                              "--ext", "mp3", "--quiet"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 1
    assert len(lines) == 1 and re.fullmatch(r"umx-separate: error: .*\.mp3: cannot encode mp3 \(ffmpeg was "
                                            r"stopped by SIGINT\); nothing was written", lines[0]), lines
    assert files_under(tmp_path / "out") == []


# ---------------------------------------------------------------- umx-export


@pytest.mark.parametrize("signum", SIGNALS)
def test_export_interrupted_is_one_line_leaves_nothing_and_reruns(tmp_path, model_dir, signum):
    """Was: a KeyboardInterrupt traceback; SIGTERM killed it, leaving a hidden partial file in a new folder."""
    model, out = model_dir(), tmp_path / "exported"
    argv = [model, "--format", "torchscript", "--outdir", out, "--targets", "vocals", "drums", "--no-check"]
    # at the second target's export: the first is staged by then
    result = run_patched("openunmix_like.cli.export", "openunmix_like.export:_export_one", signum, argv, tmp_path,
                         at_call=2)
    assert_one_line(result, "umx-export")
    assert not out.exists()
    assert export_cli.main(list(map(str, argv))) == 0
    assert files_under(out) == ["drums.pt", "export.json", "vocals.pt"]
    record = json.loads((out / "export.json").read_text())
    assert sorted(record["targets"]) == ["drums", "vocals"]
    scripted = torch.jit.load(str(out / "vocals.pt"))
    assert scripted(torch.rand(1, 2, 257, 5)).shape == (1, 2, 257, 5)


def test_export_interrupted_while_renaming_leaves_the_whole_export_not_half(tmp_path, model_dir, monkeypatch,
                                                                           capsys):
    """Was: a Ctrl+C between two renames left the first target's new file without the others or export.json
    (over an earlier export: a new model beside an old export.json)."""
    model, out = model_dir(), tmp_path / "exported"
    real_replace, calls = os.replace, []

    def replace(src, dst, **kwargs):
        calls.append(dst)
        if len(calls) == 1 and out in Path(dst).parents:
            signal.raise_signal(signal.SIGINT)  # the Ctrl+C comes as the first file is renamed
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    code = export_cli.main([str(model), "--format", "torchscript", "--outdir", str(out),
                            "--targets", "vocals", "drums", "--no-check"])
    monkeypatch.setattr(os, "replace", real_replace)
    assert code == 130 and len(capsys.readouterr().err.splitlines()) == 1
    assert files_under(out) == ["drums.pt", "export.json", "vocals.pt"]


# ---------------------------------------------------------------- umx-evaluate


def test_evaluate_stopped_by_sigterm_while_the_model_loads_is_one_line(tmp_path, model_dir):
    """Was: SIGTERM before the scoring began killed the run silently (status -15, no line)."""
    evaldir = tmp_path / "eval"
    argv = ["--root", tmp_path / "none", "--layout", "folder", "--model", model_dir(), "--evaldir", evaldir]
    result = run_patched("openunmix_like.cli.evaluate", "openunmix_like.cli.evaluate:build_methods", signal.SIGTERM,
                         argv, tmp_path)
    assert_one_line(result, "umx-evaluate")
    assert not evaldir.exists()


# ---------------------------------------------------------------- umx-web


def test_web_server_stopped_with_nothing_to_do_says_no_more(tmp_path, model_dir):
    """Was: "... the jobs it was separating are separated again at its next start" with no job at all."""
    with web_server(tmp_path / "jobs", model_dir()) as (process, url):
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=120)
    assert process.returncode == 130, out
    said = [line for line in out.splitlines() if line.startswith("umx-web: ")]
    assert said[-1] == "umx-web: error: interrupted; the server stopped", out


@pytest.mark.parametrize("signum", SIGNALS)
def test_web_server_stopped_with_a_job_running_is_one_line_and_the_job_is_done_at_the_next_start(tmp_path,
                                                                                                 model_dir, signum):
    """Was: SIGTERM ended the server with status -15 (uvicorn raises it again after its shutdown), no line."""
    import requests

    model, jobs = model_dir(), tmp_path / "jobs"
    song = tmp_path / "song.wav"
    sf.write(song, music_like(8.0, 44100, 2).T, 44100)
    with web_server(jobs, model) as (process, url):
        session, job = post_web_job(url, song, targets="vocals")
        while session.get(f"{url}/api/jobs/{job}").json()["status"] == "queued":
            time.sleep(0.02)  # polling the job's state, not waiting for time to pass
        process.send_signal(signum)
        out, _ = process.communicate(timeout=120)
    assert process.returncode == 130, out
    assert "Traceback" not in out
    said = [line for line in out.splitlines() if line.startswith("umx-web: ")]
    assert said[-1].startswith("umx-web: error: interrupted"), out
    state = json.loads((jobs / job / "job.json").read_text())
    assert state["status"] in ("running", "done")
    if state["status"] == "running":
        assert said[-1] == ("umx-web: error: interrupted; the server stopped, and its 1 unfinished job will be "
                            "separated at its next start"), out
    stems = [p.name for p in (jobs / job / "stems").glob("*")] if (jobs / job / "stems").exists() else []
    assert all(name.startswith(".") for name in stems) or stems == ["vocals.wav"], stems
    # the next start separates it again (or keeps it, done), as a run that was not stopped would
    process, url = start_web_server(jobs, model)
    try:
        while requests.get(f"{url}/api/jobs/{job}").json()["status"] not in ("done", "failed"):
            time.sleep(0.05)
        assert requests.get(f"{url}/api/jobs/{job}").json()["status"] == "done"
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert [p.name for p in (jobs / job / "stems").iterdir()] == ["vocals.wav"]
    assert sf.info(str(jobs / job / "stems" / "vocals.wav")).frames == sf.info(str(song)).frames
    assert np.isfinite(sf.read(str(jobs / job / "stems" / "vocals.wav"))[0]).all()
