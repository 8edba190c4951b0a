"""Long runs in one process: what separating track after track must not accumulate.

A catalogue is separated in one process (``umx-separate FOLDER``, ``separate_file`` in a loop), and an
``umx-web`` worker serves jobs for weeks. Memory, open files, threads and child processes must stay
where they are after the first tracks, whatever the number of tracks and their lengths.
"""
import os
import subprocess
import sys
import textwrap
import threading

from openunmix_like import KERNEL_CACHE_ENVS
from openunmix_like.separator import Separator
from openunmix_like.stems import separate_file

# Resident memory a fresh process gains from its 150th to its 300th input, each of its own length (0.5 to
# 1.4 s), read after malloc_trim (without it, glibc's freed-but-kept heap moved the readings by -39 to +34 MB
# between runs). With oneDNN's caches bounded (64 kernels) it has levelled off by then (measured 0.03 to 0.12
# MB, three runs); with them at 1,024 kernels, each length adds its kernels (measured 59.6 to 59.7 MB, three
# runs). Inputs of 3 to 6 s measured the same (0.4 and 60.0 MB) in three times as long.
GROWTH_LIMIT_MB = 20

DISTINCT_LENGTHS = textwrap.dedent("""
    import ctypes
    import sys
    import torch
    from openunmix_like import separate
    from openunmix_like.separator import Separator

    def rss_mb():
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap handed back: what is left is what is held
        except (OSError, AttributeError):  # not glibc: the readings keep the allocator's noise
            pass
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    torch.set_num_threads(1)  # no lanes, no threads spinning against other processes on the cores
    separator = Separator.from_pretrained(sys.argv[1], precision="fp32", niter=0)
    audio = torch.rand(2, 44100 * 2, generator=torch.Generator().manual_seed(0)) - 0.5
    for k in range(300):
        separate(audio[:, : 22050 + 128 * k], 44100, model=separator)
        if k == 149:
            start = rss_mb()
    print(rss_mb() - start)
""")


def test_memory_stays_bounded_over_inputs_of_many_lengths(model_dir):
    # Every song of a catalogue has its own length, and so has its last segment: each new length must not
    # leave kernels behind in oneDNN's caches (1024 shapes each by default), which the package bounds.
    folder = model_dir(hidden_size=128)
    env = {name: value for name, value in os.environ.items() if name not in KERNEL_CACHE_ENVS}
    done = subprocess.run([sys.executable, "-c", DISTINCT_LENGTHS, str(folder)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    growth = float(done.stdout.split()[-1])
    assert growth < GROWTH_LIMIT_MB, f"memory grew {growth:.0f} MB over 150 inputs of distinct lengths"


def test_kernel_cache_bound_set_in_the_environment_is_kept(model_dir):
    env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "3"}
    code = "import os, openunmix_like; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "3", done.stderr


def open_fds() -> list:
    return sorted(os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                  if os.path.exists(f"/proc/self/fd/{fd}"))


def child_processes() -> list:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        if int(text[text.rfind(")") + 2:].split()[1]) == os.getpid():
            found.append(pid)
    return found


def test_separate_file_in_a_loop_leaves_no_files_threads_or_processes(model_dir, wav_file, tmp_path):
    separator = Separator.from_pretrained(model_dir(), precision="fp32")
    songs = [wav_file(f"in/song{k}.wav", seconds=1.0 + 0.05 * k, seed=k) for k in range(16)]
    separate_file(songs[0], tmp_path / "out" / "0", separator)
    separate_file(songs[1], tmp_path / "out" / "1", separator, ext="mp3")
    fds, threads, children = open_fds(), threading.active_count(), child_processes()
    for k, song in enumerate(songs[2:], start=2):
        separate_file(song, tmp_path / "out" / str(k), separator, ext="mp3" if k % 4 == 0 else "wav")
    assert open_fds() == fds
    assert threading.active_count() == threads
    assert child_processes() == children
