"""Long-lived use holds no more of the system per call: file descriptors, threads and temporary files.

A review drove ``umx-web`` through hundreds of jobs (done, cancelled, failed, cut short) and the Python API,
``umx-separate --jobs 2``, the streaming separator and ``umx-evaluate --cores 2`` through hundreds of calls,
and found no growth; this keeps the cheapest of those checks (``separate_file`` in a loop) as a guard.
"""
import os
import threading

import pytest

from openunmix_like import Separator, separate_file

CALLS = 30


def open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_separating_a_file_again_and_again_holds_no_more_files_or_threads(tmp_path, model_dir, wav_file):
    separator = Separator.from_pretrained(model_dir("tiny", sample_rate=22050))
    song = wav_file("song.wav", seconds=0.3, rate=22050)
    outdir = tmp_path / "out"
    # The first calls set up what stays (torch's thread pool, the codec libraries): counted after them.
    for ext in ("wav", "flac"):
        separate_file(song, outdir, separator, ext=ext, overwrite=True)
    fds, threads = open_fds(), threading.active_count()
    for k in range(CALLS):
        separate_file(song, outdir, separator, ext=("wav", "flac")[k % 2], overwrite=True)
    # A leak per call would show as CALLS more; a few allow for other libraries' lazily opened files.
    assert open_fds() - fds <= 3, sorted(os.listdir("/proc/self/fd"))
    assert threading.active_count() - threads <= 1, [t.name for t in threading.enumerate()]
    left = sorted(p.name for p in outdir.rglob("*") if p.is_file())
    assert left == sorted(f"{name}.{ext}" for name in ("vocals", "drums", "bass", "other") for ext in ("wav", "flac"))
