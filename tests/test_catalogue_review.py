"""``umx-separate --engine ray`` as a catalogue's user meets it: output folders inside an input prefix in
object storage, an unreachable endpoint, a scheduler's SIGTERM and the failure list it leaves.

Tests without Ray do not start it; the one Ray test starts a local Ray with 2 CPUs (as in
test_catalogue.py); the object storage tests run moto's S3 server on 127.0.0.1.
"""
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import wait_until_ray_tasks_ended, write
from openunmix_like import storage
from openunmix_like.catalogue import records
from openunmix_like.cli.separate import build_parser, main

NAMES = ("vocals", "drums", "bass", "other")


@pytest.fixture
def closed_endpoint():
    """Storage options naming an S3 endpoint on a port nothing listens on (tried once, not retried).

    The port stays bound, without listening, for the whole test: connections to it are refused, and no
    other process (another test's server, Ray) can start listening there meanwhile.
    """
    pytest.importorskip("s3fs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        yield {"key": "testing", "secret": "testing", "endpoint_url": f"http://127.0.0.1:{port}",
               "client_kwargs": {"region_name": "us-east-1"}, "config_kwargs": {"retries": {"max_attempts": 1}}}


# ---------------------------------------------------------------- without Ray


def test_stems_in_an_output_prefix_inside_the_input_prefix_are_not_taken_for_songs(tmp_path, s3_server):
    from openunmix_like.catalogue.plan import gather_sources, make_plan

    fs, _ = storage.filesystem("s3://catalogue", s3_server)
    write(tmp_path / "a.wav", 0.1, seed=0)
    # Earlier runs' stems: in an --outdir inside the searched prefix, and in the searched prefix itself.
    for top, outdir, stems in (("songs", "stems", ["vocals.flac", *(f"{n}.wav" for n in NAMES)]),
                               ("lib", "", [f"{n}.wav" for n in NAMES])):
        fs.put_file(str(tmp_path / "a.wav"), f"catalogue/{top}/A/a.wav")
        for name in stems:
            fs.put_file(str(tmp_path / "a.wav"), f"catalogue/{top}/{outdir}/A/a/{name}".replace("//", "/"))
        outdir = f"s3://catalogue/{top}/{outdir}"
        sources, failures = gather_sources([f"s3://catalogue/{top}"], None, s3_server, outdir)
        args = build_parser().parse_args(["--outdir", outdir, "--filename", "{folder}/{track}/{target}.{ext}"])
        plan = make_plan(sources, NAMES, args, "sha", {}, s3_server, named=[f"s3://catalogue/{top}"])
        assert failures == [] and plan.failures == [], (outdir, plan.failures)
        assert [(t.source, t.stems["vocals"]) for t in plan.todo] == [
            (f"s3://catalogue/{top}/A/a.wav", f"{outdir.rstrip('/')}/A/a/vocals.wav")], outdir
    # A stem named on its own is an input like any other.
    sources, _ = gather_sources(["s3://catalogue/songs/stems/A/a/vocals.flac"], None, s3_server,
                                "s3://catalogue/songs/stems")
    assert list(sources) == ["s3://catalogue/songs/stems/A/a/vocals.flac"]



def test_a_pattern_in_object_storage_leaves_out_the_output_prefix_below_its_fixed_part(tmp_path, s3_server):
    from openunmix_like.catalogue.plan import gather_sources

    fs, _ = storage.filesystem("s3://catalogue", s3_server)
    write(tmp_path / "a.wav", 0.1, seed=0)
    fs.put_file(str(tmp_path / "a.wav"), "catalogue/music/A/a.wav")
    for name in NAMES:  # an earlier run of the same command
        fs.put_file(str(tmp_path / "a.wav"), f"catalogue/music/stems/A/a/{name}.wav")
    outdir = "s3://catalogue/music/stems"
    sources, failures = gather_sources(["s3://catalogue/music/**/*.wav"], None, s3_server, outdir)
    assert (list(sources), failures) == (["s3://catalogue/music/A/a.wav"], [])
    # The output prefix named as the pattern's fixed part is searched: the user asked for it.
    sources, _ = gather_sources(["s3://catalogue/music/stems/**/*.wav"], None, s3_server, outdir)
    assert len(sources) == len(NAMES)
    # A prefix is searched without hidden files, as a local folder is.
    fs.put_file(str(tmp_path / "a.wav"), "catalogue/music/A/._a.wav")
    sources, _ = gather_sources(["s3://catalogue/music"], None, s3_server, outdir)
    assert list(sources) == ["s3://catalogue/music/A/a.wav"]
    # A pattern whose every match is an earlier run's stem is one failure saying so.
    sources, failures = gather_sources(["s3://catalogue/music/*/*/a/*.wav"], None, s3_server, outdir)
    assert sources == {} and failures == [(
        "s3://catalogue/music/*/*/a/*.wav", "input",
        "s3://catalogue/music/*/*/a/*.wav: pattern matches no audio files outside --outdir s3://catalogue/music/stems")]


def test_an_unreachable_endpoint_is_one_line_naming_the_url(tmp_path, model_dir, capsys, closed_endpoint):
    pytest.importorskip("ray")
    options = json.dumps(closed_endpoint)
    common = ["--engine", "ray", "--model", str(model_dir()), "--niter", "0", "--storage-options", options]
    # Output in object storage: refused before any work.
    assert main(["s3://catalogue/songs", "--outdir", "s3://catalogue/out", *common]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("umx-separate: error: --outdir s3://catalogue/out: cannot read (EndpointConnectionError")
    assert "check the URL and --storage-options" in err[0]
    # Inputs only: each listing that fails is one line and one row of _failures.csv; the run goes on.
    (tmp_path / "manifest.txt").write_text("s3://catalogue/more/b.wav\n")
    out = tmp_path / "out"
    assert main(["s3://catalogue/songs/*.wav", "--manifest", str(tmp_path / "manifest.txt"), "--outdir", str(out),
                 *common]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    failures = records.read_failures((out / records.FAILURES_NAME).read_bytes())
    assert [(f["path"], f["stage"]) for f in failures] == [("s3://catalogue/songs/*.wav", "input"),
                                                          ("s3://catalogue/more/b.wav", "input")]
    for f in failures:
        assert f["reason"].startswith(f"{f['path']}: cannot ") and "EndpointConnectionError" in f["reason"]
        assert f["reason"].count(f["path"]) == 1  # said once, not wrapped twice
    # A manifest that is itself out of reach.
    assert main(["--manifest", "s3://catalogue/list.txt", "--outdir", str(out), *common]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("umx-separate: error: --manifest s3://catalogue/list.txt: cannot read")


def test_storage_errors_of_the_backend_name_the_url_and_count_as_os_errors(closed_endpoint):
    options = closed_endpoint
    for call in (lambda: storage.size("s3://b/k.wav", options), lambda: storage.exists("s3://b/k.wav", options),
                 lambda: storage.read_bytes("s3://b/k.wav", options),
                 lambda: storage.write_bytes("s3://b/k.json", b"{}", options)):
        with pytest.raises(storage.StorageError, match=r"^s3://b/k\.\w+: cannot \w+ \(EndpointConnectionError"):
            call()
    # _done.json records that cannot be read are taken as missing: the track is redone, not a traceback.
    assert records.read_record("s3://b/k.json", options) is None


# ---------------------------------------------------------------- on a local Ray


def _wait_for_done(out: Path, process, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not list(out.glob(f"*/{records.DONE_NAME}")):
        assert time.monotonic() < deadline, "no track finished in time"
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_stops_the_run_as_ctrl_c_does_and_lists_this_runs_failures(tmp_path, model_dir, ray_cluster,
                                                                           capsys):
    inputs = tmp_path / "in"
    for k in range(8):
        write(inputs / f"t{k}.wav", 4.0, seed=k)
    (inputs / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio at all" * 8)  # first in order
    out = tmp_path / "out"
    out.mkdir()
    # An earlier run's list, naming a file that has been fixed since.
    (out / records.FAILURES_NAME).write_bytes(records.failures_csv([("/gone/fixed.wav", "decode", "old")]))
    args = [str(inputs), "--engine", "ray", "--model", str(model_dir()), "--outdir", str(out), "--max-in-flight", "1",
            "--niter", "0"]
    driver = subprocess.Popen([sys.executable, "-m", "openunmix_like.cli.separate", *args, "--quiet",
                               "--address", ray_cluster], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_done(out, driver)
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 130, err
    lines = [line for line in err.strip().splitlines() if "Token authentication" not in line]
    assert lines[-1] == ("umx-separate: error: interrupted; finished tracks are recorded, run the same command "
                         "again to do the rest"), err
    assert "SIGTERM received" not in err and "Traceback" not in err
    failures = records.read_failures((out / records.FAILURES_NAME).read_bytes())
    assert [(Path(f["path"]).name, f["stage"]) for f in failures] == [("bad.wav", "decode")]
    wait_until_ray_tasks_ended()  # the stopped driver's tasks: none writes a track after this
    finished = len(list(out.glob(f"*/{records.DONE_NAME}")))
    assert 1 <= finished < 8
    # The same command finishes the rest; nothing half-written is left.
    assert main(args) == 1
    assert f"{8 - finished} done, {finished} skipped (finished before), 1 failed" in capsys.readouterr().err
    assert len(list(out.glob(f"*/{records.DONE_NAME}"))) == 8
    assert not [p for p in out.rglob(".*")]
