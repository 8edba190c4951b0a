"""GPU figures for docs/benchmarks.md: separation and training, ours beside the reference Open-Unmix.

One prepared run for a machine with one CUDA GPU (see ../shared/tools/gpu/README.md
for what to carry there). It measures, with random umxhq-shaped weights, niter 1:

1. ``Separator`` forward on 60 s and 600 s: ours whole, ours as batched segments
   (``separate_tensor``), the reference; peak GPU memory; the batched output against
   one segment at a time; batched segments on 60 min for the memory peak;
2. ``umx-separate --device cuda`` on a 10-minute wav, end to end, and the GPU's
   busy share over the run (``nvidia-smi`` sampled every 100 ms);
3. training samples per second at hidden 512, 6 s excerpts, on generated track
   folders: ours with the data on the GPU (``--preload on``) at batch 16, 64 and
   256 (bf16), ours reading files with 8 loader workers, and the reference recipe;
   and the per-epoch training losses of ours with and without ``--preload`` for the
   same seed and batch.

Results go to ``$OUT/gpu_results.json`` (and a summary on stdout). ``--smoke`` runs every
step at toy sizes on the CPU, to check the script before spending device time.

Preparing the checkout (``.gpu/`` is ignored through ``.git/info/exclude`` and carried)::

    mkdir -p .gpu/stub && cp ../shared/tools/reference-openunmix/scripts/train.py .gpu/
    cp -r ../shared/tools/reference-openunmix/torchaudio .gpu/stub/
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/whl soundfile cffi pycparser norbert openunmix==1.3.0

and on the device (carry ``.gpu``)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl && \
    PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 scripts/gpu_benchmark.py
"""
from __future__ import annotations

import argparse
import json
import os
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


def log(*parts) -> None:
    print(*parts, flush=True)


def save(out: Path) -> None:
    (out / "gpu_results.json").write_text(json.dumps(RESULTS, indent=1))


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
    """Mean GPU utilisation (``nvidia-smi``, every 100 ms) while the block runs; None without nvidia-smi."""

    def __enter__(self):
        self.samples, self.proc = [], None
        try:
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "100"], stdout=subprocess.PIPE, text=True)
        except OSError:
            return self
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.samples.append(int(line))

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
        return False

    @property
    def share(self):
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def separation(folder: Path, device: torch.device, clock: Clock, lengths, long_seconds: float) -> None:
    from openunmix_like import Separator
    from openunmix_like.inference import auto_batch_segments, separate_tensor

    ours = Separator.from_pretrained(folder, niter=1, device=device)
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
            outputs = {}
            for name, fn in runs:
                clock.reset_peak()
                try:
                    seconds_taken, out = clock.best(fn, n=2 if seconds > 100 else 3)
                except torch.cuda.OutOfMemoryError as exc:
                    row[name] = {"error": repr(exc)[:200]}
                    continue
                row[name] = {"s": seconds_taken, "x_real_time": round(seconds / seconds_taken, 1),
                             "peak_gb": clock.peak_gb()}
                outputs[name] = out.detach().cpu().reshape(-1)
            if "ours_batched" in outputs and "ours_one_segment_at_a_time" in outputs:
                a, b = outputs["ours_batched"], outputs["ours_one_segment_at_a_time"]
                row["batched_vs_one_at_a_time_over_peak"] = float((a - b).abs().max() / b.abs().max())
            if "reference" in outputs and "ours_whole" in outputs:
                a, b = outputs["ours_whole"], outputs["reference"]
                row["ours_whole_vs_reference_over_peak"] = float((a - b).abs().max() / b.abs().max())
        RESULTS[f"separate_{int(seconds)}s"] = row
        log(f"separate {seconds} s", json.dumps(row))
    torch.manual_seed(0)
    audio = 0.1 * torch.randn(2, int(long_seconds * RATE))
    clock.reset_peak()
    with torch.inference_mode():
        seconds_taken, _ = clock.best(lambda: separate_tensor(ours, audio, RATE), n=1, warm=False)
    RESULTS[f"separate_{int(long_seconds)}s_batched"] = {"s": seconds_taken, "peak_gb": clock.peak_gb()}
    log("long input", RESULTS[f"separate_{int(long_seconds)}s_batched"])


def command_line(folder: Path, device: torch.device, work: Path, seconds: float) -> None:
    import soundfile as sf

    wav = work / "long.wav"
    noise = (0.1 * np.random.default_rng(0).standard_normal((int(seconds * RATE), 2))).astype(np.float32)
    sf.write(wav, noise, RATE, subtype="PCM_16")
    command = cli("separate") + [str(wav), "--model", str(folder), "--device", device.type, "--outdir",
                                 str(work / "cli-out"), "--force", "--quiet"]
    with GpuBusy() as busy:
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
    RESULTS[f"cli_{int(seconds)}s"] = {"s": round(wall, 2), "x_real_time": round(seconds / wall, 1),
                                       "gpu_busy_share": busy.share, "rc": proc.returncode,
                                       "tail": (proc.stdout + proc.stderr)[-300:]}
    log("umx-separate", RESULTS[f"cli_{int(seconds)}s"])


def training_data(root: Path, tracks: int, seconds: float) -> None:
    """Track folders of four generated stereo sources (tones, noise bursts, a bass line, chords)."""
    import soundfile as sf

    rng = np.random.default_rng(1)
    t = np.arange(int(seconds * RATE)) / RATE
    for split, count in (("train", tracks), ("valid", max(2, tracks // 32))):
        for i in range(count):
            folder = root / split / f"{i:04d}"
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


def train_run(name: str, command: list, output: Path, env=None, timeout: float = 240,
              samples_per_epoch: int = 0) -> None:
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-500:]
    except subprocess.TimeoutExpired as exc:
        rc, tail = "timeout", str(exc)[-300:]
    row = {"wall_s": round(time.perf_counter() - start, 1), "rc": rc, "tail": tail}
    record = output / "vocals.json"
    if record.is_file():
        data = json.loads(record.read_text())
        row.update({k: data.get(k) for k in ("train_loss_history", "valid_loss_history", "train_time_history",
                                            "samples_history", "data_loading_share_history")})
        times, samples = data.get("train_time_history") or [], data.get("samples_history") or []
        if len(times) > 1 and samples:  # the first epoch pays for warm-up and cuDNN autotuning
            row["samples_per_s"] = round(sum(samples[1:]) / sum(times[1:]), 1)
        elif len(times) > 1 and samples_per_epoch:  # the reference records no samples; its epochs include
            row["samples_per_s"] = round(samples_per_epoch * (len(times) - 1) / sum(times[1:]), 1)  # validation
    RESULTS[f"train_{name}"] = row
    log("train", name, {k: v for k, v in row.items() if k not in ("tail",) and not k.endswith("history")})


def training(work: Path, smoke: bool, device: torch.device) -> None:
    root = work / "tracks"
    tracks = 8 if smoke else 256
    training_data(root, tracks=tracks, seconds=7.0)
    hidden = "16" if smoke else "512"
    common = ["--dataset", "trackfolder_fix", "--root", str(root), "--target", "vocals", "--seq-dur", "6",
              "--hidden-size", hidden, "--seed", "42", "--quiet"]
    if smoke:
        common += ["--device", "cpu", "--nfft", "1024", "--nhop", "256"]
    epochs = "2" if smoke else "4"
    curve_epochs = "2" if smoke else "12"
    runs = [
        ("ours_preload_b16", ["--batch-size", "16", "--preload", "on", "--epochs", curve_epochs]),
        ("ours_files_b16", ["--batch-size", "16", "--preload", "off", "--nb-workers", "2" if smoke else "8",
                            "--epochs", curve_epochs]),
        ("ours_preload_b64", ["--batch-size", "64", "--preload", "on", "--epochs", epochs]),
        ("ours_preload_b256_bf16", ["--batch-size", "8" if smoke else "256", "--preload", "on", "--precision",
                                    "bf16", "--epochs", epochs]),
    ]
    for name, extra in runs:
        output = work / f"train-{name}"
        train_run(name, cli("train") + common + extra + ["--output", str(output)], output)
        save_dir = os.environ.get("OUT")
        if save_dir:
            save(Path(save_dir))
    reference = ROOT / ".gpu" / "train.py"
    stub = ROOT / ".gpu" / "stub"
    if reference.is_file():
        output = work / "train-reference_b16"
        env = dict(os.environ, PYTHONPATH=f"{stub}:{os.environ.get('PYTHONPATH', '')}")
        command = [sys.executable, str(reference), "--dataset", "trackfolder_fix", "--root", str(root),
                   "--target-file", "vocals.wav", "--interferer-files", "drums.wav", "bass.wav", "other.wav",
                   "--epochs", curve_epochs, "--seq-dur", "6", "--hidden-size", hidden, "--batch-size", "16",
                   "--nb-workers", "2" if smoke else "8", "--seed", "42", "--output", str(output)]
        if smoke:
            command += ["--no-cuda", "--nfft", "1024", "--nhop", "256"]
        train_run("reference_b16", command, output, env=env, samples_per_epoch=tracks)
    else:
        RESULTS["train_reference_b16"] = {"skipped": f"{reference} not found (copy the reference recipe there)"}


def markdown(results: dict) -> str:
    """The GPU section of docs/benchmarks.md from :data:`RESULTS`."""
    lines = ["## GPU", "",
             f"Device: {results.get('device')}; torch {results.get('torch')}, CUDA {results.get('cuda')}; "
             "command: `python3 scripts/gpu_benchmark.py` (random umxhq-shaped weights, niter 1).", "",
             "| input | ours: whole forward (s) | ours: batched segments (s) | ours: one segment at a time (s) "
             "| reference forward (s) | batched vs reference | peak GB: batched / reference | batched vs one at a time "
             "/ peak |", "|---|---|---|---|---|---|---|---|"]
    for key, row in results.items():
        if not (key.startswith("separate_") and key.endswith("s") and "ours_whole" in row):
            continue
        def cell(name, field="s"):
            return row.get(name, {}).get(field, "n/a")
        ratio = "n/a"
        if isinstance(cell("reference"), float) and isinstance(cell("ours_batched"), float):
            ratio = f"{cell('reference') / cell('ours_batched'):.1f}x"
        lines.append(f"| {key[len('separate_'):]} | {cell('ours_whole')} | {cell('ours_batched')} | "
                     f"{cell('ours_one_segment_at_a_time')} | {cell('reference')} | {ratio} | "
                     f"{cell('ours_batched', 'peak_gb')} / {cell('reference', 'peak_gb')} | "
                     f"{row.get('batched_vs_one_at_a_time_over_peak', 'n/a')} |")
    for key, row in results.items():
        if key.startswith("cli_"):
            lines += ["", f"`umx-separate --device cuda` on {key[4:]} of audio, end to end: {row['s']} s "
                      f"({row['x_real_time']}x real time), GPU busy {row['gpu_busy_share']} of the wall time."]
    lines += ["", "| training run | samples per second | data loading share (last epoch) |", "|---|---|---|"]
    for key, row in results.items():
        if key.startswith("train_") and isinstance(row, dict) and "samples_per_s" in row:
            shares = row.get("data_loading_share_history") or []
            share = f"{100 * shares[-1]:.0f} %" if shares else "n/a"
            lines.append(f"| {key[len('train_'):]} | {row['samples_per_s']} | {share} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, to check the script")
    p.add_argument("--skip", nargs="*", default=[], choices=["separation", "cli", "training"])
    args = p.parse_args(argv)
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if args.smoke else "cuda")
    RESULTS["torch"] = torch.__version__
    RESULTS["device"] = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke)"
    RESULTS["cuda"] = torch.version.cuda
    clock = Clock(device)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "model").mkdir()
        folder = write_umxhq_shaped(work / "model")
        if "separation" not in args.skip:
            lengths, long_seconds = ([3, 20], 40) if args.smoke else ([60, 600], 3600)
            separation(folder, device, clock, lengths, long_seconds)
            save(out)
        if "cli" not in args.skip:
            command_line(folder, device, work, 20 if args.smoke else 600)
            save(out)
        if "training" not in args.skip:
            training(work, args.smoke, device)
            save(out)
    (out / "gpu_section.md").write_text(markdown(RESULTS))
    log(markdown(RESULTS))
    log("results:", out / "gpu_results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
