"""BSSEval v4 computed block by block (openunmix_like.bsseval) against museval's whole-track computation."""
import tracemalloc

import numpy as np
import pytest
from scipy.signal import lfilter

from helpers import MUSDB_7S, require
from openunmix_like import bsseval
from openunmix_like.bsseval import _solve, bss_eval_v4

museval = pytest.importorskip("museval")


def _estimates(refs: np.ndarray, seed: int = 0) -> np.ndarray:
    """What a separator gives: each reference scaled and coloured, with leakage of the others and noise."""
    rng = np.random.default_rng(seed)
    ests = 0.8 * refs + 0.1 * refs.sum(0, keepdims=True) + 0.01 * rng.standard_normal(refs.shape)
    ests[0] = lfilter([0.6, 0.3, -0.1], [1.0], ests[0], axis=0)  # a filter the projection has to find
    return ests


def _coloured(nsrc: int, n: int, nchan: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return lfilter([1.0, 0.4], [1.0, -0.8], rng.standard_normal((nsrc, n, nchan)), axis=1)


def _assert_museval(refs, ests, window, hop, tolerance=1e-6, metrics=("SDR", "ISR", "SIR", "SAR")):
    """Scores as museval's, to ``tolerance`` dB (a number, or metric -> dB) on ``metrics``."""
    expected = museval.evaluate(refs, ests, win=window, hop=hop)
    got = bss_eval_v4(refs, ests, window, hop)
    for name, e, g in zip(("SDR", "ISR", "SIR", "SAR"), expected, got):
        if name not in metrics:
            continue
        assert g.shape == e.shape, name
        np.testing.assert_array_equal(np.isnan(g), np.isnan(e), err_msg=name)
        np.testing.assert_array_equal(np.isinf(g), np.isinf(e), err_msg=name)
        finite = np.isfinite(e)
        atol = tolerance[name] if isinstance(tolerance, dict) else tolerance
        np.testing.assert_allclose(g[finite], e[finite], rtol=0, atol=atol, err_msg=name)
    return got


def _musdb_excerpt(name: str, seconds: float):
    stempeg = pytest.importorskip("stempeg")
    path = require(MUSDB_7S) / f"{name}.stem.mp4"
    stems, rate = stempeg.read_stems(str(path), stem_id=[4, 1, 2, 3], duration=seconds + 0.1)  # vocals first
    return stems[:, :int(seconds * rate)].astype(np.float64), rate


@pytest.mark.slow
def test_museval_scores_on_musdb18_music():
    refs, rate = _musdb_excerpt("ANiMAL - Clinic A", 3.0 + 777 / 44100)  # three windows and a part left over
    # SDR needs no projection: it is museval's to rounding whatever the filters. The others move with
    # rounding in museval itself, by 2e-4 dB (SIR) for an input perturbed by one part in 1e15.
    _assert_museval(refs, _estimates(refs), rate, rate, tolerance={"SDR": 1e-9, "ISR": 1e-3, "SIR": 1e-3,
                                                                   "SAR": 1e-3})


@pytest.mark.slow
def test_a_mono_source_in_music_gets_museval_sdr_quickly():
    # This excerpt's bass has identical channels: numpy's LU finds the Gram matrix exactly singular, where
    # museval's rounding happened to pass (its SIR then moves by dB for input changes of 1e-15).
    refs, rate = _musdb_excerpt("Actions - Devil's Words", 2.0)
    assert np.array_equal(refs[2, :, 0], refs[2, :, 1])
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.solve(*_gram_and_cross(refs, _estimates(refs)))
    sdr, isr, sir, sar = _assert_museval(refs, _estimates(refs), rate, rate, tolerance=1e-9, metrics=("SDR",))
    assert np.isfinite(np.stack([isr, sir, sar])).all()


def _gram_and_cross(refs, ests):
    from openunmix_like import bsseval

    captured = []
    solve = bsseval._solve
    try:
        bsseval._solve = lambda gram, rhs: captured.append((gram, rhs)) or solve(gram, rhs)
        bsseval._distortion_filters(list(refs), list(ests), bsseval.FILTERS_LEN)
    finally:
        bsseval._solve = solve
    gram, rhs = captured[0]
    return gram, rhs.transpose(1, 0, 2).reshape(len(gram), -1)


@pytest.mark.parametrize("nsrc, nchan, seconds, window, hop", [
    (3, 2, 2.6, 1.0, 1.0),   # a part window at the end, left out as museval leaves it
    (2, 2, 3.0, 1.0, 0.5),   # overlapping windows
    (1, 2, 2.0, 1.0, 1.0),   # one source: no interference, SIR infinite in both
    (2, 1, 2.0, 1.0, 1.0),   # mono
    (2, 2, 0.7, 1.0, 1.0),   # a window longer than the signal: one window, the whole signal
])
def test_museval_scores_on_any_shape(nsrc, nchan, seconds, window, hop):
    rate = 8000
    refs = _coloured(nsrc, int(seconds * rate), nchan)
    _assert_museval(refs, _estimates(refs), int(window * rate), int(hop * rate))


def test_windows_where_a_reference_or_an_estimate_is_silent_are_nan_as_in_museval():
    rate = 8000
    refs = _coloured(3, 4 * rate, 2)
    refs[1, rate:2 * rate] = 0.0
    ests = _estimates(refs)
    ests[2, 3 * rate:] = 0.0
    ests[0, 2 * rate:3 * rate, 0] = -ests[0, 2 * rate:3 * rate, 1]  # channels that cancel: silent to museval
    sdr = _assert_museval(refs, ests, rate, rate)[0]
    assert np.isnan(sdr).all(axis=0).tolist() == [False, True, True, True]


def test_linked_channels_score_as_museval_to_its_own_rounding():
    # A right channel that is the left one scaled makes the Gram matrix singular but for museval's epsilon:
    # museval's own scores then move by about 1e-4 dB when its input moves by one part in 1e15.
    rate = 8000
    refs = _coloured(2, 2 * rate, 1)
    refs = np.concatenate([refs, 0.8 * refs], axis=2)
    ests = _estimates(refs)
    _assert_museval(refs, ests, rate, rate, tolerance=1e-3)


def test_refused_as_museval_refuses_them():
    refs = _coloured(2, 1000, 2)
    with pytest.raises(ValueError, match="same"):
        bss_eval_v4(refs, refs[:, :999], 500, 500)
    silent = refs.copy()
    silent[1] = 0.0
    with pytest.raises(ValueError, match="non-silent"):
        bss_eval_v4(silent, refs, 500, 500)
    with pytest.raises(ValueError, match="non-silent"):
        bss_eval_v4(refs, silent, 500, 500)


def test_an_exactly_singular_gram_matrix_is_solved_with_a_ridge():
    gram = np.array([[1.0, 1.0], [1.0, 1.0]])
    rhs = np.array([[[2.0], [2.0]], [[1.0], [1.0]]])
    with np.errstate(all="raise"):
        got = _solve(gram, rhs)
    np.testing.assert_allclose(got, [[[1.0], [1.0]], [[0.5], [0.5]]])  # the least-norm solutions


def test_memory_does_not_grow_with_the_length(monkeypatch):
    # museval holds complex128 spectra of every channel over the whole (padded) track; here the working
    # memory beyond the inputs is a few blocks and one window, whatever the length. Short filters and
    # blocks keep that small, so that no growth hides under it.
    monkeypatch.setattr(bsseval, "BLOCK", 2048)
    rate = 8000
    peaks = []
    for seconds in (4, 32):
        refs = _coloured(4, seconds * rate, 2)
        ests = _estimates(refs)
        tracemalloc.start()
        bss_eval_v4(refs, ests, rate, rate, filters_len=32)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    inputs_growth = 2 * 28 * rate * 4 * 2 * 8
    assert peaks[1] - peaks[0] < 0.01 * inputs_growth, peaks  # the sums of whole channels would be 0.03


def test_float32_sources_score_as_their_float64_copies_without_the_copies():
    rate = 8000
    refs = _coloured(3, 2 * rate, 2).astype(np.float32)
    ests = _estimates(refs).astype(np.float32)
    given = bss_eval_v4([r.T.copy().T for r in refs], list(ests), rate, rate)  # strided views, float32
    copies = bss_eval_v4(refs.astype(np.float64), ests.astype(np.float64), rate, rate)
    for got, expected in zip(given, copies):
        np.testing.assert_array_equal(got, expected)


def test_the_fast_metrics_of_a_track_are_those_of_metrics_without_float64_copies(monkeypatch):
    import torch

    from openunmix_like.metrics import sdr_mdx, si_sdr, track_metrics

    rate = 8000
    refs = _coloured(2, 3 * rate + 5, 2).astype(np.float32)
    ests = _estimates(refs).astype(np.float32)
    for reference, estimate in ((refs[0], ests[0]), (refs[1], refs[1]), (refs[1], np.zeros_like(refs[1]))):
        got = track_metrics(reference.T.copy().T, estimate, block=1000)  # a strided view, blocks and a rest
        expected = (sdr_mdx(torch.from_numpy(reference), torch.from_numpy(estimate)),
                    si_sdr(torch.from_numpy(reference), torch.from_numpy(estimate)))
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    peaks = []
    for seconds in (4, 32):
        ref = _coloured(1, seconds * rate, 2)[0].astype(np.float32)
        est = 0.5 * ref
        tracemalloc.start()
        track_metrics(ref, est, block=1000)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] - peaks[0] < 0.01 * 28 * rate * 2 * 8, peaks  # float64 copies would grow by twice that


def test_scoring_a_track_makes_no_float64_copy_of_it():
    # score_track stacked float64 copies of the references and estimates, then copied them again for the
    # targets scored: hundreds of MB a minute of a song. It now hands the float32 arrays to BSSEval as given.
    from openunmix_like.evaluate import score_track

    rate = 8000
    peaks = []
    for seconds in (4, 32):
        refs = _coloured(2, seconds * rate, 2).astype(np.float32)
        ests = _estimates(refs).astype(np.float32)
        tracemalloc.start()
        score_track("t", {"a": refs[0], "b": refs[1]}, {"a": ests[0], "b": ests[1]}, rate)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    float64_growth = 2 * 28 * rate * 2 * 2 * 8  # references and estimates, two stereo targets
    assert peaks[1] - peaks[0] < 0.05 * float64_growth, peaks
