"""One command on the GPU machine for issues 23 (GPU speed) and 20 (catalogue on Ray).

Prepare here first (builds .gpu/, prints what travels against the 64 MiB limit)::

    scripts/prepare_device.sh

then call the device tool's ``run`` exactly so (39 MiB travel as of 2026-12-05: the
working tree 19.6 MiB with the fp16 bundled weights, 36.4 MiB with the fp32 ones, and
.gpu 19.5 MiB; the parts take at most 505 s in all, the rest of the limit is margin)::

    command:   PYTHONUNBUFFERED=1 python3 scripts/device_session.py
    carry:     [".gpu"]
    timeout_s: 570

and give the machine back when it returns (with a start of one or two minutes that is
about 11 of the session's 15 minutes of device time; a rerun of one part fits only
while the machine is still warm, 30 s after the call). What it does, setup in this process
(each of its commands under its own timeout: pip 60 s, the checks 20-40 s; the 25 s below
is what it usually takes) and every other part in a process of its own under its own time
limit (a part that fails or runs over is ended with everything it started, and the next
one runs), results written after every step:

==========  =====  ==========================================================================
part        limit  what
==========  =====  ==========================================================================
setup        25 s  .gpu/whl/*.whl and the slim Ray (.gpu/ray-*-slim.tar.xz) into /tmp/site;
                   versions, nvidia-smi, /dev/shm; Ray started once, a task, a task on the
                   GPU (if Ray finds none, the catalogue tells it of one: NVML may be hidden)
separation   90 s  gpu_benchmark.py: forward at 60 s and 600 s, ours batched (fp32 and bf16
                   products), whole and one segment at a time, the reference; the stages of
                   one batch of 20 segments; peak memory at 10 and 60 min (goal 1)
cli          50 s  gpu_benchmark.py: umx-separate --device cuda on a 10-minute wav, GPU busy
                   share; the same on 1 s for the fixed start cost (goal 1)
training    175 s  gpu_benchmark.py: samples per second of ours (batch 16 fp32, 64, 256
                   bf16, files with 8 workers) and the reference recipe; loss curves of
                   ours and the reference, 16 epochs of 16 steps (goal 2). The runs' own
                   allowances add up to more than the part's: a run starts only while
                   time is left, and those that do not are listed as skipped
catalogue   160 s  gpu_catalogue.py: umx-separate --engine ray (one actor, 8 and 1 tracks a
                   call; three actors sharing the GPU) and --engine local --jobs 4 on
                   3-minute tracks, 30 s each, hours of
                   audio per hour, GPU and CPU busy shares; the separator alone (issue 20).
                   Without a working Ray: the local engine with 4 and 8 jobs
==========  =====  ==========================================================================

Back in $OUT (7 files; the tool returns at most 8): ``session.md`` (every section,
ready for docs/benchmarks.md), ``session.json`` (parts: exit, seconds; setup),
``session.log`` (all output), ``gpu_results.json`` and ``gpu_section.md``
(gpu_benchmark.py), ``catalogue_results.json`` and ``catalogue_section.md``.

A second call on the warm machine can rerun some parts: ``--parts catalogue`` (setup
always runs first; it is quick once /tmp/site exists). ``--smoke`` runs every part at
toy sizes on this machine's CPU, with the Ray installed here::

    python scripts/device_session.py --smoke      # about 8 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from processes import run_bounded  # noqa: E402

GPU = ROOT / ".gpu"
SITE = Path("/tmp/site")
# (part, seconds on the device, seconds in --smoke on two shared CPU cores)
PARTS = [("setup", 25, 60), ("separation", 90, 150), ("cli", 50, 90), ("training", 175, 240),
         ("catalogue", 160, 150)]
RAY_DEPENDENCIES = ("click", "filelock", "jsonschema", "msgpack", "packaging", "protobuf", "pyyaml", "requests",
                    "attrs", "referencing", "rpds-py", "typing-extensions", "aiohttp", "grpcio", "numpy", "torch")
LOG_LIMIT = 8 * 2**20  # session.log stops growing here; a returned file may be 16 MiB
WHEEL_PLATFORMS = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
                   "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                   "--platform", "manylinux2014_x86_64"]
SESSION: dict = {"parts": {}}


class Log:
    """Every line to stdout (the tool returns its end) and to $OUT/session.log, up to LOG_LIMIT."""

    def __init__(self, path: Path):
        self.file, self.size = open(path, "a", encoding="utf-8"), 0

    def __call__(self, line: str) -> None:
        line = line if line.endswith("\n") else line + "\n"
        sys.stdout.write(line)
        sys.stdout.flush()
        if self.size < LOG_LIMIT:
            self.file.write(line)
            self.file.flush()
            self.size += len(line)


def save(out: Path) -> None:
    (out / "session.json").write_text(json.dumps(SESSION, indent=1))


def check(command: list, env: dict, timeout: float = 60) -> dict:
    done = run_bounded(command, timeout, env=env, keep=1500)
    return {"rc": done.rc, "s": done.seconds, "out": done.tail.strip()}


def install(site: Path, smoke: bool, log: Log) -> dict:
    """The carried wheels and the slim Ray into ``site`` (for CPython 3.12 even when this is not it)."""
    wheels = sorted(str(w) for w in (GPU / "whl").glob("*.whl"))
    tarballs = sorted((GPU).glob("ray-*-slim.tar.xz"))
    if not wheels or not tarballs:
        return {"error": f"{GPU}: no wheels or no slim Ray; run scripts/prepare_device.sh before the call"}
    start = time.monotonic()
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--upgrade", "--target", str(site)] + (WHEEL_PLATFORMS if smoke else []) + wheels
    pip = check(command, dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"), timeout=60)
    ray_error = None
    if not (site / "ray" / "__init__.py").is_file():
        try:
            with tarfile.open(tarballs[-1]) as tar:
                if hasattr(tarfile, "data_filter"):  # Python 3.12: keep modes (the raylet is executable)
                    tar.extractall(site, filter="tar")
                else:
                    tar.extractall(site)
        except (OSError, tarfile.TarError, EOFError) as exc:  # the parts without Ray still run
            ray_error = f"{tarballs[-1]}: {type(exc).__name__}: {exc}"
    if smoke:  # the reference's pure-Python wheels for this interpreter, beside the 3.12 site
        pure = sorted(str(w) for w in (GPU / "whl").glob("*-py*-none-any.whl"))
        row_pure = check([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                          str(site / "pure")] + pure, dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
        log(f"setup: pure-Python wheels for this interpreter into {site / 'pure'}: rc {row_pure['rc']}")
    raylet = site / "ray" / "core" / "src" / "ray" / "raylet" / "raylet"
    row = {"pip": pip, "ray_tarball": tarballs[-1].name, "ray_extract_error": ray_error,
           "raylet_executable": os.access(raylet, os.X_OK), "install_s": round(time.monotonic() - start, 1)}
    log(f"setup: installed into {site} in {row['install_s']} s (pip rc {pip['rc']})")
    return row


PROBE = """
import importlib.metadata as m, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = m.version(name)
    except m.PackageNotFoundError:
        found[name] = None
for module in ("soundfile", "norbert", "openunmix", "ray", "openunmix_like"):
    try:
        found[module + " imported from"] = __import__(module).__file__
    except Exception as exc:
        found[module + " imported from"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(found))
"""

# What an LSTM runs in under bf16 autocast (cuDNN's autocast wrapper may cast it to float16, without the
# GradScaler a float16 run needs), and whether cuDNN takes bf16 LSTM weights (the separator's bf16 products).
LSTM_PROBE = """
import torch
if not torch.cuda.is_available():
    print("no CUDA"); raise SystemExit
lstm, x = torch.nn.LSTM(64, 64).cuda(), torch.randn(50, 4, 64, device="cuda")
with torch.autocast("cuda", torch.bfloat16):
    y = lstm(x)[0]
print("autocast bf16: LSTM output", y.dtype, "| cudnn", torch.backends.cudnn.version())
try:
    z = lstm.to(torch.bfloat16)(x.bfloat16())[0]
    torch.cuda.synchronize()
    print("bf16 weights: LSTM output", z.dtype)
except Exception as exc:
    print("bf16 weights:", type(exc).__name__, str(exc)[:200])
"""


RAY_PROBE = """
import time, ray
start = time.perf_counter()
ray.init(address="local", include_dashboard=False, logging_level="WARNING")
resources = ray.cluster_resources()
print("ray", ray.__version__, "started in", round(time.perf_counter() - start, 1), "s;", resources)
assert ray.get(ray.remote(lambda: 42).remote()) == 42
if resources.get("GPU"):
    @ray.remote(num_gpus=1)
    def cuda():
        import torch
        return torch.cuda.is_available(), torch.cuda.device_count()
    print("a task holding the GPU: torch.cuda.is_available(), device_count() =", ray.get(cuda.remote()))
ray.shutdown()
print("ray works")
"""


def setup(env: dict, site: Path, smoke: bool, log: Log) -> int:
    """Install, then record what the parts depend on: versions, the GPU, /dev/shm, Ray starting."""
    row = SESSION["setup"] = install(site, smoke, log)
    if "error" in row:
        log(f"setup: {row['error']}")
        return 1
    if not smoke:  # this process reads Ray's logs and renders the results with soundfile from there
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
    checks = {
        "versions": [sys.executable, "-c", PROBE, *RAY_DEPENDENCIES],
        "nvidia_smi": ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                       "--format=csv,noheader"],
        "dev_shm": ["df", "-h", "/dev/shm", "/tmp"],
        "ray_start": [sys.executable, "-c", RAY_PROBE],
        "lstm_precision": [sys.executable, "-c", LSTM_PROBE],
    }
    for name, command in checks.items():
        try:
            row[name] = check(command, env, timeout=40 if name == "ray_start" else 20)
        except OSError as exc:
            row[name] = {"rc": None, "out": f"{type(exc).__name__}: {exc}"}
        log(f"setup: {name}: rc {row[name]['rc']}: {row[name]['out'][-600:]}")
    row["ray_works"] = "ray works" in row["ray_start"]["out"]
    if row["ray_works"] and not smoke and "'GPU'" not in row["ray_start"]["out"]:
        # Ray counts GPUs through NVML; where a sandbox hides it, the catalogue's Ray is told of the one GPU.
        row["ray_override_resources"] = json.dumps({"GPU": 1})
        log(f"setup: Ray found no GPU; the catalogue runs with RAY_OVERRIDE_RESOURCES={row['ray_override_resources']}")
    if not row["ray_works"]:
        from gpu_catalogue import ray_logs

        row["ray_logs"] = ray_logs()
    return 0


def part_command(name: str, work: Path, smoke: bool, cap: float) -> list:
    toy = ["--smoke"] if smoke else []
    if name in ("separation", "cli", "training"):
        budget = ["--seconds", str(max(10, cap - 10))] if name == "training" else []  # only training reads it
        return ([sys.executable, str(ROOT / "scripts" / "gpu_benchmark.py"), "--only", name, "--merge",
                 "--workdir", str(work)] + budget + toy)
    runs = [] if SESSION.get("setup", {}).get("ray_works", True) else \
        ["--runs", "local_jobs_4=--engine local --jobs 4", "local_jobs_8=--engine local --jobs 8"]
    if smoke and runs:
        runs = ["--runs", "local_jobs_2=--engine local --jobs 2"]
    per_run = (35.0 if smoke else 30.0) if not runs else (50.0 if smoke else 55.0)
    return ([sys.executable, str(ROOT / "scripts" / "gpu_catalogue.py"), "--workdir", str(work),
             "--cap", str(per_run)] + runs + toy)


def render(out: Path) -> None:
    """session.md from the parts' results so far (and gpu_section.md again, with partial training runs)."""
    import gpu_benchmark
    import gpu_catalogue

    sections = [f"# Device session, {SESSION.get('started')}", "", "| part | exit | seconds | limit |",
                "|---|---|---|---|"]
    for name, row in SESSION["parts"].items():
        sections.append(f"| {name} | {row.get('rc')} | {row.get('s')} | {row.get('cap_s')} |")
    setup_row = SESSION.get("setup", {})
    for key in ("nvidia_smi", "ray_start"):
        if key in setup_row:
            sections += ["", f"{key}: `{setup_row[key]['out'][-300:].strip()}`"]
    results = out / "gpu_results.json"
    if results.is_file():
        text = gpu_benchmark.markdown(json.loads(results.read_text()), "python3 scripts/device_session.py")
        (out / "gpu_section.md").write_text(text + "\n")
        sections += ["", text]
    results = out / "catalogue_results.json"
    if results.is_file():
        sections += ["", gpu_catalogue.markdown(json.loads(results.read_text()))]
    (out / "session.md").write_text("\n".join(sections) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="every part at toy sizes on the CPU, with the Ray here")
    p.add_argument("--parts", nargs="*", default=None, choices=[name for name, _, _ in PARTS][1:],
                   help="run only these parts after setup (default: all)")
    p.add_argument("--budget", type=float, default=None, help="seconds for all parts (default: 505, smoke 700)")
    args = p.parse_args(argv)
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="umx-device-session-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ["OUT"] = str(out)
    log = Log(out / "session.log")
    site = Path(tempfile.mkdtemp(prefix="umx-smoke-site-")) if args.smoke else SITE
    work = Path(tempfile.mkdtemp(prefix="umx-smoke-work-")) if args.smoke else Path("/tmp/umx-session")
    try:
        return run(args, out, site, work, log)
    finally:
        if args.smoke:
            shutil.rmtree(site, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
        log(f"results in {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")


def run(args: argparse.Namespace, out: Path, site: Path, work: Path, log: Log) -> int:
    deadline = time.monotonic() + (args.budget or (700 if args.smoke else 505))
    SESSION.update({"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "smoke": args.smoke, "argv": sys.argv[1:]})
    # The parts import the checkout and, on the device, the installed wheels; Ray's workers inherit this.
    # The smoke uses this machine's packages, the reference's pure-Python wheels and its torchaudio stand-in.
    path = [str(ROOT), str(site / "pure"), str(GPU / "stub")] if args.smoke else [str(site), str(ROOT)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    work.mkdir(parents=True, exist_ok=True)
    wanted = set(args.parts or [name for name, _, _ in PARTS])
    for name, device_cap, smoke_cap in PARTS:
        if name != "setup" and name not in wanted:
            continue
        cap = min(smoke_cap if args.smoke else device_cap, deadline - time.monotonic())
        if cap < 15:
            SESSION["parts"][name] = {"rc": "skipped", "cap_s": round(cap, 1), "why": "the budget is spent"}
            continue
        log(f"== {name} " + ("(in this process, each command under its own timeout)" if name == "setup"
                            else f"(at most {cap:.0f} s)"))
        start = time.monotonic()
        try:
            if name == "setup":
                rc = setup(env, site, args.smoke, log)
            else:
                override = SESSION.get("setup", {}).get("ray_override_resources")
                part_env = dict(env, RAY_OVERRIDE_RESOURCES=override) if override and name == "catalogue" else env
                done = run_bounded(part_command(name, work, args.smoke, cap), cap, env=part_env, on_line=log)
                rc = done.rc
        except Exception as exc:  # the next part runs whatever happened to this one
            rc = f"{type(exc).__name__}: {exc}"
        SESSION["parts"][name] = {"rc": rc, "s": round(time.monotonic() - start, 1), "cap_s": round(cap, 1)}
        log(f"== {name}: {rc} after {SESSION['parts'][name]['s']} s")
        save(out)
        try:
            render(out)
        except Exception as exc:
            log(f"render: {type(exc).__name__}: {exc}")
    failed = [name for name, row in SESSION["parts"].items() if row["rc"] != 0]
    log(f"== parts not finished: {', '.join(failed)}" if failed else "== every part finished")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
