"""Progress bars that exist only when one is asked for.

A tqdm bar, even one made with ``disable=True``, makes tqdm's multiprocessing lock and starts its monitor
thread. The lock fixes the start method of the calling program's ``multiprocessing`` (its own later
``set_start_method("spawn")`` then fails with "context has already been set"), so library calls that show
no bar make none.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional


class NoBar:
    """Takes the calls made on a tqdm bar and shows nothing."""

    def __init__(self, iterable: Optional[Iterable] = None):
        self.iterable = iterable
        self.n = 0

    def __iter__(self) -> Iterator:
        return iter(self.iterable)

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: float = 1) -> None:
        self.n += n

    def refresh(self) -> None:
        return None

    def set_postfix(self, *args, **kwargs) -> None:
        return None

    def close(self) -> None:
        return None


def bar(show: bool, iterable: Optional[Iterable] = None, **options) -> Any:
    """A tqdm bar over ``iterable`` with tqdm's ``options`` when ``show``, else a :class:`NoBar`."""
    if not show:
        return NoBar(iterable)
    from tqdm import tqdm

    return tqdm(iterable, **options)
