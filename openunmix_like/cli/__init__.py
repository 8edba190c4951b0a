"""Command-line entry points; each is a thin ``main(argv=None)`` over the Python API."""
from ..processes import sigterm_as_interrupt

__all__ = ["sigterm_as_interrupt"]
