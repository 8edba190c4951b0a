"""Memory and time of umx-web's player on long songs, in headless chromium.

For each length it writes a finished job by hand (four 16-bit stereo wav stems of noise and the
upload, 44.1 kHz) into a fresh jobs folder, starts ``umx-web`` on it, opens the job in chromium,
plays a second, seeks to the middle and plays a second more, then reads the resident memory of
chromium's processes (the largest is the page's renderer, which holds the audio)::

    python scripts/web_player_memory.py 3 10 30            # minutes; needs playwright, psutil, chromium

It prints one table row per length: seconds from "Open" until the player is ready, the renderer's
and all chromium processes' resident memory, and the chunks of audio the page holds.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 44100
STEMS = ("vocals", "drums", "bass", "other")


def write_noise(path: Path, frames: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", RATE, 2, subtype="PCM_16") as f:
        for start in range(0, frames, 60 * RATE):
            f.write((0.1 * rng.standard_normal((min(60 * RATE, frames - start), 2))).astype("float32"))


def make_job(jobs: Path, minutes: float) -> str:
    """A done job of ``minutes``, as a worker leaves it (no player preview yet: the page asks for it)."""
    job_id = uuid.uuid4().hex
    folder = jobs / job_id
    (folder / "stems").mkdir(parents=True)
    frames = int(minutes * 60 * RATE)
    for k, name in enumerate(STEMS):
        write_noise(folder / "stems" / f"{name}.wav", frames, k)
    write_noise(folder / "input.wav", frames, 9)
    (folder / "job.json").write_text(json.dumps({
        "id": job_id, "filename": f"{minutes:g} min.wav", "created": time.time(), "model": "default", "ext": "wav",
        "bits": 16, "input": "input.wav", "status": "done", "progress": 1.0, "stems": list(STEMS)}))
    return job_id


def start_server(jobs: Path) -> tuple:
    process = subprocess.Popen([sys.executable, "-m", "openunmix_like.cli.web", "--port", "0", "--jobs-dir", str(jobs),
                                "--keep-mb", "1000000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while True:
        line = process.stdout.readline()
        found = re.search(r"serving on (http://\S+)", line)
        if found:
            return process, found.group(1)
        if not line:
            raise SystemExit("umx-web did not start")


def measure(minutes: float, chromium: str) -> str:
    import psutil
    from playwright.sync_api import sync_playwright

    jobs = Path(tempfile.mkdtemp(prefix="umx-player-"))
    try:
        job_id = make_job(jobs, minutes)
        server, url = start_server(jobs)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, headless=True,
                                            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
                page = browser.new_page()
                page.goto(url)
                page.wait_for_selector(f"#job-{job_id}")
                began = time.perf_counter()
                page.click(f"#job-{job_id} .open")
                page.wait_for_selector("#player[data-ready]", timeout=600_000)
                page.wait_for_selector(".track[data-stem='mixture']", state="attached", timeout=600_000)
                ready = time.perf_counter() - began
                page.click("#play")
                page.wait_for_function("window.umxPlayer.playing && window.umxPlayer.time() > 1", timeout=60_000)
                page.evaluate("window.umxPlayer.seek(window.umxPlayer.duration / 2)")
                page.wait_for_function("window.umxPlayer.playing && "
                                       "window.umxPlayer.time() > window.umxPlayer.duration / 2 + 1", timeout=60_000)
                chunks = page.evaluate("window.umxPlayer.chunks ? window.umxPlayer.chunks.size : 'all'")
                procs = [c for c in psutil.Process().children(recursive=True) if "chrom" in c.name()]
                rss = [c.memory_info().rss / 2**30 for c in procs]
                browser.close()
        finally:
            server.terminate()
            server.wait()
    finally:
        shutil.rmtree(jobs, ignore_errors=True)
    return f"| {minutes:g} min | {ready:.1f} s | {max(rss):.2f} GiB | {sum(rss):.2f} GiB | {chunks} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("minutes", nargs="+", type=float)
    parser.add_argument("--chromium", default=os.environ.get("UMX_WEB_CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args()
    print("| song | Open to ready | renderer | all chromium | chunks held |")
    print("|---|---|---|---|---|")
    for minutes in args.minutes:
        print(measure(minutes, args.chromium), flush=True)


if __name__ == "__main__":
    main()
