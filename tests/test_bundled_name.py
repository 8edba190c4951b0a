"""``default`` names the bundled model wherever a model is named (umx-separate, umx-train, umx-web, Python)."""
import numpy as np
import pytest
import soundfile as sf
import torch

from openunmix_like import ModelError
from openunmix_like.cli.separate import main as separate_main
from openunmix_like.pretrained import bundled_model_dir, load_models, sha256_of
from openunmix_like.training.factory import model_source
from openunmix_like.web.models import discover_models


def test_default_is_the_bundled_model_unless_a_folder_has_that_name(tmp_path, monkeypatch, model_dir):
    named, settings = load_models("default", ["vocals"])
    bundled, same = load_models(None, ["vocals"])
    assert settings == same
    for a, b in zip(named["vocals"].state_dict().values(), bundled["vocals"].state_dict().values()):
        assert torch.equal(a, b)
    # A folder called "default" where the command runs is that folder, as any other name would be.
    folder = model_dir()
    monkeypatch.chdir(folder.parent)
    folder.rename(folder.parent / "default")
    mine, _ = load_models("default")
    assert mine["vocals"].state_dict()["fc1.weight"].shape != bundled["vocals"].state_dict()["fc1.weight"].shape
    with pytest.raises(ModelError, match="and default for the bundled one"):
        load_models("umxhq-typo")


def test_umx_separate_and_umx_train_take_the_name(tmp_path):
    song = tmp_path / "song.wav"
    sf.write(song, np.random.default_rng(0).standard_normal((22050, 2)) * 0.1, 44100)
    for outdir, extra in (("named", ["--model", "default"]), ("unnamed", [])):
        assert separate_main([str(song), "--outdir", str(tmp_path / outdir), "--precision", "fp32", "--quiet",
                              *extra]) == 0
    for target in ("vocals", "drums", "bass", "other"):
        a, _ = sf.read(tmp_path / "named" / "song" / f"{target}.wav")
        b, _ = sf.read(tmp_path / "unnamed" / "song" / f"{target}.wav")
        assert np.array_equal(a, b)
    # A fine-tune of the bundled model records the file it started from.
    source = model_source("default", "vocals")
    assert source == {"file": "vocals.safetensors", "sha256": sha256_of(bundled_model_dir() / "vocals.safetensors")}


def test_umx_web_lists_the_bundled_model_once_in_the_order_given(tmp_path, monkeypatch, model_dir):
    folder = model_dir()
    assert list(discover_models(["default"])) == ["default"]
    assert list(discover_models([str(folder), "default"])) == [folder.name, "default"]
    assert list(discover_models(["default", str(folder)])) == ["default", folder.name]
