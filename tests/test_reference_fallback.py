"""scripts/fallback/sklearn: the reference recipe's StandardScaler where scikit-learn is missing
(the GPU machine's image may lack it) gives scikit-learn's statistics."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sklearn_preprocessing = pytest.importorskip("sklearn.preprocessing")


def fallback_scaler():
    spec = importlib.util.spec_from_file_location("fallback_preprocessing",
                                                  ROOT / "scripts" / "fallback" / "sklearn" / "preprocessing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.StandardScaler()


def test_partial_fits_give_scikit_learns_mean_and_scale():
    rng = np.random.default_rng(0)
    ours, theirs = fallback_scaler(), sklearn_preprocessing.StandardScaler()
    for rows in (1, 7, 300, 2, 1000):  # chunks of a track's frames, as the recipe feeds them
        block = rng.gamma(0.5, 3.0, size=(rows, 33)).astype(np.float32)
        block[:, 5] = 0.0  # a silent bin: scale 1, as scikit-learn gives it
        ours.partial_fit(block)
        theirs.partial_fit(block)
    assert ours.n_samples_seen_ == theirs.n_samples_seen_ == 1310
    np.testing.assert_allclose(ours.mean_, theirs.mean_, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ours.scale_, theirs.scale_, rtol=1e-10, atol=0)
    assert ours.scale_[5] == theirs.scale_[5] == 1.0


def test_the_benchmark_adds_it_only_where_scikit_learn_is_missing(monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_benchmark
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert gpu_benchmark.reference_path("/stub", "/site") == "/stub:/site"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else object())
    assert gpu_benchmark.reference_path("/stub", "/site") == f"/stub:/site:{ROOT / 'scripts' / 'fallback'}"
