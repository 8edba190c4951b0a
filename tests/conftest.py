"""Shared fixtures: tiny random-weight model folders and generated audio."""
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from openunmix_like.model import OpenUnmix
from openunmix_like.modeldir import AudioSettings, save_target

SHARED = Path(os.environ.get("OPENUNMIX_LIKE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MUSDB_7S = SHARED / "data" / "musdb18-7s" / "train"
MIXES = SHARED / "data" / "mixes"


def require(path: Path) -> Path:
    """Skip when shared data is absent, unless CI demands it (then fail)."""
    if not path.exists():
        if os.environ.get("OPENUNMIX_LIKE_REQUIRE_DATA") == "1":
            pytest.fail(f"{path} is missing but OPENUNMIX_LIKE_REQUIRE_DATA=1")
        pytest.skip(f"{path} not available")
    return path


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


@pytest.fixture
def model_dir(tmp_path):
    """Factory writing a tiny model folder in our layout; returns its path."""

    def make(name="model", sample_rate=44100, n_fft=512, nb_channels=2, **kw):
        folder = tmp_path / name
        for target, m in make_models(n_fft=n_fft, nb_channels=nb_channels, **kw).items():
            save_target(folder, target, m, AudioSettings(sample_rate, n_fft, n_fft // 4, nb_channels))
        return folder

    return make


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
    """One package cache for the whole test session (decoded MUSDB excerpts are shared)."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("OPENUNMIX_LIKE_CACHE")
    os.environ["OPENUNMIX_LIKE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("OPENUNMIX_LIKE_CACHE", None)
    else:
        os.environ["OPENUNMIX_LIKE_CACHE"] = old
