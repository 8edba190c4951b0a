"""Child processes that leave Ctrl+C to the process that started them."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


@contextlib.contextmanager
def children_ignore_ctrl_c() -> Iterator[None]:
    """Start child processes within this block with Ctrl+C ignored from their first instruction.

    Ctrl+C in a terminal reaches every process of the group. A worker still starting up (importing
    its modules, before a pool initializer could ignore it) dies of it with a "Fatal Python error"
    or a traceback on the user's terminal, in the middle of the main process's one-line message. An
    ignored signal stays ignored across ``exec``, and Python then leaves it so; the main process
    handles Ctrl+C and stops its workers itself. A Ctrl+C that arrives in this block is lost, so keep
    it to the starting of processes. Off the main thread (where signals cannot be set) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
