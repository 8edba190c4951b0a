"""``umx-web``'s HTTP API against the app (FastAPI's TestClient), with a tiny random-weight model."""
import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

from helpers import make_models, music_like
from openunmix_like.audio import AudioSource
from openunmix_like.errors import AudioError
from openunmix_like.modeldir import AudioSettings, save_target
from openunmix_like.pretrained import CACHE_ENV, pretrained_table

pytest.importorskip("fastapi")
import anyio  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from openunmix_like.web.app import MULTIPART_SLACK, create_app  # noqa: E402
from openunmix_like.web.jobs import Job, JobManager, folder_size  # noqa: E402
from openunmix_like.web.models import discover_models  # noqa: E402

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


def make_client(jobs_dir, model, max_minutes=MAX_MINUTES, max_upload_mb=MAX_UPLOAD_MB, keep_mb=5000.0):
    models = discover_models([str(model)])
    manager = JobManager(jobs_dir, models, max_minutes=max_minutes, max_upload_mb=max_upload_mb, keep_mb=keep_mb)
    return TestClient(create_app(manager, models))


def manual_manager(jobs_dir, model, **options):
    """A manager with one worker and no dispatcher thread: the test runs the dispatcher's steps itself."""
    manager = JobManager(jobs_dir, discover_models([str(model)]), **options)
    manager._workers = [manager._new_worker()]
    return manager


def next_answer(worker, timeout=120):
    """The worker's next message ``(kind, job_id, value)``."""
    assert worker.conn.poll(timeout), f"no answer from the worker in {timeout} s"
    return worker.conn.recv()


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


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_mp3_stems_at_the_asked_bitrate(client):
    data = wav_bytes(1.0, seed=5)
    frames = sf.info(io.BytesIO(data)).frames
    job_id = upload(client, "song.wav", data, ext="mp3", bitrate="192")
    job = wait_done(client, job_id)
    assert job["status"] == "done" and job["ext"] == "mp3" and job["bitrate"] == 192, job
    response = client.get(f"/api/jobs/{job_id}/stems/vocals")
    assert response.headers["content-type"] == "audio/mpeg"
    assert response.headers["content-disposition"].endswith('"song-vocals.mp3"')
    audio, rate = sf.read(io.BytesIO(response.content), always_2d=True)
    assert rate == RATE and audio.shape == (frames, 2)  # gapless: the input's length
    with zipfile.ZipFile(io.BytesIO(client.get(f"/api/jobs/{job_id}/zip").content)) as archive:
        assert sorted(archive.namelist()) == [f"song/{n}.mp3" for n in ("bass", "drums", "other", "vocals")]


def expected_peaks(path, buckets):
    """The waveform peaks of a file, computed the slow, obvious way."""
    mono = sf.read(path, dtype="int16", always_2d=True)[0].astype(np.int64).sum(axis=1) / (32768 * 2)
    bucket = np.arange(len(mono)) * buckets // len(mono)
    out = np.zeros((buckets, 2))
    for b in range(buckets):
        values = mono[bucket == b]
        if len(values):
            out[b] = min(0.0, values.min()), max(0.0, values.max())
    return out


def read_track(client, job_id, track, frames, pieces):
    """A preview track fetched in pieces of the given sizes, then what is left, as (frames, 2) int16."""
    got, start = [], 0
    for size in [*pieces, frames]:
        response = client.get(f"/api/jobs/{job_id}/preview/{track}?start={start}&frames={size}")
        assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
        got.append(np.frombuffer(response.content, "<i2").reshape(-1, 2))
        start += len(got[-1])
    return np.concatenate(got)


@pytest.mark.parametrize("ext, upload_name", [("wav", "song.wav"), ("mp3", "song.ogg"), ("flac", "song.m4a")])
def test_the_player_preview_gives_every_track_in_pieces_and_its_peaks(client, setup, tmp_path, ext, upload_name):
    if (ext == "mp3" or upload_name.endswith(".m4a")) and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    source = tmp_path / upload_name
    sf.write(tmp_path / "song.wav", music_like(1.3, RATE, 2, 7).T, RATE)
    if upload_name.endswith(".m4a"):  # libsndfile cannot read it: the preview decodes it once
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "song.wav"), "-c:a", "aac", str(source)],
                       check=True)
    elif upload_name.endswith(".ogg"):
        sf.write(source, music_like(1.3, RATE, 2, 7).T, RATE, format="OGG", subtype="VORBIS")
    job_id = upload(client, upload_name, source.read_bytes(), ext=ext)
    job = wait_done(client, job_id)
    assert job["status"] == "done", job
    folder = setup[0] / job_id
    assert (folder / "preview" / "info.json").is_file()  # made by the worker: opening the job waits for nothing
    info = client.get(f"/api/jobs/{job_id}/preview").json()
    assert (info["rate"], info["channels"], info["chunk_frames"]) == (RATE, 2, 10 * RATE)
    assert [t["name"] for t in info["tracks"]] == [*job["stems"], "mixture"]
    assert [t["mixture"] for t in info["tracks"]] == [False] * 4 + [True]
    for track in info["tracks"]:
        path = folder / "stems" / f"{track['name']}.{ext}" if not track["mixture"] else source
        # What the separation decoded (ffmpeg for m4a), as 16-bit samples.
        with AudioSource(path) as audio:
            expected = np.round(audio.read(0, audio.nb_frames).numpy().T * 32768).clip(-32768, 32767)
        assert track["frames"] == len(expected) and abs(len(expected) - int(1.3 * RATE)) <= 2048
        got = read_track(client, job_id, track["name"], track["frames"], [1, 999, 4096])
        assert np.abs(got - expected).max() <= 1, track["name"]
        if not track["mixture"]:
            stem = folder / "stems" / f"{track['name']}.{ext}"
            assert np.abs(np.array(track["peaks"]).reshape(-1, 2) - expected_peaks(stem, 2000)).max() <= 1e-4
    assert (folder / "preview" / "mixture.flac").is_file() == upload_name.endswith(".m4a")


def test_the_player_preview_refuses_what_it_cannot_give(client, setup):
    job_id = upload(client, "song.wav", wav_bytes(0.5, seed=8))
    assert wait_done(client, job_id)["status"] == "done"
    url = f"/api/jobs/{job_id}/preview"
    assert client.get(f"{url}/vocals?start={RATE}&frames=10").content == b""  # past the end: nothing
    for query in ("start=-1&frames=10", "start=0&frames=0", f"start=0&frames={2**22 + 1}"):
        response = client.get(f"{url}/vocals?{query}")
        assert response.status_code == 400 and response.json()["detail"].startswith("ask for 1 to "), query
    assert client.get(f"{url}/vocals?start=x").status_code == 422
    nobody = f"/api/jobs/{'0' * 32}/preview"
    for path in (f"{url}/piano", f"{url}/..%2Fjob.json", nobody, f"{nobody}/vocals"):
        assert client.get(path).status_code == 404, path
    # A job's preview, made again if lost, is removed with the job.
    shutil.rmtree(setup[0] / job_id / "preview")
    client.app.state.manager._previews.clear()
    assert client.get(url).json()["tracks"][0]["name"] == "vocals"
    assert client.delete(f"/api/jobs/{job_id}").json()["result"] == "deleted"
    assert client.get(url).status_code == 404 and not (setup[0] / job_id).exists()


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
    for fields in ({"model": "../../etc"}, {"residual": "../x"}, {"ext": "ogg"}, {"bits": "32"},
                   {"ext": "mp3", "bitrate": "100"}, {"bitrate": "128"}):
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
    manager = JobManager(tmp_path, discover_models(), keep_mb=2.5)
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


def test_a_job_cancelled_as_its_worker_finishes_keeps_no_stems(setup, tmp_path):
    jobs_dir = tmp_path / "jobs"
    manager = manual_manager(jobs_dir, setup[1])
    try:
        job = manager.submit("late.wav", io.BytesIO(wav_bytes(1.0, seed=20)), ext="flac")
        manager._dispatch()
        worker = manager._workers[0]
        assert next_answer(worker)[0] == "progress"
        # Cancelled while the worker goes on: it writes the stems and says "done" before it is stopped.
        assert manager.cancel_or_delete(job.id) == "cancelled"
        answer = next_answer(worker)
        while answer[0] == "progress":
            answer = next_answer(worker)
        stems = jobs_dir / job.id / "stems"
        assert answer[0] == "done" and len(list(stems.glob("*.flac"))) == 4
        manager._handle(worker, *answer)
        manager._step()
        state = manager.get(job.id)
        assert state.status == "cancelled" and state.stems == []
        assert not stems.exists()
    finally:
        manager.stop()
    assert sorted(p.name for p in (jobs_dir / job.id).iterdir()) == ["input.wav", "job.json"]


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg (scripts/install-system-deps.sh)")
def test_a_killed_worker_leaves_no_decoded_copy_of_an_mp3_behind(setup, tmp_path, monkeypatch):
    system_tmp = tmp_path / "system-tmp"  # the temporary folder the worker would use without one of its own
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    sf.write(tmp_path / "long.wav", music_like(60.0, RATE, 2, 21).T, RATE)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(tmp_path / "long.wav"), str(tmp_path / "long.mp3")],
                   check=True)
    jobs_dir = tmp_path / "jobs"
    manager = manual_manager(jobs_dir, setup[1], max_minutes=5, max_upload_mb=50)
    try:
        with open(tmp_path / "long.mp3", "rb") as data:
            job = manager.submit("long.mp3", data)
        manager._dispatch()
        assert next_answer(manager._workers[0])[0] == "progress"  # decoded: separating
        os.kill(manager._workers[0].process.pid, signal.SIGSTOP)  # held mid-job, however fast this machine is
        decoded = list(jobs_dir.rglob("openunmix-like-*.wav"))
        assert len(decoded) == 1 and decoded[0].stat().st_size > 60 * RATE * 2 * 4  # float32 stereo
        assert manager.cancel_or_delete(job.id) == "cancelled"
        manager._step()  # kills the worker
        assert not list(jobs_dir.rglob("openunmix-like-*")) and not list(system_tmp.iterdir())
    finally:
        manager.stop()
    assert not list((jobs_dir / ".tmp").iterdir())


def simultaneous_gets(client, url, n):
    """``n`` GET requests of ``url`` released together from ``n`` threads; their responses."""
    start = threading.Barrier(n)

    def fetch(_):
        start.wait()
        return client.get(url)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(fetch, range(n)))


def test_simultaneous_first_zip_requests_all_get_the_same_zip(client, setup):
    manager = client.app.state.manager
    job = Job(id="c" * 32, filename="Many.wav", created=time.time(), status="done", ext="wav",
              stems=["vocals", "drums", "bass", "other"], input="input.wav")
    (setup[0] / job.id / "stems").mkdir(parents=True)
    rng = np.random.default_rng(22)
    for stem in job.stems:  # large enough that building the zip takes a while
        (setup[0] / job.id / "stems" / f"{stem}.wav").write_bytes(rng.bytes(4 << 20))
    (setup[0] / job.id / "job.json").write_text(json.dumps(job.__dict__))
    with manager._lock:
        manager._jobs[job.id] = job
    for _ in range(3):
        responses = simultaneous_gets(client, f"/api/jobs/{job.id}/zip", 8)
        assert [r.status_code for r in responses] == [200] * 8
        assert len({r.content for r in responses}) == 1
        with zipfile.ZipFile(io.BytesIO(responses[0].content)) as archive:
            assert archive.testzip() is None
            assert archive.namelist() == [f"Many/{stem}.wav" for stem in job.stems]
        (setup[0] / job.id / "stems.zip").unlink()  # the next round builds it again
    assert client.delete(f"/api/jobs/{job.id}").json()["result"] == "deleted"


def test_simultaneous_first_preview_requests_build_it_once(client, setup, monkeypatch):
    """A job finished before previews existed (or whose preview was removed) gets one, built once."""
    import openunmix_like.web.preview as preview

    job_id = upload(client, "song.wav", wav_bytes(1.0, seed=9))
    assert wait_done(client, job_id)["status"] == "done"
    shutil.rmtree(setup[0] / job_id / "preview")
    client.app.state.manager._previews.clear()
    built, build = [], preview.build_preview

    def counted(*args, **kw):
        built.append(1)
        time.sleep(0.2)  # long enough for every request to arrive meanwhile
        return build(*args, **kw)

    monkeypatch.setattr(preview, "build_preview", counted)
    responses = simultaneous_gets(client, f"/api/jobs/{job_id}/preview", 6)
    assert [r.status_code for r in responses] == [200] * 6 and len({r.content for r in responses}) == 1
    assert len(built) == 1 and (setup[0] / job_id / "preview" / "info.json").is_file()


def test_keep_mb_applies_when_jobs_fail_or_are_cancelled(setup, tmp_path):
    junk = np.random.default_rng(23).bytes(400 * 1024)  # not audio: each job fails
    jobs_dir = tmp_path / "jobs"
    with make_client(jobs_dir, setup[1], keep_mb=1.0) as client:
        ids = [upload(client, f"junk{k}.wav", junk) for k in range(4)]
        deadline = time.monotonic() + 120
        while any(j["status"] in ("queued", "running") for j in client.get("/api/jobs").json()):
            assert time.monotonic() < deadline, "jobs not finished after 120 s"
            time.sleep(0.1)
        listed = client.get("/api/jobs").json()
        # 1.6 MB of failed jobs: the oldest go until 1 MB is kept; the one that failed last stays.
        assert [j["id"] for j in listed] == ids[2:] and {j["status"] for j in listed} == {"failed"}
        assert sum(folder_size(jobs_dir / job_id) for job_id in ids[2:]) <= 1 << 20
        assert not any((jobs_dir / job_id).exists() for job_id in ids[:2])
    # Cancelled jobs count too (no worker here: the jobs stay queued until cancelled).
    manager = JobManager(tmp_path / "cancelled", discover_models([str(setup[1])]), keep_mb=1.0)
    ids = [manager.submit(f"junk{k}.wav", io.BytesIO(junk)).id for k in range(4)]
    for job_id in ids:
        assert manager.cancel_or_delete(job_id) == "cancelled"
    assert [job.id for job in manager.list()] == ids[2:]
    assert sorted(p.name for p in (tmp_path / "cancelled").iterdir()) == sorted(ids[2:])


def test_an_upload_of_unannounced_length_is_cut_off_once_past_the_limit(setup, tmp_path):
    models = discover_models([str(setup[1])])
    jobs_dir = tmp_path / "jobs"
    app = create_app(JobManager(jobs_dir, models, max_upload_mb=MAX_UPLOAD_MB), models)
    block = 64 * 1024
    body = [b'--XBOUND\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n',
            *[b"\0" * block] * 128, b"\r\n--XBOUND--\r\n"]  # 8 MB, sent in chunks without a Content-Length
    pulled, sent = [], []

    async def receive():
        if len(pulled) < len(body):
            pulled.append(body[len(pulled)])
            return {"type": "http.request", "body": pulled[-1], "more_body": len(pulled) < len(body)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/jobs", "raw_path": b"/api/jobs", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1"), (b"transfer-encoding", b"chunked"),
                         (b"content-type", b"multipart/form-data; boundary=XBOUND")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    anyio.run(app, scope, receive, send)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [413]
    detail = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))["detail"]
    assert detail.startswith("upload is larger than this server's limit of 0.5 MB (umx-web --max-upload-mb); ")
    assert sum(map(len, pulled)) <= MAX_UPLOAD_MB * 2**20 + MULTIPART_SLACK + block
    assert not jobs_dir.exists() or not list(jobs_dir.iterdir())


def test_unknown_or_repeated_targets_and_a_residual_named_like_a_target_are_refused(client, setup):
    before = set(setup[0].iterdir())
    cases = [({"targets": "piano"}, "model 'tiny' has no target 'piano'; choose from vocals, drums, bass, other"),
             ({"targets": "vocals,piano"}, "model 'tiny' has no target 'piano'"),
             ({"model": "default", "targets": "piano"}, "model 'default' has no target 'piano'"),
             ({"targets": "vocals", "residual": "vocals"}, "residual 'vocals' is already a target"),
             ({"targets": "vocals,drums", "residual": "drums"}, "residual 'drums' is already a target"),
             ({"residual": "bass"}, "residual 'bass' is already a target; give the residual another name"),
             ({"targets": "vocals,drums,vocals"}, "target(s) vocals asked for more than once; name each target once")]
    for fields, reason in cases:
        response = client.post("/api/jobs", files={"file": ("a.wav", wav_bytes(0.2))}, data=fields)
        assert response.status_code == 400, fields
        detail = response.json()["detail"]
        assert detail.startswith(reason) and str(setup[1]) not in detail
    assert set(setup[0].iterdir()) == before


@pytest.mark.slow
def test_a_bad_port_or_jobs_folder_is_a_one_line_error(tmp_path):
    result = run_web("--port", "70000")
    assert result.returncode == 1 and result.stderr == "umx-web: error: --port must be 0 to 65535\n"
    afile = tmp_path / "afile"
    afile.write_text("")
    result = run_web("--port", "0", "--jobs-dir", str(afile))
    assert result.returncode == 1
    assert result.stderr == f"umx-web: error: --jobs-dir {afile}: is a file, not a folder; give a folder " \
                            "(created if missing)\n"
    result = run_web("--port", "0", "--jobs-dir", str(afile / "jobs"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"umx-web: error: --jobs-dir {afile / 'jobs'}: cannot write there (")


@pytest.mark.slow
def test_ctrl_c_stops_the_server_while_a_page_listens_to_events(setup, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "openunmix_like.cli.web", "--port", "0", "--model", str(setup[1]),
                                "--jobs-dir", str(tmp_path / "jobs")], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    connection = None
    try:
        line = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "serving on" not in line:
            line = process.stdout.readline()
        port = int(re.search(r"serving on http://127\.0\.0\.1:(\d+)/", line).group(1))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/api/events")
        events = connection.getresponse()
        assert events.status == 200 and events.readline() == b"retry: 1000\n"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130  # not stopped: TimeoutExpired
        assert "Traceback" not in process.stdout.read()
    finally:
        if connection is not None:
            connection.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def test_model_folders_named_like_other_models_get_names_of_their_own(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    for file in pretrained_table()["umxhq"]["files"].values():  # umxhq counts as downloaded
        (tmp_path / "cache" / "umxhq").mkdir(parents=True, exist_ok=True)
        (tmp_path / "cache" / "umxhq" / file).write_bytes(b"")
    folders = [tiny_model(tmp_path / "a" / "default"), tiny_model(tmp_path / "b" / "umxhq"),
               tiny_model(tmp_path / "c" / "default")]
    models = discover_models([str(f) for f in folders])
    assert {name: (m["label"], m["arg"]) for name, m in models.items()} == {
        "default+": ("model folder", str(folders[0].resolve())),
        "umxhq+": ("model folder", str(folders[1].resolve())),
        "default++": ("model folder", str(folders[2].resolve())),
        "default": ("bundled model", None),
        "umxhq": ("published, downloaded", "umxhq"),
    }
    assert list(models)[0] == "default+"  # the first folder given stays the default choice



SERVER_WITHOUT_TORCH = """
import io, sys, time
import numpy as np, soundfile as sf
from fastapi.testclient import TestClient
from openunmix_like.web.app import create_app
from openunmix_like.web.jobs import JobManager
from openunmix_like.web.models import discover_models

models = discover_models([sys.argv[2]])
with TestClient(create_app(JobManager(sys.argv[1], models), models)) as client:
    song = io.BytesIO()
    sf.write(song, 0.1 * np.random.default_rng(0).standard_normal((44100, 2)), 44100, format="WAV")
    job = client.post("/api/jobs", files={"file": ("song.wav", song.getvalue(), "audio/wav")}).json()["id"]
    while client.get(f"/api/jobs/{job}").json()["status"] not in ("done", "failed", "cancelled"):
        time.sleep(0.1)
    assert client.get(f"/api/jobs/{job}").json()["status"] == "done"
    for path in ("preview", "zip", "stems/vocals"):
        assert client.get(f"/api/jobs/{job}/{path}").status_code == 200, path
print("torch" in sys.modules)
"""


def test_the_server_takes_a_job_to_its_stems_without_importing_torch(tmp_path, setup):
    # Its worker processes separate; the server itself receives, lists and sends files: without torch it
    # starts in about a second and holds about 60 MB (docs/performance.md).
    result = subprocess.run([sys.executable, "-c", SERVER_WITHOUT_TORCH, str(tmp_path / "jobs"), str(setup[1])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "False", result.stdout
