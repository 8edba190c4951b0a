"""Downloads of published weights, against a local HTTP server serving test-made files."""
import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch

import openunmix_like.pretrained as pretrained
from helpers import publish
from openunmix_like import DownloadError, ModelError, Separator
from openunmix_like.model import OpenUnmix


class FaultyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; ``/<fault>/<file>`` serves ``<file>`` broken in one of the ways of ``FAULTS``."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        fault, _, name = self.path.strip("/").rpartition("/")
        if fault not in FAULTS:
            return super().do_GET()
        data = (Path(self.directory) / name).read_bytes()
        self.close_connection = True
        if fault == "not-http":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.0\r\n")
            return
        self.protocol_version = "HTTP/1.1"  # for the chunked reply
        self.send_response(200)
        if fault == "chunked-cut":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n" % len(data) + data[:len(data) // 2])
            return
        self.send_header("Content-Length", "abc" if fault == "bad-length" else str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2] if fault == "cut" else data)


FAULTS = ("cut", "chunked-cut", "not-http", "bad-length")


@pytest.fixture
def server(tmp_path):
    """A local HTTP server of ``<tmp_path>/www``; yields the folder and the server's URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(FaultyHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def tiny_table(monkeypatch):
    """A published-model table for a tiny model, filled in by `publish`."""
    table = {}
    monkeypatch.setattr(pretrained, "pretrained_table", lambda: table)
    return table



def test_download_verifies_and_caches(server, tiny_table, tmp_path, monkeypatch):
    root, url = server
    files = publish(root, tiny_table)
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, url)
    sep = Separator.from_pretrained("tinyhq", progress=False)
    assert sep.target_names == ["vocals", "bass"] and sep.n_fft == 512
    assert sorted(p.name for p in (tmp_path / "cache" / "tinyhq").iterdir()) == sorted(files.values())
    # A second load works with the server gone (cache hit).
    for f in root.iterdir():
        f.unlink()
    assert Separator.from_pretrained("tinyhq", targets=["bass"], progress=False).target_names == ["bass"]


def test_bad_hash_is_deleted_and_refused(server, tiny_table, tmp_path, monkeypatch):
    root, url = server
    files = publish(root, tiny_table, corrupt=("bass",))
    cache = tmp_path / "cache"
    monkeypatch.setenv(pretrained.CACHE_ENV, str(cache))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, url + "/{file}")
    with pytest.raises(DownloadError, match=f"{files['bass']}.*expected {files['bass'][5:13]}"):
        Separator.from_pretrained("tinyhq", progress=False)
    leftovers = sorted(p.name for p in (cache / "tinyhq").iterdir())
    assert leftovers == [files["vocals"]]  # the good file stays, the bad one and any partial are gone


def test_offline_error_names_files_urls_and_folder(tiny_table, tmp_path, monkeypatch):
    files = publish(tmp_path, tiny_table)
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(DownloadError) as info:
        Separator.from_pretrained("tinyhq", progress=False)
    message = str(info.value)
    assert "\n" not in message
    for file in files.values():
        assert f"http://127.0.0.1:9/{file}" in message
    assert str(tmp_path / "cache" / "tinyhq") in message


def test_published_table_urls_and_hashes():
    table = pretrained.pretrained_table()
    assert set(table) == {"umxhq", "umx", "umxl", "umxse"}
    assert pretrained.file_url("umxhq", "vocals-b62c91ce.pth") == \
        "https://zenodo.org/records/3370489/files/vocals-b62c91ce.pth"
    for entry in table.values():
        for file in entry["files"].values():
            assert len(pretrained.expected_hash(file)) == 8


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "c"))
    assert pretrained.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(pretrained.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pretrained.cache_dir() == tmp_path / "xdg" / "openunmix-like"
    # A relative XDG_CACHE_HOME is ignored (the XDG specification): the cache must not follow the working folder.
    monkeypatch.setenv("XDG_CACHE_HOME", "xdg")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pretrained.cache_dir() == tmp_path / "home" / ".cache" / "openunmix-like"


def test_folder_without_listed_targets_keeps_the_published_order(tmp_path):
    from openunmix_like.modeldir import AudioSettings, save_target

    folder = tmp_path / "six"
    settings = AudioSettings(44100, 512, 128, 2)
    for target in ("bass", "piano", "other", "vocals", "guitar", "drums"):
        save_target(folder, target, OpenUnmix(nb_bins=257, hidden_size=8, max_bin=64), settings)
    assert Separator.from_pretrained(folder).target_names == ["bass", "piano", "other", "vocals", "guitar", "drums"]
    (folder / "separator.json").unlink()  # the order it listed is gone
    sep = Separator.from_pretrained(folder)
    assert sep.target_names == ["vocals", "drums", "bass", "other", "guitar", "piano"]
    assert sep(torch.zeros(1, 2, 2048)).shape == (1, 6, 2, 2048)


def test_folder_of_published_files_keeps_the_published_order(tmp_path):
    # Weight files as published (no JSON), e.g. a copy of the download cache.
    table = pretrained.pretrained_table()
    for name, nb_bins, channels in (("umx", 2049, 2), ("umxse", 513, 1)):
        folder = tmp_path / name
        folder.mkdir()
        for file in table[name]["files"].values():
            state = OpenUnmix(nb_bins=nb_bins, nb_channels=channels, hidden_size=8, max_bin=64).state_dict()
            torch.save(state, folder / file)
        # umx: vocals, drums, bass, other; umxse: speech, noise (not by name).
        assert Separator.from_pretrained(folder).target_names == list(table[name]["files"])


@pytest.mark.parametrize("mirror", ["404", "refused", "bad hash"])
def test_failed_download_leaves_no_empty_folder(server, tiny_table, tmp_path, monkeypatch, mirror):
    root, url = server
    publish(root, tiny_table, corrupt=("vocals", "bass") if mirror == "bad hash" else ())
    if mirror == "404":
        for f in root.iterdir():
            f.unlink()
    (tmp_path / "home").mkdir()
    cache = tmp_path / "home" / ".cache" / "openunmix-like"
    monkeypatch.setenv(pretrained.CACHE_ENV, str(cache))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, "http://127.0.0.1:9" if mirror == "refused" else url)
    with pytest.raises(DownloadError):
        Separator.from_pretrained("tinyhq", progress=False)
    assert not (tmp_path / "home" / ".cache").exists()  # neither the model folder nor the cache folders it made
    assert (tmp_path / "home").is_dir()  # what was there before stays


def test_failed_download_keeps_folders_and_files_already_there(server, tiny_table, tmp_path, monkeypatch):
    root, url = server
    files = publish(root, tiny_table)
    (root / files["bass"]).unlink()  # 404 for bass
    cache = tmp_path / "cache"
    (cache / "tinyhq").mkdir(parents=True)
    (cache / "tinyhq" / "notes.txt").write_text("mine\n")
    monkeypatch.setenv(pretrained.CACHE_ENV, str(cache))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, url)
    with pytest.raises(DownloadError, match=files["bass"]):
        Separator.from_pretrained("tinyhq", progress=False)
    assert sorted(p.name for p in (cache / "tinyhq").iterdir()) == sorted([files["vocals"], "notes.txt"])
    (cache / "tinyhq" / "notes.txt").unlink()
    (cache / "tinyhq" / files["vocals"]).unlink()
    with pytest.raises(DownloadError):
        Separator.from_pretrained("tinyhq", progress=False)
    assert (cache / "tinyhq").is_dir()  # empty, but the user's (it was there before)


@pytest.mark.parametrize("fault, reason", [
    ("cut", "the transfer was cut off after [0-9]+ of [0-9]+ bytes"),
    ("chunked-cut", "the transfer was cut off after [0-9]+ bytes"),
    ("not-http", "the reply is not HTTP: 'SSH-2.0-OpenSSH_9.0'"),
])
def test_broken_transfer_is_one_download_error_line(server, tiny_table, tmp_path, monkeypatch, fault, reason):
    root, url = server
    files = publish(root, tiny_table)
    cache = tmp_path / "cache"
    monkeypatch.setenv(pretrained.CACHE_ENV, str(cache))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, f"{url}/{fault}")
    with pytest.raises(DownloadError, match=f"cannot download the 'tinyhq' weights \\({reason}\\): fetch ") as info:
        Separator.from_pretrained("tinyhq", progress=False)
    message = str(info.value)
    assert "\n" not in message
    for file in files.values():
        assert f"{url}/{fault}/{file}" in message
    assert f"put the files in {cache / 'tinyhq'}" in message
    assert not cache.exists()  # no partial file, no folder


def test_malformed_content_length_is_ignored(server, tiny_table, tmp_path, monkeypatch):
    # As http.client does; the file is still checked against its hash.
    root, url = server
    files = publish(root, tiny_table)
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, f"{url}/bad-length")
    assert Separator.from_pretrained("tinyhq", progress=True).target_names == ["vocals", "bass"]
    for file in files.values():
        assert (tmp_path / "cache" / "tinyhq" / file).read_bytes() == (root / file).read_bytes()


@pytest.mark.parametrize("mirror, reason", [
    ("http://[::1", r"http://\[::1/vocals-[0-9a-f]{8}\.pth: not a URL that can be downloaded \(Invalid IPv6 URL\); "
                    "check OPENUNMIX_LIKE_BASE_URL"),
    ("http://127.0.0.1:abc", r"cannot download the 'tinyhq' weights \(nonnumeric port: 'abc'\)"),
])
def test_malformed_mirror_url_is_a_download_error(tiny_table, tmp_path, monkeypatch, mirror, reason):
    publish(tmp_path, tiny_table)
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, mirror)
    with pytest.raises(DownloadError, match=reason):
        Separator.from_pretrained("tinyhq", progress=False)
    assert not (tmp_path / "cache").exists()


def test_damaged_file_in_the_cache_is_named_when_offline(server, tiny_table, tmp_path, monkeypatch):
    root, url = server
    files = publish(root, tiny_table)
    folder = tmp_path / "cache" / "tinyhq"
    folder.mkdir(parents=True)
    for file in files.values():
        (folder / file).write_bytes((root / file).read_bytes())
    damaged = folder / files["vocals"]
    damaged.write_bytes(damaged.read_bytes()[:-10])  # cut short by hand
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(DownloadError) as info:
        Separator.from_pretrained("tinyhq", progress=False)
    message = str(info.value)
    want = files["vocals"][7:15]
    assert f"{damaged} in the cache failed its sha256 check (sha256 " in message
    assert f"expected {want}...) and was left there; downloading a good copy failed: " in message
    assert f"fetch http://127.0.0.1:9/{files['vocals']} and put the files in {folder}" in message
    assert files["bass"] not in message and "\n" not in message
    # Online again, a good copy replaces it.
    monkeypatch.setenv(pretrained.BASE_URL_ENV, url)
    assert Separator.from_pretrained("tinyhq", progress=False).target_names == ["vocals", "bass"]
    assert damaged.read_bytes() == (root / files["vocals"]).read_bytes()


def test_no_targets_is_refused_for_a_published_name(tiny_table, tmp_path, monkeypatch):
    publish(tmp_path, tiny_table)
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, "http://127.0.0.1:9")  # never downloads, fixed or not
    with pytest.raises(ModelError, match=r"model 'tinyhq': targets=\[\] asks for no target; name at least one of "
                                         "vocals, bass, or pass None for all"):
        Separator.from_pretrained("tinyhq", targets=[], progress=False)
    assert not (tmp_path / "cache").exists()  # nothing downloaded
