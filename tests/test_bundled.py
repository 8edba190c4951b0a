"""The bundled default model: present in the package, loaded and used with no network."""
import urllib.request

import pytest
import soundfile as sf
import torch

from openunmix_like import Separator, separate
from openunmix_like.cli.separate import main as separate_main
from openunmix_like.pretrained import BUNDLED_MODEL_DIR


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the bundled model must not touch the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_bundled_model_is_small_and_complete():
    files = sorted(p.name for p in BUNDLED_MODEL_DIR.iterdir())
    for target in ("vocals", "drums", "bass", "other"):
        assert f"{target}.safetensors" in files and f"{target}.json" in files
    assert "separator.json" in files
    assert sum(p.stat().st_size for p in BUNDLED_MODEL_DIR.iterdir()) <= 40 * 2**20


def test_from_pretrained_without_a_name_is_offline(offline):
    sep = Separator.from_pretrained()
    assert sep.target_names == ["vocals", "drums", "bass", "other"] and sep.sample_rate == 44100
    audio = torch.randn(2, 44100) * 0.1
    stems = separate(audio, 44100, model=sep)
    assert all(s.shape == audio.shape and torch.isfinite(s).all() for s in stems.values())


def test_umx_separate_without_model_is_offline(offline, wav_file, tmp_path):
    song = wav_file("song.wav", seconds=1.0)
    assert separate_main([str(song), "--outdir", str(tmp_path / "o"), "--quiet"]) == 0
    assert sf.info(str(tmp_path / "o" / "song" / "vocals.wav")).frames == 44100
