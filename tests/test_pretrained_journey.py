"""Getting models as a user does: published names against a local HTTP server, the cache, no network, model folders.

Every server here binds 127.0.0.1, serves files the test made (tiny random-weight models saved as the
published ``<target>-<sha256 prefix>.pth`` files) and is stopped in teardown.
"""
import contextlib
import functools
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import openunmix_like.pretrained as pretrained
from helpers import http_server, publish, tiny_folder
from openunmix_like import DownloadError, ModelError, Separator
from openunmix_like.cli.separate import main as separate_main
from openunmix_like.model import OpenUnmix
from openunmix_like.modeldir import load_model_dir


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder. ``/status/<code>/<file>`` answers ``<code>``; ``/moved/<file>`` redirects to ``/<file>``;
    ``/together/<file>`` replies once two clients asked (the server's barrier); ``/half-then-wait/<file>`` sends
    half the file, then waits for the server's ``release`` event."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if parts[0] == "status":
            self.send_error(int(parts[1]))
            return
        if parts[0] == "moved":
            self.send_response(302)
            self.send_header("Location", "/" + parts[-1])
            self.end_headers()
            return
        if parts[0] in ("together", "half-then-wait"):
            data = (Path(self.directory) / parts[-1]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if parts[0] == "together":  # both clients are mid-download before either gets its bytes
                self.server.barrier.wait()
                self.wfile.write(data)
            else:
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                self.server.release.wait(60)
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """A local HTTP server of ``<tmp_path>/www``; yields ``(folder, url, httpd)``."""
    root = tmp_path / "www"
    root.mkdir()
    with http_server(functools.partial(Handler, directory=str(root))) as (httpd, url):
        httpd.barrier = threading.Barrier(2, timeout=60)
        httpd.release = threading.Event()
        yield root, url, httpd
        httpd.release.set()  # before the server stops: a handler may wait on them
        httpd.barrier.abort()


@pytest.fixture
def silent_server():
    """A socket on 127.0.0.1 that lets clients connect (the kernel completes the handshake into the backlog)
    and never answers; yields its URL and a function that counts the connections made so far."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    listener.setblocking(False)
    accepted = []

    def connections() -> int:
        with contextlib.suppress(BlockingIOError):
            while True:
                accepted.append(listener.accept()[0])
        return len(accepted)

    yield f"http://127.0.0.1:{listener.getsockname()[1]}", connections
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.fixture
def table(monkeypatch):
    """The published-model table, replaced by one of tiny models that `publish` fills in."""
    entries = {}
    monkeypatch.setattr(pretrained, "pretrained_table", lambda: entries)
    return entries



def use(monkeypatch, cache: Path, mirror: str) -> None:
    monkeypatch.setenv(pretrained.CACHE_ENV, str(cache))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, mirror)


def all_files(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def python_with_table(entries: dict, body: str) -> list:
    """A ``python -c`` command line that runs ``body`` with the published table replaced by ``entries``."""
    code = (f"import sys, openunmix_like.pretrained as p\np.pretrained_table = lambda: {entries!r}\n"
            f"from openunmix_like import Separator\nfrom openunmix_like.cli.separate import main\n{body}")
    return [sys.executable, "-c", code]


# ---------------------------------------------------------------- no network, a server that fails

def test_a_server_that_does_not_answer_is_waited_for_once_not_once_per_file(silent_server, table, tmp_path,
                                                                             monkeypatch):
    # No network behind a firewall that drops packets looks like this: each file would wait the full timeout
    # (four times 30 s for umxhq) before the one-line error.
    url, connections = silent_server
    files = publish(tmp_path, table)
    use(monkeypatch, tmp_path / "cache", url)
    monkeypatch.setattr(pretrained, "TIMEOUT_S", 0.5)
    with pytest.raises(DownloadError) as info:
        Separator.from_pretrained("tinyhq", progress=False)
    message = str(info.value)
    assert connections() == 1
    assert "(the server did not answer within 0.5 s): fetch " in message and "\n" not in message
    for file in files.values():
        assert f"{url}/{file}" in message
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("code, reason", [(404, "HTTP 404 Not Found"), (500, "HTTP 500 Internal Server Error")])
def test_an_http_error_names_its_status_and_the_next_try_recovers(server, table, tmp_path, monkeypatch, code,
                                                                  reason):
    root, url, _ = server
    files = publish(root, table)
    cache = tmp_path / "cache"
    use(monkeypatch, cache, f"{url}/status/{code}")
    with pytest.raises(DownloadError, match=rf"^cannot download the 'tinyhq' weights \({reason}\): fetch "):
        Separator.from_pretrained("tinyhq", progress=False)
    assert not cache.exists()
    monkeypatch.setenv(pretrained.BASE_URL_ENV, url)
    assert Separator.from_pretrained("tinyhq", progress=False).target_names == ["vocals", "bass"]
    assert all_files(cache) == sorted(["tinyhq", *(f"tinyhq/{f}" for f in files.values())])


def test_cli_without_network_is_one_line_naming_urls_cache_and_the_bundled_model(table, tmp_path, monkeypatch,
                                                                                 wav_file, capsys):
    files = publish(tmp_path, table)
    cache = tmp_path / "cache"
    use(monkeypatch, cache, "http://127.0.0.1:9")  # the discard port: refused
    code = separate_main([str(wav_file(seconds=0.2)), "--model", "tinyhq", "--outdir", str(tmp_path / "out"),
                          "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("umx-separate: error: cannot download the 'tinyhq' weights (")
    for file in files.values():
        assert f"http://127.0.0.1:9/{file}" in err
    assert f"put the files in {cache / 'tinyhq'}" in err
    assert "the bundled model 'default' needs no download" in err
    assert not cache.exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the cache folder

def test_a_cache_path_that_is_a_file_is_named_as_the_problem(server, table, tmp_path, monkeypatch):
    root, url, _ = server
    files = publish(root, table)
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("not a folder\n")
    use(monkeypatch, blocker, url)
    with pytest.raises(DownloadError) as info:
        Separator.from_pretrained("tinyhq", progress=False)
    assert str(info.value) == (
        f"cannot save {files['vocals']} in the download cache {blocker / 'tinyhq'} ({blocker} is a file); set "
        f"{pretrained.CACHE_ENV} to a writable folder with room for the weights, or free space there")
    assert blocker.read_text() == "not a folder\n"


def test_a_full_disk_is_named_as_the_problem_and_leaves_nothing(server, table, tmp_path, wav_file):
    # RLIMIT_FSIZE makes writes past 20 kB fail (EFBIG) as a full disk would (ENOSPC), in a child process only.
    root, url, _ = server
    publish(root, table)
    cache = tmp_path / "cache"
    song = wav_file(seconds=0.2)
    body = ("import resource\nresource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
            f"sys.exit(main([{str(song)!r}, '--model', 'tinyhq', '--outdir', {str(tmp_path / 'out')!r}, '--quiet']))")
    env = dict(os.environ, **{pretrained.CACHE_ENV: str(cache), pretrained.BASE_URL_ENV: url})
    done = subprocess.run(python_with_table(table, body), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("umx-separate: error: cannot save vocals-") and "File too large" in done.stderr
    assert f"in the download cache {cache / 'tinyhq'}" in done.stderr and pretrained.CACHE_ENV in done.stderr
    assert not cache.exists()  # no partial file, no folder


def test_an_unreadable_file_in_the_cache_is_one_line_naming_it(table, tmp_path, monkeypatch):
    # A cache shared with another user who owns the files. The tests run as root, whom permissions do not
    # stop, so the operating system's refusal is played by sha256_of.
    files = publish(tmp_path, table)
    folder = tmp_path / "cache" / "tinyhq"
    folder.mkdir(parents=True)
    for file in files.values():
        (folder / file).write_bytes((tmp_path / file).read_bytes())
    use(monkeypatch, tmp_path / "cache", "http://127.0.0.1:9")

    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pretrained, "sha256_of", refused)
    with pytest.raises(DownloadError) as info:
        Separator.from_pretrained("tinyhq", progress=False)
    assert str(info.value) == (f"{folder / files['vocals']}: cannot read this file of the cache (Permission denied); "
                               f"fix its permissions or set {pretrained.CACHE_ENV} to a folder of your own")


def test_two_processes_downloading_at_once_both_succeed(server, table, tmp_path):
    # The server answers the first file only once both processes asked for it: the downloads overlap.
    root, url, _ = server
    files = publish(root, table)
    cache = tmp_path / "cache"
    env = dict(os.environ, **{pretrained.CACHE_ENV: str(cache), pretrained.BASE_URL_ENV: f"{url}/together"})
    body = "print(Separator.from_pretrained('tinyhq', targets=['vocals'], progress=False).target_names)"
    procs = [subprocess.Popen(python_with_table(table, body), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert [out for out, _ in results] == ["['vocals']\n"] * 2
    assert all_files(cache) == ["tinyhq", f"tinyhq/{files['vocals']}"]  # one file, no partials
    assert (cache / "tinyhq" / files["vocals"]).read_bytes() == (root / files["vocals"]).read_bytes()


def test_a_download_killed_midway_leaves_no_file_under_the_final_name_and_the_next_one_cleans_up(
        server, table, tmp_path, monkeypatch):
    root, url, _ = server
    files = publish(root, table, targets=("vocals",))
    cache = tmp_path / "cache"
    env = dict(os.environ, **{pretrained.CACHE_ENV: str(cache), pretrained.BASE_URL_ENV: f"{url}/half-then-wait"})
    proc = subprocess.Popen(python_with_table(table, "Separator.from_pretrained('tinyhq', progress=False)"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):  # until the child has its partial file open and half the bytes sent (or is gone)
            partial = list(cache.rglob(".*.partial")) if cache.exists() else []
            if partial or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert partial, "the child never started writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert not (cache / "tinyhq" / files["vocals"]).exists()  # only the hidden partial file
    use(monkeypatch, cache, url)
    assert Separator.from_pretrained("tinyhq", progress=False).target_names == ["vocals"]
    assert all_files(cache) == ["tinyhq", f"tinyhq/{files['vocals']}"]  # the killed process's partial is gone


def test_a_redirect_is_followed_and_the_file_still_checked(server, table, tmp_path, monkeypatch):
    root, url, _ = server
    files = publish(root, table)
    use(monkeypatch, tmp_path / "cache", f"{url}/moved")
    assert Separator.from_pretrained("tinyhq", progress=False).target_names == ["vocals", "bass"]
    assert all_files(tmp_path / "cache") == sorted(["tinyhq", *(f"tinyhq/{f}" for f in files.values())])


def test_a_published_name_loads_the_files_checked_against_their_hashes(server, table, tmp_path, monkeypatch):
    # Other weight files in the cache folder (copied there by hand, or of an older release) are not loaded
    # instead of the checked ones, nor do they make the folder ambiguous.
    root, url, _ = server
    files = publish(root, table)
    folder = tmp_path / "cache" / "tinyhq"
    folder.mkdir(parents=True)
    for file in files.values():
        (folder / file).write_bytes((root / file).read_bytes())
    torch.save(OpenUnmix(nb_bins=257, hidden_size=16, max_bin=64).state_dict(), folder / "vocals.pth")
    (folder / "bass-00000000.pth").write_bytes((root / files["bass"]).read_bytes())
    use(monkeypatch, tmp_path / "cache", "http://127.0.0.1:9")  # nothing to download
    separator = Separator.from_pretrained("tinyhq", progress=False)
    published = torch.load(root / files["vocals"], weights_only=True)
    loaded = separator.target_models["vocals"].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in published.items())
    assert separator.target_names == ["vocals", "bass"]


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("name, hint", [("umxhqq", "did you mean umxhq? "), ("UMXL", "did you mean umxl? "),
                                        ("defualt", "did you mean default? "), ("my-model", "")])
def test_an_unknown_name_suggests_the_closest_known_one(tmp_path, monkeypatch, name, hint):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as info:
        Separator.from_pretrained(name)
    assert str(info.value) == (f"{name}: no such model folder, and not a published model ({hint}known: umxhq, umx, "
                               "umxl, umxse, and default for the bundled one)")


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_folder_named_like_the_model_where_the_command_runs_is_explained(table, tmp_path, monkeypatch, kind):
    # umx-separate song.mp3 --model tinyhq --outdir tinyhq, then the same command again.
    publish(tmp_path, table)
    work = tmp_path / "work"
    if kind == "folder":
        (work / "tinyhq" / "song").mkdir(parents=True)  # stems of an earlier run
    else:
        work.mkdir()
        (work / "tinyhq").write_text("notes\n")
    monkeypatch.chdir(work)
    use(monkeypatch, tmp_path / "cache", "http://127.0.0.1:9")
    what = "a folder without weight files" if kind == "folder" else "a file"
    with pytest.raises(ModelError) as info:
        Separator.from_pretrained("tinyhq", progress=False)
    assert str(info.value) == (f"{work / 'tinyhq'}: {what}, taken for the model because it is named 'tinyhq' and "
                               "is where the command runs; to load the published model 'tinyhq', run from another "
                               "folder or rename this one")
    # A folder of that name holding weights is still the model, as documented for "default".
    if kind == "folder":
        torch.save(OpenUnmix(nb_bins=257, hidden_size=8, max_bin=64).state_dict(), work / "tinyhq" / "piano.pth")
        assert Separator.from_pretrained("tinyhq", progress=False).target_names == ["piano"]


def test_the_bundled_model_opens_no_socket(monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for name in (None, "default"):
        assert Separator.from_pretrained(name, targets=["bass"], progress=False).target_names == ["bass"]
    assert calls == []


# ---------------------------------------------------------------- model folders given by the user

def test_a_damaged_pth_gives_torch_s_finding_without_its_advice_to_load_unsafely(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    buffer = io.BytesIO()
    torch.save(OpenUnmix(nb_bins=257, hidden_size=8, max_bin=64).state_dict(), buffer)
    # torch's finding for a cut zip varies with where the cut falls ("failed finding central directory",
    # "[Errno 22] Invalid argument"); for bytes that are no pickle it is an unsupported operand.
    cases = {"garbage": (b"\x80\x02garbage", "Unsupported operand"), "truncated": (buffer.getvalue()[:-100], "")}
    for data, finding in cases.values():
        (folder / "vocals.pth").write_bytes(data)
        with pytest.raises(ModelError) as info:
            load_model_dir(folder)
        message = str(info.value)
        assert message.startswith(f"{folder / 'vocals.pth'}: not a loadable state dict ({finding}")
        assert message.endswith("); it may be truncated or damaged: re-download or re-export the weights")
        assert "weights_only" not in message and "\n" not in message


def test_a_pth_with_pickled_code_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save({"fc1.weight": torch.zeros(1), "hook": print}, folder / "vocals.pth")
    with pytest.raises(ModelError) as info:
        load_model_dir(folder)
    message = str(info.value)
    assert message.startswith(f"{folder / 'vocals.pth'}: not a loadable state dict (Unsupported global: GLOBAL ")
    assert message.endswith("print was not an allowed global by default); files holding pickled code objects are "
                            "refused: re-export the weights as a state dict")
    assert "weights_only" not in message and "\n" not in message


def test_weights_that_do_not_fit_say_what_to_do(tmp_path):
    folder = tiny_folder(tmp_path, "unet1d", targets=("vocals",))  # rebuilt from model_args, then checked
    meta = json.loads((folder / "vocals.json").read_text())
    meta["model_args"]["hidden_size"] *= 2
    (folder / "vocals.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"^.*vocals\.safetensors: weights of target 'vocals': encoder\.0\.0\.weight "
                                         r"has shape \(4, 2, 8\), expected \(8, 2, 8\); fix model_args in "
                                         r"vocals\.json or re-export the weights$"):
        load_model_dir(folder)
    umx = tmp_path / "umx"
    umx.mkdir()
    state = OpenUnmix(nb_bins=257, hidden_size=8, max_bin=64).state_dict()
    torch.save({**state, "extra.weight": torch.zeros(1)}, umx / "vocals.pth")
    with pytest.raises(ModelError, match=r"unexpected keys \['extra\.weight'\]; re-export them from the model they "
                                         r"were trained with, or name its architecture in vocals\.json$"):
        load_model_dir(umx)
    torch.save(state, umx / "vocals.pth")
    (umx / "separator.json").write_text(json.dumps({"nfft": 1024, "nhop": 256}))
    with pytest.raises(ModelError, match=r"but the folder's settings say n_fft=1024 \(513 bins\) and 2 channels; "
                                         r"fix nfft and nb_channels in separator\.json, or keep only weights trained "
                                         r"with the same settings in one folder$"):
        load_model_dir(umx)


def test_model_folder_layouts_that_load(tmp_path):
    # Published files by hand (hashed names, no JSON), extra files around, .pth and .safetensors side by side.
    from openunmix_like.modeldir import AudioSettings, save_target

    folder = tmp_path / "mine"
    settings = AudioSettings(44100, 512, 128, 2)
    for target in ("vocals", "bass"):
        save_target(folder, target, OpenUnmix(nb_bins=257, hidden_size=8, max_bin=64), settings)
    for junk in ("notes.txt", "vocals.chkpnt", ".DS_Store", "bass.json.bak"):
        (folder / junk).write_bytes(b"x")
    assert Separator.from_pretrained(folder).target_names == ["vocals", "bass"]
    hashed = tmp_path / "hashed"
    hashed.mkdir()
    for target in ("vocals", "bass"):
        (hashed / f"{target}-0123abcd.pth").write_bytes((folder / f"{target}.pth").read_bytes())
    separator = Separator.from_pretrained(hashed, targets="bass")
    assert separator.target_names == ["bass"] and separator.n_fft == 512
