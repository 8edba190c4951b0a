"""``umx-web``'s streaming player: defects found in review, each with the case that showed it.

The API cases run on FastAPI's test client; the page's run in Debian's chromium with Playwright (marked slow),
against ``umx-web`` started as in ``test_web_browser.py``.
"""
import io
import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf

from helpers import browser_page, make_models, music_like, start_web_server
from openunmix_like.modeldir import AudioSettings, save_target

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from openunmix_like.web.app import create_app  # noqa: E402
from openunmix_like.web.jobs import JobManager  # noqa: E402
from openunmix_like.web.models import discover_models  # noqa: E402
from openunmix_like.web.preview import MAX_FRAMES, build_preview  # noqa: E402

RATE = 22050
CHROMIUM = os.environ.get("UMX_WEB_CHROMIUM", "/usr/bin/chromium")


def tiny_model(folder):
    for target, m in make_models(n_fft=512).items():
        save_target(folder, target, m, AudioSettings(RATE, 512, 128, 2))
    return folder


def wav_bytes(audio, rate, subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def upload_and_wait(post, get, name, data, timeout=120):
    response = post("/api/jobs", files={"file": (name, data, "application/octet-stream")})
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            assert job["status"] == "done", job
            return job_id
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not finished after {timeout} s")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("web-review")
    models = discover_models([str(tiny_model(root / "tiny"))])
    manager = JobManager(root / "jobs", models, max_minutes=1, max_upload_mb=50)
    with TestClient(create_app(manager, models)) as c:
        yield c


# ---------------------------------------------------------------- the API


def test_a_float_wav_upload_is_heard_and_drawn_as_the_mixture(client):
    """A 32-bit float wav (as DAWs export, peaks above full scale included) was read by libsndfile as
    unscaled integers: the mixture track was silence (every sample 0 or +-1) and its waveform flat."""
    audio = music_like(1.0, RATE, 2, seed=11).T * 1.6  # some samples beyond full scale
    job_id = upload_and_wait(client.post, client.get, "float.wav", wav_bytes(audio, RATE, "FLOAT"))
    info = client.get(f"/api/jobs/{job_id}/preview").json()
    mixture = info["tracks"][-1]
    assert mixture["name"] == "mixture" and mixture["frames"] == len(audio)
    pcm = client.get(f"/api/jobs/{job_id}/preview/mixture?start=1000&frames=5000").content
    got = np.frombuffer(pcm, "<i2").reshape(-1, 2)
    expected = np.clip(np.rint(audio[1000:6000].astype(np.float32) * 32768), -32768, 32767)
    assert np.array_equal(got, expected)  # clipped at full scale, not wrapped around
    peaks = np.array(mixture["peaks"]).reshape(-1, 2)
    assert peaks[:, 1].max() > 0.4 and peaks[:, 0].min() < -0.4


def test_the_suggested_chunk_is_one_a_request_may_ask_for(tmp_path):
    """At 705.6 kHz the suggested 10 s chunk (7,056,000 frames) was more than one PCM request may ask for."""
    folder = tmp_path / "job"
    rate = 705600
    (folder / "stems").mkdir(parents=True)
    sf.write(folder / "stems" / "vocals.wav", music_like(0.2, rate, 2, seed=1).T, rate)
    info = build_preview(folder, {"vocals": folder / "stems" / "vocals.wav"}, None)
    assert info["rate"] == rate and 0 < info["chunk_frames"] <= MAX_FRAMES
    # An info.json written before the limit was heeded is read with the chunk it may ask for.
    kept = folder / "preview" / "info.json"
    kept.write_text(json.dumps(dict(info, chunk_frames=10 * rate)))
    assert build_preview(folder, {"vocals": folder / "stems" / "vocals.wav"}, None)["chunk_frames"] <= MAX_FRAMES


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_a_kept_preview_naming_a_decoded_copy_that_is_gone_is_made_again(tmp_path):
    """A kept info.json whose decoded mixture (an m4a upload's FLAC) was deleted was served as it was, and
    every chunk then failed (the page fetches all tracks together)."""
    folder = tmp_path / "job"
    (folder / "stems").mkdir(parents=True)
    sf.write(tmp_path / "song.wav", music_like(0.5, RATE, 2, seed=2).T, RATE)
    upload = folder / "input.m4a"  # libsndfile cannot read it: the preview keeps a decoded copy
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "song.wav"), "-c:a", "aac", str(upload)], check=True)
    sf.write(folder / "stems" / "vocals.wav", music_like(0.5, RATE, 2, seed=1).T, RATE)
    first = build_preview(folder, {"vocals": folder / "stems" / "vocals.wav"}, upload)
    decoded = folder / "preview" / "mixture.flac"
    assert first["tracks"][-1]["mixture"] and decoded.is_file()
    decoded.unlink()
    again = build_preview(folder, {"vocals": folder / "stems" / "vocals.wav"}, upload)
    assert again["tracks"][-1]["file"] == first["tracks"][-1]["file"] and decoded.is_file()


def test_a_preview_folder_removed_while_the_server_runs_is_made_again(client, tmp_path):
    """The info was kept in memory: with the decoded copy of an m4a upload gone, every chunk failed (500)."""
    sf.write(tmp_path / "song.wav", music_like(1.0, RATE, 2, seed=5).T, RATE)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "song.wav"), "-c:a", "aac",
                    str(tmp_path / "song.m4a")], check=True)
    job_id = upload_and_wait(client.post, client.get, "song.m4a", (tmp_path / "song.m4a").read_bytes())
    first = client.get(f"/api/jobs/{job_id}/preview/mixture?start=0&frames=4000")
    assert first.status_code == 200 and len(first.content) == 4000 * 2 * 2
    preview = client.app.state.manager.jobs_dir / job_id / "preview"
    shutil.rmtree(preview)
    again = client.get(f"/api/jobs/{job_id}/preview/mixture?start=0&frames=4000")
    assert again.status_code == 200 and again.content == first.content
    assert (preview / "info.json").is_file()


# ---------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``umx-web`` with two separated 12 s songs: ``(url, [job ids])``."""
    pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} missing: scripts/install-system-deps.sh")
    root = tmp_path_factory.mktemp("web-review-page")
    process, url = start_web_server(root / "jobs", tiny_model(root / "tiny"))
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            ids = [upload_and_wait(http.post, http.get, f"song{k}.wav", wav_bytes(music_like(12.0, RATE, 2, k).T, RATE))
                   for k in range(2)]
        yield url, ids
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def page():
    with browser_page(CHROMIUM) as page:
        yield page


def open_job(page, url, job_id, load=True):
    if load:
        page.goto(url)
    page.wait_for_selector(f"#job-{job_id} .open", state="visible", timeout=30_000)
    page.click(f"#job-{job_id} .open")
    page.wait_for_function(f"window.umxPlayer.job === '{job_id}' && "
                           "document.querySelector('#player').dataset.ready === 'true'", timeout=30_000)


def now(page):
    return page.evaluate("window.umxPlayer.time()")


@pytest.mark.slow
def test_the_keys_work_after_a_control_is_clicked_with_the_mouse(server, page):
    """Chromium focuses a clicked button: the arrows, Home and L did nothing after Play was clicked, and
    Space after clicking M pressed M again (the stem unmuted) instead of pausing."""
    url, ids = server
    open_job(page, url, ids[0])
    page.click("#play")
    page.wait_for_function("window.umxPlayer.playing && window.umxPlayer.time() > 0.1", timeout=10_000)
    page.keyboard.press("ArrowRight")
    page.wait_for_function("window.umxPlayer.playing", timeout=10_000)
    assert now(page) > 5
    page.keyboard.press("Home")
    assert now(page) < 1
    page.click(".track[data-stem='vocals'] .mute")
    page.keyboard.press(" ")
    assert not page.evaluate("window.umxPlayer.playing || window.umxPlayer.waiting")
    assert page.evaluate("window.umxPlayer.tracks[0].mute")
    # A button reached from the keyboard keeps its own key.
    page.focus(".track[data-stem='drums'] .mute")
    page.keyboard.press(" ")
    assert page.evaluate("window.umxPlayer.tracks[1].mute")
    assert not page.evaluate("window.umxPlayer.playing || window.umxPlayer.waiting")


@pytest.mark.slow
def test_another_job_opens_with_the_stems_and_the_mixture_button_says_so(server, page):
    """The "Original mixture" button stayed pressed on the next job opened, while the stems played."""
    url, ids = server
    open_job(page, url, ids[0])
    page.click("#compare")
    assert page.get_attribute("#compare", "aria-pressed") == "true"
    open_job(page, url, ids[1], load=False)
    assert not page.evaluate("window.umxPlayer.compare")
    assert page.get_attribute("#compare", "aria-pressed") == "false"
    page.click("#compare")
    assert page.evaluate("window.umxPlayer.compare") and page.get_attribute("#compare", "aria-pressed") == "true"


@pytest.mark.slow
def test_a_seek_to_or_past_the_end_while_playing_stops_there(server, page):
    """The right arrow near the end (or the seek bar dragged to its end) while playing started the song over."""
    url, ids = server
    open_job(page, url, ids[0])
    page.evaluate("window.umxPlayer.seek(10.5)")
    page.click("#play")
    page.wait_for_function("window.umxPlayer.playing && window.umxPlayer.time() > 10.6", timeout=10_000)
    page.keyboard.press("ArrowRight")
    page.wait_for_timeout(500)
    assert not page.evaluate("window.umxPlayer.playing || window.umxPlayer.waiting")
    assert now(page) == page.evaluate("window.umxPlayer.duration")
    assert page.inner_text("#play") == "Play"
    page.click("#play")  # from the end, Play starts the song again
    page.wait_for_function("window.umxPlayer.playing && window.umxPlayer.time() > 0.1", timeout=10_000)
    assert now(page) < 5


@pytest.mark.slow
def test_a_chunk_that_cannot_be_loaded_while_playing_says_why(server, page):
    """When the next chunk could not be loaded (the server gone, say), playing stopped and the reason shown
    was at once replaced by the stems' summary: the page stopped without a word."""
    url, ids = server
    open_job(page, url, ids[0])
    page.route(lambda u: f"start={10 * RATE}&" in u, lambda route: route.abort())
    page.evaluate("window.umxPlayer.seek(8.5)")
    page.click("#play")
    page.wait_for_function("!window.umxPlayer.playing && !window.umxPlayer.waiting && window.umxPlayer.time() > 9",
                           timeout=15_000)
    page.wait_for_timeout(500)
    assert page.inner_text("#player-status").startswith("Cannot load the audio")
    assert page.inner_text("#play") == "Play"
    page.unroute_all()
    page.click("#play")  # it loads now: the summary is back
    page.wait_for_function("window.umxPlayer.playing && window.umxPlayer.time() > 10.2", timeout=15_000)
    assert "stems" in page.inner_text("#player-status")


@pytest.mark.slow
def test_a_song_at_705_6_khz_plays(server, page):
    """At 705.6 kHz the page asked for 10 s chunks, more frames than a request may: nothing played."""
    url, _ = server
    rate = 705600
    with httpx.Client(base_url=url, timeout=60) as http:
        job_id = upload_and_wait(http.post, http.get, "hi-res.wav", wav_bytes(music_like(0.5, rate, 2, 9).T, rate))
    open_job(page, url, job_id)
    page.click("#play")
    page.wait_for_function("(window.umxPlayer.playing && window.umxPlayer.time() > 0.2) || "
                           "document.querySelector('#player-status').textContent.startsWith('Cannot')", timeout=15_000)
    assert not page.inner_text("#player-status").startswith("Cannot")
    assert page.evaluate("window.umxPlayer.chunkFrames") <= MAX_FRAMES
