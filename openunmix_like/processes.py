"""Signals: how the package's commands, and the child processes they start, take Ctrl+C and SIGTERM."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, ContextManager, Iterator, Mapping, Union

Handler = Union[Callable, int, None]


@contextlib.contextmanager
def signal_handlers(handlers: Mapping[int, Handler]) -> Iterator[None]:
    """Set ``handlers`` (signal -> handler) for the block and put back what was there after it.

    Only the main thread can set handlers: off it, this changes nothing. A handler Python did not
    install (``signal.signal`` returns None for it) is put back as the default.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def children_ignore_ctrl_c() -> ContextManager[None]:
    """Start child processes within this block with Ctrl+C ignored from their first instruction.

    Ctrl+C in a terminal reaches every process of the group. A worker still starting up (importing
    its modules, before a pool initializer could ignore it) dies of it with a "Fatal Python error"
    or a traceback on the user's terminal, in the middle of the main process's one-line message. An
    ignored signal stays ignored across ``exec``, and Python then leaves it so; the main process
    handles Ctrl+C and stops its workers itself. A Ctrl+C that arrives in this block is lost, so keep
    it to the starting of processes. Off the main thread it does nothing.
    """
    return signal_handlers({signal.SIGINT: signal.SIG_IGN})


def ignore_ctrl_c() -> None:
    """Ignore Ctrl+C in this process from now on (a worker pool's initializer: its parent stops it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def sigterm_as_interrupt() -> ContextManager[None]:
    """In the main thread, SIGTERM (a ``kill``, a job scheduler's stop) stops the run as Ctrl+C does."""
    return signal_handlers({signal.SIGTERM: _interrupt})


def interrupts_ignored() -> ContextManager[None]:
    """In the main thread, ignore Ctrl+C and SIGTERM for the block (a shutdown a second one would spoil)."""
    return signal_handlers({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN})


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (in the main thread) until the block ends, then act on the first as before.

    For a few renames that must happen together: a Ctrl+C comes after all of them, never between two.
    """
    arrived = []
    with signal_handlers(dict.fromkeys((signal.SIGINT, signal.SIGTERM), lambda signum, frame: arrived.append(signum))):
        yield
    if arrived:
        signal.raise_signal(arrived[0])  # now handled as it would have been (KeyboardInterrupt for Ctrl+C)
