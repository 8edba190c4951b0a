"""Four small defects: separator.json keys lost on rewrite, export.json without the folder's niter, a traceback
for Ctrl+C while a command imports torch, and downloads that trickle for ever."""
import functools
import http.server
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf

import openunmix_like.pretrained as pretrained
from helpers import http_server, music_like, publish, tiny, tiny_folder, track_folders
from openunmix_like import DownloadError, ModelError, Separator
from openunmix_like.cli.export import main as export_main
from openunmix_like.cli.separate import main as separate_main
from openunmix_like.modeldir import AudioSettings, save_target, update_separator_json
from test_export_synth_review import documented_recipe, relative

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = AudioSettings(22050, 512, 128, 2)


# ---------------------------------------------------------------- separator.json keys


def test_rewriting_separator_json_keeps_the_keys_it_does_not_own(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    held = {"sample_rate": 22050, "n_fft": 512, "nhop": 128, "nb_channels": 2, "targets": ["vocals"], "niter": 0,
            "note": "trained on the choir set", "written_by": {"version": "9.0", "extra": [1, 2]}}
    (folder / "separator.json").write_text(json.dumps(held))
    update_separator_json(folder, "drums", SETTINGS)
    save_target(folder, "bass", tiny("umx", nb_bins=257), SETTINGS)
    written = json.loads((folder / "separator.json").read_text())
    assert written == {"format": "openunmix-like/1", "sample_rate": 22050.0, "nfft": 512, "nhop": 128,
                       "nb_channels": 2, "targets": ["vocals", "drums", "bass"], "niter": 0,
                       "note": "trained on the choir set", "written_by": {"version": "9.0", "extra": [1, 2]}}


def test_a_target_with_other_settings_leaves_separator_json_as_it_was(tmp_path):
    folder = tiny_folder(tmp_path, "umx", SETTINGS, targets=("vocals",))
    path = folder / "separator.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "note": "kept"}))
    before = path.read_bytes()
    with pytest.raises(ModelError, match="cannot add 'drums'"):
        update_separator_json(folder, "drums", AudioSettings(44100, 512, 128, 2))
    assert path.read_bytes() == before


# ---------------------------------------------------------------- export.json niter


def set_niter(folder: Path, niter: int) -> None:
    path = folder / "separator.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "niter": niter}))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("niter, recorded", [(None, 1), (0, 0), (3, 3)])
def test_export_json_records_the_folders_niter_else_one(tmp_path, niter, recorded):
    folder = tiny_folder(tmp_path, "umx", SETTINGS, targets=("vocals",))
    if niter is not None:
        set_niter(folder, niter)
    assert export_main([str(folder), "--format", "torchscript", "--outdir", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "export.json").read_text())["niter"] == recorded


@pytest.mark.parametrize("targets", [("vocals",), ("vocals", "drums")], ids=["one-target", "two-targets"])
def test_the_documented_recipe_follows_a_folder_that_separates_with_niter_0(tmp_path, monkeypatch, targets):
    """umx-separate given no --niter uses the folder's 0 (no EM, no hidden residual); the recipe must too."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    folder = tiny_folder(tmp_path, "umx", SETTINGS, targets=targets)
    set_niter(folder, 0)
    work = tmp_path / "work"
    work.mkdir()
    sf.write(work / "song.wav", music_like(1.5, 22050, 2, seed=5).T, 22050, subtype="FLOAT")
    assert export_main([str(folder), "--format", "onnx", "--outdir", str(work / "my-tfattn-onnx")]) == 0
    assert separate_main([str(work / "song.wav"), "--model", str(folder), "--outdir", str(tmp_path / "sep"),
                          "--bits", "32", "--clip", "none", "--precision", "fp32", "--quiet"]) == 0
    monkeypatch.chdir(work)
    exec(compile(documented_recipe(), "docs/architectures.md", "exec"), {})
    for target in targets:
        got, _ = sf.read(work / f"{target}.wav", always_2d=True)
        want, _ = sf.read(tmp_path / "sep" / "song" / f"{target}.wav", always_2d=True)
        assert got.shape == want.shape and relative(got, want) < 1e-4, target


# ---------------------------------------------------------------- Ctrl+C while a command imports


def entry_points() -> dict:
    """command -> (module, function) of the console scripts setup.py installs."""
    text = (ROOT / "setup.py").read_text()
    return {m[1]: (m[2], m[3]) for m in re.finditer(r'"(umx-[a-z]+)=([\w.]+):(\w+)"', text)}


def run_command(command: str, code: str, *argv: str) -> subprocess.CompletedProcess:
    """``command`` started as its installed script starts it, after ``code`` (which prepares an interruption)."""
    module, function = entry_points()[command]
    script = f"{code}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n"
    return subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def interrupt_at_import(module: str) -> str:
    """Code that sends this process a SIGINT as ``module`` starts to be imported."""
    return f"""
import importlib.abc, signal, sys
class InterruptAt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            signal.raise_signal(signal.SIGINT)
        return None
sys.meta_path.insert(0, InterruptAt())
"""


def test_every_command_is_installed_through_its_entry_point():
    assert set(entry_points()) == {"umx-separate", "umx-train", "umx-evaluate", "umx-web", "umx-export",
                                   "umx-synth", "umx-compare"}


# None imports torch to show its help: each is interrupted while its own module loads.
@pytest.mark.parametrize("command, module", [
    ("umx-separate", "openunmix_like.cli.separate"), ("umx-train", "openunmix_like.cli.train"),
    ("umx-evaluate", "openunmix_like.cli.evaluate"),
    ("umx-web", "openunmix_like.cli.web"), ("umx-export", "openunmix_like.cli.export"),
    ("umx-compare", "openunmix_like.cli.compare"),
    ("umx-synth", "openunmix_like.cli.synth"),
])
def test_ctrl_c_while_a_command_imports_is_one_line_and_status_130(command, module):
    """Was: a KeyboardInterrupt traceback from ``import torch``, before main() could take it."""
    result = run_command(command, interrupt_at_import(module), "--help")
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines() == [f"{command}: error: interrupted while starting; nothing was done"]
    assert result.stdout == ""


def test_ctrl_c_while_umx_separate_imports_torch_is_one_line_and_writes_nothing(tmp_path, wav_file):
    # umx-separate imports torch once its options are checked, as the model loads.
    song = wav_file(seconds=1.0)
    result = run_command("umx-separate", interrupt_at_import("torch"), str(song), "--outdir", str(tmp_path / "out"))
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines() == ["umx-separate: error: interrupted before any track was separated; "
                                          "nothing was written"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, argv, status", [
    ("umx-separate", ["--help"], 0), ("umx-separate", ["--version"], 0),
    ("umx-separate", ["--segment", "-1", "a.wav"], 1), ("umx-separate", ["no-such-song.wav"], 1),
    ("umx-web", ["--help"], 0), ("umx-web", ["--port", "70000"], 1),
    ("umx-compare", ["--help"], 0), ("umx-compare", ["no-such-folder", "no-such-folder"], 1),
    ("umx-train", ["--help"], 0), ("umx-train", ["--version"], 0), ("umx-train", ["--arch", "unet3d"], 2),
    ("umx-train", ["--preset", "unet2d-8k", "--dataset", "musdbb"], 2),
    ("umx-evaluate", ["--help"], 0), ("umx-evaluate", ["--root", ".", "--oracle", "irm3"], 2),
    ("umx-evaluate", ["--root", ".", "--layout", "folder", "--oracle", "irm2", "--cores", "0"], 1),
    ("umx-export", ["--help"], 0), ("umx-export", ["--version"], 0), ("umx-export", ["--format", "pt2"], 2),
])
def test_help_and_refusals_answer_without_importing_torch(command, argv, status):
    # torch takes seconds to import: --help, a bad option or a missing input answer at once.
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules, file=sys.stderr))")
    result = run_command(command, code, *argv)
    assert result.stderr.splitlines()[-1] == "torch loaded: False", result.stderr
    assert result.returncode == status, result.stderr


def test_ctrl_c_while_umx_train_imports_torch_is_one_line_and_writes_nothing(tmp_path):
    # umx-train imports torch once its options are read, before it makes --output or reads any data.
    data = track_folders(tmp_path / "data", tracks=1, seconds=1.0)
    result = run_command("umx-train", interrupt_at_import("torch"), "--dataset", "trackfolder_fix", "--root",
                         str(data), "--target", "vocals", "--output", str(tmp_path / "model"))
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines() == ["umx-train: error: interrupted before training started; nothing was written"]
    assert not (tmp_path / "model").exists()


def test_ctrl_c_while_umx_evaluate_imports_torch_is_one_line_and_leaves_no_folder(tmp_path):
    # umx-evaluate imports torch once its options are checked, as it reads the first track.
    data = track_folders(tmp_path / "data", tracks=1, seconds=1.0)
    result = run_command("umx-evaluate", interrupt_at_import("torch"), "--root", str(data / "valid"), "--layout",
                         "folder", "--oracle", "irm2", "--evaldir", str(tmp_path / "eval"))
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines() == [f"umx-evaluate: error: interrupted; the track results written to "
                                          f"{tmp_path / 'eval'} are kept"]
    assert not (tmp_path / "eval").exists()


def test_ctrl_c_while_umx_export_imports_torch_is_one_line_and_writes_nothing(tmp_path):
    # umx-export imports torch once its options are read, before it loads a model or makes --outdir.
    result = run_command("umx-export", interrupt_at_import("torch"), "--format", "torchscript", "--outdir",
                         str(tmp_path / "out"))
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines() == [f"umx-export: error: interrupted; {tmp_path / 'out'} holds what it held "
                                          "before or the whole export, nothing half-written: run the same command "
                                          "again"]
    assert not (tmp_path / "out").exists()


def test_the_choices_umx_train_and_umx_evaluate_offer_are_the_registries_names():
    from openunmix_like import architectures, augment, choices, data, evaluate, losses

    assert choices.ARCHITECTURE_NAMES == tuple(architectures.ARCHITECTURES)
    assert choices.AUGMENTATION_NAMES == tuple(augment.AUGMENTATIONS)
    assert choices.BATCH_AUGMENTATION_NAMES == tuple(augment.BATCH_AUGMENTATIONS)
    assert choices.LOSS_NAMES == tuple(losses.LOSSES)
    assert choices.ORACLE_NAMES == evaluate.ORACLES
    assert architectures.PRESETS is choices.PRESETS and data.STEM_GROUPINGS is choices.STEM_GROUPINGS
    assert all(preset["arch"] in choices.ARCHITECTURE_NAMES for preset in choices.PRESETS.values())


def test_ctrl_c_that_main_does_not_catch_is_one_line_and_status_130(tmp_path):
    """umx-compare's main takes no Ctrl+C of its own; the entry point does."""
    code = """
import signal
import openunmix_like.cli.compare as compare
compare.check_bootstrap = lambda *args: signal.raise_signal(signal.SIGINT)
"""
    result = run_command("umx-compare", code, str(tmp_path), str(tmp_path))
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines() == ["umx-compare: error: interrupted"]


# ---------------------------------------------------------------- a download that trickles


class TrickleHandler(http.server.SimpleHTTPRequestHandler):
    """Sends half of each file at once, then 100 bytes every 50 ms (2 KB/s) until the server stops."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        data = (Path(self.directory) / self.path.strip("/")).read_bytes()
        self.server.requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        half = len(data) // 2
        try:
            self.wfile.write(data[:half])
            for start in range(half, len(data), 100):
                if self.server.stopping.wait(0.05):
                    return
                self.wfile.write(data[start:start + 100])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up
            return


@pytest.fixture
def trickling_server(tmp_path):
    """A server on 127.0.0.1 of ``<tmp_path>/www`` that trickles; yields ``(folder, url, requests)``."""
    root = tmp_path / "www"
    root.mkdir()
    with http_server(functools.partial(TrickleHandler, directory=str(root))) as (httpd, url):
        httpd.requests, httpd.stopping = [], threading.Event()
        yield root, url, httpd.requests
        httpd.stopping.set()  # before the server stops: a trickling handler checks it


def test_a_download_that_trickles_is_given_up_with_one_line(trickling_server, tmp_path, monkeypatch):
    """Was: a byte every few seconds kept the socket timeout from firing, and the download never ended.

    A period that was fast enough (the first half arrives at once) does not excuse the slow one after it."""
    root, url, requests = trickling_server
    table = {}
    monkeypatch.setattr(pretrained, "pretrained_table", lambda: table)
    files = publish(root, table)
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, url)
    monkeypatch.setenv(pretrained.MIN_RATE_ENV, "20")
    monkeypatch.setattr(pretrained, "RATE_PERIOD_S", 0.3)
    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        Separator.from_pretrained("tinyhq", progress=False)
    assert time.monotonic() - started < 5  # the whole trickle would take 13 s a file
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cannot download the 'tinyhq' weights (the transfer slowed to ")
    assert "below the 20 KB/s a download must keep up (OPENUNMIX_LIKE_MIN_RATE sets that, 0 for no limit)" in message
    assert all(f"{url}/{file}" in message for file in files.values())
    assert requests == [f"/{files['vocals']}"]  # the other file would trickle as well
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("value", ["fast", "-1", "nan", "inf"])
def test_a_minimum_rate_that_is_no_rate_is_named(tmp_path, monkeypatch, value):
    table = {}
    monkeypatch.setattr(pretrained, "pretrained_table", lambda: table)
    publish(tmp_path, table)
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(pretrained.BASE_URL_ENV, "http://127.0.0.1:9")
    monkeypatch.setenv(pretrained.MIN_RATE_ENV, value)
    with pytest.raises(DownloadError, match=rf"^OPENUNMIX_LIKE_MIN_RATE='{value}': give the slowest download to "
                                            r"accept in KB/s \(default 10\), or 0 to wait however long"):
        Separator.from_pretrained("tinyhq", progress=False)
    assert not (tmp_path / "cache").exists()
