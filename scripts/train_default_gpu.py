#!/usr/bin/env python
"""Retrain the bundled default model on a GPU machine lent through the ``device`` tool (issue 22).

One lent session (15 minutes of device time, the machine's start included; at
most 600 s a command; 64 MiB of working tree plus carried paths per call; at
most 8 files of 16 MiB back) trains the four targets of the default model
together in one process, at the widest hidden size whose four fp16 weight files
fit the package's 40 MiB (362: 39.8 MiB), from the weights the previous session
brought back (the first: the bundled model, widened). Everything it does is
below; nothing needs deciding on the device. Why these settings, and the
measurements behind the corpus pack: docs/history/gpu-retraining-prep.md.

Here, once (the corpus: scripts/train_default_model.sh's umx-synth line, seed
2026, into $GPU_STATE/corpus/synth, GPU_STATE defaulting to /work/gpu-state; Opus at 64 kbit/s, the lowest rate
tried whose cost in the paired experiment was nil in SDR and at most small in
the validation loss)::

    python scripts/pack_corpus.py pack $GPU_STATE/corpus/synth ../shared/data/musdb18-7s \
        $GPU_STATE/corpus-pack-64k --bitrate 64 --parts 16 --no-synth-valid
    ln -sfn corpus-pack-64k $GPU_STATE/corpus-pack

Here, before the lent session: ``python scripts/train_default_gpu.py stage``.
It fills ``.gpu22/`` (ignored through ``.git/info/exclude``) with the soundfile
wheels (the device has no soundfile), hard links to the 16 corpus parts (167 MB
of Opus) and, when the newest session's weights are not the bundled ones, those
weights in ``.gpu22/init``; groups them into calls that fit the 64 MiB beside
the working tree as it is then; and prints the ``run`` calls. With the working
tree at 19.6 MiB (the fp16 bundled model) they were::

    run(command="python3 scripts/train_default_gpu.py device --unpack-only", timeout_s=240,
        carry=[".gpu22/whl", ".gpu22/corpus-part1.tar", ".gpu22/corpus-part2.tar",
               ".gpu22/corpus-part3.tar", ".gpu22/corpus-part4.tar"])                  # 61.0 MiB
    run(command="python3 scripts/train_default_gpu.py device --unpack-only", timeout_s=240,
        carry=[".gpu22/corpus-part5.tar", ..., ".gpu22/corpus-part8.tar"])               # 59.8 MiB
    run(command="python3 scripts/train_default_gpu.py device --unpack-only", timeout_s=240,
        carry=[".gpu22/corpus-part9.tar", ..., ".gpu22/corpus-part12.tar"])              # 60.6 MiB
    run(command="python3 scripts/train_default_gpu.py device --budget-s 575", timeout_s=600,
        carry=[".gpu22/corpus-part13.tar", ..., ".gpu22/corpus-part16.tar"])             # 59.3 MiB

Use the lines ``stage`` prints, not these. Make each call as soon as the one
before returns: a machine stays warm (and keeps its temporary folder, where the calls
unpack their parts into gpu22/corpus and the first installs the wheels) for 30 s
after a call. A training call that finds a part missing (the machine went back)
stops at once, saying which: then start again from the first call. Before the
last call, read ``status``: give ``--budget-s`` at most ``budget_left_s`` minus
about 60 s, and ``timeout_s`` 25 s above it. The last call unpacks its parts,
trains until ``--budget-s`` minus the export's time (a watchdog stops training
if the epochs overrun it: the best weights so far are on disk), and writes into
$OUT the best-validation weights of each target as fp16 safetensors (10 MB
each) and ``meta.tar.gz`` (target JSONs, separator.json, training CSVs, the
log, the settings and the measured samples per second): five files. Then
``give_back``.

A bundled model of 40 MB leaves 24 MiB a call for the corpus (7 calls or more).
Then ``stage --link-weights`` replaces the bundled weight files by links for the
calls (a link travels as a link; the package works as before here) and sends
the weights once as ``init/``; ``python scripts/train_default_gpu.py restore``
puts the files back afterwards (before any commit).

Back here: ``python scripts/train_default_gpu.py receive FILES_AT`` stores the
files under $GPU_STATE/sessions/<UTC time>/ (``model/`` loads with
``--model``; ``sessions/latest`` points to it), scores them and the bundled
model with ``umx-evaluate`` on the 14 MUSDB18 validation excerpts and the 10
generated test songs (the model card's commands), compares them track by track
with ``umx-compare``, and bundles the new weights (scripts/bundle_model.py
--half) when their average SDR beats the bundled model's on both sets.

Resuming: the optimiser state does not fit what comes back (Adam's moments are
twice the weights, in float32), so a session starts from the fp16 weights of
the last one (``--model``; a fresh optimiser and a new cosine schedule over the
session, a warm restart), not from a checkpoint. The first session starts from
the bundled model widened to hidden size 362 (``--hidden-size`` with
``--model`` keeps its output at first). The epoch length (``--samples-per-track
40``: 12,400 excerpts) and ``--epochs 30`` were planned for about 1,000 excerpts
a second (not measured yet); ``receive`` prints what the session measured, to
set them for the next.

CPU smoke test of the whole chain at toy size (a few tracks, 1 s excerpts, two
calls, the weights sent as init/): ``python scripts/train_default_gpu.py smoke``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("GPU_STATE", ROOT.parent / "gpu-state"))  # beside the checkout unless given
TARGETS = ("vocals", "drums", "bass", "other")
SIZE_LIMIT = 40 * 2 ** 20  # bundle_model.LIMIT, the package's budget for bundled weights (not imported: it needs
                           # the package's dependencies, which the device has only after ensure_soundfile)
JSON_ROOM = 64 * 1024  # what the JSON files of a model folder take beside the weights, generously
CALL_LIMIT = 64 * 2 ** 20  # working tree plus carried paths, per device call
BUNDLED = ROOT / "openunmix_like" / "models" / "default"
MUSDB_ROOT = ROOT.parent / "shared" / "data" / "musdb18-7s"
TRAIN_CMD = "import sys; from openunmix_like.cli.train import main; sys.exit(main())"
sys.path.insert(0, str(ROOT))  # on the device the package runs from the checkout, not installed


def log(*parts) -> None:
    print(*parts, flush=True)


# ---------------------------------------------------------------- the model's size


def fp16_bytes(hidden_size: int) -> int:
    """Bytes of one umx target's floating-point state dict in float16 at the default model's settings."""
    from openunmix_like import architectures

    model = architectures.get("umx").build(nb_bins=2049, nb_channels=2, hidden_size=hidden_size, nb_layers=3,
                                           unidirectional=False, max_bin=1487)
    return 2 * sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())


def widest_hidden_size(limit: int = SIZE_LIMIT - JSON_ROOM) -> int:
    """The largest even hidden size (the LSTM runs half of it each way) whose four targets fit ``limit``."""
    low, high = 1, 1024  # in units of 2; the size grows with the width
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if 4 * fp16_bytes(2 * mid) <= limit else (low, mid - 1)
    return 2 * low


# ---------------------------------------------------------------- on the device


def ensure_soundfile(stage: Path, site: Path = Path("/tmp/site")) -> None:
    """soundfile for this process and its children: from ``site`` where an earlier call installed the
    carried wheels, else as installed, else installed now from ``stage/whl``."""
    paths = [str(ROOT)]
    if (site / "soundfile.py").is_file():
        paths.insert(0, str(site))
    else:
        try:
            import soundfile  # noqa: F401  (a machine that has it)
        except ImportError:
            wheels = sorted((stage / "whl").glob("*.whl"))
            if not wheels:
                raise SystemExit("no soundfile and no wheels: the machine was given back since the first call "
                                 "(it keeps /tmp only 30 s); run the calls again from the first") from None
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--target", str(site), *map(str, wheels)], check=True)
            paths.insert(0, str(site))
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")])


def unpack_carried(stage: Path, corpus: Path, jobs: int) -> None:
    """Decode the parts carried in this call that are not unpacked yet."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from pack_corpus import parts_unpacked

    done, _ = parts_unpacked(corpus) if corpus.is_dir() else (set(), None)
    todo = [p for p in sorted(stage.glob("corpus-part*.tar")) if int(p.stem.rsplit("part", 1)[1]) not in done]
    if todo:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "pack_corpus.py"), "unpack", str(corpus),
                        *map(str, todo), "--jobs", str(jobs), "--musdb-repeat", "2"], check=True)


def corpus_complete(corpus: Path) -> None:
    from pack_corpus import parts_unpacked

    done, total = parts_unpacked(corpus) if corpus.is_dir() else (set(), None)
    if total is None or done != set(range(1, total + 1)):
        missing = "all" if total is None else ", ".join(str(k) for k in range(1, total + 1) if k not in done)
        raise SystemExit(f"{corpus}: corpus part(s) {missing} missing. Parts unpacked by an earlier call are "
                         "lost when the machine goes back (30 s after a call): run the calls again from the first")


def train_command(args: argparse.Namespace, corpus: Path, output: Path, init: str, max_minutes: float) -> list:
    """The umx-train options of a session (the recipe; docs/history/gpu-retraining-prep.md explains them)."""
    return [sys.executable, "-c", TRAIN_CMD,
            "--dataset", "trackfolder_fix", "--root", str(corpus), "--targets", *TARGETS,
            "--random-track-mix", "--source-augmentations", "gain", "channelswap",
            "--model", init, "--hidden-size", str(args.hidden_size), "--output", str(output),
            "--batch-size", str(args.batch_size), "--seq-dur", str(args.seq_dur),
            "--samples-per-track", str(args.samples_per_track), "--epochs", str(args.epochs),
            "--lr", str(args.lr), "--lr-scheduler", "cosine", "--ema", str(args.ema), "--patience", "1000",
            "--precision", args.precision, "--preload", "on", "--max-minutes", f"{max_minutes:.2f}",
            "--seed", str(args.seed), "--device", args.device]


def run_watched(cmd: list, log_path: Path, stop_at: float):
    """Run ``cmd`` (output to ``log_path`` and, for the epoch lines, to ours) until it ends or the
    monotonic clock reaches ``stop_at``, then end it with everything it started (loader workers);
    returns its exit status, ``"timeout"`` if stopped (the best weights so far are on disk)."""
    from processes import run_bounded

    with open(log_path, "w") as out:

        def on_line(line: str) -> None:
            out.write(line)  # progress-bar updates come as lines of their own
            if line.startswith("umx-train") or "Error" in line or "Traceback" in line:
                log(line.rstrip("\n"))

        done = run_bounded(cmd, stop_at - time.monotonic(), env=dict(os.environ, PYTHONUNBUFFERED="1"),
                           on_line=on_line)
    if done.timed_out:
        log("watchdog: stopped training at the time budget (best weights so far are on disk)")
    return done.rc


def export(run_dir: Path, work: Path, out: Path, settings: dict) -> None:
    """The best weights as fp16 safetensors into ``out``, and everything else in ``out/meta.tar.gz``."""
    folder = work / "export"
    try:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "bundle_model.py"), "--half", str(run_dir),
                        str(folder)], check=True)
        for target in TARGETS:
            shutil.copyfile(folder / f"{target}.safetensors", out / f"{target}.safetensors")
    finally:
        (work / "settings.json").write_text(json.dumps(settings, indent=1))
        with tarfile.open(out / "meta.tar.gz", "w:gz") as tar:
            for path in [*sorted(folder.glob("*.json")), *sorted(run_dir.glob("*.csv")), work / "train.log",
                         work / "settings.json"]:
                if path.is_file():
                    tar.add(path, arcname=f"{'model' if path.parent == folder else 'logs'}/{path.name}")


def device(args: argparse.Namespace) -> None:
    start = time.monotonic()
    stage, work = ROOT / args.stage, Path(args.work)
    corpus, run_dir = work / "corpus", work / "run"
    work.mkdir(parents=True, exist_ok=True)
    ensure_soundfile(stage)
    unpack_carried(stage, corpus, args.jobs)
    if args.unpack_only:
        log(f"unpacking done after {time.monotonic() - start:.0f} s; make the next call now")
        return
    corpus_complete(corpus)
    if args.hidden_size is None:
        args.hidden_size = widest_hidden_size()
    out = Path(args.out or os.environ.get("OUT") or work / "out")
    out.mkdir(parents=True, exist_ok=True)
    init = str(stage / "init") if (stage / "init").is_dir() else str(BUNDLED)
    stop_at = start + args.budget_s - args.export_s
    max_minutes = (stop_at - time.monotonic() - args.startup_s - args.epochs * args.epoch_overhead_s) / 60
    if max_minutes <= 0.5:
        raise SystemExit(f"--budget-s {args.budget_s}: {max_minutes:.1f} minutes left for training; give more")
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = train_command(args, corpus, run_dir, init, max_minutes)
    settings = {"command": cmd[3:], "init": init, "hidden_size": args.hidden_size, "started": utc_now(),
                "max_minutes": round(max_minutes, 2), "epochs": args.epochs,
                "train_folders": sum(1 for _ in (corpus / "train").iterdir())}
    log(f"training from {init} for at most {max_minutes:.2f} min: umx-train {' '.join(cmd[3:])}")
    settings["exit_status"] = run_watched(cmd, work / "train.log", stop_at)
    settings["seconds"] = round(time.monotonic() - start, 1)
    settings["throughput"] = throughput(run_dir)
    log(f"training ended (status {settings['exit_status']}) after {settings['seconds']} s; {settings['throughput']}")
    export(run_dir, work, out, settings)
    log(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} into {out} after {time.monotonic() - start:.0f} s")


def throughput(run_dir: Path) -> dict:
    """Training samples per second of the four targets together, from the first target's record."""
    path = run_dir / f"{TARGETS[0]}.json"
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    seconds, samples = sum(record.get("train_time_history", [])), sum(record.get("samples_history", []))
    return {"epochs": len(record.get("train_time_history", [])), "samples": samples,
            "samples_per_second": round(samples / max(seconds, 1e-9), 1), "best_epoch": record.get("best_epoch")}


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")


# ---------------------------------------------------------------- here: before a session


def tree_bytes() -> int:
    """What a device call sends besides the carried paths: tracked and untracked-not-ignored files (a
    symbolic link travels as a link)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.split(b"\0")
    paths = [ROOT / name.decode() for name in listed if name]
    return sum(os.lstat(p).st_size for p in paths if p.is_symlink() or p.is_file())


def path_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def same_weights(a: Path, b: Path) -> bool:
    from openunmix_like.pretrained import sha256_of

    if not all((f / f"{t}.safetensors").is_file() for f in (a, b) for t in TARGETS):
        return False
    return all(sha256_of(a / f"{t}.safetensors") == sha256_of(b / f"{t}.safetensors") for t in TARGETS)


def link_bundled_weights(stage: Path) -> None:
    """The bundled weight files replaced by links to copies under the state folder (the package works as
    before here; a device call sends only the links), and the weights themselves into ``stage/init``
    unless a newer session's are there. :func:`restore` puts the files back."""
    from openunmix_like.pretrained import sha256_of

    keep = STATE / "tree-weights"
    keep.mkdir(parents=True, exist_ok=True)
    if not (stage / "init").is_dir():
        shutil.copytree(BUNDLED, stage / "init")
    for target in TARGETS:
        path = BUNDLED / f"{target}.safetensors"
        if path.is_symlink():
            continue
        copy = keep / f"{target}-{sha256_of(path)[:12]}.safetensors"
        shutil.copyfile(path, copy)
        tmp = path.with_name(f".{path.name}.link")
        tmp.symlink_to(copy)
        tmp.replace(path)


def restore(args: argparse.Namespace) -> None:
    """The bundled weight files back in place of the links ``stage --link-weights`` made."""
    for target in TARGETS:
        path = BUNDLED / f"{target}.safetensors"
        if path.is_symlink():
            tmp = path.with_name(f".{path.name}.restoring")
            shutil.copyfile(path.resolve(strict=True), tmp)
            tmp.replace(path)
    log(f"{BUNDLED}: weight files in place ({', '.join(p.name for p in sorted(BUNDLED.iterdir()))})")


def fill_stage(stage: Path, pack: Path) -> list:
    """``.gpu22/``: wheels, hard links to the corpus parts, and ``init/`` when the newest session's
    weights are not the bundled ones; returns the carried paths, wheels and parts first."""
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "whl").mkdir(parents=True)
    for wheel in sorted((STATE / "wheels").glob("*.whl")):
        shutil.copyfile(wheel, stage / "whl" / wheel.name)
    parts = sorted(pack.glob("corpus-part*.tar"), key=lambda p: int(p.stem.rsplit("part", 1)[1]))
    if not parts or not list((stage / "whl").glob("soundfile-*.whl")):
        raise SystemExit(f"need {pack}/corpus-part*.tar and {STATE}/wheels/soundfile-*.whl (see this docstring)")
    for part in parts:
        os.link(part, stage / part.name)
    carried = [stage / "whl", *(stage / p.name for p in parts)]
    latest = STATE / "sessions" / "latest" / "model"
    if latest.is_dir() and not same_weights(latest, BUNDLED):
        shutil.copytree(latest, stage / "init")
    return carried


def plan_calls(carried: list, tree: int, limit: int = CALL_LIMIT) -> list:
    """Carried paths grouped into calls that each fit beside the working tree, in order (the
    wheels in the first, ``init`` in the last)."""
    calls, current, size = [], [], tree
    for path in carried:
        need = path_bytes(path)
        if tree + need > limit:
            raise SystemExit(f"{path}: {need / 2 ** 20:.1f} MiB does not fit beside the working tree "
                             f"({tree / 2 ** 20:.1f} MiB) in one call; pack smaller parts (--part-mb)")
        if current and size + need > limit:
            calls.append(current)
            current, size = [], tree
        current.append(path)
        size += need
    return calls + [current]


def stage_session(args: argparse.Namespace) -> None:
    exclude = ROOT / ".git" / "info" / "exclude"
    if f"/{args.stage}/" not in exclude.read_text().split():
        with open(exclude, "a") as f:
            f.write(f"/{args.stage}/\n")
    stage = ROOT / args.stage
    carried = fill_stage(stage, Path(args.pack))
    if args.link_weights:
        link_bundled_weights(stage)
    if (stage / "init").is_dir():
        carried.append(stage / "init")
    tree = tree_bytes()
    limit = min(CALL_LIMIT, tree + int(args.max_carry_mib * 2 ** 20)) if args.max_carry_mib else CALL_LIMIT
    calls = plan_calls(carried, tree, limit)
    sizes = ", ".join(f"{p.name} {path_bytes(p) / 2 ** 20:.1f} MiB" for p in carried)
    log(f"working tree {tree / 2 ** 20:.1f} MiB; carried {sizes}")
    for k, call in enumerate(calls, start=1):
        last = k == len(calls)
        command = "python3 scripts/train_default_gpu.py device" + ("" if last else " --unpack-only")
        size = (tree + sum(map(path_bytes, call))) / 2 ** 20
        log(f'call {k} ({size:.1f} MiB): run(command="{command}", '
            f'carry={json.dumps([str(p.relative_to(ROOT)) for p in call])}, timeout_s={600 if last else 240})')
    log("make each call as soon as the one before returns (the machine keeps /tmp for 30 s), then give_back")
    if args.link_weights:
        log("the bundled weight files are links now: run `python scripts/train_default_gpu.py restore` after "
            "the calls (before any commit)")


# ---------------------------------------------------------------- here: after a session


def average_sdr(evaldir: Path) -> dict:
    """Per target the median SDR of an umx-evaluate results.csv (the model card's numbers), and their mean."""
    import csv

    rows = [r for r in csv.DictReader((evaldir / "results.csv").read_text().splitlines()) if r["metric"] == "SDR"]
    scores = {r["target"]: float(r["median"]) for r in rows if r["target"] in TARGETS}
    return {**scores, "average": sum(scores.values()) / len(scores)}


def evaluate(model: Path, evaldir: Path, sets: dict, tracks: dict) -> dict:
    """umx-evaluate of ``model`` on each named set (``tracks``: only these, for smoke tests)."""
    scores = {}
    for name, options in sets.items():
        folder = evaldir / name
        cmd = ["umx-evaluate", *options, "--model", str(model), "--evaldir", str(folder), "--cores", "2", "--quiet"]
        if tracks.get(name):
            cmd += ["--tracks", *tracks[name]]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        method = next(p for p in folder.iterdir() if p.is_dir())
        scores[name] = {"scores": average_sdr(folder), "records": str(method)}
    return scores


def eval_sets(args: argparse.Namespace) -> dict:
    return {"musdb-valid": ["--root", str(args.musdb), "--subset", "train", "--split", "valid",
                            "--mixture-from-sources"],
            "synth-test": ["--root", str(Path(args.synth) / "test"), "--layout", "folder"]}


def store_session(files: Path, session: Path) -> Path:
    """The returned files as ``session/model`` (a model folder) and ``session/logs``."""
    model = session / "model"
    model.mkdir(parents=True)
    for target in TARGETS:
        shutil.copyfile(files / f"{target}.safetensors", model / f"{target}.safetensors")
    with tarfile.open(files / "meta.tar.gz") as tar:
        tar.extractall(session, filter="data")
    from openunmix_like import Separator

    Separator.from_pretrained(str(model), precision="fp32")  # refuses a folder that does not load
    size = sum(p.stat().st_size for p in model.iterdir())
    if size > SIZE_LIMIT:
        raise SystemExit(f"{model}: {size / 2 ** 20:.1f} MiB, over the package's 40 MiB")
    return model


def next_epoch_length(session: Path) -> None:
    """The --samples-per-track that would fill the session's training minutes with its epochs at the
    throughput it measured."""
    settings = json.loads((session / "logs" / "settings.json").read_text())
    rate = settings.get("throughput", {}).get("samples_per_second")
    if not rate:
        log("no throughput recorded (no epoch finished?)")
        return
    length = rate * settings["max_minutes"] * 60 / (settings["epochs"] * settings["train_folders"])
    log(f"measured {rate} samples/s over {settings['throughput']['epochs']} epochs; for {settings['epochs']} "
        f"epochs in {settings['max_minutes']} min next time: --samples-per-track {max(1, round(length))}")


def receive(args: argparse.Namespace) -> None:
    session = STATE / "sessions" / utc_now()
    model = store_session(Path(args.files), session)
    next_epoch_length(session)
    sets = eval_sets(args)
    tracks = {"musdb-valid": args.valid_tracks, "synth-test": args.test_tracks}
    new = evaluate(model, session / "eval", sets, tracks)
    from openunmix_like.pretrained import sha256_of

    weights = "".join(sha256_of(BUNDLED / f"{t}.safetensors")[:3] for t in TARGETS)  # 12 hex digits, one name
    old = evaluate(BUNDLED, STATE / "eval" / f"bundled-{weights}", sets, tracks)  # cached: scored tracks are kept
    report = {"session": str(session), "new": new, "bundled": old}
    for name in sets:
        compared = subprocess.run(["umx-compare", new[name]["records"], old[name]["records"]], check=True,
                                  capture_output=True, text=True).stdout
        report[f"compare-{name}"] = compared
        log(f"{name}: new {new[name]['scores']}\n  bundled {old[name]['scores']}\n{compared}")
    better = all(new[n]["scores"]["average"] > old[n]["scores"]["average"] for n in sets)
    report["bundled_now"] = better and not args.dry_run
    (session / "report.json").write_text(json.dumps(report, indent=1))
    latest = STATE / "sessions" / "latest"
    if latest.is_symlink():
        latest.unlink()
    latest.symlink_to(session.name, target_is_directory=True)
    if report["bundled_now"]:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "bundle_model.py"), "--half", str(model),
                        str(BUNDLED)], check=True)
    verdict = "bundled" if report["bundled_now"] else ("better, not bundled (--dry-run)" if better else
                                                       "not better on both sets: the bundled model stays")
    log(f"{session}: {verdict}; the next session starts from these weights ({latest})")


# ---------------------------------------------------------------- here: the smoke test


def smoke(args: argparse.Namespace) -> None:
    """pack, stage, the device calls one after another (each seeing only what it carries) and receive,
    at toy size on the CPU, in gpu22-smoke in the temporary folder; the real $GPU_STATE and .gpu22 are
    not touched."""
    tmp = Path(tempfile.gettempdir()) / "gpu22-smoke"
    shutil.rmtree(tmp, ignore_errors=True)
    state, stage = tmp / "state", ".gpu22-smoke"
    shutil.copytree(STATE / "wheels", state / "wheels")
    env = dict(os.environ, GPU_STATE=str(state))
    me = [sys.executable, str(Path(__file__).resolve())]
    step(env, [sys.executable, str(ROOT / "scripts" / "pack_corpus.py"), "pack", str(args.synth), str(args.musdb),
               str(state / "corpus-pack"), "--limit", "2", "--part-mb", "1.5", "--jobs", "2"])
    try:
        # The bundled weights travel as init/ in a call of their own: two calls, the first unpacking only.
        plan = step(env, [*me, "stage", "--stage", stage, "--pack", str(state / "corpus-pack"), "--link-weights",
                          "--max-carry-mib", "17"])
        calls = [json.loads(line.split("carry=", 1)[1].split(", timeout_s")[0]) for line in plan.splitlines()
                 if line.startswith("call ")]
        assert len(calls) == 2 and calls[1] == [f"{stage}/init"], calls
        assert all((BUNDLED / f"{t}.safetensors").is_symlink() for t in TARGETS)
        returned = smoke_calls(me, env, tmp, calls)
    finally:
        step(env, [*me, "restore"])
        shutil.rmtree(ROOT / stage, ignore_errors=True)
    assert not any((BUNDLED / f"{t}.safetensors").is_symlink() for t in TARGETS)
    step(env, [*me, "receive", str(tmp / "out"), "--synth", str(args.synth), "--musdb", str(args.musdb),
               "--dry-run", "--valid-tracks", "Leaf - Summerghost", "--test-tracks", "synth-test-0000"])
    log(f"smoke test passed: {len(calls)} calls, returned {', '.join(returned)}")


def smoke_calls(me: list, env: dict, tmp: Path, calls: list) -> list:
    """The device calls, each seeing only what it carries; returns the names of the files written."""
    toy = ["--work", str(tmp / "machine"), "--jobs", "2", "--device", "cpu", "--precision", "fp32",
           "--batch-size", "2", "--seq-dur", "1", "--samples-per-track", "1", "--epochs", "2", "--budget-s", "900"]
    early = subprocess.run([*me, "device", "--stage", str(tmp / "call-none"), "--out", str(tmp / "out"), *toy],
                           env=env, capture_output=True, text=True)
    assert early.returncode != 0 and "missing" in early.stderr, early.stderr  # a train call before the parts
    for k, carried in enumerate(calls, start=1):
        view = tmp / f"call-{k}"  # what this call carries, under the names the device sees
        view.mkdir()
        for path in carried:
            os.symlink(ROOT / path, view / Path(path).name)
        last = k == len(calls)
        step(env, [*me, "device", "--stage", str(view), "--out", str(tmp / "out"), *toy,
                   *([] if last else ["--unpack-only"])])
    returned = sorted(p.name for p in (tmp / "out").iterdir())
    assert len(returned) <= 8 and all((tmp / "out" / n).stat().st_size <= 16 * 2 ** 20 for n in returned), returned
    return returned


def step(env: dict, cmd: list) -> str:
    log("$ " + " ".join(cmd[1:] if cmd[0] == sys.executable else cmd))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    log(done.stdout.rstrip())
    if done.returncode:
        raise SystemExit(f"step failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


# ---------------------------------------------------------------- options


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The training settings of a session; the defaults are the recipe."""
    p.add_argument("--hidden-size", type=int, default=None, help="default: the widest that fits 40 MiB in fp16")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seq-dur", type=float, default=6.0)
    p.add_argument("--samples-per-track", type=int, default=40,
                   help="excerpts per training track folder per epoch (310 folders: 12,400 per epoch)")
    p.add_argument("--epochs", type=int, default=30, help="length of the cosine schedule")
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--seed", type=int, default=2201)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--device", default="cuda")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("device", help="on the GPU machine: unpack the carried parts, train, export into $OUT")
    a.add_argument("--unpack-only", action="store_true", help="unpack the carried parts and stop")
    a.add_argument("--stage", default=".gpu22", help="carried folder in the checkout (default .gpu22)")
    a.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "gpu22"),
                   help="corpus and run folder on the machine (default: gpu22 in its temporary folder)")
    a.add_argument("--out", default=None, help="where the returned files go (default $OUT)")
    a.add_argument("--jobs", type=int, default=os.cpu_count())
    a.add_argument("--budget-s", type=float, default=575.0, help="seconds this call may take (timeout_s 600)")
    a.add_argument("--export-s", type=float, default=30.0, help="seconds kept for the export after training")
    a.add_argument("--startup-s", type=float, default=30.0, help="seconds expected for loading the data and models")
    a.add_argument("--epoch-overhead-s", type=float, default=2.0,
                   help="seconds expected per epoch for validation and saving")
    add_recipe_options(a)
    a = sub.add_parser("stage", help="here: fill .gpu22/ and print the device calls")
    a.add_argument("--stage", default=".gpu22")
    a.add_argument("--pack", default=str(STATE / "corpus-pack"))
    a.add_argument("--link-weights", action="store_true",
                   help="send the bundled weights as init/ and leave them out of the working tree (links) for "
                        "the calls: room for the corpus beside a 40 MB bundled model; undo with restore")
    a.add_argument("--max-carry-mib", type=float, default=0,
                   help="carry at most this much per call (default 0: what fits the 64 MiB; for tests)")
    sub.add_parser("restore", help="here: the bundled weight files back after stage --link-weights")
    a = sub.add_parser("receive", help="here: store, score and maybe bundle what a session brought back")
    a.add_argument("files", help="the folder the device's files were copied into (files_at)")
    a.add_argument("--musdb", default=str(MUSDB_ROOT))
    a.add_argument("--synth", default=str(STATE / "corpus" / "synth"))
    a.add_argument("--valid-tracks", nargs="+", default=None, help="only these validation excerpts (smoke tests)")
    a.add_argument("--test-tracks", nargs="+", default=None, help="only these generated test songs (smoke tests)")
    a.add_argument("--dry-run", action="store_true", help="score and compare, but do not bundle")
    a = sub.add_parser("smoke", help="here: the whole chain at toy size on the CPU")
    a.add_argument("--musdb", default=str(MUSDB_ROOT))
    a.add_argument("--synth", default=str(STATE / "corpus" / "synth"))
    args = p.parse_args()
    commands = {"device": device, "stage": stage_session, "restore": restore, "receive": receive, "smoke": smoke}
    commands[args.command](args)


if __name__ == "__main__":
    main()
