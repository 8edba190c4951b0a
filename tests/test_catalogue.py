"""``umx-separate --engine ray``: equal to the local engine, resumable, survives killed workers, object storage.

Each Ray test starts its own local Ray with 2 CPUs and stops it; the object
storage test runs moto's S3 server on 127.0.0.1.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import http_server, wait_for_port, wait_until_ray_tasks_ended, write
from openunmix_like.catalogue import engine, records, stages
from openunmix_like.cli.separate import main
from openunmix_like.errors import OpenUnmixLikeError
from openunmix_like import storage

NAMES = ("vocals", "drums", "bass", "other")


def make_inputs(folder: Path, n: int, seconds: float = 2.0, corrupt: bool = False) -> Path:
    for k in range(n):
        write(folder / f"t{k}.wav", seconds, seed=k)
    if corrupt:
        (folder / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio at all" * 8)
    return folder


def read_stems(folder: Path, track: str) -> dict:
    return {name: sf.read(folder / track / f"{name}.wav", dtype="float64")[0] for name in NAMES}


def done_tracks(out: Path) -> set:
    return {p.parent.name for p in out.glob(f"*/{records.DONE_NAME}")}


def mtimes(out: Path, tracks) -> dict:
    return {p: p.stat().st_mtime_ns for t in tracks for p in (out / t).iterdir()}


# ---------------------------------------------------------------- without Ray


def test_manifest_formats(tmp_path):
    (tmp_path / "list.txt").write_text("# comment\na.wav\n\ns3://b/k.flac\n")
    assert storage.read_manifest(str(tmp_path / "list.txt")) == ["a.wav", "s3://b/k.flac"]
    (tmp_path / "list.csv").write_text("id,path\n1,a.wav\n2,b.wav\n3,\n")
    assert storage.read_manifest(str(tmp_path / "list.csv")) == ["a.wav", "b.wav"]
    (tmp_path / "bad.csv").write_text("id,file\n1,a.wav\n")
    with pytest.raises(OpenUnmixLikeError, match=r"bad.csv: no 'path' column"):
        storage.read_manifest(str(tmp_path / "bad.csv"))
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": ["x.wav", "s3://b/y.wav"], "n": [1, 2]}), tmp_path / "list.parquet")
    assert storage.read_manifest(str(tmp_path / "list.parquet")) == ["x.wav", "s3://b/y.wav"]


def test_local_engine_reads_a_manifest(tmp_path, model_dir, capsys):
    make_inputs(tmp_path / "in", 1, seconds=1.0)
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'in' / 't0.wav'}\n")
    assert main(["--manifest", str(tmp_path / "list.txt"), "--model", str(model_dir()),
                 "--outdir", str(tmp_path / "out"), "--quiet"]) == 0
    assert (tmp_path / "out" / "t0" / "vocals.wav").exists()
    (tmp_path / "urls.txt").write_text("s3://bucket/t0.wav\n")
    assert main(["--manifest", str(tmp_path / "urls.txt"), "--outdir", str(tmp_path / "out")]) == 1
    assert "lists URLs (s3://bucket/t0.wav); use --engine ray" in capsys.readouterr().err


def test_a_catalogues_tree_is_mirrored_with_folder_from_paths_urls_and_manifests(tmp_path):
    from openunmix_like.catalogue.plan import gather_sources, make_plan
    from openunmix_like.cli.separate import build_parser

    for name in ("lib/A/Album/01.wav", "lib/B/Album/01.wav", "lib/top.wav", "other/A/01.wav"):
        write(tmp_path / name, 0.1, seed=0)
    (tmp_path / "list.csv").write_text(f"path\n{tmp_path / 'other/A/01.wav'}\ns3://bucket/x/01.wav\n")
    specs = [str(tmp_path / "lib"), f"file://{tmp_path}/lib/*/Album/01.wav", str(tmp_path / "lib/top.wav")]
    sources, failures = gather_sources(specs, str(tmp_path / "list.csv"))
    assert failures == []
    lib = str(tmp_path / "lib")
    assert sources == {f"{lib}/A/Album/01.wav": "A/Album", f"{lib}/B/Album/01.wav": "B/Album",
                       f"{lib}/top.wav": "",  # found in the folder first, so folder "" and not its path
                       f"file://{lib}/A/Album/01.wav": "A/Album", f"file://{lib}/B/Album/01.wav": "B/Album",
                       str(tmp_path / "other/A/01.wav"): str(tmp_path / "other/A").lstrip("/"),
                       "s3://bucket/x/01.wav": "bucket/x"}
    args = build_parser().parse_args(["--outdir", str(tmp_path / "out"), "--filename",
                                      "{folder}/{track}/{target}.{ext}"])
    local = {k: v for k, v in sources.items() if not k.startswith(("file:", "s3:"))}
    plan = make_plan(local, NAMES, args, "sha", {})
    assert plan.failures == [] and not plan.skipped
    out = tmp_path / "out"
    assert sorted(Path(t.done).relative_to(out).as_posix() for t in plan.todo) == [
        "A/Album/01/_done.json", "B/Album/01/_done.json", str(tmp_path / "other/A/01/_done.json").lstrip("/"),
        "top/_done.json"]
    by_source = {t.source: t for t in plan.todo}
    assert by_source[f"{lib}/B/Album/01.wav"].stems["vocals"] == str(out / "B/Album/01/vocals.wav")
    # Stems of one target in one folder: each track's record still has a folder of its own.
    args.filename = "{target}/{folder}/{track}.{ext}"
    plan = make_plan(local, NAMES, args, "sha", {})
    assert sorted(Path(t.done).relative_to(out).as_posix() for t in plan.todo)[:2] == [
        "A/Album/01/_done.json", "B/Album/01/_done.json"]
    # Without {folder} the second 01.wav clashes, and the message says how to keep them apart.
    args.filename = "{track}/{target}.{ext}"
    plan = make_plan(local, NAMES, args, "sha", {})
    assert [(Path(f[0]).relative_to(tmp_path).as_posix(), f[1]) for f in plan.failures] == [
        ("lib/B/Album/01.wav", "plan"), ("other/A/01.wav", "plan")]
    assert "tell them apart with {folder} in --filename" in plan.failures[0][2]


def test_engine_ray_without_ray_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    make_inputs(tmp_path / "in", 1, seconds=0.5)
    assert main([str(tmp_path / "in"), "--engine", "ray", "--outdir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["umx-separate: error: --engine ray needs Ray: pip install 'openunmix-like[ray]'"]
    assert not (tmp_path / "out").exists()


def test_unreachable_address_is_one_line_and_writes_nothing(tmp_path, capsys):
    pytest.importorskip("ray")
    import socket

    make_inputs(tmp_path / "in", 1, seconds=0.5)
    with socket.socket() as s:  # a port nothing listens on: bound, not listening, so no other process takes it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert main([str(tmp_path / "in"), "--engine", "ray", "--address", f"127.0.0.1:{port}",
                     "--outdir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"umx-separate: error: --address 127.0.0.1:{port}: no Ray head node")
    assert not (tmp_path / "out").exists()


def test_ray_address_in_the_environment_is_joined_and_named_when_nothing_answers(tmp_path, monkeypatch, capsys):
    # Ray's own ray.init() joins $RAY_ADDRESS, which 'ray job submit' sets for the job it runs and clusters
    # set in their shells; --engine ray started a local Ray beside the cluster instead, on one machine.
    pytest.importorskip("ray")
    import socket

    make_inputs(tmp_path / "in", 1, seconds=0.5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        assert main([str(tmp_path / "in"), "--engine", "ray", "--outdir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"umx-separate: error: RAY_ADDRESS 127.0.0.1:{port}: no Ray head node")
    assert err[0].endswith("start one with 'ray start --head', or unset RAY_ADDRESS to start a local Ray")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_driver_joins_the_cluster_in_ray_address_without_starting_a_ray_of_its_own(tmp_path, model_dir,
                                                                                      ray_cluster):
    make_inputs(tmp_path / "in", 2, seconds=0.5)
    folder = tempfile.mkdtemp(prefix="umx-ray-")  # where a local Ray of the driver's would make its session
    try:
        env = dict(os.environ, RAY_ADDRESS=ray_cluster, RAY_TMPDIR=folder)
        driver = subprocess.run([sys.executable, "-m", "openunmix_like.cli.separate", str(tmp_path / "in"),
                                 "--engine", "ray", "--model", str(model_dir()), "--niter", "0", "--quiet",
                                 "--outdir", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                                timeout=240)
        assert driver.returncode == 0, driver.stderr[-2000:]
        assert done_tracks(tmp_path / "out") == {"t0", "t1"}
        assert os.listdir(folder) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_ray_error_without_text_is_named_by_its_kind(monkeypatch):
    # Ray 2.9 joining a newer head raised a ConnectionError with no text: the line ended "cannot start or join
    # Ray ()".
    ray = pytest.importorskip("ray")
    from openunmix_like.catalogue import engine

    def refuse(**_):
        raise ConnectionError()

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(engine, "check_reachable", lambda address, **_: None)
    with pytest.raises(OpenUnmixLikeError, match=r"^--address 127\.0\.0\.1:1: cannot start or join Ray "
                                                 r"\(ConnectionError\); check 'ray status'"):
        engine.connect("127.0.0.1:1", False)


def test_actor_layout_follows_the_cluster():
    from openunmix_like.catalogue.engine import actor_layout
    from openunmix_like.cli.separate import build_parser

    def layout(options, **resources):
        return actor_layout(build_parser().parse_args(["x.wav", *options]), resources)

    assert layout([], CPU=2.0) == (1, {"num_cpus": 1.0})  # one core left to decode and write
    assert layout([], CPU=16.0) == (14, {"num_cpus": 1.0})
    assert layout(["--actor-cpus", "4"], CPU=16.0) == (3, {"num_cpus": 4.0})
    assert layout(["--device", "cuda"], CPU=16.0, GPU=2.0) == (2, {"num_cpus": 1.0, "num_gpus": 1.0})
    assert layout(["--device", "cuda", "--actor-gpus", "0.5"], CPU=16.0, GPU=1.0) == (
        2, {"num_cpus": 1.0, "num_gpus": 0.5})
    with pytest.raises(OpenUnmixLikeError, match="need more than the cluster's 1 GPUs"):
        layout(["--device", "cuda", "--actors", "3", "--actor-gpus", "0.5"], CPU=16.0, GPU=1.0)
    with pytest.raises(OpenUnmixLikeError, match="the Ray cluster has no GPUs"):
        layout(["--device", "cuda"], CPU=16.0)
    with pytest.raises(OpenUnmixLikeError, match="leave no room .* pass --io-cpus 0"):
        layout(["--actors", "2"], CPU=2.0)
    assert layout(["--actors", "2", "--io-cpus", "0"], CPU=2.0) == (2, {"num_cpus": 1.0})


def test_importing_the_package_does_not_import_ray():
    code = ("import sys, openunmix_like, openunmix_like.cli.separate, openunmix_like.catalogue; "
            "print('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_done_record_matches_only_the_same_input_model_and_settings(tmp_path):
    stem = tmp_path / "vocals.wav"
    stem.write_bytes(b"x")
    settings = {"niter": 1}
    record = records.make_record("in.wav", 10, "m", "abc", settings, {"vocals": {"path": str(stem)}}, 1.0, 44100)
    record = json.loads(json.dumps(record))  # as read back from _done.json
    stems = {"vocals": str(stem)}
    assert records.is_finished(record, "in.wav", 10, "abc", settings, stems)
    assert not records.is_finished(record, "in.wav", 11, "abc", settings, stems)  # input changed
    assert not records.is_finished(record, "in.wav", 10, "abd", settings, stems)  # model changed
    assert not records.is_finished(record, "in.wav", 10, "abc", {"niter": 0}, stems)  # setting changed
    assert not records.is_finished(record, "in.wav", 10, "abc", settings, {"vocals": str(stem), "bass": "b.wav"})
    stem.unlink()
    assert not records.is_finished(record, "in.wav", 10, "abc", settings, stems)  # a stem went missing


def test_the_mp3_bitrate_is_a_setting_of_mp3_runs_only():
    from openunmix_like.cli.separate import build_parser, check_options

    def settings(*options):
        args = build_parser().parse_args(["in.wav", "--engine", "ray", *options])
        check_options(args)
        return records.settings_of(args)

    wav = settings()
    assert "mp3_bitrate" not in wav and wav["bits"] == 16 and wav["ext"] == "wav"  # records of earlier runs match
    assert settings("--ext", "mp3")["mp3_bitrate"] == 320
    assert settings("--ext", "mp3") != settings("--ext", "mp3", "--mp3-bitrate", "128")  # a change redoes tracks


def test_stage_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(stages.StageError("decode", "a.wav", "a.wav: not audio\nat all")))
    assert (error.stage, error.source, error.reason) == ("decode", "a.wav", "not audio at all")
    assert str(error) == "a.wav: decode failed: not audio at all"


def test_a_separation_call_of_several_tracks_keeps_each_tracks_result_and_failure(tmp_path, model_dir):
    from openunmix_like import Separator

    inputs = make_inputs(tmp_path / "in", 3, seconds=5.0, corrupt=True)
    write(inputs / "t3.wav", 4.0, seed=3, rate=32000)
    options = stages.Options(0.0, None, 2.0, 1.0, 4, False, None, "wav", 32, "auto", "m", "abc", {})
    paths = [inputs / name for name in ("t0.wav", "bad.wav", "t1.wav", "t3.wav", "t2.wav")]
    tracks = [stages.Track(str(p), p.stem, p.stat().st_size, {}, "") for p in paths]
    decoded = [stages.decode_or_error(track, options) for track in tracks]
    assert isinstance(decoded[1], stages.StageError) and decoded[1].stage == "decode"
    separator = Separator.from_pretrained(model_dir(), niter=1)
    worker = stages.SeparationWorker()
    results = worker.separate_group(tracks, options, separator, *decoded)
    assert results[1] is decoded[1]
    alone = stages.SeparationWorker()
    for track, item, result in zip(tracks, decoded, results):
        if track is tracks[1]:
            continue
        one = alone.separate(track, item, options, separator)
        assert result.sample_rate == one.sample_rate == item.sample_rate
        assert result.stems.shape == one.stems.shape
        assert np.abs(result.stems - one.stems).max() <= 1e-5 * np.abs(one.stems).max()
    # A single track comes back alone (one Ray return); the write stage raises a returned failure.
    assert isinstance(worker.separate_group(tracks[:1], options, separator, decoded[0]), stages.Separated)
    with pytest.raises(stages.StageError, match="bad.wav: decode failed"):
        stages.write(tracks[1], results[1], separator.target_names, options)


READ_ONLY = """
import sys, warnings
import numpy as np
from openunmix_like import Separator
from openunmix_like.catalogue import stages

stage, source, model, out = sys.argv[1:]
names = ("vocals", "drums", "bass", "other")
options = stages.Options(0.0, None, 2.0, 1.0, 4, False, None, "wav", 16, "rescale", "m", "abc", {})
track = stages.Track(source, "t0", 1, {name: f"{out}/t0/{name}.wav" for name in names}, f"{out}/t0/_done.json")
separator = Separator.from_pretrained(model, niter=0)
decoded = stages.decode_or_error(track, options)
decoded.audio.setflags(write=False)
warnings.simplefilter("error")  # torch warns once a process: each stage is checked in a process of its own
if stage == "separate":
    stages.SeparationWorker().separate(track, decoded, options, separator)
else:
    stems = np.zeros((4, *decoded.audio.shape), np.float32)
    stems.setflags(write=False)
    stages.write(track, stages.Separated(stems, decoded.sample_rate), names, options)
"""


@pytest.mark.parametrize("stage", ["separate", "write"])
def test_read_only_arrays_as_ray_hands_them_over_make_no_warning(tmp_path, model_dir, stage):
    # torch warned "The given NumPy array is not writable ..." under --verbose (Ray's arrays are read-only).
    inputs = make_inputs(tmp_path / "in", 1, seconds=2.0)
    result = subprocess.run([sys.executable, "-c", READ_ONLY, stage, str(inputs / "t0.wav"), str(model_dir()),
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1500:]


IO_TASKS = """
import sys
import numpy as np
from openunmix_like.catalogue import engine, stages

source, out = sys.argv[1:]
names = ("vocals", "drums", "bass", "other")
aggregate = {"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]}
for ext, bits in (("flac", 24), ("mp3", 16)):
    options = stages.Options(0.0, None, 2.0, 1.0, 4, False, aggregate, ext, bits, "rescale", "m", "abc", {},
                             mp3_bitrate=128 if ext == "mp3" else None)
    track = stages.Track(source, "t0", 1, {name: f"{out}/{ext}/{name}.{ext}" for name in aggregate},
                         f"{out}/{ext}/_done.json")
    decoded = stages.decode_or_error(track, options)
    stems = np.stack([(k + 1) * 0.1 * decoded.audio for k in range(4)])
    stems.setflags(write=False)  # as Ray hands them over
    record = engine.write_or_not_shared(track, stages.Separated(stems, decoded.sample_rate), names, options)
    assert sorted(record["stems"]) == ["accompaniment", "vocals"], record
print("torch" in sys.modules)
"""


def test_decode_and_write_tasks_run_without_torch(tmp_path):
    # Ray runs them in processes of their own: torch there would take seconds to import, and about 180 MB each.
    inputs = make_inputs(tmp_path / "in", 1, seconds=1.0)
    result = subprocess.run([sys.executable, "-c", IO_TASKS, str(inputs / "t0.wav"), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1500:]
    assert result.stdout == "False\n"
    audio, _ = sf.read(inputs / "t0.wav", dtype="float32")
    accompaniment, _ = sf.read(tmp_path / "out" / "flac" / "accompaniment.flac", dtype="float32")
    assert np.abs(accompaniment - 0.9 * audio).max() < 1e-5  # 0.2 + 0.3 + 0.4 times the input, at 24 bits
    assert (tmp_path / "out" / "mp3" / "vocals.mp3").stat().st_size > 0


def test_aggregating_arrays_equals_aggregating_tensors():
    import torch

    from openunmix_like.naming import aggregate_estimates

    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal((2, 1000)).astype(np.float32) for name in NAMES}
    groups = {"accompaniment": ["drums", "bass", "other"], "vocals": "vocals"}
    from_arrays = aggregate_estimates(arrays, groups)
    from_tensors = aggregate_estimates({k: torch.from_numpy(v) for k, v in arrays.items()}, groups)
    assert list(from_arrays) == list(from_tensors) == ["accompaniment", "vocals"]
    for name in groups:
        assert isinstance(from_arrays[name], np.ndarray)
        assert np.array_equal(from_arrays[name], from_tensors[name].numpy())


# ---------------------------------------------------------------- on a local Ray


@pytest.mark.slow
def test_ray_equals_local_and_lists_the_corrupt_file(tmp_path, model_dir, ray_cluster, capsys):
    inputs = make_inputs(tmp_path / "in", 3, corrupt=True)
    model = str(model_dir())
    common = [str(inputs), "--model", model, "--bits", "32", "--quiet"]
    assert main(common + ["--outdir", str(tmp_path / "local")]) == 1
    assert main(common + ["--engine", "ray", "--outdir", str(tmp_path / "ray")]) == 1
    assert "1 track failed; listed in" in capsys.readouterr().err
    # Tracks separated together, their segments in shared batches: equal to batching's rounding.
    assert main(common + ["--engine", "ray", "--outdir", str(tmp_path / "grouped"), "--tracks-per-call", "4",
                          "--batch-segments", "4"]) == 1
    assert "1 track failed; listed in" in capsys.readouterr().err
    for k in range(3):
        theirs = read_stems(tmp_path / "local", f"t{k}")
        peak = max(np.abs(s).max() for s in theirs.values())
        for out, tolerance in (("ray", 1e-6), ("grouped", 1e-5)):
            ours = read_stems(tmp_path / out, f"t{k}")
            for name in NAMES:
                assert np.abs(ours[name] - theirs[name]).max() <= tolerance * peak, (out, k, name)
        record = json.loads((tmp_path / "ray" / f"t{k}" / records.DONE_NAME).read_text())
        source = inputs / f"t{k}.wav"
        assert (record["input"], record["input_size"]) == (str(source), source.stat().st_size)
        for name, stem in record["stems"].items():
            assert stem["sha256"] == records.file_sha256(Path(stem["path"]))
    failures = records.read_failures((tmp_path / "ray" / records.FAILURES_NAME).read_bytes())
    assert [(Path(f["path"]).name, f["stage"]) for f in failures] == [("bad.wav", "decode")]
    assert "\n" not in failures[0]["reason"] and "bad.wav" in failures[0]["reason"]
    assert not (tmp_path / "ray" / "bad").exists()
    grouped = records.read_failures((tmp_path / "grouped" / records.FAILURES_NAME).read_bytes())
    assert [(Path(f["path"]).name, f["stage"]) for f in grouped] == [("bad.wav", "decode")]
    # A second run skips what is finished; a changed setting redoes it.
    before = mtimes(tmp_path / "ray", ["t0", "t1", "t2"])
    assert main(common + ["--engine", "ray", "--outdir", str(tmp_path / "ray")]) == 1
    assert mtimes(tmp_path / "ray", ["t0", "t1", "t2"]) == before
    (inputs / "bad.wav").unlink()
    assert main(common[:-1] + ["--engine", "ray", "--outdir", str(tmp_path / "ray"), "--niter", "0"]) == 0
    assert "3 done, 0 skipped (finished before), 0 failed" in capsys.readouterr().err
    assert not (tmp_path / "ray" / records.FAILURES_NAME).exists()  # this run's failures: none


def test_ray_mirrors_the_tree_with_folder_and_skips_it_on_a_rerun(tmp_path, model_dir, ray_cluster, capsys):
    for k, name in enumerate(("A/Album/01.wav", "B/Album/01.wav")):
        write(tmp_path / "lib" / name, 0.5, seed=k)
    common = [str(tmp_path / "lib"), "--model", str(model_dir()), "--niter", "0", "--engine", "ray", "--outdir",
              str(tmp_path / "out"), "--filename", "{folder}/{track}/{target}.{ext}"]
    assert main(common + ["--quiet"]) == 0
    for name in ("A/Album/01", "B/Album/01"):
        record = json.loads((tmp_path / "out" / name / records.DONE_NAME).read_text())
        assert record["input"] == str(tmp_path / "lib" / f"{name}.wav")
        assert sorted(Path(s["path"]).relative_to(tmp_path / "out" / name).as_posix()
                      for s in record["stems"].values()) == sorted(f"{n}.wav" for n in NAMES)
    assert main(common) == 0
    assert "0 done, 2 skipped (finished before), 0 failed" in capsys.readouterr().err


def test_bad_engine_options_and_an_outdir_that_is_a_file_are_one_line(tmp_path, capsys):
    pytest.importorskip("ray")
    make_inputs(tmp_path / "in", 1, seconds=0.5)
    (tmp_path / "afile").write_text("")
    for options, message in ((["--actor-cpus", "nan"], "--actor-cpus must be above 0"),
                             (["--io-cpus", "nan"], "--io-cpus must be at least 0"),
                             (["--stream-over", "nan"], "--stream-over must be at least 0"),
                             (["--outdir", str(tmp_path / "afile")], "is a file, not a folder; give a folder"),
                             (["--outdir", str(tmp_path / "afile" / "out")], "cannot write there (")):
        args = [str(tmp_path / "in"), "--engine", "ray", "--outdir", str(tmp_path / "out"), *options]
        assert main(args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_reruns_skip_what_is_finished_whatever_the_template_and_folder(tmp_path, model_dir, ray_cluster, capsys):
    inputs = make_inputs(tmp_path / "in", 2, seconds=1.0)
    first, second = str(model_dir("first")), str(model_dir("second", seed=1))
    # Two models into one folder, kept apart by the template: each run's records are its own.
    common = [str(inputs), "--quiet", "--niter", "0", "--engine", "ray", "--outdir", str(tmp_path / "out"),
              "--filename", "{model}/{track}/{target}.{ext}"]
    for model in (first, second):
        assert main(common + ["--model", model]) == 0
    before = mtimes(tmp_path / "out" / "first", ["t0", "t1"])
    assert main(common[:1] + common[2:] + ["--model", first]) == 0
    assert "0 done, 2 skipped (finished before), 0 failed" in capsys.readouterr().err
    assert mtimes(tmp_path / "out" / "first", ["t0", "t1"]) == before
    assert (tmp_path / "out" / "second" / "t0" / records.DONE_NAME).is_file()
    # The output folder is the input folder: the earlier stems are not taken for songs.
    again = [str(inputs), "--model", first, "--niter", "0", "--engine", "ray", "--outdir", str(inputs)]
    assert main(again + ["--quiet"]) == 0
    assert main(again) == 0
    assert "0 done, 2 skipped (finished before), 0 failed" in capsys.readouterr().err
    assert sorted(p.name for p in inputs.iterdir()) == ["t0", "t0.wav", "t1", "t1.wav"]


@pytest.mark.slow
def test_ray_takes_the_output_options_of_the_local_engine(tmp_path, model_dir, ray_cluster):
    inputs = make_inputs(tmp_path / "in", 2, seconds=3.0)
    options = [str(inputs), "--model", str(model_dir()), "--quiet", "--start", "0.5", "--duration", "2",
               "--aggregate", '{"vocals": ["vocals"], "band": ["drums", "bass", "other"]}', "--ext", "flac",
               "--bits", "24", "--keep-model-rate", "--filename", "{target}/{track}.{ext}", "--niter", "0"]
    assert main(options + ["--outdir", str(tmp_path / "local")]) == 0
    assert main(options + ["--engine", "ray", "--outdir", str(tmp_path / "ray")]) == 0
    # Tracks over --stream-over seconds are streamed through their actor instead of passed whole.
    assert main(options + ["--engine", "ray", "--outdir", str(tmp_path / "streamed"), "--stream-over", "1"]) == 0
    for out in ("ray", "streamed"):
        for k in range(2):
            for name in ("vocals", "band"):
                ours, rate = sf.read(tmp_path / out / name / f"t{k}.flac")
                theirs, _ = sf.read(tmp_path / "local" / name / f"t{k}.flac")
                assert rate == 44100 and ours.shape == theirs.shape == (2 * 44100, 2)
                assert np.abs(ours - theirs).max() <= 1e-6 * np.abs(theirs).max()
            record = json.loads((tmp_path / out / f"t{k}" / records.DONE_NAME).read_text())
            assert sorted(record["stems"]) == ["band", "vocals"] and record["settings"]["start"] == 0.5
            assert record["duration"] == 2.0
    if shutil.which("ffmpeg"):
        mp3 = [str(inputs), "--model", str(model_dir()), "--quiet", "--niter", "0", "--ext", "mp3", "--mp3-bitrate",
               "128"]
        assert main(mp3 + ["--outdir", str(tmp_path / "local-mp3")]) == 0
        assert main(mp3 + ["--engine", "ray", "--outdir", str(tmp_path / "ray-mp3")]) == 0
        for k in range(2):
            ours, _ = sf.read(tmp_path / "ray-mp3" / f"t{k}" / "vocals.mp3")
            theirs, _ = sf.read(tmp_path / "local-mp3" / f"t{k}" / "vocals.mp3")
            assert ours.shape == theirs.shape == (sf.info(str(inputs / f"t{k}.wav")).frames, 2)
            assert 10 * np.log10(np.sum(theirs ** 2) / max(np.sum((ours - theirs) ** 2), 1e-30)) > 30


def _wait_for_done(out: Path, timeout: float = 120.0, process=None) -> None:
    deadline = time.monotonic() + timeout
    while not done_tracks(out):
        assert time.monotonic() < deadline, "no track finished in time"
        assert process is None or process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_driver_rerun_finishes_the_rest_only(tmp_path, model_dir, ray_cluster, capsys):
    inputs = make_inputs(tmp_path / "in", 6, seconds=4.0)
    out = tmp_path / "out"
    args = [str(inputs), "--engine", "ray", "--model", str(model_dir()), "--outdir", str(out), "--max-in-flight", "1"]
    driver = subprocess.Popen([sys.executable, "-m", "openunmix_like.cli.separate", *args, "--quiet",
                               "--address", ray_cluster], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_done(out, process=driver)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.communicate()
    wait_until_ray_tasks_ended()  # the dead driver's tasks and actors: none writes a track after this
    finished = done_tracks(out)
    assert 1 <= len(finished) < 6
    before = mtimes(out, finished)
    assert main(args) == 0
    assert f"{6 - len(finished)} done, {len(finished)} skipped (finished before), 0 failed" in capsys.readouterr().err
    assert done_tracks(out) == {f"t{k}" for k in range(6)}
    assert mtimes(out, finished) == before  # finished tracks were not written again
    assert not list(out.rglob(".*partial*"))


@pytest.mark.slow
def test_a_run_that_cannot_go_on_still_lists_the_failures_it_met(tmp_path, model_dir, ray_cluster, monkeypatch,
                                                                  capsys):
    # A stop of the whole run (an --outdir a node does not share, a cluster left too small) printed its
    # failures but wrote no _failures.csv, which the interrupted run and a finished one both write.
    from openunmix_like.catalogue import engine

    def stops_after_a_failure(plan, separator, options, args, progress, failures):
        failures.append((plan.todo[0].source, "decode", f"{plan.todo[0].source}: decode failed: broken"))
        raise OpenUnmixLikeError("--outdir X is not shared with node N")

    monkeypatch.setattr(engine, "execute", stops_after_a_failure)
    inputs = make_inputs(tmp_path / "in", 2, seconds=0.5)
    out = tmp_path / "out"
    assert main([str(inputs), "--engine", "ray", "--model", str(model_dir()), "--outdir", str(out), "--quiet"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == ["umx-separate: error: --outdir X is not shared with node N"]
    rows = (out / records.FAILURES_NAME).read_text().splitlines()
    assert rows[0] == "path,stage,reason" and len(rows) == 2 and ",decode," in rows[1]


def test_markers_of_drivers_killed_on_this_host_are_removed_by_the_next_run(tmp_path, model_dir, ray_cluster):
    # A driver killed with SIGKILL left its empty hidden marker in --outdir for good.
    from openunmix_like.catalogue import engine
    from openunmix_like.fileio import HOST_TAG

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f"{engine.MARKER_PREFIX}{gone.pid}-{HOST_TAG}-0badf00d"
    running = out / f"{engine.MARKER_PREFIX}{os.getpid()}-{HOST_TAG}-0badf00d"  # a driver still running here
    elsewhere = out / f"{engine.MARKER_PREFIX}{gone.pid}-{'0' * 8}-0badf00d"  # pids of other hosts are theirs
    for marker in (stale, running, elsewhere):
        marker.touch()
    inputs = make_inputs(tmp_path / "in", 1, seconds=0.5)
    assert main([str(inputs), "--engine", "ray", "--model", str(model_dir()), "--outdir", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.glob(f"{engine.MARKER_PREFIX}*")) == sorted([running.name, elsewhere.name])


def test_killed_separation_actor_is_replaced_and_every_track_finishes(tmp_path, model_dir, ray_cluster):
    import ray

    inputs = make_inputs(tmp_path / "in", 6, seconds=4.0)
    out = tmp_path / "out"
    result = {}
    run = threading.Thread(target=lambda: result.update(rc=main(
        [str(inputs), "--engine", "ray", "--model", str(model_dir()), "--outdir", str(out), "--quiet",
         "--actors", "1", "--max-in-flight", "3"])))
    run.start()
    try:
        _wait_for_done(out)
        actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("umx-separate-")]
        assert len(actors) == 1
        actor = ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"])
        killed_with_done = len(done_tracks(out))
        ray.kill(actor, no_restart=False)  # the process dies at once; Ray restarts it
    finally:
        run.join(timeout=180)
    assert killed_with_done < 6
    assert result == {"rc": 0}
    assert done_tracks(out) == {f"t{k}" for k in range(6)}
    assert not (out / records.FAILURES_NAME).exists()


@pytest.mark.slow
def test_without_address_the_run_starts_and_stops_a_ray_of_its_own_and_shows_none_of_its_lines(tmp_path, model_dir):
    # What most users type. Ray 2.60 warned "Token authentication is enabled for this Ray cluster. Set
    # RAY_AUTH_MODE=disabled to opt out..." on every such run, before the progress bar; Ray's lines are
    # for --verbose. A fresh HOME is a machine that has never run Ray (no stored token).
    inputs = make_inputs(tmp_path / "in", 2, seconds=1.0)
    home = tmp_path / "home"
    home.mkdir()
    folder = tempfile.mkdtemp(prefix="umx-ray-")  # Ray's sockets need a short path
    try:
        env = dict(os.environ, HOME=str(home), RAY_TMPDIR=folder)
        env.pop("RAY_AUTH_MODE", None)
        result = subprocess.run([sys.executable, "-m", "openunmix_like.cli.separate", str(inputs), "--engine", "ray",
                                 "--model", str(model_dir()), "--outdir", str(tmp_path / "out"), "--quiet"],
                                capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stderr == ""
        assert done_tracks(tmp_path / "out") == {"t0", "t1"}
        assert (home / ".ray" / "auth_token").is_file()  # Ray's protection is still on
        left = subprocess.run(["pgrep", "-f", folder], capture_output=True, text=True).stdout.split()
        assert left == []  # its GCS, raylet and workers are gone
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("head_has_token", [True, False], ids=["head-requires-the-token", "head-without-auth"])
def test_joins_a_head_node_whether_or_not_it_requires_the_stored_token(tmp_path, model_dir, head_has_token):
    """``ray start --head`` (Ray 2.59 and later) requires the token stored in ~/.ray, which a driver given
    an address only sends when told to: ``--address`` must still join it. A head started where no token is
    stored (another machine) requires none: a driver that sent this machine's token anyway had every actor
    it made destroyed, and each track failed as "the separation actor died 3 times"."""
    pytest.importorskip("ray")
    import os
    import secrets
    import socket

    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(home)}
    (tmp_path / "head-home").mkdir()
    head_env = env if head_has_token else env | {"HOME": str(tmp_path / "head-home")}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="umx-ray-")  # Ray's socket paths must stay short
    head = subprocess.Popen(["ray", "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             f"--temp-dir={folder}", "--disable-usage-stats", "--block"], env=head_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, head)
        make_inputs(tmp_path / "in", 2, seconds=0.5)
        driver = subprocess.run([sys.executable, "-m", "openunmix_like.cli.separate", str(tmp_path / "in"),
                                 "--engine", "ray", "--address", f"127.0.0.1:{port}", "--model", str(model_dir()),
                                 "--niter", "0", "--quiet", "--outdir", str(tmp_path / "out")],
                                env=env, capture_output=True, text=True, timeout=240)
        assert driver.returncode == 0, driver.stderr[-2000:]
        assert done_tracks(tmp_path / "out") == {"t0", "t1"}
        assert engine.head_requires_token(f"127.0.0.1:{port}") is head_has_token
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head's processes share its session
        head.wait()
        shutil.rmtree(folder, ignore_errors=True)


def test_whether_a_head_requires_a_token_is_unknown_where_nobody_answers_as_ray_does(tmp_path):
    # Unknown (None) keeps the stored token's sending: a head that requires it is still joined.
    import http.server
    import socket

    pytest.importorskip("grpc")
    head_requires_token = engine.head_requires_token

    class NotRay(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_error(404)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    assert head_requires_token(f"127.0.0.1:{port}", timeout=5) is None
    assert head_requires_token("ray://127.0.0.1:10001") is None
    assert head_requires_token("not an address", timeout=2) is None
    with http_server(NotRay) as (httpd, _):  # HTTP/1, not a Ray head
        assert head_requires_token(f"127.0.0.1:{httpd.server_address[1]}", timeout=5) is None


@pytest.mark.slow
def test_object_storage_round_trip(tmp_path, model_dir, ray_cluster, s3_server, capsys):
    fs, _ = storage.filesystem("s3://catalogue", s3_server)
    inputs = make_inputs(tmp_path / "in", 3)
    for k in range(2):
        fs.put_file(str(inputs / f"t{k}.wav"), f"catalogue/songs/t{k}.wav")
    fs.put_file(str(inputs / "t2.wav"), "catalogue/more/t2.wav")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,artist\ns3://catalogue/more/t2.wav,someone\ns3://catalogue/more/gone.wav,nobody\n")
    model = str(model_dir())
    args = ["s3://catalogue/songs", "--manifest", str(manifest), "--engine", "ray", "--model", model,
            "--outdir", "s3://catalogue/out", "--storage-options", json.dumps(s3_server), "--bits", "32"]
    assert main(args) == 1  # gone.wav is missing
    err = capsys.readouterr().err
    assert "s3://catalogue/more/gone.wav" in err and "1 failed" in err
    assert main([str(inputs), "--model", model, "--outdir", str(tmp_path / "local"), "--bits", "32", "--quiet"]) == 0
    for k in range(3):
        record = json.loads(fs.cat_file(f"catalogue/out/t{k}/{records.DONE_NAME}"))
        assert sorted(record["stems"]) == sorted(NAMES)
        for name in NAMES:
            fs.get_file(f"catalogue/out/t{k}/{name}.wav", str(tmp_path / "got.wav"))
            assert records.file_sha256(tmp_path / "got.wav") == record["stems"][name]["sha256"]
            ours = sf.read(tmp_path / "got.wav", dtype="float64")[0]
            theirs = sf.read(tmp_path / "local" / f"t{k}" / f"{name}.wav", dtype="float64")[0]
            assert np.abs(ours - theirs).max() <= 1e-6 * np.abs(theirs).max()
    failures = records.read_failures(fs.cat_file("catalogue/out/_failures.csv"))
    assert [(f["path"], f["stage"]) for f in failures] == [("s3://catalogue/more/gone.wav", "input")]
    assert main(args) == 1  # the rerun reads the records back from the bucket and skips the finished tracks
    assert "0 done, 3 skipped (finished before), 1 failed" in capsys.readouterr().err
