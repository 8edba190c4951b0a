"""Speed and memory of openunmix-like, beside the reference Open-Unmix when it is importable.

Measures, with random weights in the published umxhq shapes (4 targets, hidden
512, n_fft 4096, hop 1024, stereo, 44.1 kHz):

- separation time of 60 s of audio at niter 0 and 1 (``Separator.forward`` on
  the whole tensor, as the reference does, and the segmented ``separate`` path
  the CLI uses), with the largest difference to the reference and to the
  straightforward implementation (``tests/naive.py``, the tests' reference);
- where the time goes, stage by stage;
- peak RSS of ``umx-separate`` on 30 s, 2 min and 10 min files (each in its own
  process), and of the reference on the lengths it can handle;
- the Wiener filter alone against norbert on one 300-frame window.

It prints a markdown report and writes it to ``docs/benchmarks.md`` (plus a PNG
of peak memory against duration when matplotlib is installed). To include the
reference::

    pip install --no-deps openunmix==1.3.0
    PYTHONPATH=../shared/tools/reference-openunmix python scripts/benchmark.py
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf
import torch

from openunmix_like import OpenUnmix, Separator, filtering
from openunmix_like.inference import separate_tensor
from openunmix_like.modeldir import AudioSettings, save_target
from openunmix_like.separator import resolve_precision

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- end of scripts/benchmark.py's report; what follows is kept when it is run again -->"
sys.path.insert(0, str(ROOT / "tests"))  # the straightforward separator the tests check the fast paths against
from naive import separate_naive  # noqa: E402
TARGETS = ["vocals", "drums", "bass", "other"]
RATE = 44100

# Child process measuring its own peak RSS: runs a command, prints the peak in kB.
PEAK_RSS_WRAPPER = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]);"
    "print(json.dumps({'rc': r.returncode, 'kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
)


def umxhq_states(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    states = {}
    for target in TARGETS:
        model = OpenUnmix(2049, 2, 512, max_bin=1487)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        states[target] = model.state_dict()
    return states


def our_separator(states, niter, precision: str = "fp32") -> Separator:
    models = {}
    for target, state in states.items():
        models[target] = OpenUnmix(2049, 2, 512, max_bin=1487)
        models[target].load_state_dict(state)
    return Separator(models, niter=niter, precision=precision).freeze()


def reference_separator(states, niter):
    try:
        import openunmix.model as ref
    except ImportError:
        return None
    models = {}
    for target, state in states.items():
        models[target] = ref.OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=1487)
        models[target].load_state_dict(state)
    return ref.Separator(models, niter=niter, wiener_win_len=300).eval()


def timed(fn, repeats: int):
    """Median wall time of ``repeats`` runs after one warm-up run, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def bench_speed(states, seconds: float, repeats: int) -> list:
    torch.manual_seed(1)
    audio = torch.randn(1, 2, int(seconds * RATE)) * 0.1
    rows = []
    baselines = {}  # niter -> (straightforward float32 output, reference time and output or None)
    for niter, precision in ((0, "fp32"), (1, "fp32"), (1, "bf16")):
        ours = our_separator(states, niter, precision)
        with torch.inference_mode():
            t_ours, est = timed(lambda: ours(audio), repeats)
            t_seg, _ = timed(lambda: separate_tensor(ours, audio[0], RATE), repeats)
        if niter not in baselines:
            with torch.inference_mode():
                naive = separate_naive(our_separator(states, niter), audio)  # float32 products
            reference, measured = reference_separator(states, niter), None
            if reference is not None:
                with torch.no_grad():
                    measured = timed(lambda: reference(audio), repeats)
            baselines[niter] = naive, measured
        naive, ref = baselines[niter]
        row = {"niter": niter, "precision": precision, "ours": t_ours, "ours_segmented": t_seg,
               "vs_naive": rel_diff(est, naive)}
        if ref is not None:
            row["reference"], row["vs_reference"] = ref[0], rel_diff(est, ref[1])
        rows.append(row)
    return rows


def bench_stages(states, seconds: float, repeats: int) -> dict:
    sep = our_separator(states, 1)
    audio = torch.randn(1, 2, int(seconds * RATE)) * 0.1
    stages = {}
    with torch.inference_mode():
        def front():
            spec = sep.stft(audio)
            return spec, sep.complexnorm(spec)

        stages["STFT + magnitude"], (spec, mag) = timed(front, repeats)
        # On the CPU the separator runs each model's whole-signal part (input layer, LSTM) here
        # and decodes the rest (fc2, fc3, mask) one Wiener window at a time in the next stage.
        stages["4 target models: input layer and LSTM"], outs = timed(
            lambda: sep._model_outputs(mag, spec, audio), repeats)
        stages["4 target models' fc2, fc3 and mask by window, Wiener filter, inverse STFT"], _ = timed(
            lambda: sep._filter_and_invert([out[:, 0] for out in outs], spec[0], 0, audio.shape[-1]), repeats)
        stages["whole forward"], _ = timed(lambda: sep(audio), repeats)
    return stages


def bench_wiener(repeats: int) -> dict:
    import norbert

    rng = np.random.default_rng(0)
    frames, bins, sources = 300, 2049, 4
    v = rng.random((frames, bins, 2, sources)) ** 2
    x = rng.standard_normal((frames, bins, 2)) + 1j * rng.standard_normal((frames, bins, 2))
    rows = []
    for real, cplx in ((np.float32, np.complex64), (np.float64, np.complex128)):
        v_n, x_n = v.astype(real), x.astype(cplx)
        eps = float(np.finfo(real).eps)  # norbert's default
        t_norbert, ref = timed(lambda: norbert.wiener(v_n.copy(), x_n.copy(), iterations=1, use_softmask=False),
                               repeats)
        # The same values in each implementation's own layout: norbert (frames, bins, channels,
        # sources); ours (sources, channels, bins, frames) with frames-major memory, as the
        # separator produces them.
        v_t = torch.from_numpy(np.ascontiguousarray(v_n.transpose(0, 3, 2, 1))).permute(1, 2, 3, 0)
        x_t = torch.from_numpy(np.ascontiguousarray(x_n.transpose(0, 2, 1))).permute(1, 2, 0)
        with torch.inference_mode():
            t_ours, ours = timed(lambda: filtering.wiener_fast(v_t, x_t, 1, eps=eps), repeats)
            t_plain, _ = timed(lambda: filtering.wiener(torch.from_numpy(v_n), torch.from_numpy(x_n), 1, eps=eps),
                               repeats)
        ours = ours.permute(3, 2, 1, 0).numpy()
        rows.append({"dtype": np.dtype(real).name, "norbert": t_norbert, "ours": t_ours, "ours_plain": t_plain,
                     "diff": float(np.abs(ours - ref).max() / np.abs(ref).max())})
    return {"rows": rows, "shape": f"{frames} frames x {bins} bins x 2 channels x {sources} sources, niter 1"}


def write_wav(path: Path, seconds: float) -> None:
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", RATE, 2, subtype="PCM_16") as f:
        for _ in range(int(np.ceil(seconds / 60))):
            n = int(min(60, seconds) * RATE)
            f.write((rng.standard_normal((n, 2)) * 0.05).astype(np.float32))
            seconds -= 60


def peak_rss_mb(cmd: list) -> float:
    out = subprocess.run([sys.executable, "-c", "import json;" + PEAK_RSS_WRAPPER, *cmd],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{cmd} failed: {out.stderr[-500:]}")
    return result["kb"] / 1024


REFERENCE_MEMORY_SCRIPT = """
import sys, torch, soundfile as sf
import openunmix.model as ref
states = torch.load(sys.argv[1], weights_only=True)
models = {}
for t, s in states.items():
    models[t] = ref.OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=1487)
    models[t].load_state_dict(s)
sep = ref.Separator(models, niter=1, wiener_win_len=300).eval()
audio = torch.from_numpy(sf.read(sys.argv[2], dtype="float32")[0].T.copy())[None]
with torch.no_grad():
    sep(audio)
"""


def bench_memory(states, durations, reference_durations, workdir: Path) -> list:
    model_dir = workdir / "umxhq-random"
    for target, state in states.items():
        model = OpenUnmix(2049, 2, 512, max_bin=1487)
        model.load_state_dict(state)
        save_target(model_dir, target, model, AudioSettings(RATE, 4096, 1024, 2), write_pth=False)
    torch.save(states, workdir / "states.pth")
    script = workdir / "reference_memory.py"
    script.write_text(REFERENCE_MEMORY_SCRIPT)
    has_reference = reference_separator(states, 1) is not None
    rows = []
    for seconds in durations:
        wav = workdir / f"input-{int(seconds)}s.wav"
        write_wav(wav, seconds)
        exe = [sys.executable, "-m", "openunmix_like.cli.separate"]
        start = time.perf_counter()
        ours = peak_rss_mb(exe + [str(wav), "--model", str(model_dir), "--outdir", str(workdir / "out"),
                                  "--force", "--quiet"])
        row = {"seconds": seconds, "ours_mb": ours, "ours_wall": time.perf_counter() - start}
        if has_reference and seconds in reference_durations:
            row["reference_mb"] = peak_rss_mb([sys.executable, str(script), str(workdir / "states.pth"), str(wav)])
        rows.append(row)
        wav.unlink()
    return rows


def bench_training(workdir: Path, steps_tracks: int = 48, musdb_root: Optional[Path] = None) -> list:
    """Training throughput: umxhq-sized model, batch 16, 6 s excerpts, Adam steps on the CPU."""
    from openunmix_like.training import TrainConfig, prepare, train_epoch

    root = workdir / "trackfolder"
    rng = np.random.default_rng(0)
    for split, n in (("train", steps_tracks), ("valid", 1)):
        for t in range(n):
            folder = root / split / f"track{t:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for name in TARGETS:
                sf.write(folder / f"{name}.wav", (rng.standard_normal((8 * RATE, 2)) * 0.05).astype(np.float32),
                         RATE, subtype="PCM_16")
    setups = [("trackfolder_fix (wav)", dict(dataset="trackfolder_fix", root=str(root), target_file="vocals.wav",
                                            interferer_files=["drums.wav", "bass.wav", "other.wav"],
                                            random_track_mix=True))]
    if musdb_root is not None:
        setups.append(("musdb (.stem.mp4, decoded cache)", dict(dataset="musdb", root=str(musdb_root),
                                                                samples_per_track=1)))
    rows = []
    for name, options in setups:
        for workers in (0, 2):
            cfg = TrainConfig(output=str(workdir / "train-out"), batch_size=16, seq_dur=6.0, nb_workers=workers,
                              quiet=True, **options)
            ctx = prepare(cfg)
            loss, seconds, share, samples = train_epoch(ctx, 1)
            rows.append({"dataset": name, "workers": workers, "samples": samples, "seconds": seconds,
                         "samples_per_s": samples / seconds, "data_share": share})
    return rows


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores{mem}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads")


def plot(rows, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["seconds"] / 60 for r in rows], [r["ours_mb"] for r in rows], "o-",
            label="openunmix-like (umx-separate)")
    ref = [r for r in rows if "reference_mb" in r]
    if ref:
        ax.plot([r["seconds"] / 60 for r in ref], [r["reference_mb"] for r in ref], "s--", label="reference 1.3.0")
    ax.set_xlabel("input duration (min)")
    ax.set_ylabel("peak RSS (MB)")
    ax.set_title("Peak memory, 4 umxhq-sized models, niter=1")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def report(args, speed, stages, wiener, memory, plotted, training) -> str:
    lines = [
        "# Benchmarks", "",
        f"Measured {datetime.date.today().isoformat()} on: {machine()}.", "",
        "Command:", "", f"    {args.command}", "",
        "Random weights in the published umxhq shapes (4 targets, hidden 512, n_fft 4096, hop 1024, stereo, "
        "44.1 kHz). Times are the median of "
        f"{args.repeats} runs after one warm-up run, in one process.", "",
        f"## Separation speed ({args.seconds:.0f} s of audio)", "",
        "| niter | precision | ours: forward (s) | x real time | ours: segmented `separate` (s) "
        "| reference forward (s) | speed-up | max diff to reference / peak | max diff to straightforward / peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in speed:
        ref = r.get("reference")
        ref_s = f"{ref:.2f}" if ref else "n/a"
        speedup = f"{ref / r['ours']:.1f}x" if ref else "n/a"
        ref_diff = f"{r['vs_reference']:.1e}" if ref else "n/a"
        lines.append(
            f"| {r['niter']} | {r['precision']} | {r['ours']:.2f} | {args.seconds / r['ours']:.1f} | "
            f"{r['ours_segmented']:.2f} | "
            f"{ref_s} | {speedup} | {ref_diff} | {r['vs_naive']:.1e} |")
    lines += ["", "## Where the time goes (ours, niter 1)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in stages.items()]
    lines += ["", "## Peak memory (`umx-separate`, niter 1, each run in its own process)", "",
              f"`umx-separate`'s default `--precision auto` is `{resolve_precision('auto')}` on this machine.", "",
              "| input | ours: peak RSS (MB) | ours: wall time (s) | reference forward: peak RSS (MB) |",
              "|---|---|---|---|"]
    for r in memory:
        ref = r.get("reference_mb")
        ref_s = f"{ref:.0f}" if ref else "not run"
        lines.append(f"| {r['seconds'] / 60:.1f} min | {r['ours_mb']:.0f} | {r['ours_wall']:.1f} | {ref_s} |")
    if plotted:
        lines += ["", f"![peak memory against duration]({Path(args.plot).name})"]
    lines += ["", "## Wiener filter alone", "", f"Input: {wiener['shape']}; median of {args.repeats} runs.", "",
              "| dtype | norbert 0.2.1 (s) | ours, `filtering.wiener` straightforward (s) "
              "| ours, `filtering.wiener_fast` (s) | fast vs norbert | max diff to norbert / peak |",
              "|---|---|---|---|---|---|"]
    for w in wiener["rows"]:
        lines.append(f"| {w['dtype']} | {w['norbert']:.3f} | {w['ours_plain']:.3f} | {w['ours']:.3f} | "
                     f"{w['norbert'] / w['ours']:.1f}x | {w['diff']:.1e} |")
    lines += ["", "## Training throughput", "",
              "One epoch of `umx-train` steps (umxhq-sized model: hidden 512, n_fft 4096; batch 16, 6 s excerpts, "
              "Adam, CPU). Data loading share: time the training loop waited for the next batch, over the epoch.", "",
              "| dataset | data-loader workers | samples | seconds | samples per second | data loading share |",
              "|---|---|---|---|---|---|"]
    for t in training:
        lines.append(f"| {t['dataset']} | {t['workers']} | {t['samples']} | {t['seconds']:.1f} | "
                     f"{t['samples_per_s']:.2f} | {100 * t['data_share']:.1f} % |")
    lines += ["", "How the time was cut, stage by stage: [performance.md](performance.md).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="audio length for the speed test")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory-durations", type=float, nargs="*", default=[30, 120, 600])
    p.add_argument("--reference-memory-durations", type=float, nargs="*", default=[30, 120])
    p.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--plot", default=str(ROOT / "docs" / "benchmark-memory.png"))
    p.add_argument("--musdb-root", default=str(ROOT.parent / "shared" / "data" / "musdb18-7s"),
                   help="MUSDB18 folder for the training throughput (skipped when missing)")
    p.add_argument("--training-tracks", type=int, default=48)
    args = p.parse_args(argv)
    args.command = " ".join(["python", "scripts/benchmark.py"] + (argv if argv is not None else sys.argv[1:]))
    if os.environ.get("PYTHONPATH"):
        args.command = f"PYTHONPATH={os.environ['PYTHONPATH']} " + args.command
    states = umxhq_states()
    print("speed ...", file=sys.stderr)
    speed = bench_speed(states, args.seconds, args.repeats)
    print("stages ...", file=sys.stderr)
    stages = bench_stages(states, args.seconds, args.repeats)
    print("wiener ...", file=sys.stderr)
    wiener = bench_wiener(args.repeats)
    print("memory ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        memory = bench_memory(states, args.memory_durations, args.reference_memory_durations, Path(tmp))
    print("training ...", file=sys.stderr)
    musdb_root = Path(args.musdb_root) if Path(args.musdb_root).is_dir() else None
    with tempfile.TemporaryDirectory() as tmp:
        training = bench_training(Path(tmp), args.training_tracks, musdb_root)
    plotted = plot(memory, Path(args.plot))
    text = report(args, speed, stages, wiener, memory, plotted, training)
    # The GPU section: scripts/gpu_benchmark.py's separation and command-line runs (its training runs and the
    # catalogue's GPU figures come from scripts/device_session.py, which runs them all on a lent GPU machine).
    if torch.cuda.is_available():
        import gpu_benchmark

        print("gpu ...", file=sys.stderr)
        parts, device = ["separation", "cli"], torch.device("cuda")
        gpu_benchmark.describe_device(device, parts)  # the table's Device line
        with tempfile.TemporaryDirectory() as tmp:
            gpu_benchmark.run_parts(parts, Path(tmp), device, False, float("inf"), Path(tmp))
        text += "\n" + gpu_benchmark.markdown(gpu_benchmark.RESULTS, "python scripts/benchmark.py") + "\n"
    print(text)
    output = Path(args.output)
    # Sections written by other scripts (the catalogue's, the CPU side-by-side) follow the marker: keep them.
    kept = output.read_text().split(MARKER, 1)[1] if output.is_file() and MARKER in output.read_text() else "\n"
    output.write_text(text.rstrip("\n") + "\n\n" + MARKER + kept)
    return 0


if __name__ == "__main__":
    sys.exit(main())
