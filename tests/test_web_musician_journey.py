"""``umx-web`` as a musician uses it, in Debian's chromium driven by Playwright (marked slow): songs with
quotes and accents in their names, a phone-wide screen, the keyboard and a screen reader, several files refused
at once, reload and a second tab mid-job, and the server stopped while the page is open.

The server is ``umx-web`` itself, started as in ``test_web_browser.py``, with a tiny random-weight model.
"""
import base64
import io
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from helpers import make_models, music_like, start_web_server
from openunmix_like.modeldir import AudioSettings, save_target

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("UMX_WEB_CHROMIUM", "/usr/bin/chromium")
RATE = 22050
MAX_UPLOAD_MB = 0.5  # a 1 s clip (88 kB) is taken, an 8 s one (706 kB) refused
QUOTED = 'Café "live" 日本 take.wav'
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"{CHROMIUM} missing: scripts/install-system-deps.sh"),
]


def start_server(jobs_dir, model, *options):
    """``umx-web`` with the journey's upload limit and ``options``; returns the process and its URL."""
    return start_web_server(jobs_dir, model, "--max-upload-mb", str(MAX_UPLOAD_MB), *options)


def stop(process):
    process.terminate()
    process.wait(timeout=30)
    process.stdout.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("journey") / "tiny"
    for target, m in make_models(n_fft=512).items():
        save_target(folder, target, m, AudioSettings(RATE, 512, 128, 2))
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, model):
    process, url = start_server(tmp_path_factory.mktemp("jobs"), model)
    yield url
    stop(process)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--autoplay-policy=no-user-gesture-required", "--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    try:
        yield context.new_page()
    finally:
        context.close()


def wav(seconds, seed=0, channels=2):
    buf = io.BytesIO()
    sf.write(buf, music_like(seconds, RATE, channels, seed).T, RATE, format="WAV")
    return buf.getvalue()


def drop(page, files, where="#drop"):
    """Drop ``files`` (name -> bytes) on the element ``where``, as a file manager's drag does; returns whether
    the page took the drop (else the browser would open the file in its place)."""
    return page.evaluate("""([files, where]) => {
        const transfer = new DataTransfer();
        for (const [name, b64] of files) {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            transfer.items.add(new File([bytes], name, { type: "audio/wav" }));
        }
        return !document.querySelector(where).dispatchEvent(new DragEvent("drop", { dataTransfer: transfer,
                                                                                  bubbles: true, cancelable: true }));
    }""", [[[name, base64.b64encode(data).decode()] for name, data in files.items()], where])


def open_page(page, url):
    page.goto(url)
    page.wait_for_selector("#targets input", state="attached")


def separate(page, name, data, two_stems=False):
    """Drop one song with the page's options (two stems if asked), wait for it to be done and open it in the player."""
    page.set_checked("#two-stems", two_stems)
    before = page.evaluate("document.querySelectorAll('.job').length")
    drop(page, {name: data})
    page.wait_for_function("(n) => document.querySelectorAll('.job').length > n", arg=before, timeout=30_000)
    row = page.locator(".job").first  # the newest is on top
    page.wait_for_function("(r) => ['done', 'failed'].includes(r.dataset.status)", arg=row.element_handle(),
                           timeout=90_000)
    assert row.get_attribute("data-status") == "done", row.inner_text()
    row.locator(".open").click()
    page.wait_for_selector("#player[data-ready='true']", timeout=30_000)
    return row


def test_a_song_named_with_quotes_and_accents_keeps_its_name_on_the_page_and_in_the_downloads(server, page):
    """Browsers send a quote in a form's file name as %22: the job, the player and the downloads once read
    ``Café %22live%22 日本 take``."""
    open_page(page, server)
    row = separate(page, QUOTED, wav(1.0, seed=1))
    assert row.locator(".name").inner_text() == QUOTED
    assert page.inner_text("#player-title") == QUOTED
    with page.expect_download() as stem:
        page.click(".track[data-stem='vocals'] .download")
    assert stem.value.suggested_filename == "Café _live_ 日本 take-vocals.wav"  # '"' is refused by Windows
    with page.expect_download() as archive:
        page.click("#zip")
    assert archive.value.suggested_filename == "Café _live_ 日本 take-stems.zip"


def test_on_a_phone_wide_screen_nothing_is_cut_off_or_wider_than_the_screen(server, page):
    page.set_viewport_size({"width": 360, "height": 740})
    open_page(page, server)
    separate(page, "narrow.wav", wav(1.0, seed=2), two_stems=True)
    page.wait_for_function("document.querySelector('.wave').clientWidth > 0")
    width = page.evaluate("document.documentElement.clientWidth")
    assert width == 360
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scrolling
    outside = page.evaluate("""(width) => [...document.querySelectorAll(
            'button:not([hidden]), a, input, select, canvas, .track .name, .job .name')]
        .filter((e) => e.getClientRects().length)
        .filter((e) => { const r = e.getBoundingClientRect(); return r.left < 0 || r.right > width; })
        .map((e) => `${e.tagName}.${e.className} ${e.textContent.trim()}`)""", width)
    assert outside == []
    names = page.eval_on_selector_all(".track .name",
                                      "ns => ns.map((n) => [n.textContent, n.scrollWidth <= n.clientWidth])")
    assert names == [["vocals", True], ["accompaniment", True], ["mixture", True]]  # none cut short


def test_every_control_says_which_song_or_stem_it_acts_on(server, page):
    """A screen reader reads each job's buttons and each track's controls with the song's or stem's name
    (they were "Open", "M", "S", "Volume", "Download" on every row); the keyboard reaches the drop zone first."""
    open_page(page, server)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "drop"
    # Enter or Space there opens the file chooser (the hidden file input is clicked) ...
    page.evaluate("window.chosen = 0; "
                  "document.querySelector('#files').addEventListener('click', () => window.chosen++)")
    page.keyboard.press("Enter")
    page.keyboard.press(" ")
    page.wait_for_function("window.chosen === 2")
    # ... and Space does not also scroll the page (its default is to).
    assert page.evaluate("""() => !document.querySelector("#drop").dispatchEvent(
        new KeyboardEvent("keydown", { key: " ", bubbles: true, cancelable: true }))""")

    separate(page, "keys.wav", wav(1.0, seed=3))
    for role, name in [("button", "Open keys.wav"), ("button", "Delete keys.wav"), ("button", "Mute vocals"),
                       ("button", "Solo drums"), ("slider", "Volume of bass"), ("link", "Download other"),
                       ("button", "Mute mixture"), ("slider", "Volume of mixture")]:
        assert page.get_by_role(role, name=name, exact=True).count() == 1, (role, name)
    assert page.get_attribute("#seek", "aria-valuetext") == "0:00 of 0:01"
    assert page.get_attribute(".job:first-child progress", "aria-label") == "Progress of keys.wav"


def test_a_song_opened_twice_at_once_shows_its_stems_once(server, page):
    """Was: each opening's load added its tracks, so a double click on Open (or a click as the page opened a job
    that had just finished by itself) showed every stem twice."""
    open_page(page, server)
    row = separate(page, "twice.wav", wav(1.0, seed=9))
    # Both openings' loads finished, as two clicks on Open start them (the page's functions are its globals).
    page.evaluate("async (r) => { const id = r.id.slice('job-'.length); "
                  "await Promise.all([openJob(id), openJob(id)]); }", row.element_handle())
    assert page.get_attribute("#player", "data-ready") == "true"
    names = page.eval_on_selector_all(".track .name", "ns => ns.map((n) => n.textContent)")
    assert names == ["vocals", "drums", "bass", "other", "mixture"]


def test_a_song_dropped_beside_the_drop_zone_is_taken_not_opened_in_place_of_the_page(server, page):
    open_page(page, server)
    assert drop(page, {"missed.wav": wav(0.5, seed=8)}, where="#queue")
    page.wait_for_selector(".job[data-status='done'] .name:text-is('missed.wav')", timeout=60_000)


def test_several_files_refused_at_once_each_say_why_in_a_line_of_their_own(server, page):
    open_page(page, server)
    drop(page, {"first.wav": wav(8.0, seed=4), "second.wav": wav(8.0, seed=5)})
    page.wait_for_function("document.querySelector('#submit-error').textContent.includes('second.wav')",
                           timeout=30_000)
    lines = page.inner_text("#submit-error").splitlines()
    assert [line.split(":")[0] for line in lines] == ["first.wav", "second.wav"]
    assert all(f"limit of {MAX_UPLOAD_MB} MB" in line for line in lines)
    for box in page.locator("#targets input").all():
        box.uncheck()
    drop(page, {"a.wav": wav(0.5), "b.wav": wav(0.5)})
    page.wait_for_function("document.querySelector('#submit-error').textContent.startsWith('Choose')")
    assert page.inner_text("#submit-error") == "Choose at least one target (or Two stems), then add the files again."


def test_a_job_is_found_again_after_a_reload_and_cancelled_from_a_second_tab(server, page, tmp_path):
    """Sound as found: the page is told every job when it connects, and every change, whichever tab made it."""
    silence = tmp_path / "long.flac"  # 10 minutes, a few kB: it is still separating when cancelled
    sf.write(silence, np.zeros((600 * RATE, 2), np.int16), RATE)
    open_page(page, server)
    page.set_input_files("#files", [str(silence)])
    page.wait_for_selector(".job[data-status='running']", timeout=60_000)
    page.reload()
    row = page.wait_for_selector(".job[data-status='running']", timeout=10_000)
    assert row.query_selector(".name").inner_text() == "long.flac"
    page.wait_for_function("(r) => /^[0-9]+ %$/.test(r.querySelector('.status').textContent)", arg=row)
    other = page.context.new_page()
    open_page(other, server)
    other.get_by_role("button", name="Cancel long.flac").click()
    page.wait_for_selector(".job[data-status='cancelled']", timeout=10_000)
    cancelled = page.locator(".job[data-status='cancelled']")
    assert cancelled.locator(".delete").is_visible() and cancelled.locator(".cancel").is_hidden()


def test_the_page_says_when_the_server_is_gone_and_catches_up_when_it_is_back(model, page, tmp_path):
    process, url = start_server(tmp_path / "jobs", model)
    try:
        open_page(page, url)
        assert page.is_hidden("#offline")
        separate(page, "before.wav", wav(0.5, seed=6))
    finally:
        stop(process)
    page.wait_for_selector("#offline", state="visible", timeout=30_000)
    assert "server cannot be reached" in page.inner_text("#offline")
    drop(page, {"during.wav": wav(0.5, seed=7)})
    page.wait_for_selector("#submit-error", state="visible", timeout=30_000)
    assert page.inner_text("#submit-error") == \
        "during.wav: cannot reach the umx-web server (stopped?); start it again, then retry"
    page.get_by_role("button", name="Delete before.wav").click()
    page.wait_for_function("document.querySelector('.job .error').textContent.startsWith('Cannot delete')")

    # Started again on the same port, with another jobs folder: the page reconnects by itself and shows its jobs.
    port = url.rsplit(":", 1)[1]
    process, _ = start_server(tmp_path / "other-jobs", model, "--port", port)
    try:
        page.wait_for_selector("#offline", state="hidden", timeout=30_000)
        page.wait_for_selector(".job", state="detached", timeout=10_000)
        assert page.is_visible("#no-jobs") and page.is_hidden("#player")
    finally:
        stop(process)
