"""scripts/bundle_model.py: per-target choice between runs, DEST placement, failures leave DEST alone."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from openunmix_like import Separator
from openunmix_like.modeldir import AudioSettings, save_target

from helpers import make_models

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("vocals", "drums", "bass", "other")


def fake_run(folder: Path, root: Path, losses: dict, seed: int) -> Path:
    """A umx-train output folder: tiny weights and, per target, the recorded best validation loss."""
    for target, model in make_models(seed=seed).items():
        extra = {"args": {"dataset": "trackfolder_fix", "root": str(root)}, "best_loss": losses[target]}
        save_target(folder, target, model, AudioSettings(44100.0, 512, 128, 2), extra=extra)
    return folder


def valid_root(path: Path, names) -> Path:
    for name in names:
        (path / "valid" / name).mkdir(parents=True)
    return path


def bundle(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "bundle_model.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


@pytest.mark.slow
def test_best_of_takes_each_target_from_the_run_with_the_lower_loss_and_dest_may_follow(tmp_path):
    root = valid_root(tmp_path / "root", ["a", "b"])
    one = fake_run(tmp_path / "one", root, {"vocals": 1.0, "drums": 2.0, "bass": 3.0, "other": 4.0}, seed=1)
    two = fake_run(tmp_path / "two", root, {"vocals": 2.0, "drums": 1.0, "bass": 3.5, "other": 3.9}, seed=2)
    dest = tmp_path / "dest"
    # DEST after the options, as scripts/train_default_model.sh writes it.
    result = bundle(one, "--best-of", two, dest)
    assert result.returncode == 0, result.stderr
    expected = {"vocals": one, "drums": two, "bass": one, "other": two}
    for target, run in expected.items():
        assert (dest / f"{target}.safetensors").read_bytes() == (run / f"{target}.safetensors").read_bytes()
    assert not list(tmp_path.glob(".dest.*"))


@pytest.mark.slow
def test_best_of_refuses_runs_validated_on_other_tracks_and_leaves_dest(tmp_path):
    one = fake_run(tmp_path / "one", valid_root(tmp_path / "r1", ["a", "b"]), dict.fromkeys(TARGETS, 1.0), seed=1)
    two = fake_run(tmp_path / "two", valid_root(tmp_path / "r2", ["a", "c"]), dict.fromkeys(TARGETS, 0.5), seed=2)
    dest = tmp_path / "dest"
    assert bundle(one, dest).returncode == 0
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    result = bundle(one, "--best-of", two, dest)
    assert result.returncode != 0
    assert "validated on other tracks" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before


@pytest.mark.slow
def test_best_of_passes_over_a_run_without_a_target(tmp_path):
    root = valid_root(tmp_path / "root", ["a", "b"])
    one = fake_run(tmp_path / "one", root, {"vocals": 1.0, "drums": 2.0, "bass": 3.0, "other": 4.0}, seed=1)
    two = fake_run(tmp_path / "two", root, dict.fromkeys(TARGETS, 0.5), seed=2)
    for name in ("other.json", "other.safetensors"):  # a stage that trained vocals, drums and bass only
        (two / name).unlink()
    dest = tmp_path / "dest"
    result = bundle(two, "--best-of", one, dest)
    assert result.returncode == 0, result.stderr
    expected = {"vocals": two, "drums": two, "bass": two, "other": one}
    for target, run in expected.items():
        assert (dest / f"{target}.safetensors").read_bytes() == (run / f"{target}.safetensors").read_bytes()
    for name in ("other.json", "other.safetensors"):
        (one / name).unlink()
    result = bundle(two, "--best-of", one, tmp_path / "dest2")
    assert result.returncode != 0 and "no other model in it or in the --best-of runs" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "dest2").exists()


@pytest.mark.slow
def test_half_stores_float16_weights_that_load_and_separate_like_the_float32_ones(tmp_path):
    root = valid_root(tmp_path / "root", ["a"])
    one = fake_run(tmp_path / "one", root, dict.fromkeys(TARGETS, 1.0), seed=1)
    result = bundle("--half", one, tmp_path / "dest")
    assert result.returncode == 0, result.stderr
    for target in TARGETS:
        half = load_file(str(tmp_path / "dest" / f"{target}.safetensors"))
        full = load_file(str(one / f"{target}.safetensors"))
        assert all(v.dtype == torch.float16 for v in half.values() if v.is_floating_point())
        assert all(torch.equal(half[k], v.half()) for k, v in full.items() if v.is_floating_point())
    separator = Separator.from_pretrained(str(tmp_path / "dest"))
    assert all(p.dtype == torch.float32 for p in separator.parameters())


@pytest.mark.slow
def test_half_refuses_weights_float16_cannot_hold_and_leaves_dest(tmp_path):
    root = valid_root(tmp_path / "root", ["a"])
    one = fake_run(tmp_path / "one", root, dict.fromkeys(TARGETS, 1.0), seed=1)
    state = load_file(str(one / "bass.safetensors"))
    state["output_mean"] = state["output_mean"] * 1e6  # beyond float16's range
    save_file(state, str(one / "bass.safetensors"))
    result = bundle("--half", one, tmp_path / "dest")
    assert result.returncode != 0 and "float16 weights change the output" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "dest").exists()
