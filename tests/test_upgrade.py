"""What users carry across an upgrade: folders written by the release of 2026-12-05 (commit bccf08b) are read,
resumed or honoured by this version.

Each test writes the old files itself, in the exact format that release wrote (the fixtures below say which
keys it had), so that nothing depends on a copy of the old release.
"""
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import soundfile as sf
import torch

from helpers import make_models, track_folders, write
from openunmix_like import Separator
from openunmix_like.catalogue import records

RATE = 22050


# ---------------------------------------------------------------- a model folder of umx-train

def old_model_folder(folder: Path, targets=("vocals", "drums"), hidden_size=8) -> dict:
    """A model folder as umx-train of the 2026-12-05 release wrote it: ``separator.json`` without ``niter``,
    ``<target>.json`` with the model's arguments and its history, and the weights twice (safetensors and pth).
    Returns target -> model."""
    from safetensors.torch import save_file

    models = make_models(targets, n_fft=512, hidden_size=hidden_size)
    folder.mkdir(parents=True)
    (folder / "separator.json").write_text(json.dumps({
        "format": "openunmix-like/1", "sample_rate": float(RATE), "nfft": 512, "nhop": 128, "nb_channels": 2,
        "targets": list(targets)}, indent=2))
    for target, model in models.items():
        state = model.state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / f"{target}.safetensors"))
        torch.save(state, folder / f"{target}.pth")
        (folder / f"{target}.json").write_text(json.dumps({
            "architecture": "umx",
            "model_args": {"nb_bins": 257, "nb_channels": 2, "hidden_size": hidden_size, "nb_layers": 3,
                           "unidirectional": False, "max_bin": 128},
            "sample_rate": float(RATE), "args": {"target": target, "dataset": "trackfolder_fix", "seed": 42},
            "epochs_trained": 1, "steps_trained": 1, "best_step": 1, "best_loss": 0.78, "best_sdr_mdx": None,
            "best_epoch": 1, "train_loss_history": [1.6], "valid_loss_history": [0.78], "lr_history": [0.001],
            "train_time_history": [0.05], "data_loading_share_history": [0.1], "samples_history": [2],
            "valid_sdr_mdx_history": [None], "valid_si_sdr_history": [None]}, indent=2))
    return models


def test_an_old_model_folder_separates_as_its_models_do(tmp_path, wav_file):
    models = old_model_folder(tmp_path / "old")
    audio = torch.from_numpy(sf.read(wav_file(seconds=1.0, rate=RATE), dtype="float32")[0].T)[None]
    # What that release gave: the folder's models under the default Wiener filter (niter 1: no niter key).
    expected = Separator(models, sample_rate=RATE, n_fft=512, n_hop=128, nb_channels=2, niter=1)
    loaded = Separator.from_pretrained(tmp_path / "old")
    assert loaded.target_names == ["vocals", "drums"] and loaded.niter == 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio), expected(audio), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- a checkpoint of umx-train

# The keys the 2026-12-05 release kept in a checkpoint's history and in a step checkpoint's progress.
OLD_HISTORY_KEYS = ("train_loss", "valid_loss", "lr", "epoch_time", "data_share", "samples", "valid_sdr",
                    "valid_si_sdr", "best_loss", "best_sdr", "best_epoch", "global_step", "best_step")
OLD_PROGRESS_KEYS = ("batches", "total", "count", "data_time", "rng_state", "generator_state")
OLD_CHECKPOINT_KEYS = ("epoch", "step", "architecture", "lr_scheduler", "state_dict", "model_args", "optimizer",
                       "scheduler", "best_loss", "history", "progress")


def as_old_checkpoint(path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if k in OLD_CHECKPOINT_KEYS}
    state["history"] = {k: v for k, v in state["history"].items() if k in OLD_HISTORY_KEYS}
    if "progress" in state:
        state["progress"] = {k: v for k, v in state["progress"].items() if k in OLD_PROGRESS_KEYS}
    torch.save(state, path)


def test_an_old_step_checkpoint_resumes_mid_epoch_with_its_history(tmp_path):
    from openunmix_like.cli.train import main

    track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    out = tmp_path / "model"
    common = ["--dataset", "trackfolder_fix", "--root", str(tmp_path / "data"), "--target", "vocals",
              "--output", str(out), "--hidden-size", "4", "--nfft", "512", "--nhop", "128", "--sample-rate",
              str(RATE), "--batch-size", "1", "--seq-dur", "0.5", "--device", "cpu", "--quiet", "--epochs", "2"]
    assert main(common + ["--ckpt-every", "1", "--stop-after", "1"]) == 0
    first = json.loads((out / "vocals.json").read_text())
    step = out / "checkpoints" / "vocals-step00000001.chkpnt"  # after the first of the epoch's 2 batches
    for path in (step, out / "vocals.chkpnt"):
        as_old_checkpoint(path)
    assert main(common + ["--checkpoint", str(step)]) == 0
    history = json.loads((out / "vocals.json").read_text())
    assert history["epochs_trained"] == 2 and len(history["train_loss_history"]) == 2
    assert history["samples_history"][0] == first["samples_history"][0] == 2  # the epoch's first batch counted


# ---------------------------------------------------------------- _done.json of the Ray catalogue engine

def plan_for(outdir: Path, song: Path, filename: str):
    """The plan ``umx-separate song --engine ray --outdir outdir --filename filename`` makes for a model of
    weights hash ``"sha"``, and its settings."""
    from openunmix_like.catalogue.plan import make_plan
    from openunmix_like.cli.separate import build_parser, check_options

    args = build_parser().parse_args([str(song), "--engine", "ray", "--outdir", str(outdir), "--model", "mymodel",
                                      "--filename", filename])
    check_options(args)
    args.niter = 1  # the model's own, as the engine sets it before making the plan
    settings = records.settings_of(args)
    return make_plan({str(song): ""}, ["vocals", "drums"], args, "sha", settings), settings


def old_done(outdir: Path, song: Path, filename: str, stems: dict, settings: dict) -> Path:
    """``<outdir>/<track>/_done.json`` as the 2026-12-05 release wrote it, whatever the template, for ``stems``
    (name -> path) already written."""
    record = {"format": "openunmix-like/catalogue-done/1", "input": str(song), "input_size": song.stat().st_size,
              "model": "mymodel", "model_sha256": "sha", "settings": {**settings, "filename": filename},
              "stems": {name: {"path": str(path), "sha256": records.file_sha256(path), "bytes": path.stat().st_size}
                        for name, path in stems.items()},
              "duration": 0.5, "sample_rate": RATE, "version": "0.1.0", "finished": "2026-12-05T10:00:00Z"}
    path = outdir / song.stem / records.DONE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    return path


def finished_by_the_old_release(tmp_path, filename):
    """A song whose stems the old release wrote with ``filename``, and its record where that release kept it;
    returns the song, the output folder and the stems."""
    song = tmp_path / "in" / "song.wav"
    write(song, 0.5, seed=0, rate=RATE)
    outdir = tmp_path / "out"
    plan, settings = plan_for(outdir, song, filename)
    stems = {name: Path(path) for name, path in plan.todo[0].stems.items()}
    for k, path in enumerate(stems.values()):
        write(path, 0.5, seed=10 + k, rate=RATE)
    old_done(outdir, song, filename, stems, settings)
    return song, outdir, stems


@pytest.mark.parametrize("filename", ["{track}/{target}.{ext}", "{model}/{track}/{target}.{ext}",
                                      "{track}/stems/{target}.{ext}"])
def test_tracks_an_old_ray_run_finished_are_skipped_whatever_the_template(tmp_path, filename):
    song, outdir, stems = finished_by_the_old_release(tmp_path, filename)
    plan, _ = plan_for(outdir, song, filename)
    assert not plan.todo and [t.source for t in plan.skipped] == [str(song)]
    # Found where this version keeps it from now on, without reading the stems again.
    assert json.loads(Path(plan.skipped[0].done).read_text())["model_sha256"] == "sha"


def test_an_old_record_whose_stems_were_replaced_since_is_not_honoured(tmp_path):
    filename = "{model}/{track}/{target}.{ext}"  # this version's record goes to mymodel/song/_done.json
    song, outdir, stems = finished_by_the_old_release(tmp_path, filename)
    # A run with other settings, stopped after replacing one stem (its own record removed first, the old one kept).
    write(stems["drums"], 0.5, seed=99, rate=RATE)
    plan, _ = plan_for(outdir, song, filename)
    assert [t.source for t in plan.todo] == [str(song)] and not plan.skipped
    assert not Path(plan.todo[0].done).exists()
    # Another model's old record is not taken either.
    record = json.loads((outdir / "song" / records.DONE_NAME).read_text())
    write(stems["drums"], 0.5, seed=11, rate=RATE)  # as the old run left it
    (outdir / "song" / records.DONE_NAME).write_text(json.dumps({**record, "model_sha256": "other"}))
    assert plan_for(outdir, song, filename)[0].todo


# ---------------------------------------------------------------- umx-evaluate records

def old_track_record(sdr: dict) -> dict:
    """``<evaldir>/<method>/<track>.json`` as umx-evaluate of the 2026-12-05 release wrote it: no model hash
    and no settings."""
    return {"targets": [{"name": t, "frames": [
        {"time": float(k), "duration": 1.0, "metrics": {"SDR": v + k, "SIR": 1.0, "SAR": 2.0, "ISR": 3.0}}
        for k in range(3)]} for t, v in sdr.items()],
        "museval_version": "0.4.1", "fast_metrics": {t: {"SDR_mdx": v, "SI-SDR": v - 1} for t, v in sdr.items()}}


def test_umx_compare_and_the_aggregation_read_old_evaluation_records(tmp_path, capsys):
    from openunmix_like.cli.compare import main
    from openunmix_like.cli.evaluate import load_records
    from openunmix_like.evaluate import aggregate

    for method, offset in (("new", 2.0), ("old", 0.0)):
        for k in range(3):
            path = tmp_path / "eval" / method / f"t{k}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(old_track_record({"vocals": k + offset, "drums": -k + offset})))
    table = aggregate(load_records(tmp_path / "eval" / "old"))
    # Track k: windows k, k + 1, k + 2 (median k + 1); over the tracks 1, 2, 3.
    assert table["vocals"]["SDR"]["median"] == pytest.approx(2.0)
    assert main([str(tmp_path / "eval" / "new"), str(tmp_path / "eval" / "old"), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "| +2.000 | +2.000 | +2.000 |" in out and "better on 3, worse on 0 of 3 tracks" in out


# ---------------------------------------------------------------- a umx-web jobs folder

def old_job(jobs_dir: Path, job_id: str, song: Path, status: str) -> Path:
    """A job folder as umx-web of the 2026-12-05 release left it: ``job.json`` without ``bitrate`` or
    ``phase``, the upload as ``input.wav`` and, when done, the stems."""
    folder = jobs_dir / job_id
    (folder / "stems").mkdir(parents=True)
    shutil.copy(song, folder / "input.wav")
    stems = ["vocals", "drums"] if status == "done" else []
    for k, name in enumerate(stems):
        write(folder / "stems" / f"{name}.wav", 0.5, seed=20 + k, rate=RATE)
    (folder / "job.json").write_text(json.dumps({
        "id": job_id, "filename": "song.wav", "created": 1796572679.5, "model": "mine",
        "targets": None, "residual": None, "ext": "wav", "bits": 16, "input": "input.wav", "status": status,
        "progress": 1.0 if status == "done" else 0.4, "stems": stems, "error": None}))
    return folder


def test_a_new_server_lists_and_serves_an_old_servers_jobs(tmp_path):
    from openunmix_like.web.jobs import JobManager

    song = tmp_path / "song.wav"
    write(song, 0.5, seed=0, rate=RATE)
    jobs_dir = tmp_path / "jobs"
    old_job(jobs_dir, "a" * 32, song, "done")
    old_job(jobs_dir, "b" * 32, song, "failed")
    manager = JobManager(jobs_dir, {"mine": {"arg": str(tmp_path / "missing"), "targets": ["vocals", "drums"]}},
                         workers=1)
    manager.start()
    try:
        jobs = {job.id: job for job in manager.list()}
        assert {i: j.status for i, j in jobs.items()} == {"a" * 32: "done", "b" * 32: "failed"}
        assert manager.stem_path("a" * 32, "vocals") == jobs_dir / ("a" * 32) / "stems" / "vocals.wav"
        assert manager.input_path("a" * 32) == jobs_dir / ("a" * 32) / "input.wav"
        with zipfile.ZipFile(manager.zip_path("a" * 32)) as archive:
            assert sorted(archive.namelist()) == ["song/drums.wav", "song/vocals.wav"]
        assert jobs["a" * 32].public()["bitrate"] is None
    finally:
        manager.stop()
