"""Command-line entry points; each is a thin ``main(argv=None)`` over the Python API."""
import contextlib
import signal
import threading


@contextlib.contextmanager
def sigterm_as_interrupt():
    """In the main thread, SIGTERM (a ``kill``, a job scheduler's stop) stops the run as Ctrl+C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
