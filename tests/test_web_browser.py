"""``umx-web`` in a real browser: Playwright drives Debian's chromium (nothing is downloaded)."""
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from helpers import browser_page, make_models, music_like, start_web_server
from openunmix_like.modeldir import AudioSettings, save_target

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("UMX_WEB_CHROMIUM", "/usr/bin/chromium")
RATE = 22050
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"{CHROMIUM} missing: scripts/install-system-deps.sh"),
]


@pytest.fixture
def server(tmp_path):
    model = tmp_path / "tiny"
    for target, m in make_models(n_fft=512).items():
        save_target(model, target, m, AudioSettings(RATE, 512, 128, 2))
    process, url = start_web_server(tmp_path / "jobs", model)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def page():
    with browser_page(CHROMIUM, accept_downloads=True) as page:
        yield page


def gain(page, stem):
    return page.evaluate("(s) => window.umxPlayer.tracks.find((t) => t.name === s).gain.gain.value", stem)


def test_drop_a_clip_play_the_stems_mute_one_and_download_it(server, page, tmp_path):
    clip = tmp_path / "clip.wav"
    seconds = 4.0
    sf.write(clip, music_like(seconds, RATE, 2, seed=3).T, RATE)
    page.goto(server)
    page.wait_for_selector("#model option", state="attached")
    # Drop the clip on the drop zone, as a user dragging it from a file manager would.
    data = list(clip.read_bytes())
    page.evaluate("""(bytes) => {
        const file = new File([new Uint8Array(bytes)], "clip.wav", { type: "audio/wav" });
        const transfer = new DataTransfer();
        transfer.items.add(file);
        document.querySelector("#drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer,
                                                                             bubbles: true, cancelable: true }));
    }""", data)
    page.wait_for_selector("#player[data-ready='true']", timeout=90_000)
    stems = page.eval_on_selector_all(".track", "rows => rows.map((r) => r.dataset.stem)")
    assert stems[:4] == ["vocals", "drums", "bass", "other"]
    page.wait_for_selector(".track[data-stem='mixture']", timeout=10_000)

    page.click("#play")
    page.wait_for_function("window.umxPlayer.playing && window.umxPlayer.time() > 0.3", timeout=10_000)
    first = page.evaluate("window.umxPlayer.time()")
    page.wait_for_function("(first) => window.umxPlayer.time() > first", arg=first, timeout=10_000)  # it goes on
    assert page.input_value("#seek") != "0"

    assert gain(page, "vocals") == 1 and gain(page, "mixture") == 0
    page.click(".track[data-stem='vocals'] .mute")
    assert gain(page, "vocals") == 0 and gain(page, "drums") == 1
    page.click(".track[data-stem='drums'] .solo")
    assert gain(page, "drums") == 1 and gain(page, "bass") == 0 and gain(page, "other") == 0
    page.click("#compare")  # the original mixture instead of the stems
    assert gain(page, "mixture") == 1 and gain(page, "drums") == 0
    page.click("#compare")
    page.click("#play")  # pause
    assert not page.evaluate("window.umxPlayer.playing")

    with page.expect_download() as info:
        page.click(".track[data-stem='vocals'] .download")
    saved = tmp_path / "downloaded.wav"
    info.value.save_as(saved)
    assert info.value.suggested_filename == "clip-vocals.wav"
    audio, rate = sf.read(saved, always_2d=True)
    assert sf.info(saved).format == "WAV" and rate == RATE and audio.shape == (int(seconds * RATE), 2)
    shot = os.environ.get("UMX_WEB_SCREENSHOT")
    if shot:  # scripts/web_screenshot.py sets this to refresh docs/web.png
        page.screenshot(path=shot, full_page=True)


def test_choose_files_in_two_stems_mode_and_a_bad_one_fails_with_its_reason(server, page, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all\n")
    good = tmp_path / "good.wav"
    sf.write(good, music_like(1.0, RATE, 2, seed=4).T, RATE)
    page.goto(server)
    page.wait_for_selector("#targets input", state="attached")
    page.check("#two-stems")
    assert page.is_disabled("#targets input")  # inside the disabled fieldset
    page.set_input_files("#files", [str(bad), str(good)])
    row = page.wait_for_selector(".job[data-status='failed']", timeout=60_000)
    assert row.query_selector(".error").inner_text().startswith("notes.wav: ")
    row.query_selector(".delete").click()
    page.wait_for_selector(".job[data-status='failed']", state="detached", timeout=10_000)
    page.wait_for_selector(".job[data-status='done']", timeout=60_000)
    jobs = page.evaluate("fetch('/api/jobs').then((r) => r.json())")
    assert [(j["filename"], j["stems"]) for j in jobs] == [("good.wav", ["vocals", "accompaniment"])]


def open_separated(page, server, clip, seconds, seed):
    """Write ``seconds`` of generated stereo music to ``clip``, choose it on the page, and wait until its
    stems are in the player (the first job to finish opens by itself)."""
    sf.write(clip, music_like(seconds, RATE, 2, seed=seed).T, RATE)
    page.goto(server)
    page.wait_for_selector("#targets input", state="attached")
    page.set_input_files("#files", [str(clip)])
    page.wait_for_selector("#player[data-ready='true']", timeout=90_000)


def preload_chunks(page, *chunks):
    """Have the player fetch these chunks of every track now: played, they are all there when due, however long
    the server takes to send them (a chunk still on its way when due stops the sound until it comes)."""
    page.evaluate("(ks) => Promise.all(ks.map((k) => window.umxPlayer.chunk(k).promise))", list(chunks))


def wait_for_recorded(page, frames):
    """Wait until the recorder (``RECORDER``) has received ``frames`` samples from the first sound on."""
    page.wait_for_function("""(n) => {
        const r = window.recorded, first = r.findIndex((v) => v !== 0);
        return first >= 0 && r.length - first >= n;
    }""", arg=frames, timeout=60_000, polling=100)


RECORDER = """async () => {
    // Every sample the vocals track sends to the speakers, from now on (its left channel).
    const player = window.umxPlayer, context = player.context;
    const code = `class Recorder extends AudioWorkletProcessor {
        process(inputs) { if (inputs[0][0]) this.port.postMessage(inputs[0][0].slice(0)); return true; }
    }
    registerProcessor("recorder", Recorder);`;
    await context.audioWorklet.addModule(URL.createObjectURL(new Blob([code], { type: "text/javascript" })));
    const node = new AudioWorkletNode(context, "recorder");
    window.recorded = [];
    node.port.onmessage = (e) => { for (const v of e.data) window.recorded.push(v); };
    player.tracks.find((t) => t.name === "vocals").gain.connect(node);
    node.connect(context.destination);
}"""


def test_the_player_streams_chunks_that_follow_one_another_sample_for_sample(server, page, tmp_path):
    """Played across a chunk boundary, a stem reaches the speakers as the file holds it, nothing missing or
    repeated; and the page holds a few chunks, not the song."""
    open_separated(page, server, tmp_path / "long.wav", 14.0, seed=5)
    info = page.evaluate("fetch(`/api/jobs/${window.umxPlayer.job}/preview`).then((r) => r.json())")
    assert info["rate"] == RATE and info["chunk_frames"] == 10 * RATE
    page.evaluate(RECORDER)
    page.evaluate("window.umxPlayer.seek(8.5)")
    preload_chunks(page, 0, 1)
    page.click("#play")
    page.wait_for_function("window.umxPlayer.playing && window.umxPlayer.time() > 11.8", timeout=20_000)
    wait_for_recorded(page, 3 * RATE + 1)
    assert page.evaluate("window.umxPlayer.chunks.size") <= 3
    page.click("#play")  # pause
    recorded = np.array(page.evaluate("window.recorded"), dtype=np.float32)
    job = page.evaluate("window.umxPlayer.job")
    stem = sf.read(tmp_path / "jobs" / job / "stems" / "vocals.wav", dtype="int16")[0][:, 0] / 32768
    played = recorded[np.flatnonzero(recorded)[0]:]  # from the first sound
    start = int(round(8.5 * RATE))
    assert len(played) > 3 * RATE
    window = played[: 3 * RATE]  # 8.5 s to 11.5 s: through the boundary at 10 s
    assert np.abs(window - stem[start : start + len(window)]).max() < 1e-6
    # The keyboard, with nothing focused: Home, Space to play and pause, the arrows move 5 s.
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("Home")
    assert page.evaluate("window.umxPlayer.time()") == 0
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("window.umxPlayer.time()") == 10
    page.keyboard.press("ArrowLeft")
    assert page.evaluate("window.umxPlayer.time()") == 5
    page.keyboard.press(" ")
    page.wait_for_function("window.umxPlayer.playing && window.umxPlayer.time() > 5.2", timeout=10_000)
    page.keyboard.press(" ")
    assert not page.evaluate("window.umxPlayer.playing || window.umxPlayer.waiting")


def test_a_loop_marked_on_a_waveform_repeats_sample_for_sample(server, page, tmp_path):
    """Drag across a waveform marks a loop; played, its end is followed by its start, exactly, also
    across a chunk boundary; L or a seek outside the loop turns looping off."""
    open_separated(page, server, tmp_path / "loop.wav", 14.0, seed=6)
    assert page.is_disabled("#loop")
    box = page.locator(".track[data-stem='vocals'] .wave").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 0.2 * box["width"], y)
    page.mouse.down()
    page.mouse.move(box["x"] + 0.4 * box["width"], y, steps=5)
    page.mouse.up()
    a, b = page.evaluate("[window.umxPlayer.loop.a, window.umxPlayer.loop.b]")
    assert abs(a / RATE - 0.2 * 14) < 0.1 and abs(b / RATE - 0.4 * 14) < 0.1
    assert page.get_attribute("#loop", "aria-pressed") == "true"
    assert page.evaluate("window.umxPlayer.time()") == a / RATE  # the play head at the loop's start
    page.evaluate(RECORDER)
    page.evaluate("window.umxPlayer.setLoop(9.0, 10.5)")  # through the chunk boundary at 10 s
    preload_chunks(page, 0, 1)
    page.click("#play")
    wait_for_recorded(page, int(3.6 * RATE))  # over two passes of 1.5 s
    assert 9.0 <= page.evaluate("window.umxPlayer.time()") < 10.5
    page.click("#play")  # pause
    recorded = np.array(page.evaluate("window.recorded"), dtype=np.float32)
    job = page.evaluate("window.umxPlayer.job")
    stem = sf.read(tmp_path / "jobs" / job / "stems" / "vocals.wav", dtype="int16")[0][:, 0] / 32768
    played = recorded[np.flatnonzero(recorded)[0]:]
    loop = stem[int(9.0 * RATE) : int(10.5 * RATE)]
    expected = np.concatenate([loop, loop, loop])[: int(3.6 * RATE)]
    assert len(played) >= len(expected)
    assert np.abs(played[: len(expected)] - expected).max() < 1e-6
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("l")
    assert page.get_attribute("#loop", "aria-pressed") == "false" and not page.evaluate("window.umxPlayer.looping")
    page.evaluate("window.umxPlayer.seek(2)")
    page.click("#loop")  # on again, from outside the loop: the play head goes to its start
    assert page.evaluate("window.umxPlayer.looping && window.umxPlayer.time() === 9")
    page.evaluate("window.umxPlayer.seek(12)")  # a seek outside the loop turns looping off, the loop stays
    assert not page.evaluate("window.umxPlayer.looping") and page.evaluate("window.umxPlayer.loop") is not None


def test_a_browser_that_cannot_run_the_stems_rate_still_plays_them(server, page, tmp_path):
    page.add_init_script("""(() => {
        const Native = window.AudioContext;  // as a browser limited to its own rates would refuse ours
        window.AudioContext = function (options) {
            if (options && options.sampleRate) throw new DOMException("rate not supported", "NotSupportedError");
            return new Native();
        };
    })()""")
    open_separated(page, server, tmp_path / "clip.wav", 2.0, seed=8)
    assert page.evaluate("window.umxPlayer.context.sampleRate") != RATE
    page.click("#play")
    page.wait_for_function("window.umxPlayer.playing && window.umxPlayer.time() > 0.5", timeout=10_000)
