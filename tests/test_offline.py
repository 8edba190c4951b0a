"""Every tool on a machine without network: nothing tries to reach another machine, nothing waits for a timeout.

Each command-line tool runs in a subprocess whose Python (and every Python process it starts: Ray workers and
agents, umx-web's job workers) loads a ``sitecustomize.py`` that records, and refuses as an offline machine
would, every connection or name lookup that is not for this machine. The page ``umx-web`` serves is loaded in
headless Chromium, which records every request it makes. Connections made below Python (Ray's C++ core,
Chromium itself, ffmpeg, FluidSynth) are not seen here; those were checked with the network taken away
(``unshare -n``), see docs/robustness.md.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import soundfile as sf

from helpers import browser_page, music_like, start_web_server, track_folders

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("UMX_WEB_CHROMIUM", "/usr/bin/chromium")

# sitecustomize.py for the tools under test. It refuses (ENETUNREACH for connections, EAI_AGAIN for name
# lookups, as on a machine without network) and records in $UMX_NET_LOG every attempt to reach an address
# that is not this machine's: loopback, or an address this machine can bind (Ray on Linux gives its nodes
# the machine's own address). Each Python process that loads it says so with a "start" line.
GUARD = r'''
import errno
import ipaddress
import json
import os
import socket
import sys
import traceback

_LOG = os.environ["UMX_NET_LOG"]
_getaddrinfo = socket.getaddrinfo
_connect, _connect_ex, _sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto
_mine = {}


def _argv():
    if hasattr(sys, "orig_argv"):  # Python 3.10 and later
        return " ".join(sys.orig_argv)[:300]
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:300]
    except OSError:
        return ""


def _append(record):
    with open(_LOG, "a") as f:
        f.write(json.dumps(record) + "\n")


def _is_mine(ip):
    if ip not in _mine:
        try:
            with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((str(ip), 0))
            _mine[ip] = True
        except OSError:
            _mine[ip] = False
    return _mine[ip]


def _address(host):
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = "" if host is None else str(host).strip("[]").split("%")[0]
    try:
        return host, ipaddress.ip_address(host)
    except ValueError:
        return host, None


def _local(host):
    host, ip = _address(host)
    if ip is None:
        return host.lower() in ("", "localhost", "ip6-localhost", socket.gethostname().lower())
    return ip.is_loopback or ip.is_unspecified or _is_mine(ip)


def _refuse(kind, host, port, error):
    _append({"attempt": kind, "host": str(host), "port": port, "pid": os.getpid(),
             "argv": _argv(), "stack": traceback.format_stack(limit=8)[:-2]})
    raise error


def getaddrinfo(host, port, *args, **kwargs):
    if _address(host)[1] is None and not _local(host):  # an address needs no lookup: its connection is checked
        _refuse("lookup", host, port, socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))
    return _getaddrinfo(host, port, *args, **kwargs)


def _check(sock, address, kind):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and not _local(address[0]):
        _refuse(kind, address[0], address[1], OSError(errno.ENETUNREACH, "Network is unreachable"))


def connect(self, address):
    _check(self, address, "connect")
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address, "connect")
    return _connect_ex(self, address)


def sendto(self, data, *args):
    _check(self, args[-1], "sendto")
    return _sendto(self, data, *args)


socket.getaddrinfo = getaddrinfo
socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = connect, connect_ex, sendto
_append({"start": os.getpid(), "argv": _argv()})
'''


class Guarded:
    """The environment of a guarded process tree and what its processes recorded."""

    def __init__(self, folder: Path):
        folder.mkdir()
        (folder / "sitecustomize.py").write_text(GUARD)
        self.log = folder / "net.log"
        self.env = dict(os.environ, UMX_NET_LOG=str(self.log), PYTHONPATH=os.pathsep.join(
            [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]))

    def records(self):
        if not self.log.is_file():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def attempts(self):
        return [r for r in self.records() if "attempt" in r]

    def started(self):
        return [r["argv"] for r in self.records() if "start" in r]

    def run(self, *argv, cwd, timeout=300):
        return subprocess.run([sys.executable, *argv], cwd=cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)


@pytest.fixture
def guarded(tmp_path):
    return Guarded(tmp_path / "guard")


def summary(attempts):
    return [(a["attempt"], a["host"], a["port"], a["argv"][:80]) for a in attempts]


def test_the_guard_refuses_and_records_other_machines_in_children_too_and_lets_loopback_through(guarded, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        accepted = threading.Thread(target=lambda: server.accept()[0].close(), daemon=True)
        accepted.start()
        script = f"""
import socket, subprocess, sys, urllib.error, urllib.request
socket.create_connection(("127.0.0.1", {port}), timeout=10).close()
try:
    urllib.request.urlopen("https://example.com/", timeout=10)
except urllib.error.URLError as exc:
    print("refused:", exc.reason)
try:
    socket.create_connection(("203.0.113.7", 80), timeout=10)
except OSError as exc:
    print("refused:", exc)
subprocess.run([sys.executable, "-c", "import socket; socket.getaddrinfo('pypi.org', 443)"])
"""
        done = guarded.run("-c", script, cwd=tmp_path)
        accepted.join(10)
    assert done.returncode == 0 and not accepted.is_alive(), done.stderr  # the loopback connection went through
    assert done.stdout.count("refused:") == 2, done.stdout + done.stderr
    assert "Temporary failure in name resolution" in done.stdout and "Network is unreachable" in done.stdout
    assert "socket.gaierror" in done.stderr  # the grandchild's lookup failed as offline
    assert [(kind, host) for kind, host, _, _ in summary(guarded.attempts())] == [
        ("lookup", "example.com"), ("connect", "203.0.113.7"), ("lookup", "pypi.org")]
    assert len(guarded.started()) == 2  # the child and the grandchild both loaded the guard


def test_separating_with_the_bundled_model_reaches_nothing(guarded, tmp_path):
    song = tmp_path / "song.wav"
    sf.write(song, music_like(4.0, 44100, 2, seed=1).T, 44100)
    done = guarded.run("-m", "openunmix_like.cli.separate", str(song), "--outdir", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "song").iterdir()) == [
        "bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    assert guarded.attempts() == []


def test_a_published_model_offline_is_one_line_naming_the_files_and_the_folder(guarded, tmp_path):
    song = tmp_path / "song.wav"
    sf.write(song, music_like(1.0, 44100, 2, seed=1).T, 44100)
    cache = tmp_path / "cache"
    guarded.env["OPENUNMIX_LIKE_CACHE"] = str(cache)
    done = guarded.run("-m", "openunmix_like.cli.separate", str(song), "--model", "umxhq", cwd=tmp_path)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("umx-separate: error: cannot download the 'umxhq' weights"), lines
    assert "zenodo.org" in lines[0] and f"put the files in {cache / 'umxhq'}" in lines[0]
    assert {(a["host"], a["port"]) for a in guarded.attempts()} == {("zenodo.org", 443)}  # only what was asked
    assert not (tmp_path / "separated").exists()


def test_train_evaluate_compare_and_export_reach_nothing(guarded, tmp_path):
    data = track_folders(tmp_path / "data", tracks=2, seconds=2.0)
    done = guarded.run("-m", "openunmix_like.cli.train", "--dataset", "trackfolder_fix", "--root", str(data),
                       "--target", "vocals", "--epochs", "1", "--hidden-size", "8", "--seq-dur", "1",
                       "--batch-size", "2", "--samples-per-track", "1", "--output", "model", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for niter in ("0", "1"):
        done = guarded.run("-m", "openunmix_like.cli.evaluate", "--root", str(data / "valid"), "--layout", "folder",
                           "--model", "model", "--niter", niter, "--evaldir", f"eval{niter}", "--cores", "1",
                           cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    done = guarded.run("-m", "openunmix_like.cli.compare", "eval0/model", "eval1/model", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = guarded.run("-m", "openunmix_like.cli.export", "model", "--format", "torchscript", "--outdir", "ts",
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ts" / "vocals.pt").is_file()
    assert guarded.attempts() == []


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"{CHROMIUM} missing: scripts/install-system-deps.sh")
def test_the_web_page_requests_only_its_own_server_and_the_server_reaches_nothing(guarded, tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    pytest.importorskip("playwright.sync_api")
    clip = tmp_path / "clip.wav"
    sf.write(clip, music_like(2.0, 44100, 2, seed=2).T, 44100)
    for key in ("UMX_NET_LOG", "PYTHONPATH"):  # start_web_server's subprocess inherits this environment
        monkeypatch.setenv(key, guarded.env[key])
    process, url = start_web_server(tmp_path / "jobs", "default")
    seen = []
    try:
        with browser_page(CHROMIUM, accept_downloads=True) as page:
            page.on("request", lambda request: seen.append(request.url))
            page.goto(url)
            page.wait_for_selector("#targets input", state="attached")
            page.set_input_files("#files", [str(clip)])
            page.wait_for_selector("#player[data-ready='true']", timeout=90_000)
            with page.expect_download() as info:
                page.click(".track[data-stem='vocals'] .download")
            assert Path(info.value.path()).stat().st_size > 0
            page.reload()
            page.wait_for_selector(".job[data-status='done']")
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert len(seen) > 10
    assert [u for u in seen if not (u == url or u.startswith(url + "/") or u.startswith(("blob:", "data:")))] == []
    assert guarded.attempts() == []
    started = guarded.started()  # the server and the worker process that separated the clip loaded the guard
    assert any("openunmix_like.cli.web" in argv for argv in started) and any("spawn_main" in a for a in started)


# What Ray's own dashboard process looks up once when a Ray starts, whatever its usage-stats setting: the cloud
# metadata addresses, to learn whether it runs in a cloud (get_cloud_from_metadata_requests in Ray's usage_lib).
RAY_CLOUD_PROBES = {"169.254.169.254", "metadata.google.internal"}


def test_the_ray_engine_reaches_nothing_but_the_cloud_probes_of_rays_dashboard(guarded, tmp_path, model_dir):
    pytest.importorskip("ray")
    model = model_dir("tiny", hidden_size=8)
    (tmp_path / "songs").mkdir()
    for k in range(2):
        sf.write(tmp_path / "songs" / f"song{k}.wav", music_like(2.0, 44100, 2, seed=k).T, 44100)
    done = guarded.run("-m", "openunmix_like.cli.separate", "--engine", "ray", "songs", "--outdir", "out",
                       "--model", str(model), "--actors", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["song0", "song1"]
    # Ray's processes loaded the guard too: the workers that separated and wrote the songs among them.
    assert any("default_worker.py" in argv for argv in guarded.started()), guarded.started()
    others = [a for a in guarded.attempts() if not (a["host"] in RAY_CLOUD_PROBES and "dashboard.py" in a["argv"])]
    assert summary(others) == []


def usage_lib():
    for name in ("ray._common.usage.usage_lib", "ray._private.usage.usage_lib"):  # Ray 2.4x and later, earlier
        try:
            return __import__(name, fromlist=["usage_lib"])
        except ImportError:
            pass
    pytest.skip("Ray's usage_lib not found")


def test_the_local_ray_reports_no_usage_statistics_even_from_a_build_that_would(tmp_path):
    # In a process of its own: a local Ray started under another HOME leaves Ray's token settings behind
    # (RAY_AUTH_MODE, the token it read), which later Rays of the same process would then be refused with.
    pytest.importorskip("ray")
    usage_lib()  # skips when Ray moved it
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from test_offline import usage_lib
        from openunmix_like.catalogue import engine

        lib = usage_lib()
        lib.is_nightly_wheel = lambda: True  # nightly builds report ray.init's usage by default
        ray = engine.import_ray()
        assert engine.connect(None, False)
        try:
            print("enabled" if lib.usage_stats_enabled() else "disabled")
        finally:
            ray.shutdown()
    """)
    env = dict(os.environ, HOME=str(tmp_path))  # no choice remembered in ~/.ray/config.json
    env.pop("RAY_USAGE_STATS_ENABLED", None)
    result = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "disabled"
    assert "Usage stats collection is enabled" not in result.stdout + result.stderr
