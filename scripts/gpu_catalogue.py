"""Hours of audio separated per hour on one GPU: ``umx-separate --engine ray`` against ``--engine local``.

Issue 20's GPU figure, on the device's cores and its one GPU, with random umxhq-shaped
weights (``scripts/side_by_side.py``), ``--niter 1``, 16-bit wav in and out:

1. a few distinct generated tracks of ``--seconds`` (``benchmark_catalogue.song``) are
   linked under many names, more than any engine finishes in ``--cap`` seconds;
2. each configuration of ``--runs`` separates that folder in its own process (and
   session: at the cap, it ends with everything it started, Ray included); a watcher
   notes when each track is finished (its ``_done.json``, or for the local engine its
   last stem) and deletes its stems, so the disk holds a few tracks at a time;
3. the rate is read where it is steady: tracks finished between the first and the
   last, over that time (Ray's and the model's start are outside it; the wall rate
   from the command's start is given beside it); the GPU's busy share (``nvidia-smi``)
   and the CPUs' (``/proc/stat``) are averaged over the same window;
4. the limits for comparison: the separator alone on the GPU (no decoding, no
   writing, one process), and one track's decode and write on one core.

Results go to ``$OUT/catalogue_results.json`` after every step, and a markdown
section to ``$OUT/catalogue_section.md``. ``--smoke`` runs it all on the CPU at toy
sizes. Run by ``scripts/device_session.py`` on the device.

    python scripts/gpu_catalogue.py --seconds 180 --cap 50
    python scripts/gpu_catalogue.py --smoke
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_catalogue import RATE, song  # noqa: E402
from processes import run_bounded  # noqa: E402

STEMS = ("vocals", "drums", "bass", "other")
# name -> umx-separate options; the device's runs: Ray's default (one actor on the GPU,
# 8 tracks a call whose segments share batches), the same one track a call (what sharing
# batches across tracks gives), three actors sharing the GPU (decode, transfer and write
# of one track overlap another's separation), and the local engine with four files at a time.
RUNS = {
    "ray": "--engine ray",
    "ray_1_track_per_call": "--engine ray --tracks-per-call 1",
    "ray_3_actors": "--engine ray --actors 3 --actor-gpus 0.33",
    "local_jobs_4": "--engine local --jobs 4",
}
SMOKE_RUNS = {"ray": "--engine ray --actors 1", "local_jobs_2": "--engine local --jobs 2"}
RESULTS: dict = {}


def log(*parts) -> None:
    print(*parts, flush=True)


def save(out: Path) -> None:
    (out / "catalogue_results.json").write_text(json.dumps(RESULTS, indent=1))
    (out / "catalogue_section.md").write_text(markdown(RESULTS) + "\n")


def write_song(path: Path, seconds: float, seed: int) -> None:
    import soundfile as sf

    if not path.is_file():
        sf.write(path, song(seconds, seed), RATE, subtype="PCM_16")


def make_inputs(folder: Path, distinct: int, names: int, seconds: float) -> List[Path]:
    """``distinct`` generated tracks, hard-linked under ``names`` names (``track0000.wav`` ...)."""
    from concurrent.futures import ProcessPoolExecutor

    sources = folder / "distinct"
    sources.mkdir(parents=True, exist_ok=True)
    made = [sources / f"song{k:02d}-{seconds:g}s.wav" for k in range(distinct)]
    with ProcessPoolExecutor(max_workers=min(distinct, os.cpu_count() or 1)) as pool:
        list(pool.map(write_song, made, [seconds] * distinct, range(distinct)))
    inputs = folder / "in"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir()
    for k in range(names):
        os.link(made[k % distinct], inputs / f"track{k:04d}.wav")
    return made


class Finished:
    """Watches an output folder: when each track is finished, then deletes its stems (but ``keep``'s).

    A track is finished when its ``_done.json`` exists (``--engine ray``), or else when
    all of its stems do (the local engine renames each into place when it is complete).
    """

    def __init__(self, outdir: Path, ray: bool, keep=("track0000",), every: float = 0.25):
        self.outdir, self.ray, self.keep, self.every = outdir, ray, set(keep), every
        self.times: Dict[str, float] = {}
        self.stop = threading.Event()

    def __enter__(self):
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.scan()
        return False

    def _watch(self):
        while not self.stop.wait(self.every):
            self.scan()

    def scan(self) -> None:
        if not self.outdir.is_dir():
            return
        for entry in os.scandir(self.outdir):
            if not entry.is_dir() or entry.name in self.times:
                continue
            folder = Path(entry.path)
            stems = [folder / f"{stem}.wav" for stem in STEMS]
            marker = [folder / "_done.json"] if self.ray else stems
            try:
                self.times[entry.name] = max(path.stat().st_mtime for path in marker)
            except FileNotFoundError:
                continue
            if entry.name not in self.keep:
                for path in stems:
                    path.unlink(missing_ok=True)


class CpuBusy:
    """The CPUs' busy share from ``/proc/stat`` (all cores together), sampled every half second."""

    def __enter__(self):
        self.samples, self.stop = [], threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while True:
            try:
                fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            except (OSError, ValueError):
                return
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
            self.samples.append((time.time(), sum(fields) - idle, sum(fields)))
            if self.stop.wait(0.5):
                return

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        return False

    def share_between(self, start: float, end: float):
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][2] == inside[0][2]:
            return None
        return round((inside[-1][1] - inside[0][1]) / (inside[-1][2] - inside[0][2]), 3)


def rates(times: List[float], started: float, track_seconds: float) -> dict:
    """Hours of audio per hour: steady (between the first and the last track finished) and from the start."""
    times = sorted(times)
    row = {"tracks_done": len(times), "audio_h": round(len(times) * track_seconds / 3600, 3)}
    if times:
        row["first_done_after_s"] = round(times[0] - started, 1)
        row["h_per_h_from_start"] = round(len(times) * track_seconds / (times[-1] - started), 1)
    if len(times) >= 3 and times[-1] > times[0]:
        window = times[-1] - times[0]
        row.update({"steady_tracks": len(times) - 1, "steady_s": round(window, 1),
                    "h_per_h_steady": round((len(times) - 1) * track_seconds / window, 1),
                    "window": [times[0], times[-1]]})
    return row


def ray_logs(chars: int = 600) -> dict:
    """The ends of the newest Ray session's main logs (for a run in which Ray did not start or work)."""
    folder = Path(tempfile.gettempdir()) / "ray" / "session_latest" / "logs"
    tails = {}
    for name in ("raylet.err", "raylet.out", "gcs_server.err", "gcs_server.out", "runtime_env_agent.log",
                 "dashboard_agent.log", "python-core-driver.log"):
        matches = sorted(folder.glob(name.replace("python-core-driver", "python-core-driver*")))
        if matches and matches[-1].stat().st_size:
            tails[name] = matches[-1].read_text(errors="replace")[-chars:]
    return tails


def measure(name: str, options: str, common: List[str], work: Path, cap: float, track_seconds: float,
            env: dict) -> dict:
    """One configuration of ``umx-separate`` on the linked folder, stopped at ``cap`` seconds."""
    from gpu_benchmark import GpuBusy

    outdir = work / f"out-{name}"
    shutil.rmtree(outdir, ignore_errors=True)
    command = common + shlex.split(options) + ["--outdir", str(outdir)]
    ray = "--engine ray" in options
    with GpuBusy() as gpu, CpuBusy() as cpu, Finished(outdir, ray) as finished:
        done = run_bounded(command, cap, env=env, keep=1500)
    row = {"options": options, "cap_s": cap, "rc": done.rc, "wall_s": done.seconds}
    row.update(rates(list(finished.times.values()), done.started, track_seconds))
    start, end = row.pop("window", [done.started, done.started + done.seconds])
    row.update({"gpu_busy_share": gpu.share_between(start, end), "gpu_busy_share_whole_run": gpu.share,
                "gpu_memory_peak_mib": gpu.memory_peak_mib, "cpu_busy_share": cpu.share_between(start, end)})
    if done.rc not in (0, "timeout") or not finished.times:
        row["tail"] = done.tail
        if ray:
            row["ray_logs"] = ray_logs()
    return row


def stem_difference(work: Path, names: List[str]) -> Optional[float]:
    """Largest difference of the kept track's stems between the first run and the others, over the peak."""
    from benchmark_catalogue import max_difference

    folders = [work / f"out-{name}" / "track0000" for name in names]
    folders = [f for f in folders if (f / "vocals.wav").is_file()]
    return max((max_difference(other, folders[0]) for other in folders[1:]), default=None)


def separator_alone(folder: Path, track: Path, device: str, calls: int) -> dict:
    """The separator on one decoded track already in memory, best of ``calls``: the GPU's ceiling."""
    import soundfile as sf
    import torch

    from gpu_benchmark import Clock
    from openunmix_like import Separator
    from openunmix_like.inference import separate_tensor

    separator = Separator.from_pretrained(folder, niter=1, device=device, precision="fp32")
    audio = torch.from_numpy(sf.read(track, dtype="float32")[0].T.copy())
    seconds = audio.shape[-1] / RATE
    with torch.inference_mode():
        best, _ = Clock(torch.device(device)).best(lambda: separate_tensor(separator, audio, RATE).cpu(), n=calls)
    return {"s_per_track": best, "h_per_h": round(seconds / best, 1), "track_s": seconds}


def io_alone(track: Path, work: Path, calls: int) -> dict:
    """One track's decode and its four stems' write on one core, as the engines' CPU stages do them."""
    import torch

    from openunmix_like.audio import AudioSource
    from openunmix_like.writer import StemWriter

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    decode, write = float("inf"), float("inf")
    try:
        for k in range(calls):
            start = time.perf_counter()
            with AudioSource(track) as source:
                audio = source.read(0, source.nb_frames)
            decode = min(decode, time.perf_counter() - start)
            stems = {stem: 0.25 * audio for stem in STEMS}
            paths = {stem: work / f"io-{k}" / f"{stem}.wav" for stem in STEMS}
            start = time.perf_counter()
            with StemWriter(paths, RATE, audio.shape[0]) as writer:
                writer.write(stems)
                writer.finish()
            write = min(write, time.perf_counter() - start)
            shutil.rmtree(work / f"io-{k}")
    finally:
        torch.set_num_threads(threads)  # the separator measured next uses them all
    return {"decode_s": round(decode, 3), "write_s": round(write, 3)}


def run_options(specs: Optional[List[str]], named: Dict[str, str]) -> Dict[str, str]:
    """Run name -> umx-separate options, from names of ``named`` or ``NAME=OPTIONS``."""
    if not specs:
        return dict(named)
    runs = {}
    for spec in specs:
        name, _, options = spec.partition("=")
        if not options and name not in named:
            raise SystemExit(f"--runs {spec}: not one of {', '.join(named)}; write NAME='OPTIONS'")
        runs[name] = options or named[name]
    return runs


def gpu_name() -> str:
    import subprocess

    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20).stdout.strip() or "n/a"
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"


def environment() -> dict:
    shm = shutil.disk_usage("/dev/shm") if os.path.isdir("/dev/shm") else None
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    try:
        import ray

        ray_version = ray.__version__
    except ImportError as exc:
        ray_version = f"not importable: {exc}"
    return {"cpus": os.cpu_count(), "memory_gb": round(memory / 1e9, 1) if memory else None,
            "dev_shm_gb": round(shm.total / 1e9, 1) if shm else None, "python": platform.python_version(),
            "ray": ray_version, "machine": platform.machine()}


def markdown(results: dict) -> str:
    """The catalogue's GPU table for docs/benchmarks.md, from :data:`RESULTS`."""
    env, setup = results.get("environment", {}), results.get("setup", {})
    lines = ["### Catalogue on one GPU", "",
             f"{setup.get('device', 'n/a')}, {env.get('cpus')} CPUs, {env.get('memory_gb')} GB memory "
             f"(/dev/shm {env.get('dev_shm_gb')} GB); Python {env.get('python')}, torch {setup.get('torch')}, "
             f"Ray {env.get('ray')}. Random umxhq-shaped weights, `--niter 1`, "
             f"{setup.get('distinct')} generated tracks of {setup.get('track_s')} s linked under "
             f"{setup.get('names')} names, 16-bit wav in and out; each run stopped after {setup.get('cap_s')} s. "
             "Steady: tracks finished between the first and the last, over that time.", "",
             "| run | options | tracks (exit) | steady h of audio per hour | from the command's start | first track "
             "after (s) | GPU busy | CPUs busy | GPU memory peak (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in results.get("runs", {}).items():
        if "tracks_done" not in row:
            lines.append(f"| {name} | `{row.get('options', '')}` | failed: {row.get('error', 'n/a')} | | | | | | |")
            continue
        cells = [row.get(k) for k in ("h_per_h_steady", "h_per_h_from_start", "first_done_after_s",
                                      "gpu_busy_share", "cpu_busy_share", "gpu_memory_peak_mib")]
        ended = "stopped at the cap" if row["rc"] == "timeout" else f"exit {row['rc']}"
        lines.append(f"| {name} | `{row['options']}` | {row['tracks_done']} ({ended}) | "
                     + " | ".join("n/a" if c is None else str(c) for c in cells) + " |")
    alone, io = results.get("separator_alone", {}), results.get("io_alone", {})
    if alone or io:
        cpus = env.get("cpus") or 1
        per_track = (io.get("decode_s") or 0) + (io.get("write_s") or 0)
        io_limit = f"{cpus * setup.get('track_s', 0) / per_track:.0f}" if per_track else "n/a"
        lines += ["", f"Limits for comparison: the separator alone on the GPU, one decoded track in memory, "
                  f"{alone.get('s_per_track', 'n/a')} s a track ({alone.get('h_per_h', 'n/a')} h of audio per "
                  f"hour); decoding one track on one core {io.get('decode_s', 'n/a')} s and writing its four "
                  f"stems {io.get('write_s', 'n/a')} s, so {cpus} cores doing nothing else would decode and "
                  f"write {io_limit} h of audio per hour (arithmetic, not a measurement)."]
    if results.get("stem_difference_over_peak") is not None:
        lines += ["", f"Largest stem difference between the runs (track0000, over its peak): "
                  f"{results['stem_difference_over_peak']:.1e}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, to check the script")
    p.add_argument("--seconds", type=float, default=180.0, help="length of each track")
    p.add_argument("--distinct", type=int, default=8, help="generated tracks, linked under --names names")
    p.add_argument("--names", type=int, default=800, help="inputs: more than any run finishes in --cap")
    p.add_argument("--cap", type=float, default=50.0, help="seconds each run may take")
    p.add_argument("--runs", nargs="*", default=None, metavar="RUN",
                   help=f"runs by name ({', '.join(RUNS)}) or as NAME='OPTIONS' (default: all named ones)")
    p.add_argument("--workdir", default=None, help="folder for the model, tracks and outputs (default: temporary)")
    args = p.parse_args(argv)
    if args.smoke:
        args.seconds, args.distinct, args.names, args.cap = 8.0, 2, 40, min(args.cap, 45.0)
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="umx-gpu-catalogue-"))
    try:
        run(args, work, out)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    log(markdown(RESULTS))
    return 0


def run(args: argparse.Namespace, work: Path, out: Path) -> None:
    import torch

    from gpu_benchmark import cli, model_folder

    device = "cpu" if args.smoke else "cuda"
    runs = run_options(args.runs, SMOKE_RUNS if args.smoke else RUNS)
    names = list(runs)
    folder = model_folder(work)
    tracks = make_inputs(work, args.distinct, args.names, args.seconds)
    # The device's name comes from nvidia-smi: CUDA started here would hold GPU memory during the runs.
    RESULTS.update({"environment": environment(), "runs": {}, "setup": {
        "device": gpu_name() if device == "cuda" else "cpu (smoke)", "torch": torch.__version__,
        "distinct": args.distinct, "names": args.names, "track_s": args.seconds, "cap_s": args.cap}})
    save(out)
    common = cli("separate") + [str(work / "in"), "--model", str(folder), "--device", device, "--niter", "1",
                                "--quiet"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for name in names:
        try:
            RESULTS["runs"][name] = measure(name, runs[name], common, work, args.cap, args.seconds, env)
        except Exception as exc:  # one broken run must not stop the next
            RESULTS["runs"][name] = {"options": runs[name], "error": f"{type(exc).__name__}: {exc}"}
        log("catalogue", name, {k: v for k, v in RESULTS["runs"][name].items() if k not in ("tail", "ray_logs")})
        save(out)
    RESULTS["stem_difference_over_peak"] = stem_difference(work, names)
    for key, step in (("io_alone", lambda: io_alone(tracks[0], work, 2)),
                      ("separator_alone", lambda: separator_alone(folder, tracks[0], device, 3))):
        try:
            RESULTS[key] = step()
        except Exception as exc:
            RESULTS[key] = {"error": f"{type(exc).__name__}: {exc}"}
        log("catalogue", key, RESULTS[key])
        save(out)


if __name__ == "__main__":
    raise SystemExit(main())
