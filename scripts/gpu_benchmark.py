"""GPU figures for docs/benchmarks.md: separation and training, ours beside the reference Open-Unmix.

One prepared run for a machine with one CUDA GPU, normally through
``scripts/device_session.py`` (which installs what ``scripts/prepare_device.sh``
puts in ``.gpu/`` and runs each part below in its own process). It measures, with
random umxhq-shaped weights, niter 1:

1. ``separation``: ``Separator`` forward on 60 s and 600 s: ours whole, ours as batched
   segments (``separate_tensor``), ours one segment at a time, the reference; peak GPU
   memory; the batched output against one segment at a time and ours against the
   reference; batched segments on 60 min for the memory peak (best of three calls on
   60 s, fewer on 600 s: :func:`repeats`);
2. ``cli``: ``umx-separate --device cuda --niter 1`` on a 10-minute wav, end to end, with
   the GPU's busy share and memory (``nvidia-smi`` every 100 ms), and on a 1 s wav for
   the command's fixed cost (Python, torch and CUDA start, model load);
3. ``training``: samples per second at hidden 512, 6 s excerpts, on 256 generated track
   folders (:func:`training_runs`): ours with the data on the GPU (``--preload on``) at
   batch 16 (fp32), 64 and 256 (bf16), ours reading files with 8 loader workers, and the
   reference recipe (``.gpu/train.py`` with the torchaudio stand-in ``.gpu/stub``); the
   per-epoch losses of ours and of the reference, same seed, data and batch, 16 epochs
   of 16 steps.

Results go to ``$OUT/gpu_results.json`` after each part (``--merge`` adds to the file
rather than replacing it) and a markdown section to ``$OUT/gpu_section.md``. ``--smoke``
runs every step at toy sizes on the CPU, to check the script before spending device time.

    PYTHONPATH=/tmp/site:$PWD python3 scripts/gpu_benchmark.py --only separation cli
    python scripts/gpu_benchmark.py --smoke
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from side_by_side import TARGETS, write_umxhq_shaped  # noqa: E402

RATE = 44100
RESULTS: dict = {}
PARTS = ("separation", "cli", "training")


def log(*parts) -> None:
    print(*parts, flush=True)


def save(out: Path) -> None:
    (out / "gpu_results.json").write_text(json.dumps(RESULTS, indent=1))


def checkpoint() -> None:
    """Save what is measured so far to $OUT, if set: a run stopped at its time limit keeps it."""
    if os.environ.get("OUT"):
        save(Path(os.environ["OUT"]))


def cli(name: str) -> list:
    """A ``umx-<name>`` command line that works from a checkout on PYTHONPATH."""
    return [sys.executable, "-c", f"import sys; sys.argv[0] = 'umx-{name}'; "
            f"from openunmix_like.cli.{name} import main; sys.exit(main())"]


class Clock:
    """Wall time of a callable on the device (synchronised), best of ``n`` after one warm-up call."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else 0.0

    def best(self, fn, n: int = 2, warm: bool = True):
        if warm:
            fn()
        times, result = [], None
        for _ in range(n):
            self.sync()
            start = time.perf_counter()
            result = fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return round(min(times), 3), result


class GpuBusy:
    """GPU utilisation and memory (``nvidia-smi``, every 100 ms) while the block runs; None without nvidia-smi.

    ``samples`` holds ``(time.time(), utilisation %, memory used MiB)``; :meth:`share` averages the
    utilisation over the whole block or over a window of it.
    """

    def __enter__(self):
        self.samples, self.proc = [], None
        try:
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                          "--format=csv,noheader,nounits", "-lms", "100"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return self
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            fields = [f.strip() for f in line.split(",")]
            if len(fields) == 2 and all(f.isdigit() for f in fields):
                self.samples.append((time.time(), int(fields[0]), int(fields[1])))

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
        return False

    def share_between(self, start: float = 0.0, end: float = float("inf")):
        """Mean busy share (0-1) of the samples taken between two ``time.time()`` values; None without any."""
        busy = [u for t, u, _ in self.samples if start <= t <= end]
        return round(sum(busy) / len(busy) / 100, 3) if busy else None

    @property
    def share(self):
        return self.share_between()

    @property
    def memory_peak_mib(self):
        return max((m for _, _, m in self.samples), default=None)


def repeats(name: str, seconds: float):
    """``(calls, warm-up call first)`` for one forward: the best of three on short inputs; on long ones
    (about 10 s a call for the whole-track paths) one call each, warmed up for the reference, and
    the best of two after a warm-up for the batched runs, whose ratio to the reference is the goal;
    the shorter inputs before have already loaded the kernels."""
    if seconds <= 100:
        return 3, True
    if name.startswith("ours_batched"):
        return 2, True
    return 1, name == "reference"


def separation(folder: Path, device: torch.device, clock: Clock, lengths, long_seconds: float) -> None:
    from openunmix_like import Separator
    from openunmix_like.inference import auto_batch_segments, separate_tensor

    ours = Separator.from_pretrained(folder, niter=1, device=device, precision="fp32")
    # bfloat16 products (dense and LSTM weights): CPUs with bfloat16 units use them by default.
    ours_bf16 = Separator.from_pretrained(folder, niter=1, device=device, precision="bf16")
    try:
        from openunmix import utils
        reference = utils.load_separator(str(folder), targets=list(TARGETS), niter=1, device=device)
        reference.freeze()
    except ImportError as exc:
        reference, RESULTS["reference_missing"] = None, repr(exc)
    RESULTS["batch_segments_auto"] = auto_batch_segments(ours, 30.0)
    for seconds in lengths:
        torch.manual_seed(0)
        audio = 0.1 * torch.randn(1, 2, int(seconds * RATE))
        on_device = audio.to(device)
        row = {}
        with torch.inference_mode():
            runs = [("ours_whole", lambda: ours(on_device)),
                    ("ours_batched", lambda: separate_tensor(ours, audio[0], RATE)),
                    ("ours_one_segment_at_a_time", lambda: separate_tensor(ours, audio[0], RATE, batch_segments=1))]
            if reference is not None:
                runs.append(("reference", lambda: reference(on_device)))
            # Last: whether cuDNN takes bfloat16 LSTM weights is the one open question of this part.
            runs.append(("ours_batched_bf16", lambda: separate_tensor(ours_bf16, audio[0], RATE)))
            outputs = {}
            for name, fn in runs:
                clock.reset_peak()
                calls, warm = repeats(name, seconds)
                try:
                    seconds_taken, out = clock.best(fn, n=calls, warm=warm)
                except Exception as exc:  # out of memory, or an operation the device refuses: the next run goes on
                    row[name] = {"error": repr(exc)[:200]}
                    log(f"separate {seconds} s", name, "failed:", repr(exc)[:200])
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                row[name] = {"s": seconds_taken, "x_real_time": round(seconds / seconds_taken, 1),
                             "peak_gb": clock.peak_gb(), "calls": calls, "warm_up": warm}
                outputs[name] = out.detach().cpu().reshape(-1)
            if "ours_batched" in outputs and "ours_one_segment_at_a_time" in outputs:
                a, b = outputs["ours_batched"], outputs["ours_one_segment_at_a_time"]
                row["batched_vs_one_at_a_time_over_peak"] = float((a - b).abs().max() / b.abs().max())
            if "ours_batched" in outputs and "ours_batched_bf16" in outputs:
                a, b = outputs["ours_batched_bf16"], outputs["ours_batched"]
                row["bf16_vs_fp32_over_peak"] = float((a - b).abs().max() / b.abs().max())
            if "reference" in outputs and "ours_whole" in outputs:
                a, b = outputs["ours_whole"], outputs["reference"]
                row["ours_whole_vs_reference_over_peak"] = float((a - b).abs().max() / b.abs().max())
        RESULTS[f"separate_{int(seconds)}s"] = row
        log(f"separate {seconds} s", json.dumps(row))
        checkpoint()
    try:
        RESULTS["stages"] = stages(ours, clock, device, segments=max(1, int(max(lengths) // 30)),
                                   seconds=min(30.0, float(min(lengths))))
    except Exception as exc:
        RESULTS["stages"] = {"error": repr(exc)[:200]}
    log("stages", RESULTS["stages"])
    checkpoint()
    torch.manual_seed(0)
    audio = 0.1 * torch.randn(2, int(long_seconds * RATE))
    clock.reset_peak()
    try:
        with torch.inference_mode():
            seconds_taken, _ = clock.best(lambda: separate_tensor(ours, audio, RATE), n=1, warm=False)
        RESULTS[f"separate_{int(long_seconds)}s_batched"] = {"s": seconds_taken, "peak_gb": clock.peak_gb()}
    except Exception as exc:
        RESULTS[f"separate_{int(long_seconds)}s_batched"] = {"error": repr(exc)[:200]}
    log("long input", RESULTS[f"separate_{int(long_seconds)}s_batched"])


def stages(separator, clock: Clock, device: torch.device, segments: int, seconds: float) -> dict:
    """Where one batch of ``segments`` segments of ``seconds`` goes (20 of 30 s: about the batch a 600 s
    input's overlapping segments make): STFT and magnitude, the target models, then the Wiener filter and
    inverse STFT, which run one segment after another; best of 3 after a warm-up, each stage synchronised.
    If goal 1 is not met, this says which stage holds it back."""
    torch.manual_seed(0)
    audio = (0.1 * torch.randn(segments, 2, int(seconds * RATE))).to(device)
    row = {"segments": segments, "segment_s": seconds}
    with torch.inference_mode():
        def front():
            spec = separator.stft(audio)
            return spec, separator.complexnorm(spec)

        row["stft_s"], (spec, mag) = clock.best(front, n=3)
        row["models_s"], outs = clock.best(lambda: separator._model_outputs(mag, spec, audio), n=3)

        def filters():
            return [separator._filter_and_invert([out[:, i] for out in outs], spec[i], 0, audio.shape[-1])
                    for i in range(segments)]

        row["wiener_istft_s"], _ = clock.best(filters, n=3)
        row["whole_s"], _ = clock.best(lambda: separator(audio), n=3)
    return row


def command_line(folder: Path, device: torch.device, work: Path, seconds: float) -> None:
    """``umx-separate`` on one generated wav of ``seconds``, end to end, and on a 1 s wav for the fixed cost.

    The fixed cost (Python and torch start, CUDA start, model load) is paid once per command, however
    many files follow: ``x_real_time_after_start`` is the rate once it is paid.
    """
    import soundfile as sf

    rng = np.random.default_rng(0)
    runs = {}
    for name, length in (("cli_start", 1.0), (f"cli_{int(seconds)}s", seconds)):
        wav = work / f"{name}.wav"
        sf.write(wav, (0.1 * rng.standard_normal((int(length * RATE), 2))).astype(np.float32), RATE,
                 subtype="PCM_16")
        command = cli("separate") + [str(wav), "--model", str(folder), "--device", device.type, "--niter", "1",
                                     "--outdir", str(work / "cli-out"), "--force", "--quiet"]
        with GpuBusy() as busy:
            start = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True)
            wall = time.perf_counter() - start
        runs[name] = wall
        RESULTS[name] = {"audio_s": length, "s": round(wall, 2), "x_real_time": round(length / wall, 1),
                         "gpu_busy_share": busy.share, "gpu_memory_peak_mib": busy.memory_peak_mib,
                         "rc": proc.returncode, "tail": (proc.stdout + proc.stderr)[-300:]}
        log("umx-separate", name, RESULTS[name])
    key = f"cli_{int(seconds)}s"
    work_s = runs[key] - runs["cli_start"]
    if work_s > 0:
        RESULTS[key]["x_real_time_after_start"] = round(seconds / work_s, 1)


def training_track(folder: Path, seconds: float, seed: tuple) -> None:
    """One track folder of four generated stereo sources (tones, noise bursts, a bass line, chords)."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    folder.mkdir(parents=True, exist_ok=True)
    f = rng.uniform(200, 600)
    stems = {
        "vocals": np.sin(2 * np.pi * f * t + 3 * np.sin(2 * np.pi * 5 * t)) * (1 + np.sin(np.pi * t)) / 2,
        "drums": rng.standard_normal(t.size) * np.exp(-((t * 4) % 1) * 20),
        "bass": np.sin(2 * np.pi * rng.uniform(40, 120) * t),
        "other": sum(np.sin(2 * np.pi * rng.uniform(200, 2000) * t) for _ in range(4)) / 4,
    }
    for name, mono in stems.items():
        stereo = np.stack([mono, mono * rng.uniform(0.5, 1)], 1) * 0.2
        sf.write(folder / f"{name}.wav", stereo.astype(np.float32), RATE, subtype="PCM_16")


def training_data(root: Path, tracks: int, seconds: float) -> None:
    """``train/`` and ``valid/`` track folders, written by all cores (each track seeded by its place)."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(root / split / f"{i:04d}", seconds, (1, k, i))
            for k, (split, count) in enumerate((("train", tracks), ("valid", max(2, tracks // 32))))
            for i in range(count)]
    with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(training_track, *zip(*jobs)))


HISTORY_KEYS = ("train_loss_history", "valid_loss_history", "train_time_history", "samples_history",
                "data_loading_share_history")


def histories(data: dict, samples_per_epoch: int = 0, digits: int = 1) -> dict:
    """A training record's per-epoch histories (``None`` where it has none) and, after the first epoch (which
    pays for warm-up and cuDNN autotuning), its samples per second; from ``samples_per_epoch`` where the record
    counts no samples (the reference's, whose epochs also hold its validation)."""
    row = {k: data.get(k) for k in HISTORY_KEYS}
    times, samples = data.get("train_time_history") or [], data.get("samples_history") or []
    if len(times) > 1 and samples:
        row["samples_per_s"] = round(sum(samples[1:]) / sum(times[1:]), digits)
    elif len(times) > 1 and samples_per_epoch:
        row["samples_per_s"] = round(samples_per_epoch * (len(times) - 1) / sum(times[1:]), digits)
    return row


def train_run(name: str, command: list, output: Path, options: list, env=None, timeout: float = 240,
              samples_per_epoch: int = 0) -> None:
    """Run one training command (ended with all its loader workers at ``timeout``); record its histories."""
    from processes import run_bounded

    done = run_bounded(command, timeout, env=env, keep=500)
    row = {"options": " ".join(options), "wall_s": done.seconds, "rc": done.rc, "tail": done.tail}
    record = output / "vocals.json"
    if record.is_file():
        row.update(histories(json.loads(record.read_text()), samples_per_epoch, digits=1))
        if samples_per_epoch:
            row["steps_per_epoch"] = math.ceil(samples_per_epoch / int(options[options.index("--batch-size") + 1]))
    RESULTS[f"train_{name}"] = row
    log("train", name, {k: v for k, v in row.items() if k not in ("tail",) and not k.endswith("history")})


def training_runs(smoke: bool) -> list:
    """``(name, options, seconds allowed)`` in order of importance: the loss curve of ours beside the
    reference's (same seed, batch 16, fp32, a few hundred steps), the largest batch, the reference, the rest."""
    curve = "3" if smoke else "16"  # the reference's JSON holds one epoch time fewer than its epochs
    workers = "2" if smoke else "8"
    return [
        ("ours_preload_b16_fp32", ["--batch-size", "16", "--preload", "on", "--precision", "fp32",
                                   "--epochs", curve], 70),
        ("ours_preload_b256_bf16", ["--batch-size", "8" if smoke else "256", "--preload", "on",
                                    "--precision", "bf16", "--epochs", "2" if smoke else "8"], 45),
        ("reference_b16", ["--batch-size", "16", "--nb-workers", workers, "--epochs", curve], 110),
        ("ours_preload_b64", ["--batch-size", "64", "--preload", "on", "--precision", "auto",
                              "--epochs", "2" if smoke else "6"], 40),
        ("ours_files_b16", ["--batch-size", "16", "--preload", "off", "--nb-workers", workers,
                            "--precision", "fp32", "--epochs", "2" if smoke else "3"], 40),
    ]


def training(work: Path, smoke: bool, deadline: float = float("inf")) -> None:
    """Every run of :func:`training_runs` on the same generated track folders, each within what is left."""
    root = work / "tracks"
    tracks = 8 if smoke else 256
    if not (root / "train").is_dir():
        training_data(root, tracks=tracks, seconds=7.0)
    hidden = "16" if smoke else "512"
    small = ["--nfft", "1024", "--nhop", "256"] if smoke else []
    ours = ["--dataset", "trackfolder_fix", "--root", str(root), "--target", "vocals", "--seq-dur", "6",
            "--hidden-size", hidden, "--seed", "42", "--quiet"] + small + (["--device", "cpu"] if smoke else [])
    reference = ["--dataset", "trackfolder_fix", "--root", str(root), "--target-file", "vocals.wav",
                 "--interferer-files", "drums.wav", "bass.wav", "other.wav", "--seq-dur", "6",
                 "--hidden-size", hidden, "--seed", "42"] + small + (["--no-cuda"] if smoke else [])
    recipe, stub = ROOT / ".gpu" / "train.py", ROOT / ".gpu" / "stub"
    for name, options, allowed in training_runs(smoke):
        left = deadline - time.monotonic()
        allowed = left if smoke else allowed  # toy runs on a shared CPU take what they take
        if left < 15:
            RESULTS[f"train_{name}"] = {"skipped": f"{left:.0f} s left of the time allowed"}
            continue
        output = work / f"train-{name}"
        shutil.rmtree(output, ignore_errors=True)
        if name.startswith("reference"):
            if not recipe.is_file():
                RESULTS[f"train_{name}"] = {"skipped": f"{recipe} not found (scripts/prepare_device.sh copies it)"}
                continue
            env = dict(os.environ, PYTHONPATH=reference_path(stub, os.environ.get("PYTHONPATH", "")))
            train_run(name, [sys.executable, str(recipe)] + reference + options + ["--output", str(output)],
                      output, options, env=env, timeout=min(allowed, left), samples_per_epoch=tracks)
        else:
            train_run(name, cli("train") + ours + options + ["--output", str(output)], output, options,
                      timeout=min(allowed, left), samples_per_epoch=tracks)
        checkpoint()


def reference_path(stub, current: str) -> str:
    """PYTHONPATH of the reference recipe: the torchaudio stand-in first, and scripts/fallback (its one use
    of scikit-learn) last, only where scikit-learn is missing (a PYTHONPATH entry would shadow it)."""
    import importlib.util

    path = f"{stub}:{current}"
    if importlib.util.find_spec("sklearn") is None:
        RESULTS["reference_sklearn"] = "fallback (scripts/fallback/sklearn): scikit-learn is not installed"
        path += f":{ROOT / 'scripts' / 'fallback'}"
    return path


def _value(row: dict, name: str, field: str = "s"):
    value = row.get(name, {}) if isinstance(row, dict) else {}
    return value.get(field, "n/a") if isinstance(value, dict) else "n/a"


def _float(value) -> str:
    return f"{value:.1e}" if isinstance(value, float) else "n/a"


def separation_lines(results: dict) -> list:
    """Goal 1: the forward table (ours batched against the reference), memory in length, the command line."""
    lines = ["| input | ours: whole forward (s) | ours: batched segments (s) | ours: one segment at a time (s) "
             "| reference forward (s) | reference / batched | peak GB: batched / reference | batched vs one "
             "at a time / peak | ours whole vs reference / peak | ours: batched, bf16 products (s) "
             "| reference / batched bf16 | bf16 vs fp32 / peak |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in results.items():
        if not (key.startswith("separate_") and key.endswith("s") and "ours_whole" in row):
            continue
        ratio, reference, batched = "n/a", _value(row, "reference"), _value(row, "ours_batched")
        if isinstance(reference, float) and isinstance(batched, float):
            ratio = f"{reference / batched:.1f}x"
        batched_bf16, ratio_bf16 = _value(row, "ours_batched_bf16"), "n/a"
        if isinstance(reference, float) and isinstance(batched_bf16, float):
            ratio_bf16 = f"{reference / batched_bf16:.1f}x"
        lines.append(f"| {key[len('separate_'):]} | {_value(row, 'ours_whole')} | {batched} | "
                     f"{_value(row, 'ours_one_segment_at_a_time')} | {reference} | {ratio} | "
                     f"{_value(row, 'ours_batched', 'peak_gb')} / {_value(row, 'reference', 'peak_gb')} | "
                     f"{_float(row.get('batched_vs_one_at_a_time_over_peak'))} | "
                     f"{_float(row.get('ours_whole_vs_reference_over_peak'))} | {batched_bf16} | {ratio_bf16} | "
                     f"{_float(row.get('bf16_vs_fp32_over_peak'))} |")
    peaks = [(key[len("separate_"):-len("s_batched")], row["peak_gb"]) for key, row in results.items()
             if key.startswith("separate_") and key.endswith("s_batched") and "peak_gb" in row]
    peaks += [(key[len("separate_"):-1], row["ours_batched"]["peak_gb"]) for key, row in results.items()
              if key.startswith("separate_") and key.endswith("s") and "peak_gb" in row.get("ours_batched", {})]
    if peaks:
        listed = ", ".join(f"{length} s: {gb} GB" for length, gb in sorted(peaks, key=lambda p: int(p[0])))
        lines += ["", f"Peak GPU memory of the batched segments (torch's allocator), by input length: {listed}."]
    row = results.get("stages", {})
    if "whole_s" in row:
        lines += ["", f"Where one batch of {row['segments']} segments of {row['segment_s']:g} s goes (ours, fp32, "
                  f"synchronised stage by stage): STFT and magnitude {row['stft_s']} s, the four target models "
                  f"{row['models_s']} s, Wiener filter and inverse STFT segment by segment {row['wiener_istft_s']} s; "
                  f"the whole forward {row['whole_s']} s."]
    start = results.get("cli_start", {})
    for key, row in results.items():
        if key.startswith("cli_") and key != "cli_start" and "s" in row:
            after = row.get("x_real_time_after_start")
            lines += ["", f"`umx-separate --device cuda --niter 1` on {row['audio_s']:g} s of audio (one wav), end "
                      f"to end: {row['s']} s ({row['x_real_time']}x real time; rc {row['rc']}), GPU busy "
                      f"{row['gpu_busy_share']} of the wall time, GPU memory peak {row['gpu_memory_peak_mib']} MiB "
                      f"(nvidia-smi). The same command on 1 s of audio (Python, torch and CUDA start, model load): "
                      f"{start.get('s', 'n/a')} s; the {row['audio_s']:g} s of audio after that fixed cost: "
                      f"{after if after is not None else 'n/a'}x real time."]
    return lines


def training_lines(results: dict) -> list:
    """Goal 2: samples per second of each run against the reference recipe's, and the two loss curves."""
    reference = results.get("train_reference_b16", {}).get("samples_per_s")
    lines = ["| training run | options | samples per second | x reference | data loading share (last epoch) "
             "| epochs | wall (s) |", "|---|---|---|---|---|---|---|"]
    for key, row in results.items():
        if not (key.startswith("train_") and isinstance(row, dict)):
            continue
        if "samples_per_s" not in row:
            why = row.get("skipped") or ("too few epochs timed" if row.get("rc") == 0 else f"rc {row.get('rc')}")
            lines.append(f"| {key[len('train_'):]} | `{row.get('options', '')}` | n/a ({why}) | | | | |")
            continue
        shares = row.get("data_loading_share_history") or []
        share = f"{100 * shares[-1]:.0f} %" if shares else "n/a"
        epochs = len(row.get("train_loss_history") or row.get("train_time_history") or [])
        ratio = f"{row['samples_per_s'] / reference:.1f}x" if reference else "n/a"
        lines.append(f"| {key[len('train_'):]} | `{row.get('options', '')}` | {row['samples_per_s']} | {ratio} | "
                     f"{share} | {epochs} | {row.get('wall_s')} |")
    lines += ["", "Samples per second leave out the first epoch (warm-up); the reference's epochs also hold its "
              "validation and checkpoint writing, ours only the training pass."]
    ours, ref = results.get("train_ours_preload_b16_fp32", {}), results.get("train_reference_b16", {})
    a, b = ours.get("train_loss_history") or [], ref.get("train_loss_history") or []
    if a or b:
        steps = ours.get("steps_per_epoch") or ref.get("steps_per_epoch") or 0
        lines += ["", "Loss curves, same seed, data, batch 16 and fp32 (mean training loss of each epoch; "
                  "validation loss after it):", "",
                  "| epoch | steps | ours: train | reference: train | ours: valid | reference: valid |",
                  "|---|---|---|---|---|---|"]
        av, bv = ours.get("valid_loss_history") or [], ref.get("valid_loss_history") or []
        cell = lambda values, k: f"{values[k]:.4f}" if k < len(values) else ""  # noqa: E731
        for k in range(max(len(a), len(b))):
            lines.append(f"| {k + 1} | {(k + 1) * steps} | {cell(a, k)} | {cell(b, k)} | {cell(av, k)} | "
                         f"{cell(bv, k)} |")
    return lines


def markdown(results: dict, command: str = "python3 scripts/gpu_benchmark.py") -> str:
    """The GPU section of docs/benchmarks.md from :data:`RESULTS`; ``command`` is the one that measured them."""
    lines = ["## GPU", "",
             f"Device: {results.get('device')}; torch {results.get('torch')}, CUDA {results.get('cuda')}; "
             f"command: `{command}` (random umxhq-shaped weights, niter 1).", ""]
    if any(key.startswith(("separate_", "cli_")) for key in results):
        lines += separation_lines(results) + [""]
    if any(key.startswith("train_") for key in results):
        lines += training_lines(results)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, to check the script")
    p.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    p.add_argument("--only", nargs="*", default=None, choices=PARTS, help="run only these parts")
    p.add_argument("--workdir", default=None,
                   help="folder for the model, tracks and outputs, kept and reused (default: a temporary one)")
    p.add_argument("--merge", action="store_true", help="add to $OUT/gpu_results.json instead of replacing it")
    p.add_argument("--seconds", type=float, default=None, help="training stops starting runs after this long")
    args = p.parse_args(argv)
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    if args.merge and (out / "gpu_results.json").is_file():
        RESULTS.update(json.loads((out / "gpu_results.json").read_text()))
    device = torch.device("cpu" if args.smoke else "cuda")
    parts = [part for part in (args.only or PARTS) if part not in args.skip]
    describe_device(device, parts)
    deadline = time.monotonic() + (args.seconds or float("inf"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        run_parts(parts, work, device, args.smoke, deadline, out)
    (out / "gpu_section.md").write_text(markdown(RESULTS))
    log(markdown(RESULTS))
    log("results:", out / "gpu_results.json")
    return 0


def describe_device(device: torch.device, parts) -> None:
    """The device, torch and CUDA versions into RESULTS (the GPU table's first line)."""
    RESULTS["torch"] = torch.__version__
    RESULTS["cuda"] = torch.version.cuda
    if device.type != "cuda":
        RESULTS["device"] = "cpu (smoke)"
    elif "separation" in parts or "device" not in RESULTS:  # only separation starts CUDA in this process
        RESULTS["device"] = torch.cuda.get_device_name(0)


def model_folder(work: Path) -> Path:
    """Random umxhq-shaped weights in ``work/model``, written once and reused by later calls."""
    folder = work / "model"
    if not (folder / "separator.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_umxhq_shaped(folder)
    return folder


def run_parts(parts, work: Path, device: torch.device, smoke: bool, deadline: float, out: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    folder = model_folder(work)
    clock = Clock(device)
    if "separation" in parts:
        lengths, long_seconds = ([2, 5], 10) if smoke else ([60, 600], 3600)
        separation(folder, device, clock, lengths, long_seconds)
        save(out)
    if "cli" in parts:
        command_line(folder, device, work, 20 if smoke else 600)
        save(out)
    if "training" in parts:
        training(work, smoke, deadline)
        save(out)


if __name__ == "__main__":
    raise SystemExit(main())
