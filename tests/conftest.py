"""Shared fixtures: tiny random-weight model folders, generated audio, a temporary package cache.

Plain helpers (paths, audio, tiny models) are in ``helpers.py``.
"""
import re

import pytest
import soundfile as sf

from helpers import SHARED, SHARED_ENV, make_models, music_like
from openunmix_like.modeldir import AudioSettings, save_target
from openunmix_like.pretrained import CACHE_ENV
from openunmix_like.separator import AUTO_PRECISION_ENV


@pytest.fixture
def model_dir(tmp_path):
    """Factory writing a tiny model folder in our layout; returns its path."""

    def make(name="model", sample_rate=44100, n_fft=512, nb_channels=2, **kw):
        folder = tmp_path / name
        for target, m in make_models(n_fft=n_fft, nb_channels=nb_channels, **kw).items():
            save_target(folder, target, m, AudioSettings(sample_rate, n_fft, n_fft // 4, nb_channels))
        return folder

    return make


@pytest.fixture
def wav_file(tmp_path):
    def make(name="song.wav", seconds=3.0, rate=44100, channels=2, subtype=None, seed=0):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, music_like(seconds, rate, channels, seed).T, rate, subtype=subtype)
        return path

    return make


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """Point the package cache (and library caches) at session temporary folders, never ``~/.cache``.

    One folder for the whole session, so MUSDB excerpts are decoded at most once;
    command-line tools run in subprocesses inherit it through the environment.
    """
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(path))
        # Libraries' own caches too (matplotlib's font list, onnxruntime's device id).
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        mp.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("matplotlib")))
        # precision="auto" means float32 here whatever the processor, so results compared
        # to the reference or across runs do not depend on the machine (tests of bf16 say so).
        mp.setenv(AUTO_PRECISION_ENV, "fp32")
        yield path


# require() skips with "<path> not available" when shared data is missing.
MISSING = re.compile(r"Skipped: (?P<path>.+) not available$")


def pytest_terminal_summary(terminalreporter):
    """Say in one line per missing path which tests were skipped for want of shared data."""
    counts = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        match = MISSING.match(reason)
        if match and match["path"].startswith(str(SHARED)):
            counts[match["path"]] = counts.get(match["path"], 0) + 1
    for path, n in counts.items():
        tests = f"{n} tests needing {path} were" if n > 1 else f"1 test needing {path} was"
        terminalreporter.write_line(f"{tests} skipped: {path} not found (set {SHARED_ENV} to the shared folder)",
                                    yellow=True)
