"""``umx-web``'s server: defects found in review, each with the case that showed it.

Most cases run on FastAPI's test client without starting the manager (no worker process: uploads stay
queued, which is all they need); the cross-site cases run against ``umx-web`` itself.
"""
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile

import pytest
import soundfile as sf

from helpers import music_like, start_web_server

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from openunmix_like.web.app import create_app  # noqa: E402
from openunmix_like.web.jobs import LOCK_NAME, Job, JobManager  # noqa: E402
from openunmix_like.web.models import discover_models  # noqa: E402

RATE = 22050


def wav_bytes(seconds=0.5, seed=0):
    buf = io.BytesIO()
    sf.write(buf, music_like(seconds, RATE, 2, seed).T, RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture
def model(model_dir):
    return model_dir("tiny", sample_rate=RATE)


def idle_client(jobs_dir, model, **options):
    """The app over a manager that is not started: requests are answered, jobs stay queued."""
    models = discover_models([str(model)])
    return TestClient(create_app(JobManager(jobs_dir, models, **options), models))


def job_folders(jobs_dir):
    # The running server's lock file is no job either.
    return sorted(p.name for p in jobs_dir.iterdir() if p.name not in (".tmp", LOCK_NAME)) if jobs_dir.exists() else []


def test_an_upload_is_received_into_the_jobs_folder_not_the_system_temporary_one(tmp_path, model, monkeypatch):
    # FastAPI's form parser spooled every upload over 1 MB to the system's temporary folder (often a
    # tmpfs: memory) and the job copied it from there. With no usable system temporary folder the
    # upload failed with a 500.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-system-tmp"))
    data = wav_bytes(30.0, seed=1)  # 2.6 MB
    client = idle_client(tmp_path / "jobs", model, max_upload_mb=10)
    response = client.post("/api/jobs", files={"file": ("song.wav", data)}, data={"targets": "vocals"})
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert client.get(f"/api/jobs/{job_id}/mixture").content == data
    assert job_folders(tmp_path / "jobs") == [job_id]  # no staging left behind


def test_option_numbers_that_are_not_numbers_are_one_line_400s(tmp_path, model):
    # They were FastAPI's 422 with a list of validation records (and "1e9" or "abc" echoed in them).
    client = idle_client(tmp_path / "jobs", model)
    for fields, reason in (({"bits": "abc"}, "bits 'abc' is not a whole number"),
                           ({"ext": "mp3", "bitrate": "1e9"}, "bitrate '1e9' is not a whole number"),
                           ({"bits": "-1"}, "format wav -1 bit not offered")):
        response = client.post("/api/jobs", files={"file": ("a.wav", wav_bytes(0.2))}, data=fields)
        assert response.status_code == 400, fields
        assert response.json()["detail"].startswith(reason), response.json()
    response = client.post("/api/jobs", data={"file": "not a file part"}, headers={})
    assert response.status_code == 422 and isinstance(response.json()["detail"], str)
    assert job_folders(tmp_path / "jobs") == []


def test_a_form_cut_short_or_out_of_bounds_stores_nothing(tmp_path, model):
    client = idle_client(tmp_path / "jobs", model)
    head = b'--XB\r\nContent-Disposition: form-data; name="file"; filename="cut.wav"\r\n\r\n'
    cases = {  # body: the start of the reason
        head + wav_bytes(0.2): "the form ended before the file did",
        head + b"RIFF\r\n" + head + b"RIFF\r\n--XB--\r\n": "more than one 'file' field",
        b'--XB\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + b"m" * 5000 + b"\r\n--XB--\r\n":
            "form field 'model' is longer than",
    }
    for body, reason in cases.items():
        response = client.post("/api/jobs", content=body,
                               headers={"content-type": "multipart/form-data; boundary=XB"})
        assert response.status_code == 400 and response.json()["detail"].startswith(reason), response.text
    assert job_folders(tmp_path / "jobs") == []


KILLED_MID_UPLOAD = textwrap.dedent("""
    import os, signal, sys
    from openunmix_like.web.jobs import JobManager
    from openunmix_like.web.models import discover_models

    class Dying:  # the server killed (power cut, OOM killer) while it stores an upload
        blocks = 0
        def read(self, size):
            self.blocks += 1
            if self.blocks > 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return b"RIFF" * (size // 4)

    JobManager(sys.argv[1], discover_models([sys.argv[2]])).submit("song.wav", Dying())
""")


def test_an_upload_the_server_was_killed_in_is_removed_at_the_next_start(tmp_path, model):
    # The job's folder was made first and its job.json written last: a server killed between left a
    # folder holding a partial upload that no start, listing or size limit ever looked at again.
    jobs_dir = tmp_path / "jobs"
    done = subprocess.run([sys.executable, "-c", KILLED_MID_UPLOAD, str(jobs_dir), str(model)], timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    left = [p for p in jobs_dir.rglob("*") if p.is_file()]
    assert left and sum(p.stat().st_size for p in left) >= 2 << 20  # what it had stored
    manager = JobManager(jobs_dir, discover_models([str(model)]), workers=1)
    manager.start()
    try:
        assert manager.list() == []
        assert job_folders(jobs_dir) == []
        assert not [p for p in jobs_dir.rglob("*") if p.is_file() and p.name != LOCK_NAME]
    finally:
        manager.stop()


def test_the_zip_of_a_track_named_with_dots_or_odd_characters_stays_in_its_folder(tmp_path, model):
    # An upload named ".." gave a zip whose entries were "../vocals.wav": extracted, they land
    # beside the folder the user extracts into. Characters Windows refuses made it fail there.
    jobs_dir = tmp_path / "jobs"
    client = idle_client(jobs_dir, model)
    manager = client.app.state.manager
    for k, (filename, track) in enumerate(((".." , "track"), ("...wav", "track"), ('a:b?"c".wav', "a_b__c_"),
                                            (" .hidden. .wav", "hidden"))):
        job = Job(id=f"{k:032x}", filename=filename, created=time.time(), status="done", stems=["vocals", "bass"],
                  input="input.wav")
        (jobs_dir / job.id / "stems").mkdir(parents=True)
        for stem in job.stems:
            (jobs_dir / job.id / "stems" / f"{stem}.wav").write_bytes(wav_bytes(0.1))
        (jobs_dir / job.id / "job.json").write_text(json.dumps(job.__dict__))
        manager._jobs[job.id] = job
        response = client.get(f"/api/jobs/{job.id}/zip")
        assert response.status_code == 200
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            assert archive.namelist() == [f"{track}/vocals.wav", f"{track}/bass.wav"], filename
        disposition = client.get(f"/api/jobs/{job.id}/stems/vocals").headers["content-disposition"]
        assert disposition == f'attachment; filename="{track}-vocals.wav"', disposition


@pytest.mark.slow
def test_pages_of_other_sites_cannot_use_a_server_on_this_machine(tmp_path, model):
    # Any page the user visits can make the browser post a form to 127.0.0.1 (an upload: CSRF) or,
    # through a name of its own resolving to 127.0.0.1 (DNS rebinding), read the jobs and stems.
    jobs_dir = tmp_path / "jobs"
    process, url = start_web_server(jobs_dir, model)
    try:
        port = int(url.rsplit(":", 1)[1])
        with httpx.Client(base_url=url, timeout=30) as client:
            rebound = client.get("/api/jobs", headers={"Host": f"evil.example:{port}"})
            assert rebound.status_code == 403 and "this machine only" in rebound.json()["detail"]
            for origin in ("http://evil.example", "null"):
                response = client.post("/api/jobs", files={"file": ("a.wav", wav_bytes(0.2))},
                                       headers={"Origin": origin})
                assert response.status_code == 403 and "another site" in response.json()["detail"]
            assert job_folders(jobs_dir) == []
            # The page itself (same origin) and scripts (no Origin) may; so may any name of this machine.
            own = client.post("/api/jobs", files={"file": ("a.wav", wav_bytes(0.2))}, headers={"Origin": url})
            assert own.status_code == 201, own.text
            job_id = own.json()["id"]
            for host in (f"localhost:{port}", f"[::1]:{port}", f"127.0.0.1:{port}"):
                assert client.get(f"/api/jobs/{job_id}", headers={"Host": host}).status_code == 200, host
            assert client.delete(f"/api/jobs/{job_id}", headers={"Origin": "http://evil.example"}).status_code == 403
            assert client.get(f"/api/jobs/{job_id}").status_code == 200
        # A client gone mid-upload leaves nothing behind (the body goes straight into the jobs folder).
        head = b'--XB\r\nContent-Disposition: form-data; name="file"; filename="gone.wav"\r\n\r\n'
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                      b"boundary=XB\r\nContent-Length: %d\r\n\r\n" % (len(head) + (8 << 20)) + head + b"\0" * (3 << 20))
            deadline = time.monotonic() + 60  # received as it arrives: while the rest is still to come
            while not any(p.name.startswith(".upload-") for p in jobs_dir.iterdir()):
                assert time.monotonic() < deadline, os.listdir(jobs_dir)
                time.sleep(0.05)
        deadline = time.monotonic() + 60
        while any(p.name.startswith(".") and p.name not in (".tmp", LOCK_NAME) for p in jobs_dir.iterdir()):
            assert time.monotonic() < deadline, os.listdir(jobs_dir)
            time.sleep(0.05)
        assert job_folders(jobs_dir) == [job_id]
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


def test_a_damaged_stems_preview_error_names_it_without_the_servers_folders(tmp_path, model):
    # The 422 named the stem by its absolute path on the server, which a client elsewhere has no business knowing.
    jobs_dir = tmp_path / "jobs"
    client = idle_client(jobs_dir, model)
    job = Job(id="e" * 32, filename="song.wav", created=time.time(), status="done", stems=["vocals", "bass"],
              input="input.wav")
    (jobs_dir / job.id / "stems").mkdir(parents=True)
    (jobs_dir / job.id / "input.wav").write_bytes(wav_bytes(0.2))
    (jobs_dir / job.id / "stems" / "vocals.wav").write_bytes(wav_bytes(0.2))
    (jobs_dir / job.id / "stems" / "bass.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEdamaged" * 4)
    (jobs_dir / job.id / "job.json").write_text(json.dumps(job.__dict__))
    client.app.state.manager._jobs[job.id] = job
    response = client.get(f"/api/jobs/{job.id}/preview")
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert str(tmp_path) not in detail and f"{job.id}/stems/bass.wav" in detail, detail
