"""Running a benchmark's commands under a time limit, and ending each with everything it started.

A command runs in a session of its own; at its limit every process of that session
ends (Ray's GCS, raylet and workers, DataLoader workers), found by session id in
/proc, so nothing it left behind competes with the next measurement.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Union


def session_members(sid: int) -> List[int]:
    """Ids of the live processes whose session id is ``sid`` (Linux /proc; empty elsewhere); zombies,
    already dead and waiting for their parent to collect them, are left out."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": state ppid pgrp session ...
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def kill_session(sid: int) -> int:
    """SIGKILL every process of session ``sid``; return how many were signalled."""
    count = 0
    for pid in session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
            count += 1
        except ProcessLookupError:
            pass
    return count


@dataclass
class Bounded:
    """The outcome of :func:`run_bounded`."""

    pid: int
    rc: Union[int, str]
    seconds: float
    timed_out: bool
    tail: str
    started: float


def run_bounded(command: List[str], timeout: float, env: Optional[dict] = None,
                on_line: Optional[Callable[[str], None]] = None, keep: int = 2000) -> Bounded:
    """Run ``command`` in a new session for at most ``timeout`` seconds; then end the whole session.

    Args:
        on_line: called with each line of its merged stdout and stderr as it comes.
        keep: characters of the output's end kept in ``Bounded.tail``.

    Returns: its pid (also the session's id), rc (``"timeout"`` when stopped), wall seconds, whether it
    timed out, the output's tail, and ``started`` (``time.time()`` at the start).
    """
    started, start = time.time(), time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, text=True, errors="replace")
    tail: List[str] = []

    def read() -> None:
        for line in proc.stdout:
            tail.append(line)
            if len(tail) > 400:
                del tail[:200]
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(1.0, timeout))
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    kill_session(proc.pid)  # what it started and left behind (Ray, loader workers), or all of it at the limit
    if timed_out:
        proc.wait()
        rc = "timeout"
    reader.join(timeout=5)
    return Bounded(proc.pid, rc, round(time.monotonic() - start, 1), timed_out, "".join(tail)[-keep:], started)
