"""``umx-web``'s page while things take time: an upload's progress and its Cancel, a running job's phase
(loading the model, separating, writing the stems), announcements for screen readers, the keyboard's focus after
Delete, and the favicon.

The browser tests drive Debian's chromium with Playwright (marked slow) against ``umx-web`` itself with a tiny
random-weight model. Uploads are slowed with the DevTools protocol's network emulation, so that an upload is still
under way when the test looks, however fast this machine is.
"""
import io
import json
import re
import shutil
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from helpers import make_models, music_like, start_web_server
from openunmix_like.modeldir import AudioSettings, save_target

pytest.importorskip("fastapi")

from openunmix_like.web.jobs import JobManager, run_job  # noqa: E402
from openunmix_like.web.models import discover_models  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
RATE = 22050
MAX_UPLOAD_MB = 1  # a 10 s clip (882 kB) is taken, a 13 s one (1.1 MB) refused
needs_chromium = pytest.mark.skipif(not shutil.which(CHROMIUM),
                                    reason=f"{CHROMIUM} missing: scripts/install-system-deps.sh")


def wav(seconds, seed=0):
    buf = io.BytesIO()
    sf.write(buf, music_like(seconds, RATE, 2, seed).T, RATE, format="WAV")
    return buf.getvalue()


def http(url, method="GET"):
    """``(status, content type, body)`` of a plain request, as any client (no browser) makes it."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def jobs(url):
    return json.loads(http(f"{url}/api/jobs")[2])


def clear_jobs(url):
    """Cancel and delete every job, so that a test starts with an empty list."""
    for _ in range(2):  # a running job is cancelled first, then deleted
        for job in jobs(url):
            http(f"{url}/api/jobs/{job['id']}", method="DELETE")
    assert jobs(url) == []


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("progress") / "tiny"
    for target, m in make_models(n_fft=512).items():
        save_target(folder, target, m, AudioSettings(RATE, 512, 128, 2))
    return folder


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="module")
def server(model, jobs_dir):
    process, url = start_web_server(jobs_dir, model, "--max-upload-mb", str(MAX_UPLOAD_MB))
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, server):
    clear_jobs(server)
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        page = context.new_page()
        page.goto(server)
        page.wait_for_selector("#targets input", state="attached")
        yield page
    finally:
        context.close()


def throttle(page, bytes_per_second, session=None):
    """Uploads from ``page`` go at ``bytes_per_second`` (None: at full speed), downloads unslowed; returns the
    DevTools session, the one to pass to change the speed again (a new session's setting adds to the others)."""
    session = session or page.context.new_cdp_session(page)
    session.send("Network.enable")
    session.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                      "uploadThroughput": bytes_per_second or -1})
    return session


# Every value the upload's progress bar and its line of text show, from now on.
RECORD_UPLOAD = """() => {
    window.shown = [];
    const box = document.querySelector("#upload");
    new MutationObserver(() => window.shown.push([box.querySelector("progress").value,
                                                  box.querySelector(".sent").textContent]))
        .observe(box, { attributes: true, childList: true, characterData: true, subtree: true });
}"""


def choose(page, tmp_path, files):
    """Choose ``files`` (name -> bytes) in the page's file chooser, as a user does."""
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    page.set_input_files("#files", paths)


# ---------------------------------------------------------------- favicon


def test_the_favicon_is_served_where_browsers_ask_for_it(server):
    status, kind, body = http(f"{server}/favicon.ico")
    assert status == 200 and kind.startswith("image/svg+xml") and body.lstrip().startswith(b"<svg")
    page = http(server)[2].decode()
    icon = re.search(r'<link rel="icon" href="([^"]+)"', page).group(1)
    assert http(f"{server}/{icon}")[:2] == (200, "image/svg+xml")


# ---------------------------------------------------------------- phases


def test_a_worker_reports_loading_the_model_then_separating_then_writing(model, tmp_path):
    """The phases in the order the work goes; a second job with the same model loads nothing."""
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "input.wav").write_bytes(wav(1.0, seed=1))
    spec = {"input": str(folder / "input.wav"), "filename": "phases.wav", "ext": "wav", "bits": 16, "bitrate": None,
            "model_arg": str(model), "targets": None, "residual": None}
    cache, events = {}, []
    for _ in range(2):
        run_job(spec, lambda f: events.append(("progress", f)), cache, 5.0, lambda p: events.append(("phase", p)))
        events.append(("done", None))
    first = events[:events.index(("done", None)) + 1]
    second = events[len(first):]
    phases = [value for kind, value in first if kind == "phase"]
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == ["loading", "separating", "writing"]
    progress = [i for i, (kind, _) in enumerate(first) if kind == "progress"]
    assert first.index(("phase", "separating")) < progress[0]  # the model is loaded before the first chunk
    assert first.index(("phase", "writing")) < progress[-1] and first[progress[-1]] == ("progress", 1.0)
    assert ("phase", "loading") not in second and ("phase", "separating") in second


def test_the_job_s_phase_is_in_its_json_from_dispatch_to_done(model, tmp_path):
    """The manager gives a running job its worker's phase; queued and finished jobs have none. The JSON keeps
    every field it had."""
    manager = JobManager(tmp_path / "jobs", discover_models([str(model)]))
    manager._workers = [manager._new_worker()]  # no dispatcher thread: the test takes its steps
    worker = manager._workers[0]
    try:
        job = manager.submit("phases.wav", io.BytesIO(wav(1.0, seed=2)))
        assert manager.get(job.id).public()["phase"] is None  # queued
        manager._dispatch()
        state = manager.get(job.id).public()
        assert (state["status"], state["phase"], state["progress"]) == ("running", "loading", 0)
        assert set(state) >= {"id", "status", "progress", "stems", "error", "filename", "created", "model", "ext",
                              "bitrate"}
        seen = []
        while not seen or seen[-1][0] == "progress":  # each message handled as the dispatcher does, in order
            assert worker.conn.poll(120), "no answer from the worker in 120 s"
            answer = worker.conn.recv()
            manager._handle(worker, *answer)
            manager._note_phase(worker)
            state = manager.get(job.id).public()
            seen.append((answer[0], answer[2] if answer[0] == "progress" else None, state["phase"]))
    finally:
        manager.stop()
    # The phase at the last chunk (set before it was reported), then none once done.
    assert seen[-2:] == [("progress", 1.0, "writing"), ("done", None, None)]
    assert state["status"] == "done" and state["progress"] == 1.0


# What a server sends for running jobs in each phase, and for one from a server that sends no phase.
PHASE_EVENTS = "retry: 600000\n\n" + "".join(
    f"event: job\ndata: {json.dumps(job)}\n\n" for job in [
        {"id": f"{i:032x}", "status": "running", "progress": progress, "stems": [], "error": None,
         "filename": f"{name}.wav", "created": 1000.0 + i, "model": "default", "ext": "wav", "bitrate": None,
         **({"phase": name} if name != "older" else {})}
        for i, (name, progress) in enumerate([("loading", 0.0), ("separating", 0.42), ("writing", 1.0),
                                              ("older", 0.42)])])


@pytest.mark.slow
@needs_chromium
def test_the_page_shows_a_running_job_s_phase(page):
    # The events stream of a server with these jobs (and no reconnection while the test runs).
    page.route("**/api/events", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=PHASE_EVENTS))
    page.reload()
    page.wait_for_function("document.querySelectorAll('.job').length === 4")
    rows = page.eval_on_selector_all(".job", """rows => rows.map((r) => [
        r.querySelector('.name').textContent, r.querySelector('.state').textContent.trim(),
        r.querySelector('progress').hasAttribute('value')])""")
    assert sorted(rows) == [["loading.wav", "loading model", False],  # no fraction: the bar moves by itself
                            ["older.wav", "42 %", True],
                            ["separating.wav", "separating 42 %", True],
                            ["writing.wav", "writing stems", False]]


# ---------------------------------------------------------------- uploads


@pytest.mark.slow
@needs_chromium
def test_an_upload_shows_its_progress_and_its_job_once_sent(page, server, tmp_path):
    page.evaluate(RECORD_UPLOAD)
    throttle(page, 300_000)  # 882 kB: about 3 s
    choose(page, tmp_path, {"slow.wav": wav(10.0, seed=3)})
    page.wait_for_selector(".job .name:text-is('slow.wav')", timeout=60_000)
    page.wait_for_selector("#upload", state="hidden")
    shown = page.evaluate("window.shown")
    between = [(value, text) for value, text in shown if 0 < value < 100]
    assert between, shown
    value, text = between[0]
    assert re.fullmatch(rf"{value} %, 0\.\d of 0\.8 MB", text), text  # percentage and megabytes sent
    percents = [v for v, _ in shown]
    assert percents == sorted(percents) and percents[-1] == 100
    assert page.inner_text("#submit-error") == "" and page.is_hidden("#submit-error")
    assert [j["filename"] for j in jobs(server)] == ["slow.wav"]


@pytest.mark.slow
@needs_chromium
def test_a_cancelled_or_refused_upload_leaves_no_job_and_says_so_in_a_line(page, server, jobs_dir, tmp_path):
    page.evaluate(RECORD_UPLOAD)
    session = throttle(page, 20_000)  # 882 kB: 44 s, so it is still on its way when cancelled
    choose(page, tmp_path, {"cancel me.wav": wav(10.0, seed=4)})
    page.wait_for_function("window.shown.some(([value]) => value > 0)", timeout=30_000)
    assert page.is_visible("#upload") and "Uploading cancel me.wav" in page.inner_text("#upload .name")
    page.get_by_role("button", name="Cancel upload of cancel me.wav", exact=True).focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#submit-error", state="visible", timeout=10_000)
    assert page.inner_text("#submit-error") == "cancel me.wav: upload cancelled; nothing of it was kept"
    assert page.is_hidden("#upload") and page.evaluate("document.activeElement.id") == "drop"
    # The server stored nothing: no job, and what it had received is removed once it sees the upload end.
    deadline = time.monotonic() + 30
    while list(jobs_dir.glob(".upload-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(jobs_dir.glob(".upload-*")) and jobs(server) == []

    throttle(page, None, session)
    choose(page, tmp_path, {"too big.wav": wav(13.0, seed=5)})
    page.wait_for_function("document.querySelector('#submit-error').textContent.startsWith('too big.wav')",
                           timeout=30_000)
    assert re.fullmatch(r"too big\.wav: upload of 1\.1 MB is larger than this server's limit of 1 MB .*",
                        page.inner_text("#submit-error")), page.inner_text("#submit-error")
    page.wait_for_selector("#upload", state="hidden")
    assert jobs(server) == [] and page.locator(".job").count() == 0


# ---------------------------------------------------------------- announcements and focus


@pytest.mark.slow
@needs_chromium
def test_finished_and_failed_jobs_are_announced_once_each(page, server, tmp_path):
    region = page.locator("#announcements")
    assert region.get_attribute("aria-live") == "polite" and region.get_attribute("role") == "status"
    song = io.BytesIO()  # 40 s in two chunks, so that the job's progress changes while it runs; a few kB
    sf.write(song, np.zeros((40 * RATE, 2), np.int16), RATE, format="FLAC")
    page.evaluate("""() => { window.states = new Set();  // every state the song's row shows
        new MutationObserver(() => document.querySelectorAll(".job .state").forEach((s) => states.add(s.textContent)))
            .observe(document.querySelector("#jobs"), { childList: true, characterData: true, subtree: true }); }""")
    choose(page, tmp_path, {"song.flac": song.getvalue(), "notes.wav": b"not audio at all\n"})
    page.wait_for_selector(".job[data-status='done']", timeout=90_000)
    page.wait_for_selector(".job[data-status='failed']", timeout=30_000)
    lines = sorted(page.eval_on_selector_all("#announcements p", "ps => ps.map((p) => p.textContent)"))
    assert len(lines) == 2 and lines[1] == "song.flac: done, 4 stems ready", lines
    assert re.fullmatch(r"notes\.wav: failed: [^:].*", lines[0]), lines  # the reason, without the name twice
    assert len(page.evaluate("[...window.states]")) > 3  # queued, running at several points, done: told once
    page.reload()  # jobs that were finished before the page opened are not news
    page.wait_for_selector(".job[data-status='failed']")
    assert page.locator("#announcements p").count() == 0


@pytest.mark.slow
@needs_chromium
def test_delete_with_the_keyboard_moves_focus_to_the_next_job_then_the_drop_zone(page, server, tmp_path):
    choose(page, tmp_path, {"first.wav": wav(0.5, seed=7), "second.wav": wav(0.5, seed=8)})
    page.wait_for_function("document.querySelectorAll(\".job[data-status='done']\").length === 2", timeout=90_000)
    page.get_by_role("button", name="Delete second.wav", exact=True).focus()  # the newest, on top
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('.job').length === 1")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Open first.wav"
    page.keyboard.press("Tab")  # on to its Delete button (Cancel is hidden)
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Delete first.wav"
    page.keyboard.press("Enter")
    page.wait_for_selector(".job", state="detached")
    assert page.evaluate("document.activeElement.id") == "drop"
