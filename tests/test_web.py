"""``umx-web``'s HTTP API against the app (FastAPI's TestClient), with a tiny random-weight model."""
import io
import json
import re
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import soundfile as sf

from helpers import make_models, music_like
from openunmix_like.audio import AudioSource
from openunmix_like.errors import AudioError
from openunmix_like.modeldir import AudioSettings, save_target

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from openunmix_like.web.app import create_app  # noqa: E402
from openunmix_like.web.jobs import Job, JobManager  # noqa: E402
from openunmix_like.web.models import discover_models, model_args  # noqa: E402

RATE = 22050
MAX_MINUTES = 2.5 / 60  # 2.5 s: a 3 s clip is "too long"
MAX_UPLOAD_MB = 0.5


def tiny_model(folder):
    for target, m in make_models(n_fft=512).items():
        save_target(folder, target, m, AudioSettings(RATE, 512, 128, 2))
    return folder


def wav_bytes(seconds=1.0, channels=2, seed=0, subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, music_like(seconds, RATE, channels, seed).T, RATE, format="WAV", subtype=subtype)
    return buf.getvalue()


def make_client(jobs_dir, model, max_minutes=MAX_MINUTES, max_upload_mb=MAX_UPLOAD_MB):
    models = discover_models([str(model)])
    manager = JobManager(jobs_dir, model_args(models), max_minutes=max_minutes, max_upload_mb=max_upload_mb)
    return TestClient(create_app(manager, models))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    return root / "jobs", tiny_model(root / "tiny")


@pytest.fixture(scope="module")
def client(setup):
    with make_client(*setup) as c:
        yield c


def upload(client, name, data, **fields):
    response = client.post("/api/jobs", files={"file": (name, data, "application/octet-stream")}, data=fields)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert len(job_id) == 32
    return job_id


def wait_done(client, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        seen.append(job["progress"])
        if job["status"] in ("done", "failed", "cancelled"):
            assert seen == sorted(seen), "progress went backwards"
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not finished after {timeout} s: {job}")


def read_stem(client, job_id, name):
    response = client.get(f"/api/jobs/{job_id}/stems/{name}")
    assert response.status_code == 200
    return sf.read(io.BytesIO(response.content), always_2d=True)


def test_upload_separates_into_stems_of_the_inputs_length_that_sum_to_it(client):
    data = wav_bytes(1.5)
    mixture = sf.read(io.BytesIO(data), always_2d=True)[0]
    ids = [upload(client, "song.wav", data),
           upload(client, "two stems.wav", data, targets="vocals", residual="accompaniment", bits="24")]
    for job_id, stems in zip(ids, (["vocals", "drums", "bass", "other"], ["vocals", "accompaniment"])):
        job = wait_done(client, job_id)
        assert job["status"] == "done" and job["error"] is None and job["progress"] == 1.0
        assert job["stems"] == stems
        total = 0
        for name in stems:
            audio, rate = read_stem(client, job_id, name)
            assert rate == RATE and audio.shape == mixture.shape
            total = total + audio
        # The Wiener filter's estimates add up to the mixture up to its EM's regularisation and rounding.
        assert 10 * np.log10(np.sum(mixture**2) / np.sum((total - mixture) ** 2)) > 30
    # "vocals.wav" names the same file as "vocals".
    assert client.get(f"/api/jobs/{ids[0]}/stems/vocals.wav").content == \
        client.get(f"/api/jobs/{ids[0]}/stems/vocals").content
    listed = [j["id"] for j in client.get("/api/jobs").json()]
    assert set(ids) <= set(listed)


def test_zip_holds_every_stem_and_delete_removes_the_job(client, setup):
    job_id = upload(client, "Zip Me.wav", wav_bytes(1.0, seed=1), ext="flac")
    assert wait_done(client, job_id)["status"] == "done"
    response = client.get(f"/api/jobs/{job_id}/zip")
    assert response.status_code == 200 and "Zip%20Me-stems.zip" in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = archive.namelist()
        assert names == [f"Zip Me/{n}.flac" for n in ("vocals", "drums", "bass", "other")]
        audio, rate = sf.read(io.BytesIO(archive.read(names[0])))
        assert rate == RATE and len(audio) == RATE
    assert client.delete(f"/api/jobs/{job_id}").json()["result"] == "deleted"
    assert client.get(f"/api/jobs/{job_id}").status_code == 404
    assert client.get(f"/api/jobs/{job_id}/stems/vocals").status_code == 404
    assert not (setup[0] / job_id).exists()
    assert client.delete(f"/api/jobs/{job_id}").status_code == 404


def cli_reason(tmp_path, name, data):
    """The message umx-separate's reader gives for these bytes, with the file's name as the path."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(AudioError) as info:
        AudioSource(path)
    return str(info.value).replace(str(path), name)


def test_bad_inputs_give_failed_jobs_with_the_clis_reason_and_the_server_keeps_serving(client, setup, tmp_path):
    good = wav_bytes(1.0, seed=2)
    cases = {
        "notes.wav": b"these are not audio samples\n" * 20,
        "empty.mp3": b"",
        "cut.wav": good[: len(good) // 2],
    }
    ids = {name: upload(client, name, data) for name, data in cases.items()}
    ids["long.wav"] = upload(client, "long.wav", wav_bytes(3.0))
    ids["huge.wav"] = upload(client, "huge.wav", b"\0" * (int(0.5 * 1024 * 1024) + 1000))
    ids["fine.wav"] = upload(client, "fine.wav", good)
    jobs = {name: wait_done(client, job_id) for name, job_id in ids.items()}
    assert jobs.pop("fine.wav")["status"] == "done"
    for name, job in jobs.items():
        assert job["status"] == "failed" and job["stems"] == []
        message = job["error"]
        assert message.startswith(f"{name}: ") and "\n" not in message and str(setup[0]) not in message
    for name, data in cases.items():
        assert jobs[name]["error"] == cli_reason(tmp_path, name, data)
    assert "truncated" in jobs["cut.wav"]["error"] and "empty file" in jobs["empty.mp3"]["error"]
    assert jobs["long.wav"]["error"].startswith("long.wav: lasts 0:03, over this server's limit of 0:03 (")
    assert "--max-upload-mb" in jobs["huge.wav"]["error"]
    for name, job_id in ids.items():  # nothing half-written is served
        assert client.get(f"/api/jobs/{job_id}/stems/vocals").status_code == (200 if name == "fine.wav" else 404)


def test_an_upload_announced_over_the_limit_is_refused_before_it_is_stored(client, setup):
    before = set(setup[0].iterdir())
    response = client.post("/api/jobs", files={"file": ("big.wav", b"\0" * (2 * 1024 * 1024))})
    assert response.status_code == 413
    assert "larger than this server's limit of 0.5 MB (umx-web --max-upload-mb)" in response.json()["detail"]
    assert set(setup[0].iterdir()) == before


def test_bad_options_are_refused(client):
    for fields in ({"model": "../../etc"}, {"residual": "../x"}, {"ext": "mp3"}, {"bits": "32"}):
        response = client.post("/api/jobs", files={"file": ("a.wav", wav_bytes(0.2))}, data=fields)
        assert response.status_code == 400, fields
    assert client.post("/api/jobs", data={"model": "tiny"}).status_code == 422  # no file


def test_path_traversal_and_odd_names_are_404(client, setup):
    job_id = upload(client, "t.wav", wav_bytes(0.5))
    assert wait_done(client, job_id)["status"] == "done"
    (setup[0] / "secret.txt").write_text("secret")
    for path in (f"/api/jobs/{job_id}/stems/..%2Fjob.json", f"/api/jobs/{job_id}/stems/..%2F..%2Fsecret.txt",
                 f"/api/jobs/{job_id}/stems/job.json", f"/api/jobs/{job_id}/stems/vocals.flac",
                 f"/api/jobs/{job_id}/stems/%2e%2e", f"/api/jobs/{job_id}/stems/.vocals.wav",
                 f"/api/jobs/{job_id}/stems/vocals%00.wav", "/api/jobs/..%2Fsecret.txt",
                 "/api/jobs/..", f"/api/jobs/{job_id.upper()}", "/api/jobs/%2e%2e%2fsecret.txt/zip",
                 "/..%2Fsecret.txt", "/%2e%2e/%2e%2e/etc/passwd", "/static/../../secret.txt",
                 "/api/jobs/0123456789abcdef0123456789abcdef/stems/vocals"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"secret" not in response.content
    for path in ("/api/jobs/..%2Fsecret.txt", "/api/jobs/" + "0" * 32):
        assert client.delete(path).status_code in (404, 405)
    assert (setup[0] / "secret.txt").exists()


def test_cancel_a_queued_job_and_the_queue_goes_on(client):
    first = upload(client, "a.wav", wav_bytes(2.0, seed=3))
    second = upload(client, "b.wav", wav_bytes(0.5, seed=4))
    third = upload(client, "c.wav", wav_bytes(0.5, seed=5))
    assert client.delete(f"/api/jobs/{second}").json()["result"] == "cancelled"
    assert client.get(f"/api/jobs/{second}").json()["status"] == "cancelled"
    assert wait_done(client, first)["status"] == "done"
    assert wait_done(client, third)["status"] == "done"
    assert client.get(f"/api/jobs/{second}").json()["status"] == "cancelled"
    assert client.delete(f"/api/jobs/{second}").json()["result"] == "deleted"


def wait_running(client, job_id):
    deadline = time.monotonic() + 30
    while client.get(f"/api/jobs/{job_id}").json()["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.slow
def test_a_cancelled_or_dead_worker_fails_only_its_job_and_the_next_job_runs(setup, tmp_path):
    with make_client(tmp_path / "jobs", setup[1], max_minutes=5, max_upload_mb=50) as client:
        long = wav_bytes(60.0, seed=6)  # some seconds of work, even for the tiny model
        dying = upload(client, "dying.wav", long)
        wait_running(client, dying)
        client.app.state.manager._workers[0].process.kill()  # as the kernel's OOM killer would
        job = wait_done(client, dying)
        assert job["status"] == "failed" and job["error"].startswith("dying.wav: the worker process died")
        running = upload(client, "long.wav", long)
        wait_running(client, running)
        assert client.delete(f"/api/jobs/{running}").json()["result"] == "cancelled"
        after = upload(client, "after.wav", wav_bytes(0.5, seed=7))
        assert wait_done(client, after)["status"] == "done"
        job = client.get(f"/api/jobs/{running}").json()
        assert job["status"] == "cancelled" and job["stems"] == []
        assert not (tmp_path / "jobs" / running / "stems").exists()


def test_many_uploads_queue_and_none_is_lost(client):
    ids = [upload(client, f"q{k}.wav", wav_bytes(0.3, seed=10 + k)) for k in range(6)]
    assert all(wait_done(client, job_id)["status"] == "done" for job_id in ids)


@pytest.mark.slow
def test_a_restart_keeps_finished_jobs_and_queues_unfinished_ones_again(setup, tmp_path):
    jobs_dir = tmp_path / "jobs"
    with make_client(jobs_dir, setup[1]) as c:
        done = upload(c, "keep.wav", wav_bytes(0.5, seed=8))
        assert wait_done(c, done)["status"] == "done"
        stem = c.get(f"/api/jobs/{done}/stems/drums").content
    # A job the server had not finished when it stopped (here: written as queued).
    pending = Job(id="f" * 32, filename="later.wav", created=time.time(), model="tiny", input="input.wav")
    (jobs_dir / pending.id).mkdir()
    (jobs_dir / pending.id / "input.wav").write_bytes(wav_bytes(0.5, seed=9))
    (jobs_dir / pending.id / "job.json").write_text(json.dumps(pending.__dict__))
    with make_client(jobs_dir, setup[1]) as c:
        assert c.get(f"/api/jobs/{done}").json()["status"] == "done"
        assert c.get(f"/api/jobs/{done}/stems/drums").content == stem
        assert wait_done(c, pending.id)["status"] == "done"


def test_size_limit_removes_the_oldest_finished_jobs_first(tmp_path):
    manager = JobManager(tmp_path, {"default": None}, keep_mb=2.5)
    for k, status in enumerate(("done", "failed", "queued", "done", "done")):
        job = Job(id=f"{k:032x}", filename=f"{k}.wav", created=1000.0 + k, status=status)
        (tmp_path / job.id).mkdir()
        (tmp_path / job.id / "input.wav").write_bytes(b"\0" * (1024 * 1024))
        manager._jobs[job.id] = job
    manager._enforce_size_limit(keep=f"{4:032x}")
    # 5 MB kept: the oldest finished ones go until 2.5 MB remain; the queued job stays.
    assert sorted(manager._jobs) == [f"{k:032x}" for k in (2, 3, 4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{k:032x}" for k in (2, 3, 4)]


def test_models_and_page_are_served(client):
    models = client.get("/api/models").json()
    assert models[0] == {"name": "tiny", "label": models[0]["label"], "targets": ["vocals", "drums", "bass", "other"]}
    assert any(m["name"] == "default" for m in models)
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_importing_the_package_does_not_import_fastapi_and_missing_extra_is_one_line():
    code = ("import sys, openunmix_like, openunmix_like.web, openunmix_like.cli.web; "
            "assert 'fastapi' not in sys.modules and 'uvicorn' not in sys.modules; "
            "sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None; "
            "sys.exit(openunmix_like.cli.web.main([]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == "umx-web: error: umx-web needs the web extra: pip install 'openunmix-like[web]'\n"


def run_web(*argv, timeout=60):
    return subprocess.run([sys.executable, "-m", "openunmix_like.cli.web", *argv], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_bad_command_lines_are_one_line_errors(tmp_path):
    result = run_web("--model", str(tmp_path / "nowhere"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"umx-web: error: --model {tmp_path / 'nowhere'}: not a model folder")
    result = run_web("--workers", "0")
    assert result.returncode == 1 and result.stderr == "umx-web: error: --workers must be above 0\n"


@pytest.mark.slow
def test_other_addresses_than_loopback_print_a_warning(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "openunmix_like.cli.web", "--host", "0.0.0.0", "--port", "0",
                                "--jobs-dir", str(tmp_path / "jobs")], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("serving on" in line for line in lines):
            lines.append(process.stdout.readline())
        text = "".join(lines)
        assert "umx-web: warning: listening on 0.0.0.0: anyone who can reach this machine" in text
        assert re.search(r"serving on http://127\.0\.0\.1:\d+/ ", text), text
    finally:
        process.terminate()
        process.wait(timeout=30)
