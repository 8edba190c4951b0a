"""Independent CPU work in lanes of one intra-op thread: same results as one after the other,
in order, never nested, never under autograd, and the caller's thread count left as it was."""
import threading

import pytest
import torch

from helpers import make_models, music_like
from openunmix_like import Separator, filtering, lanes


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def test_results_in_order_and_items_dealt_in_turn(two_threads):
    seen = {}

    def work(k):
        seen[k] = (threading.get_ident(), torch.get_num_threads(), lanes.nb_lanes(5))
        return k * k

    with torch.no_grad():
        assert lanes.nb_lanes(7) == 2
        assert lanes.run_in_lanes(work, range(7)) == [k * k for k in range(7)]
    assert seen[0][0] == threading.get_ident()  # lane 0 is the caller's thread
    assert {seen[k][0] for k in (0, 2, 4, 6)} == {seen[0][0]}
    assert {seen[k][0] for k in (1, 3, 5)} == {seen[1][0]} != {seen[0][0]}
    assert all(threads == 1 and nested == 1 for _, threads, nested in seen.values())
    assert torch.get_num_threads() == 2


def test_one_after_the_other_under_autograd_or_one_thread(two_threads):
    callers = set()

    def work(k):
        callers.add(threading.get_ident())
        return k

    assert lanes.nb_lanes(4) == 1  # autograd on
    assert lanes.run_in_lanes(work, range(4)) == [0, 1, 2, 3]
    torch.set_num_threads(1)
    with torch.no_grad():
        assert lanes.nb_lanes(4) == 1
        assert lanes.run_in_lanes(work, range(4)) == [0, 1, 2, 3]
    assert callers == {threading.get_ident()}


def test_an_error_in_a_lane_reaches_the_caller_after_every_lane_finished(two_threads):
    finished = []

    def work(k):
        if k == 1:
            raise ValueError("bad item")
        finished.append(k)

    with torch.no_grad(), pytest.raises(ValueError, match="bad item"):
        lanes.run_in_lanes(work, range(6))
    assert sorted(finished) == [0, 2, 4]  # lane 1 stops at its error, lane 0 finishes its items
    assert torch.get_num_threads() == 2


def test_lanes_keep_inference_mode(two_threads):
    with torch.inference_mode():
        out = torch.zeros(4)

        def work(k):
            out[k] += k  # an in-place write to an inference tensor needs inference mode
            return torch.is_inference_mode_enabled()

        assert lanes.run_in_lanes(work, range(4)) == [True] * 4
    assert out.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("niter,softmask,residual", [(1, False, False), (2, False, True), (1, True, False)])
def test_wiener_blocks_in_lanes_equal_one_after_the_other(two_threads, niter, softmask, residual):
    gen = torch.Generator().manual_seed(3)
    spec = torch.rand((4, 2, 513, 90), generator=gen) ** 2
    mix = torch.complex(torch.randn((2, 513, 90), generator=gen), torch.randn((2, 513, 90), generator=gen))
    with torch.inference_mode():
        assert lanes.nb_lanes(5) == 2
        in_lanes = filtering.wiener_fast(spec, mix, niter, softmask=softmask, residual=residual, block_bins=100)
        torch.set_num_threads(1)
        serial = filtering.wiener_fast(spec, mix, niter, softmask=softmask, residual=residual, block_bins=100)
    assert torch.equal(in_lanes, serial)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_separator_in_lanes_equals_one_after_the_other(two_threads, monkeypatch, precision):
    sep = Separator(make_models(n_fft=512, hidden_size=32), n_fft=512, n_hop=128, niter=1,
                    wiener_win_len=40, precision=precision).eval()
    audio = torch.from_numpy(music_like(2.0, 16000, seed=5))[None]
    encoded = []  # (models, lanes) of each call

    def counting(fn, items, nb=0):
        encoded.append((len(items), lanes.nb_lanes(len(items))))
        return lanes.run_in_lanes(fn, items, nb)

    monkeypatch.setattr("openunmix_like.separator.run_in_lanes", counting)
    with torch.inference_mode():
        in_lanes = sep(audio)
        # The same two intra-op threads, without lanes.
        monkeypatch.setattr(lanes, "nb_lanes", lambda nb_items: 1)
        monkeypatch.setattr(filtering, "nb_lanes", lambda nb_items: 1)
        serial = sep(audio)
    assert encoded == [(4, 2), (4, 1)]
    assert float((in_lanes - serial).abs().max()) <= 1e-6 * float(serial.abs().max())
