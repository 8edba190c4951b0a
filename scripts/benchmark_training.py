"""Training on the CPU, ours beside the reference recipe: samples per second and loss curves.

Both train an umxhq-sized vocals model (hidden 512, n_fft 4096, 6 s excerpts, batch 16,
Adam, fp32, each package's default options otherwise: for this layout neither augments the
sources) on the same generated ``trackfolder_fix`` folders (the tracks of
``scripts/gpu_benchmark.py``), the reference with ``../shared/tools/reference-openunmix``
(its recipe and torchaudio stand-in), in one run on this machine:

1. ``speed``: runs of a few epochs each, ours and the reference taking turns, ``--repeats``
   times. Samples per second leave out the first epoch (warm-up). The reference's epoch
   times also hold its validation and checkpoint writing, so this part also times both
   alone on the same model (``overhead`` in the results) to say how much that is.
2. ``curves``: the mean training loss and the validation loss of each epoch, ours and the
   reference, each with two seeds: the seed-to-seed spread of one package is the noise the
   other's curve is compared with.

Writes ``training_results.json`` and ``training_section.md`` into ``--out``.

    python scripts/benchmark_training.py --out /tmp/train-bench
    python scripts/benchmark_training.py --only curves --out /tmp/train-bench --workdir /tmp/train-bench/work
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from gpu_benchmark import cli, histories, training_data  # noqa: E402
from processes import run_bounded  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "tools" / "reference-openunmix"
RESULTS: dict = {}


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def commands(root: Path, output: Path, package: str, seed: int, epochs: int, hidden: int, extra=()):
    """The command line and environment of one training run of ``package`` ("ours" or "reference")."""
    common = ["--root", str(root), "--seq-dur", "6", "--hidden-size", str(hidden), "--seed", str(seed),
              "--batch-size", "16", "--epochs", str(epochs), "--output", str(output)]
    if package == "ours":
        return (cli("train") + ["--dataset", "trackfolder_fix", "--target", "vocals", "--device", "cpu",
                                "--precision", "fp32", "--nb-workers", "0", "--quiet"] + common + list(extra),
                dict(os.environ))
    command = [sys.executable, str(REFERENCE / "scripts" / "train.py"), "--dataset", "trackfolder_fix",
               "--target-file", "vocals.wav", "--interferer-files", "drums.wav", "bass.wav", "other.wav",
               "--no-cuda"] + common + list(extra)
    path = os.pathsep.join(p for p in (str(REFERENCE), os.environ.get("PYTHONPATH", "")) if p)
    return command, dict(os.environ, PYTHONPATH=path)


def train(name: str, root: Path, work: Path, package: str, seed: int, epochs: int, hidden: int,
          samples_per_epoch: int, extra=(), load: float = 0.0) -> dict:
    """One run; its per-epoch histories, wall time and samples per second after the first epoch."""
    output = work / name
    shutil.rmtree(output, ignore_errors=True)
    command, env = commands(root, output, package, seed, epochs, hidden, extra)
    log("start", name, " ".join(command[-16:]))
    done = run_bounded(command, timeout=4 * 3600, env=env, keep=3000)
    row = {"package": package, "seed": seed, "epochs": epochs, "extra": list(extra), "rc": done.rc,
           "wall_s": round(done.seconds, 1), "load_before": load}
    record = output / "vocals.json"
    if done.rc != 0 or not record.is_file():
        row["tail"] = done.tail
        log("FAILED", name, done.tail[-1500:])
        return row
    row.update(histories(json.loads(record.read_text()), samples_per_epoch, digits=2))
    log("done", name, {k: v for k, v in row.items() if not k.endswith("history")})
    return row


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def quiet(limit: float = 1.2, wait: float = 300) -> float:
    """Wait (up to ``wait`` s) for the 1-minute load average to fall under ``limit``; return it."""
    end = time.monotonic() + wait
    while os.getloadavg()[0] > limit and time.monotonic() < end:
        time.sleep(5)
    return load_average()


def overhead(root: Path, hidden: int) -> dict:
    """Seconds of what the reference's epoch time holds besides training, measured in this process on the
    same model: a validation pass over the valid tracks (forward and MSE) and a checkpoint save."""
    import soundfile as sf

    from openunmix_like.architectures.umx import OpenUnmix

    torch.manual_seed(0)
    model = OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=hidden, max_bin=1487)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(1, 2, 2049, 40)).sum().backward()
    optimizer.step()  # the optimizer's state exists, as in a checkpoint after an epoch
    model.eval()
    window = torch.hann_window(4096)

    def magnitude(audio):
        return torch.stft(audio, 4096, 1024, window=window, return_complex=True).abs()[None]

    start = time.perf_counter()
    with torch.no_grad():
        for folder in sorted((root / "valid").iterdir()):
            stems = [torch.from_numpy(sf.read(folder / f"{s}.wav", dtype="float32")[0].T.copy())
                     for s in ("vocals", "drums", "bass", "other")]
            torch.nn.functional.mse_loss(model(magnitude(sum(stems))), magnitude(stems[0]))
    valid = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}, Path(tmp) / "a.chkpnt")
        torch.save(model.state_dict(), Path(tmp) / "a.pth")
        save = time.perf_counter() - start
    return {"valid_s": round(valid, 3), "checkpoint_s": round(save, 3)}


def speed(root: Path, work: Path, tracks: int, epochs: int, repeats: int, hidden: int) -> None:
    for k in range(repeats):
        for package, extra in (("ours", ()), ("reference", ()), ("ours", ("--preload", "on"))):
            name = f"speed-{package}{'-preload' if extra else ''}-{k}"
            load = quiet()
            RESULTS["meta"]["speed"]["loads"].append(load)
            RESULTS[name] = train(name, root, work, package, 42, epochs, hidden, tracks, extra, load)
            save()
    RESULTS["overhead"] = overhead(root, hidden)
    save()


def curves(root: Path, work: Path, tracks: int, epochs: int, hidden: int) -> None:
    for seed in (42, 43):
        for package in ("ours", "reference"):
            name = f"curve-{package}-{seed}"
            RESULTS[name] = train(name, root, work, package, seed, epochs, hidden, tracks, load=load_average())
            save()


OUT = [Path(".")]


def save() -> None:
    (OUT[0] / "training_results.json").write_text(json.dumps(RESULTS, indent=1))
    (OUT[0] / "training_section.md").write_text(markdown(RESULTS))


def markdown(results: dict) -> str:
    meta = results.get("meta", {})
    lines = ["## Training against the reference recipe (CPU)", "",
             f"Machine: {meta.get('machine', '?')}; torch {meta.get('torch', '?')}. Both packages train a vocals "
             "model (n_fft 4096, 6 s excerpts, batch 16, Adam, fp32) on the same generated `trackfolder_fix` "
             "tracks of 7 s (one excerpt per track per epoch, no source augmentations: both packages' default "
             "for this layout), data-loader workers 0 (the reference uses none on a CPU).", ""]
    speed_meta = meta.get("speed")
    if speed_meta:
        lines += [f"Samples per second, measured {speed_meta['date']}: hidden {speed_meta['hidden']}, "
                  f"{speed_meta['tracks']} tracks, {speed_meta['epochs']} epochs a run, the runs taking turns "
                  f"(1-minute load average before each: {', '.join(f'{v:g}' for v in speed_meta.get('loads', []))}). "
                  "Command:", "",
                  f"    {speed_meta['command']}", ""]
    rows = {}
    for key, row in results.items():
        if key.startswith("speed-") and isinstance(row, dict) and "samples_per_s" in row:
            label = key.rsplit("-", 1)[0][len("speed-"):]
            rows.setdefault(label, []).append(row)
    if rows:
        refs = [r["samples_per_s"] for r in rows.get("reference", [])]
        ref = statistics.median(refs) if refs else None
        lines += ["| run | samples per second (each run) | median | x reference | data loading share |",
                  "|---|---|---|---|---|"]
        for label, runs in rows.items():
            values = [r["samples_per_s"] for r in runs]
            median = statistics.median(values)
            shares = [r["data_loading_share_history"][-1] for r in runs if r.get("data_loading_share_history")]
            share = f"{100 * statistics.median(shares):.1f} %" if shares else "not recorded"
            ratio = f"{median / ref:.2f}x" if ref else "n/a"
            options = {"ours": "ours", "ours-preload": "ours, `--preload on`", "reference": "reference 1.3.0"}
            lines.append(f"| {options.get(label, label)} | {', '.join(f'{v:.2f}' for v in values)} | "
                         f"{median:.2f} | {ratio} | {share} |")
        over = results.get("overhead")
        if over:
            valid_tracks = (speed_meta or {}).get("valid_tracks")
            lines += ["", f"Samples per second leave out each run's first epoch. The reference's epoch times "
                      f"also hold a validation pass over the {valid_tracks} validation tracks "
                      f"and its checkpoint writing; measured alone on the same model these take "
                      f"{over['valid_s']:.2f} s and {over['checkpoint_s']:.2f} s an epoch."]
    pairs = [(f"curve-ours-{s}", f"curve-reference-{s}") for s in (42, 43)]
    if any(k in results for pair in pairs for k in pair):
        curve_meta = meta.get("curves", {})
        lines += ["", f"Loss curves, measured {curve_meta.get('date', '?')}: hidden {curve_meta.get('hidden')}, "
                  f"{curve_meta.get('tracks')} tracks, {curve_meta.get('steps_per_epoch')} steps an epoch; the mean "
                  "training loss of each epoch and the validation loss after it, seeds 42 and 43 for each package "
                  "(the timings of these runs are not comparable: other work shared the machine). Command:", "",
                  f"    {curve_meta.get('command', '')}", "",
                  "| epoch | steps | ours 42 | reference 42 | ours 43 | reference 43 | ours 42 valid "
                  "| reference 42 valid | ours 43 valid | reference 43 valid |", "|---" * 10 + "|"]
        hist = {k: results.get(k, {}).get("train_loss_history") or [] for pair in pairs for k in pair}
        valid = {k: results.get(k, {}).get("valid_loss_history") or [] for pair in pairs for k in pair}
        cell = lambda v, i: f"{v[i]:.4f}" if i < len(v) else ""  # noqa: E731
        n = max(len(v) for v in hist.values())
        steps = curve_meta.get("steps_per_epoch") or 0
        for i in range(n):
            lines.append(f"| {i + 1} | {(i + 1) * steps} | {cell(hist['curve-ours-42'], i)} | "
                         f"{cell(hist['curve-reference-42'], i)} | {cell(hist['curve-ours-43'], i)} | "
                         f"{cell(hist['curve-reference-43'], i)} | {cell(valid['curve-ours-42'], i)} | "
                         f"{cell(valid['curve-reference-42'], i)} | {cell(valid['curve-ours-43'], i)} | "
                         f"{cell(valid['curve-reference-43'], i)} |")
        spread = curve_spread(results)
        if spread:
            lines += ["", spread]
        last = {k: f"{v[-1]:.2f}" if v else "n/a" for k, v in valid.items()}
        lines += ["", f"Validation loss after the last epoch (seed 42 / 43): ours {last['curve-ours-42']} / "
                  f"{last['curve-ours-43']}, the reference {last['curve-reference-42']} / "
                  f"{last['curve-reference-43']}."]
    return "\n".join(lines) + "\n"


def curve_spread(results: dict) -> str:
    """Mean absolute gap between curves over the epochs after the first: same package other seed (noise)
    against other package same seed."""
    h = {k: results.get(k, {}).get("train_loss_history") or []
         for k in ("curve-ours-42", "curve-ours-43", "curve-reference-42", "curve-reference-43")}
    if not (h["curve-ours-42"] and h["curve-reference-42"]):
        return ""

    def gap(a, b):
        n = min(len(a), len(b))
        return sum(abs(x - y) / ((x + y) / 2) for x, y in zip(a[1:n], b[1:n])) / max(1, n - 1)

    parts = []
    for package, label in (("ours", "ours"), ("reference", "the reference")):
        if h[f"curve-{package}-43"]:
            spread = gap(h[f"curve-{package}-42"], h[f"curve-{package}-43"])
            parts.append(f"{label}, seed 42 against seed 43: {100 * spread:.1f} %")
    same = [gap(h[f"curve-ours-{s}"], h[f"curve-reference-{s}"]) for s in (42, 43)
            if h[f"curve-ours-{s}"] and h[f"curve-reference-{s}"]]
    parts.append(f"ours against the reference with the same seed: {100 * sum(same) / len(same):.1f} %"
                 + (" (mean of both seeds)" if len(same) == 2 else ""))
    return "Mean relative gap between two training-loss curves, epochs 2 on: " + "; ".join(parts) + "."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for training_results.json and training_section.md")
    p.add_argument("--workdir", default=None, help="tracks and model folders (default: OUT/work), reused")
    p.add_argument("--only", nargs="*", choices=("speed", "curves"), default=("speed", "curves"))
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--speed-tracks", type=int, default=128)
    p.add_argument("--speed-epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--curve-tracks", type=int, default=128)
    p.add_argument("--curve-epochs", type=int, default=24)
    args = p.parse_args(argv)
    if not (REFERENCE / "scripts" / "train.py").is_file():
        print(f"error: the reference recipe is not at {REFERENCE}/scripts/train.py", file=sys.stderr)
        return 2
    OUT[0] = Path(args.out)
    OUT[0].mkdir(parents=True, exist_ok=True)
    if (OUT[0] / "training_results.json").is_file():
        RESULTS.update(json.loads((OUT[0] / "training_results.json").read_text()))
    work = Path(args.workdir or OUT[0] / "work")
    torch.set_num_threads(os.cpu_count() or 1)
    command = " ".join(["python scripts/benchmark_training.py"] + list(argv or sys.argv[1:]))
    meta = RESULTS.setdefault("meta", {})
    meta.update(torch=torch.__version__, machine=f"{platform.processor() or platform.machine()}, "
                f"{os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}")
    part = {"date": time.strftime("%Y-%m-%d"), "hidden": args.hidden, "command": command}
    if "speed" in args.only:
        root = work / f"tracks-{args.speed_tracks}"
        if not (root / "train").is_dir():
            training_data(root, tracks=args.speed_tracks, seconds=7.0)
        meta["speed"] = dict(part, tracks=args.speed_tracks, epochs=args.speed_epochs, loads=[],
                             valid_tracks=len(list((root / "valid").iterdir())))
        speed(root, work, args.speed_tracks, args.speed_epochs, args.repeats, args.hidden)
    if "curves" in args.only:
        root = work / f"tracks-{args.curve_tracks}"
        if not (root / "train").is_dir():
            training_data(root, tracks=args.curve_tracks, seconds=7.0)
        meta["curves"] = dict(part, tracks=args.curve_tracks, steps_per_epoch=-(-args.curve_tracks // 16))
        curves(root, work, args.curve_tracks, args.curve_epochs, args.hidden)
    save()
    print(markdown(RESULTS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
