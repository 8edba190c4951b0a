"""Independent pieces of CPU inference run side by side, one intra-op thread each.

Much of the separator's work is small operations: an LSTM's step-by-step
recurrence and the Wiener filter's passes over blocks of a few hundred kilobytes.
Each is a parallel region whose intra-op threads must meet at its end, so a
second thread helps little (on two cores: an LSTM 1.6x, the filter 1.2x) and the
time depends on how quickly the threads meet (with OpenMP threads that sleep
between regions, a separator's forward took 4.6-5.0 s instead of 1.3). Independent pieces (the targets' models, the
filter's bin blocks) run instead in lanes: threads of one intra-op thread each,
with no parallel region at all (four umxhq LSTMs: 0.43 s in two lanes, 0.51 s one
after the other with two intra-op threads, 0.84 s with one). :func:`run_in_lanes`
does that when the caller has several intra-op threads and no autograd; the
values are the same as one after the other. Callers use it for CPU work only.

    with torch.inference_mode():
        features = run_in_lanes(lambda model: model.encode(mix), models)  # in the order of models
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Sequence, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_POOL_LOCK = threading.Lock()
_pool = None
_pool_pid = None
_in_lane = threading.local()


def nb_lanes(nb_items: int) -> int:
    """How many lanes :func:`run_in_lanes` would use for ``nb_items`` pieces of work: the
    caller's intra-op threads (``torch.get_num_threads()``), at most one per piece; 1 (one
    after the other, as before) under autograd or inside a lane."""
    if torch.is_grad_enabled() or getattr(_in_lane, "active", False):
        return 1
    return max(1, min(torch.get_num_threads(), nb_items))


def run_in_lanes(fn: Callable[[T], R], items: Sequence[T], lanes: int = 0) -> List[R]:
    """``[fn(item) for item in items]``, computed in up to ``lanes`` threads of
    ``torch.get_num_threads() // lanes`` intra-op threads each.

    Items are dealt to lanes in turn: item k runs in lane ``k % lanes``, after the items
    before it in that lane (so per-lane scratch indexed by ``k % lanes`` is safe), and the
    caller's thread runs lane 0 itself. Only for CPU work without autograd whose items are
    independent (``fn`` may write to disjoint parts of one tensor). Exceptions propagate.

    Args:
        fn: the work for one item.
        items: the pieces of work.
        lanes: at most this many; 0: :func:`nb_lanes`.

    Returns:
        the results in the order of ``items``.
    """
    allowed = nb_lanes(len(items))
    lanes = min(lanes, allowed) if lanes else allowed
    if lanes <= 1:
        return [fn(item) for item in items]
    threads = max(1, torch.get_num_threads() // lanes)
    inference = torch.is_inference_mode_enabled()
    results: List = [None] * len(items)

    def lane(k: int) -> None:
        _in_lane.active = True
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode(inference), torch.no_grad():
                for i in range(k, len(items), lanes):
                    results[i] = fn(items[i])
        finally:
            torch.set_num_threads(saved)
            _in_lane.active = False

    futures = [_executor().submit(lane, k) for k in range(1, lanes)]
    try:
        lane(0)
    finally:
        errors = [f.exception() for f in futures]  # waits for every lane before returning
    for error in errors:
        if error is not None:
            raise error
    return results


def _executor() -> ThreadPoolExecutor:
    """The process's lane threads, made on first use (and again in a forked child)."""
    global _pool, _pool_pid
    with _POOL_LOCK:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1),
                                       thread_name_prefix="umx-lane")
            _pool_pid = os.getpid()
        return _pool
