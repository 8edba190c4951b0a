"""Command-line entry points; each is a thin ``main(argv=None)`` over the Python API.

The installed commands start in :func:`umx_separate` and its siblings below, which import the tool's module
(and torch with it) themselves: a Ctrl+C while it loads, which takes seconds, ends the command as a later one
does, with one line and status 130 rather than a traceback.
"""
import importlib
import sys
from typing import Callable

from ..processes import sigterm_as_interrupt

__all__ = ["sigterm_as_interrupt", "umx_compare", "umx_evaluate", "umx_export", "umx_separate", "umx_synth",
           "umx_train", "umx_web"]


def _printable_output() -> None:
    """Let standard output show what its encoding lacks as ``\\uXXXX`` instead of raising.

    On Windows, output to a file or a pipe is in the system's code page (cp1252 in much of the world), and a
    song named in Japanese or Greek then raised UnicodeEncodeError at its first line: a traceback after its
    stems were written, and the rest of the batch never separated. Standard error already does this.
    """
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")


def _command(module: str, prog: str) -> Callable[[], int]:
    """The entry point of ``prog``: ``openunmix_like.cli.<module>.main()``, imported when it is called."""
    def command() -> int:
        _printable_output()
        try:
            main = importlib.import_module(f"{__name__}.{module}").main
        except KeyboardInterrupt:
            print(f"{prog}: error: interrupted while starting; nothing was done", file=sys.stderr)
            return 130
        try:
            return main()
        except KeyboardInterrupt:  # in a moment main does not cover itself (reading its options, say)
            print(f"{prog}: error: interrupted", file=sys.stderr)
            return 130

    command.__name__ = command.__qualname__ = prog.replace("-", "_")
    command.__doc__ = f"``{prog}``: :func:`openunmix_like.cli.{module}.main` on the command line's arguments."
    return command


umx_compare = _command("compare", "umx-compare")
umx_evaluate = _command("evaluate", "umx-evaluate")
umx_export = _command("export", "umx-export")
umx_separate = _command("separate", "umx-separate")
umx_synth = _command("synth", "umx-synth")
umx_train = _command("train", "umx-train")
umx_web = _command("web", "umx-web")
