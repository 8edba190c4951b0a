"""Command-line entry points; each is a thin ``main(argv=None)`` over the Python API."""
