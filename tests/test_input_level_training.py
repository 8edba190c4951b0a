"""umx-train records the level of the mixtures it trained on, so its models are level matched too."""
import json

import pytest
import soundfile as sf
import torch

from helpers import aligned_pairs, track_folders
from test_train import TINY
from openunmix_like import Separator
from openunmix_like.cli.train import main as train_main
from openunmix_like.level import track_level


def train(*args) -> int:
    return train_main([str(a) for a in args] + TINY + ["--epochs", "1", "--seed", "3"])


def turned(root, out, gain: float):
    """A copy of the track folders with every source turned by ``gain``."""
    for path in root.rglob("*.wav"):
        audio, rate = sf.read(path, dtype="float32")
        dest = out / path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        sf.write(dest, audio * gain, rate, subtype="FLOAT")
    return out


def recorded(folder):
    return json.loads((folder / "separator.json").read_text()).get("input_level")


@pytest.mark.slow
def test_the_training_mixtures_level_is_recorded_and_follows_the_data(tmp_path):
    root = track_folders(tmp_path / "data")
    quiet = turned(root, tmp_path / "quiet", 0.1)
    levels = {}
    for name, data in (("loud", root), ("quiet", quiet)):
        out = tmp_path / name
        assert train("--dataset", "trackfolder_fix", "--root", data, "--target", "vocals", "--output", out) == 0
        levels[name] = recorded(out)
        assert isinstance(levels[name], float) and Separator.from_pretrained(out).input_level == levels[name]
    # The same excerpts and augmentations (same seed), 20 dB down: the level moves by exactly that.
    assert levels["loud"] - levels["quiet"] == pytest.approx(20.0, abs=0.11)
    # What the models saw: a mixture of the data (at a gain augmentation's spread) lies around it.
    mixture = sum(sf.read(root / "train" / "t0" / f"{n}.wav", dtype="float32")[0] for n in
                  ("vocals", "drums", "bass", "other"))
    assert abs(levels["loud"] - track_level(torch.from_numpy(mixture.T.copy()), 22050)) < 8.0


@pytest.mark.slow
def test_another_target_updates_the_folders_level_and_a_hand_written_one_is_replaced(tmp_path):
    root = track_folders(tmp_path / "data")
    out = tmp_path / "model"
    assert train("--dataset", "trackfolder_fix", "--root", root, "--target", "vocals", "--output", out) == 0
    first = recorded(out)
    held = json.loads((out / "separator.json").read_text())
    (out / "separator.json").write_text(json.dumps({**held, "input_level": -40.0}))
    assert train("--dataset", "trackfolder_fix", "--root", root, "--target", "drums", "--output", out) == 0
    after = json.loads((out / "separator.json").read_text())
    assert after["targets"] == ["vocals", "drums"] and after["input_level"] == pytest.approx(first, abs=1.0)


@pytest.mark.slow
def test_models_of_aligned_pairs_record_no_level(tmp_path):
    # A model that processes its input (a compressor) depends on the level by design: no matching.
    out = tmp_path / "out"
    assert train("--dataset", "aligned", "--root", aligned_pairs(tmp_path / "al"), "--input-file", "raw",
                 "--output-file", "mixed", "--target", "mixed", "--output", out) == 0
    assert recorded(out) is None and Separator.from_pretrained(out).input_level is None
