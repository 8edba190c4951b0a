"""What the package's processes cost before they do any work: the commands' start (``--help``, a missing
input, ``umx-web``'s page) and the memory of the processes that separate nothing (the Ray engine's decode and
write tasks, ``umx-evaluate --cores``' scoring processes, ``umx-web``'s server).

    python scripts/measure_startup.py [--repeat 5] [--commands-only]

Run it with another checkout first on ``PYTHONPATH`` (from a folder outside both) to compare two versions.
Prints a markdown table; each time is the median of ``--repeat`` runs, each memory figure the largest
resident size seen (Linux: read from /proc).
"""
import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

COMMANDS = ("separate", "train", "evaluate", "compare", "web", "export", "synth")


def command_seconds(name: str, args, repeat: int) -> float:
    code = (f"import sys; from openunmix_like.cli import umx_{name} as command; "
            f"sys.argv[0] = 'umx-{name}'; sys.exit(command())")
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, *args], capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rss_mb(pid) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def ray_workers(folder: Path) -> dict:
    """Largest resident size (MB) per kind of Ray worker, and whether torch was in it, over a local Ray run
    of three 2-second tracks with a tiny random-weight model (2 CPUs)."""
    import numpy as np
    import ray
    import soundfile as sf
    import torch

    from openunmix_like.cli.separate import main
    from openunmix_like.model import OpenUnmix
    from openunmix_like.modeldir import AudioSettings, save_target

    rng = np.random.default_rng(0)
    for k in range(3):
        (folder / "in").mkdir(parents=True, exist_ok=True)
        sf.write(folder / "in" / f"t{k}.wav", 0.1 * rng.standard_normal((88200, 2)).astype(np.float32), 44100)
    torch.manual_seed(0)
    for target in ("vocals", "drums", "bass", "other"):
        save_target(folder / "model", target, OpenUnmix(257, 2, 16, max_bin=128).eval(),
                    AudioSettings(44100, 512, 128, 2))
    temp = tempfile.mkdtemp(prefix="umx-ray-")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, _temp_dir=temp)
    seen, stop = {}, threading.Event()

    def sample():
        while not stop.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        name = f.read().split(b"\0")[0].decode()
                    kind = next((k for k in ("decode", "write", "SeparationWorker") if k in name), None)
                    if kind is None:
                        continue
                    with open(f"/proc/{pid}/maps") as f:
                        has_torch = "libtorch_cpu" in f.read()
                    mb = rss_mb(pid)
                except (OSError, ValueError, StopIteration):
                    continue
                entry = seen.setdefault(kind, {"mb": 0.0, "torch": False, "pids": set()})
                entry["mb"] = max(entry["mb"], mb)
                entry["torch"] |= has_torch
                entry["pids"].add(pid)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        status = main([str(folder / "in"), "--model", str(folder / "model"), "--quiet", "--engine", "ray",
                       "--outdir", str(folder / "out")])
    finally:
        stop.set()
        sampler.join()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert status == 0, status
    return seen


def scoring_worker(seconds: float = 30.0) -> dict:
    """A ``umx-evaluate --cores 1`` scoring process after scoring a track of four stereo targets of ``seconds``
    at 44.1 kHz: its resident size then and at its peak, and how long that first track took (the process
    imports the scoring's modules with it)."""
    import numpy as np

    from openunmix_like.cli.evaluate import Workers
    from openunmix_like.evaluate import score_track

    status = "{k: int(v.split()[0]) / 1024 for k, v in (l.split(':', 1) for l in open('/proc/self/status')) " \
             "if k in ('VmRSS', 'VmHWM')}"
    rng = np.random.default_rng(0)
    n = int(seconds * 44100)
    refs = {t: 0.1 * rng.standard_normal((n, 2)).astype(np.float32) for t in ("vocals", "drums", "bass", "other")}
    ests = {t: r + 0.02 * rng.standard_normal(r.shape).astype(np.float32) for t, r in refs.items()}
    pool = Workers(1)
    try:
        pool.submit(eval, "0").result()  # the process is started
        start = time.perf_counter()
        pool.submit(score_track, "t", refs, ests, 44100).result()
        scored_in = time.perf_counter() - start
        after = pool.submit(eval, status).result()
        has_torch = pool.submit(eval, "'torch' in __import__('sys').modules").result()
    finally:
        pool.executor.shutdown()
    return {"after": after["VmRSS"], "peak": after["VmHWM"], "first_job_s": scored_in, "torch": has_torch}


def web_server(folder: Path) -> dict:
    """``umx-web``: seconds from its start until its page answers, and the server process's resident size then
    (its worker processes, which separate, are not counted)."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = "import sys; from openunmix_like.cli import umx_web as command; sys.argv[0] = 'umx-web'; sys.exit(command())"
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-c", code, "--port", str(port), "--jobs-dir", str(folder / "jobs")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError("umx-web stopped before its page answered")
                time.sleep(0.02)
        return {"ready_s": time.perf_counter() - start, "mb": rss_mb(server.pid)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--commands-only", action="store_true",
                        help="only the commands' start, not the Ray, umx-web and scoring processes")
    args = parser.parse_args()
    import openunmix_like

    print(f"openunmix_like from {Path(openunmix_like.__file__).parent.parent}\n")
    print("| what | value |\n|---|---|")
    for name in COMMANDS:
        print(f"| `umx-{name} --help` | {command_seconds(name, ['--help'], args.repeat):.2f} s |")
    missing = command_seconds("separate", ["no-such-song.wav"], args.repeat)
    print(f"| `umx-separate no-such-song.wav` (one-line error) | {missing:.2f} s |")
    if args.commands_only:
        return
    with tempfile.TemporaryDirectory() as folder:
        for kind, entry in sorted(ray_workers(Path(folder)).items()):
            print(f"| Ray `{kind}` worker ({len(entry['pids'])} seen), largest resident size | {entry['mb']:.0f} MB"
                  f"{', torch loaded' if entry['torch'] else ', no torch'} |")
    with tempfile.TemporaryDirectory() as folder:
        web = web_server(Path(folder))
    print(f"| `umx-web`: its page answers after | {web['ready_s']:.2f} s |")
    print(f"| `umx-web`: server process, resident size then | {web['mb']:.0f} MB |")
    scoring = scoring_worker()
    loaded = ", torch loaded" if scoring["torch"] else ", no torch"
    print(f"| `umx-evaluate` scoring process after its first track (30 s, four stereo targets): resident, peak | "
          f"{scoring['after']:.0f} MB, {scoring['peak']:.0f} MB{loaded} |")
    print(f"| `umx-evaluate` scoring process: its first track, imports included | {scoring['first_job_s']:.1f} s |")


if __name__ == "__main__":
    main()
