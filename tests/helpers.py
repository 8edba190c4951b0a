"""Plain helpers shared by the test files: shared-data paths, tiny models, generated audio and folders.

Fixtures live in ``conftest.py``; test files import these with ``from helpers import ...``
(never from ``conftest`` or from each other).
"""
import contextlib
import hashlib
import http.server
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from openunmix_like.architectures import get
from openunmix_like.model import OpenUnmix
from openunmix_like.modeldir import AudioSettings, save_target

# ---------------------------------------------------------------- shared data

SHARED_ENV = "OPENUNMIX_LIKE_SHARED"
REQUIRE_DATA_ENV = "OPENUNMIX_LIKE_REQUIRE_DATA"
SHARED = Path(os.environ.get(SHARED_ENV, Path(__file__).resolve().parents[2] / "shared"))
MUSDB_7S = SHARED / "data" / "musdb18-7s" / "train"
MIXES = SHARED / "data" / "mixes"


def require(path: Path) -> Path:
    """Skip when shared data is absent, unless CI demands it (then fail)."""
    if not path.exists():
        if os.environ.get(REQUIRE_DATA_ENV) == "1":
            pytest.fail(f"{path} is missing but {REQUIRE_DATA_ENV}=1")
        pytest.skip(f"{path} not available")
    return path


# ---------------------------------------------------------------- generated audio

def music_like(seconds=3.0, rate=44100, channels=2, seed=0):
    """A few decaying harmonic notes and noise bursts, ``(channels, n)`` float32."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    out = np.zeros((channels, n))
    for _ in range(8):
        f0, onset = rng.uniform(80, 800), rng.uniform(0, seconds)
        env = np.where(t >= onset, np.exp(-(t - onset) * 3), 0)
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5)) * env
        out += tone * rng.uniform(0.2, 1.0, size=(channels, 1))
    out += 0.02 * rng.standard_normal((channels, n))
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


# Sample rate and sources of the generated track folders.
RATE = 22050
NAMES = ("vocals", "drums", "bass", "other")


def write(path: Path, seconds: float, seed: int, channels: int = 2, rate: int = RATE):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, music_like(seconds, rate, channels, seed).T * 0.5, rate, subtype="FLOAT")


def aligned_pairs(root: Path, tracks=2, seconds=1.0) -> Path:
    """``--dataset aligned`` data: ``raw/<t>.wav`` and the ``mixed/<t>.wav`` it should become, per split."""
    for split in ("train", "valid"):
        for t in range(tracks):
            write(root / split / "raw" / f"{t}.wav", seconds, t)
            write(root / split / "mixed" / f"{t}.wav", seconds, t + 5)
    return root


def track_folders(root: Path, tracks=3, seconds=2.0, names=NAMES):
    for split in ("train", "valid"):
        for t in range(tracks):
            for k, name in enumerate(names):
                seed = 100 * t + k + (50 if split == "valid" else 0)
                write(root / split / f"t{t}" / f"{name}.wav", seconds, seed=seed)
    return root


def make_tracks(root: Path, n=3, seconds=4.0, rate=16000):
    """Tracks of three distinct sources: tones (vocals), noise bursts (drums), low tones (bass)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for k in range(n):
        folder = root / f"song{k}"
        folder.mkdir(parents=True)
        vocals = 0.3 * np.sin(2 * np.pi * (440 + 60 * k) * t) * (1 + np.sin(2 * np.pi * 0.5 * t))
        drums = 0.3 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 2 * t) > 0.7)
        bass = 0.4 * np.sin(2 * np.pi * (55 + 10 * k) * t)
        for name, x in (("vocals", vocals), ("drums", drums), ("bass", bass)):
            stereo = np.stack([x, 0.8 * x], axis=1).astype(np.float32)
            sf.write(folder / f"{name}.wav", stereo, rate)
    return root


# ---------------------------------------------------------------- tiny models

def make_models(targets=("vocals", "drums", "bass", "other"), n_fft=512, nb_channels=2, hidden_size=16,
                unidirectional=False, seed=0, max_bin=None):
    torch.manual_seed(seed)
    models = {}
    for t in targets:
        m = OpenUnmix(n_fft // 2 + 1, nb_channels, hidden_size, unidirectional=unidirectional,
                      max_bin=max_bin or n_fft // 4)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.3)
            m.output_mean.fill_(1.0)
        models[t] = m.eval()
    return models


# Tiny versions of every architecture, for n_fft 512 / 257 bins.
TINY_ARGS = {
    "umx": dict(nb_bins=257, nb_channels=2, hidden_size=8, max_bin=128),
    "unet2d": dict(nb_bins=257, nb_channels=2, hidden_size=4, nb_layers=3),
    "unet1d": dict(nb_channels=2, hidden_size=4, nb_layers=3),
    "tfattn": dict(nb_bins=257, nb_channels=2, hidden_size=8, depths=(1, 2), num_heads=(1, 2), window_size=4,
                   patch_size=2),
}


def tiny(name, seed=0, **overrides):
    torch.manual_seed(seed)
    return get(name).build(**dict(TINY_ARGS[name], **overrides)).eval()


def tiny_folder(tmp_path, name, settings=AudioSettings(22050, 512, 128, 2), targets=("vocals", "drums")):
    folder = tmp_path / name
    for k, target in enumerate(targets):
        model = tiny(name, seed=k, **({} if name == "unet1d" else {"nb_bins": settings.n_fft // 2 + 1}),
                     nb_channels=settings.nb_channels)
        save_target(folder, target, model, settings)
    return folder


class Identity(nn.Module):
    """Returns the mixture as the estimate, in the domain it declares."""

    def __init__(self, domain, nb_bins=257, nb_channels=2):
        super().__init__()
        self.domain, self.nb_channels = domain, nb_channels
        if domain != "waveform":
            self.nb_bins = nb_bins

    def forward(self, x):
        return x.clone()


# ---------------------------------------------------------------- umx-evaluate


def fake_scoring(monkeypatch):
    """BSSEval in ``umx-evaluate`` replaced by one 1 dB window per target; returns (track name, references)
    of each call."""
    from openunmix_like import evaluate as ev
    from openunmix_like.cli import evaluate as cli

    calls = []

    def score(name, refs, ests, rate):
        calls.append((name, refs))
        return {"targets": [{"name": t, "frames": [{"time": 0.0, "duration": 1.0,
                                                    "metrics": dict.fromkeys(ev.METRICS, 1.0)}]} for t in ests]}

    monkeypatch.setattr(cli, "score_track", score)
    monkeypatch.setattr(cli, "boxplot", lambda *args: False)
    return calls


# ---------------------------------------------------------------- a local Ray


def _ray_processes_started_here():
    """``(title, state)`` of the Ray processes (``ray::...``) among this process's descendants: the workers
    and agents of the local Ray it started (``ray_cluster``), not those of another Ray on the machine."""
    parents, found = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # ended meanwhile
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        parents[int(entry.name)] = int(rest[1])
        if name.startswith("ray::"):
            found[int(entry.name)] = (title or name, rest[0])
    me, ours = os.getpid(), []
    for pid, item in found.items():
        ancestor, seen = parents.get(pid), set()
        while ancestor not in (None, me, 0, 1) and ancestor not in seen:  # ids reused meanwhile could loop
            seen.add(ancestor)
            ancestor = parents.get(ancestor)
        if ancestor == me:
            ours.append(item)
    return ours


@contextlib.contextmanager
def ray_head(num_cpus: float):
    """A Ray head node started from this process (``ray.cluster_utils.Cluster``) in a temporary folder of its
    own, which holds all its files; yields the ``Cluster`` and stops it after.

    ``Cluster`` records the head's address in ``<RAY_TMPDIR or /tmp>/ray`` whatever its ``temp_dir`` says: on
    a machine where no Ray ever made ``/tmp/ray`` that failed, and elsewhere it replaced the machine's own
    record. ``RAY_TMPDIR`` points at the folder while the head runs.
    """
    from ray.cluster_utils import Cluster

    folder = tempfile.mkdtemp(prefix="umx-ray-")  # Ray's socket paths must stay short: not under tmp_path
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", folder)
        os.mkdir(os.path.join(folder, "ray"))
        head = Cluster(initialize_head=True,
                       head_node_args={"num_cpus": num_cpus, "temp_dir": folder, "include_dashboard": False})
        try:
            yield head
        finally:
            head.shutdown()
            shutil.rmtree(folder, ignore_errors=True)


def wait_until_ray_tasks_ended(timeout: float = 180.0) -> None:
    """Wait until no worker of this process's local Ray runs a task or an actor, and the workers that ended
    are reaped.

    A driver that was stopped or killed leaves its tasks and actors to Ray, which ends them (or lets them
    finish) up to seconds later on a busy machine: until then a track can still be written, and a partial
    file still belongs to a process that is alive (a zombie counts), so a rerun leaves it alone.
    """
    if not Path("/proc/self/stat").is_file():  # not Linux: give Ray a generous while instead
        time.sleep(10)
        return
    deadline = time.monotonic() + timeout
    while True:
        busy = [(title, state) for title, state in _ray_processes_started_here()
                if state == "Z" or not (title.startswith("ray::IDLE") or title.endswith("Agent"))]
        if not busy:
            return
        assert time.monotonic() < deadline, f"Ray workers still busy after {timeout} s: {busy}"
        time.sleep(0.05)


# ---------------------------------------------------------------- published models


@contextlib.contextmanager
def http_server(handler):
    """A threaded HTTP server on 127.0.0.1 running ``handler``; yields ``(httpd, url)`` and stops it after."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def publish(root: Path, entries: dict, name="tinyhq", targets=("vocals", "bass"), hidden_size=8,
            corrupt=()) -> dict:
    """Write tiny state dicts as published files ``<target>-<sha256[:8]>.pth`` in ``root`` and enter them as
    ``name`` in ``entries`` (a stand-in for the published-model table); return target -> file. The files of
    ``corrupt`` targets get bytes added after their hash was taken."""
    files = {}
    for target in targets:
        buffer = io.BytesIO()
        torch.save(OpenUnmix(nb_bins=257, hidden_size=hidden_size, max_bin=64).state_dict(), buffer)
        data = buffer.getvalue()
        file = f"{target}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
        (root / file).write_bytes(data + (b"tampered" if target in corrupt else b""))
        files[target] = file
    entries[name] = {"url": "http://unused.invalid/{file}", "sample_rate": 44100, "nfft": 512, "nhop": 128,
                     "nb_channels": 2, "files": files}
    return files


# ---------------------------------------------------------------- umx-web


def start_web_server(jobs_dir, model, *options):
    """``umx-web`` with ``options`` (on a free port unless they give ``--port``); returns the process and
    its URL (from the line it prints, without the trailing slash). Stop it with ``process.terminate()``."""
    port = [] if "--port" in options else ["--port", "0"]
    process = subprocess.Popen([sys.executable, "-m", "openunmix_like.cli.web", *port, "--model", str(model),
                                "--jobs-dir", str(jobs_dir), *options], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        match = re.search(r"serving on (http://\S+)", line)
        if match:
            return process, match.group(1).rstrip("/")
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError(f"umx-web did not start: {process.stdout.read()}")


@contextlib.contextmanager
def web_server(jobs_dir, model, *options):
    """:func:`start_web_server` for the block, yielding ``(process, url)``; killed after it if still running."""
    process, url = start_web_server(jobs_dir, model, *options)
    try:
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def post_web_job(url, song, **fields):
    """Upload ``song`` to the ``umx-web`` at ``url`` as a job with the form ``fields``; returns the session
    (sending the page's Origin, as the server asks of state-changing requests) and the job's id."""
    import requests

    session = requests.Session()
    session.headers["Origin"] = url
    job = session.post(f"{url}/api/jobs", files={"file": (Path(song).name, Path(song).read_bytes())},
                       data=fields).json()["id"]
    return session, job


@contextlib.contextmanager
def browser_page(chromium: str, **context_options):
    """A page of headless ``chromium`` (Debian's, nothing downloaded) that may play audio unprompted."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--autoplay-policy=no-user-gesture-required", "--no-sandbox"])
        try:
            yield browser.new_context(viewport={"width": 1100, "height": 900}, **context_options).new_page()
        finally:
            browser.close()


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until something (a Ray head node) listens on ``port`` of 127.0.0.1, while ``process`` lives."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline and process.poll() is None, "the head node did not start"
            time.sleep(0.2)
