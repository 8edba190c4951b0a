"""``umx-web``: a local web app to separate songs, listen to the stems together and download them."""
from __future__ import annotations

import argparse
import math
import sys
import threading
import webbrowser
from pathlib import Path
from typing import Optional, Sequence

from .. import __version__
from . import sigterm_as_interrupt
from ..errors import OpenUnmixLikeError
from ..fileio import writable_folder

INSTALL_HINT = "umx-web needs the web extra: pip install 'openunmix-like[web]'"
GRACE_S = 5.0  # after Ctrl+C, responses still open (a download) are cut off after this long


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umx-web", description="Separate songs in your browser, on this machine.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--model", action="append", default=[], metavar="NAME|DIR",
                   help="model folder or published model name to offer (repeatable; the first is the default); "
                        "the bundled model and published models already downloaded are always offered")
    p.add_argument("--jobs-dir", default=None, metavar="DIR",
                   help="folder for uploads and results, kept across restarts (default: <cache>/web-jobs)")
    p.add_argument("--workers", type=int, default=1, help="jobs separated at once, one process each (default 1)")
    p.add_argument("--max-minutes", type=float, default=30.0, help="longest track accepted (default 30)")
    p.add_argument("--max-upload-mb", type=float, default=500.0, help="largest upload accepted (default 500)")
    p.add_argument("--keep-mb", type=float, default=5000.0,
                   help="total size of kept jobs; the oldest finished ones are removed beyond it (default 5000)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _report(message: str) -> None:
    print(f"umx-web: error: {message}", file=sys.stderr)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("workers", "max_minutes", "max_upload_mb", "keep_mb"):
        value = getattr(args, name)
        if value <= 0:
            raise OpenUnmixLikeError(f"--{name.replace('_', '-')} must be above 0")
        if not math.isfinite(value):  # the limits are sent to the page as JSON numbers, and inf is none
            raise OpenUnmixLikeError(f"--{name.replace('_', '-')} {value:g}: give a number above 0 (for no "
                                     "limit in practice, a large one such as 100000)")
    if not 0 <= args.port <= 65535:
        raise OpenUnmixLikeError("--port must be 0 to 65535")


def _jobs_dir(args: argparse.Namespace) -> Path:
    """The jobs folder, created; raises OpenUnmixLikeError when it cannot be used."""
    from ..pretrained import cache_dir  # torch with it, once the options are checked

    path = Path(args.jobs_dir).expanduser() if args.jobs_dir else cache_dir() / "web-jobs"
    return writable_folder("--jobs-dir", path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvicorn

        from ..web.app import create_app, is_loopback
    except ImportError:
        _report(INSTALL_HINT)
        return 1
    from ..web.jobs import JobManager
    from ..web.models import discover_models

    try:
        _check_args(args)
        models = discover_models(args.model)
        jobs_dir = _jobs_dir(args)
    except OpenUnmixLikeError as exc:
        _report(str(exc))
        return 1
    manager = JobManager(jobs_dir, models, workers=args.workers, max_minutes=args.max_minutes,
                         max_upload_mb=args.max_upload_mb, keep_mb=args.keep_mb)
    try:
        manager.claim()  # before listening: a second server on the folder is one line
    except OpenUnmixLikeError as exc:
        _report(str(exc))
        return 1
    app = create_app(manager, models, local_only=is_loopback(args.host))
    if not is_loopback(args.host):
        print(f"umx-web: warning: listening on {args.host}: anyone who can reach this machine on the network "
              "can upload files and use its CPU; use --host 127.0.0.1 to keep it private", file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=GRACE_S))
    _close_streams_on_exit(server, app.state.closing)
    announce = threading.Thread(target=_announce, args=(server, args), daemon=True)
    announce.start()
    try:
        # uvicorn stops on SIGINT or SIGTERM, then raises the signal again with the handlers it found:
        # a Ctrl+C is a KeyboardInterrupt, and so is a SIGTERM here (rather than the process killed by it).
        with sigterm_as_interrupt():
            server.run()
    except KeyboardInterrupt:
        left = manager.unfinished
        _report("interrupted; the server stopped" + (
            f", and its {left} unfinished job{'s' if left > 1 else ''} will be separated at its next start"
            if left else ""))
        return 130
    return 0


def _close_streams_on_exit(server, closing: threading.Event) -> None:
    """Make Ctrl+C (or SIGTERM) also end the pages' event streams, which uvicorn would wait for forever."""
    handle_exit = server.handle_exit

    def handle(sig, frame) -> None:
        closing.set()
        handle_exit(sig, frame)

    server.handle_exit = handle


def _announce(server, args: argparse.Namespace) -> None:
    """Print the URL once the server listens (the real port when --port 0), and open it if asked."""
    import time

    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    port = args.port
    for srv in getattr(server, "servers", []):
        for sock in srv.sockets:
            port = sock.getsockname()[1]
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    print(f"umx-web: serving on {url} (Ctrl+C stops)", flush=True)
    if args.open:
        webbrowser.open(url)


if __name__ == "__main__":
    sys.exit(main())
