#!/usr/bin/env python
"""Refresh docs/web.png: umx-web with the bundled model, the demo clip separated and open in the player.

    python scripts/web_screenshot.py [--out docs/web.png] [--chromium /usr/bin/chromium]

Needs the web extra, playwright and Debian's chromium (scripts/install-system-deps.sh); runs offline.
"""
import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_server(jobs_dir: Path):
    process = subprocess.Popen([sys.executable, "-m", "openunmix_like.cli.web", "--port", "0", "--jobs-dir",
                                str(jobs_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"serving on (http://\S+)", process.stdout.readline())
        if match:
            return process, match.group(1)
    process.kill()
    sys.exit("umx-web did not start")


def shoot(url: str, clip: Path, out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1100, "height": 820}, device_scale_factor=1)
        page.goto(url)
        page.wait_for_selector("#model option", state="attached")
        page.set_input_files("#files", [str(clip)])
        page.wait_for_selector("#player[data-ready='true']", timeout=600_000)
        page.wait_for_selector(".track[data-stem='mixture']", timeout=30_000)
        page.click("#play")
        page.wait_for_timeout(3500)
        page.click("#play")
        page.click(".track[data-stem='other'] .mute")
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "web.png"))
    parser.add_argument("--clip", default=str(ROOT / "examples" / "synth-demo.flac"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_server(Path(tmp) / "jobs")
        try:
            shoot(url, Path(args.clip), Path(args.out), args.chromium)
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
