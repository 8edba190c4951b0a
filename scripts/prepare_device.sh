#!/usr/bin/env bash
# Build .gpu/, what the GPU machine needs beside the checkout, from nothing, and
# check that the working tree plus .gpu/ travel within the device tool's 64 MiB.
#
#   scripts/prepare_device.sh           # build (idempotent: a second run is quick)
#   scripts/prepare_device.sh --check   # also try what was built: the carried cp312 files
#                                       # with a Python 3.12 here, if there is one (Ray
#                                       # starts, runs a task and an actor), and the same
#                                       # cut of the cp311 wheel with the catalogue's tests
#                                       # and a umx-separate --engine ray run that sees
#                                       # only the packages the device has
#
# .gpu/ holds: whl/ (Python 3.12 wheels the device image lacks: soundfile and
# what it needs, norbert and openunmix 1.3.0 for the reference, jsonschema and
# what it needs for Ray), train.py and stub/torchaudio (the reference training
# recipe and its torchaudio stand-in, from ../shared/tools/reference-openunmix),
# and ray-<version>-cp312-slim.tar.xz: the Ray wheel (79 MB, over the limit on
# its own) without its Java jars, RLlib, Serve, LLM, Tune, Train, Ray Data and
# the dashboard's web page, its three large binaries stripped of symbols.
# scripts/device_session.py installs all of it on the device.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REF=${REFERENCE_OPENUNMIX:-$ROOT/../shared/tools/reference-openunmix}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/openunmix-like-device
GPU=.gpu
LIMIT=$((64 * 1024 * 1024))
RAY_VERSION=2.60.0
# Pinned: the versions installed and tested together on the CPU machine.
WHEELS="soundfile==0.14.0 cffi==2.0.0 pycparser==3.0 norbert==0.2.1 openunmix==1.3.0
        jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==0.30.0"
# Parts of Ray that umx-separate --engine ray (core tasks and actors, no dashboard) never imports.
RAY_CUT="ray/jars ray/rllib ray/serve ray/llm ray/tune ray/train ray/data ray/dashboard/client"
RAY_BINARIES="ray/_raylet.so ray/core/src/ray/gcs/gcs_server ray/core/src/ray/raylet/raylet"
KINDS=${KINDS:-/work/.library/device/KINDS.md}  # the device tool's package list

say() { printf 'prepare_device: %s\n' "$*" >&2; }

download() {  # download PYVER DEST PACKAGES...: binary wheels for CPython PYVER on x86-64 Linux
    local pyver=$1 dest=$2
    shift 2
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$dest" "$@" 2>&1 | grep -v "^WARNING: Location" >&2 || true
}

ignore_gpu_folder() {
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >>"$exclude"
    if [ -n "$(git ls-files -o --exclude-standard -- "$GPU" | head -1)" ]; then
        say "$GPU is not ignored by git; add /.gpu/ to $exclude"; exit 1
    fi
}

reference_recipe() {
    if [ ! -f "$REF/scripts/train.py" ] || [ ! -d "$REF/torchaudio" ]; then
        say "$REF: no reference recipe (scripts/train.py, torchaudio/); set REFERENCE_OPENUNMIX"; exit 1
    fi
    mkdir -p "$GPU/stub"
    cp -f "$REF/scripts/train.py" "$GPU/train.py"
    rm -rf "$GPU/stub/torchaudio"
    cp -r "$REF/torchaudio" "$GPU/stub/"
    find "$GPU/stub" -name __pycache__ -prune -exec rm -rf {} +
}

wheels() {  # a fresh whl/ each time: two versions of one package would stop the install there
    local tmp
    tmp=$(mktemp -d)
    # shellcheck disable=SC2086
    download 3.12 "$tmp" $WHEELS
    if [ "$(ls "$tmp"/*.whl | wc -l)" -ne "$(echo $WHEELS | wc -w)" ]; then
        say "expected $(echo $WHEELS | wc -w) wheels, pip gave: $(ls "$tmp")"; exit 1
    fi
    rm -rf "$GPU/whl"
    mv "$tmp" "$GPU/whl"
    chmod 755 "$GPU/whl"
}

ray_wheel() {  # ray_wheel PYVER: path of the cached Ray wheel for CPython PYVER (3.12)
    local dest=$CACHE/ray-$RAY_VERSION-py$1
    if ! ls "$dest"/ray-*.whl >/dev/null 2>&1; then
        mkdir -p "$dest"
        download "$1" "$dest" "ray==$RAY_VERSION"
    fi
    ls "$dest"/ray-*.whl
}

slim_tree() {  # slim_tree WHEEL DEST: the wheel unpacked into DEST, cut and stripped
    rm -rf "$2"
    mkdir -p "$2"
    python3 -m zipfile -e "$1" "$2"
    (
        cd "$2"
        # shellcheck disable=SC2086
        rm -rf $RAY_CUT
        chmod +x ray/core/src/ray/gcs/gcs_server ray/core/src/ray/raylet/raylet  # zipfile drops modes
        # shellcheck disable=SC2086
        strip --strip-unneeded $RAY_BINARIES
        find . -name __pycache__ -prune -exec rm -rf {} +
    )
}

ray_tarball() {
    local out=$GPU/ray-$RAY_VERSION-cp312-slim.tar.xz stamp recipe tree
    recipe="$RAY_VERSION|$RAY_CUT|$RAY_BINARIES"
    stamp=$GPU/.ray-slim-recipe
    if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$recipe" ]; then
        say "$out is up to date"; return
    fi
    tree=$(mktemp -d)
    slim_tree "$(ray_wheel 3.12)" "$tree"
    say "compressing the slim Ray tree ($(du -sh "$tree" | cut -f1)); xz -9 takes a minute or two"
    tar -C "$tree" -c . | xz -9 -T2 >"$out.partial"
    mv "$out.partial" "$out"
    echo "$recipe" >"$stamp"
    rm -rf "$tree"
}

missing_on_device() {  # Requires-Dist names of the carried wheels that neither travel nor are on the device
    if [ ! -f "$KINDS" ]; then
        say "$KINDS not found: the wheels' requirements are not checked against the device image"; return
    fi
    python3 - "$KINDS" "$GPU/whl" "$(ray_wheel 3.12)" <<'EOF'
import re, sys, zipfile
from pathlib import Path

sys.path.insert(0, "scripts")
from device_like_site import device_packages, distribution, normalise as norm

device = device_packages(Path(sys.argv[1]))
wheels = sorted(Path(sys.argv[2]).glob("*.whl")) + [Path(sys.argv[3])]
carried = {distribution(w) for w in wheels}
missing = set()
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                name = norm(re.split(r"[ ;<>=!~\[(]", line.split(":", 1)[1].strip())[0])
                if name not in device | carried:
                    missing.add(f"{name} (for {wheel.name.split('-')[0]})")
print("\n".join(sorted(missing)))
EOF
}

travelling_size() {  # bytes of what a device call sends: tracked, untracked-not-ignored, shared/ and .gpu/
    {
        git ls-files -z --cached --others --exclude-standard
        if [ -d shared ]; then find shared -type f -print0; fi
        find "$GPU" -type f -print0
    } | sort -zu | python3 -c '
import os, sys
paths = [p for p in sys.stdin.buffer.read().split(b"\0") if p]
print(sum(os.lstat(p).st_size for p in paths if os.path.lexists(p)))'
}

report_size() {
    local total gpu
    total=$(travelling_size)
    gpu=$(du -sb "$GPU" | cut -f1)
    awk -v t="$total" -v g="$gpu" -v l="$LIMIT" -v d="$GPU" 'BEGIN {
        m = 1048576
        printf "prepare_device: travels: %.1f MiB (working tree %.1f MiB + %s %.1f MiB) of %d MiB, %.1f MiB spare\n",
            t / m, (t - g) / m, d, g / m, l / m, (l - t) / m > "/dev/stderr" }'
    if [ "$total" -gt "$LIMIT" ]; then
        say "over the limit by $(((total - LIMIT) / 1024)) KiB: the device tool would refuse the call"; exit 1
    fi
}

check_slim_ray() {  # the same cut of the cp311 wheel, first on PYTHONPATH, with the catalogue's tests
    local check=${TMPDIR:-/tmp}/umx-slim-ray-check site
    site=$check/site
    slim_tree "$(ray_wheel 3.11)" "$site"
    local deps
    deps=$(mktemp -d)
    # shellcheck disable=SC2086
    download 3.11 "$deps" $(echo $WHEELS | tr ' ' '\n' | grep -E '^(jsonschema|referencing|rpds)')
    python3 -m pip install -q --no-index --no-deps --target "$site" "$deps"/*.whl
    rm -rf "$deps"
    # A stand-in for the device image: packages installed here but absent there cannot be imported.
    mkdir -p "$check/block"
    python3 "$ROOT/scripts/device_like_site.py" "$KINDS" "$GPU/whl" >"$check/block/sitecustomize.py"
    say "slim Ray (cp311) in $site; $(grep -c "^    '" "$check/block/sitecustomize.py") modules hidden as on the device"
    PYTHONPATH=$site python3 -c "import ray, sys; assert ray.__file__.startswith('$site'), ray.__file__; print('ray', ray.__version__, ray.__file__)"
    PYTHONPATH=$site python3 -m pytest -q -x -p no:cacheprovider tests/test_catalogue.py
    local tracks=$check/tracks
    rm -rf "$tracks" "$check/out"
    python3 -c "
import sys; sys.path.insert(0, 'scripts')
from pathlib import Path
from benchmark_catalogue import make_tracks
make_tracks(Path('$tracks'), 3, 8.0)"
    PYTHONPATH=$check/block:$site:$ROOT python3 -c "import sys; sys.argv[0] = 'umx-separate'
from openunmix_like.cli.separate import main; sys.exit(main())" "$tracks" --engine ray --outdir "$check/out" --quiet
    local done
    done=$(find "$check/out" -name _done.json | wc -l)
    [ "$done" -eq 3 ] || { say "the slim Ray separated $done of 3 tracks"; exit 1; }
    say "slim Ray: catalogue tests passed; umx-separate --engine ray separated 3 of 3 tracks as on the device"
}

check_carried_cp312() {  # the carried files themselves, installed as on the device, if a Python 3.12 is here
    local py check=${TMPDIR:-/tmp}/umx-slim-ray-check
    for py in python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 ""; do
        if [ -n "$py" ] && "$py" -c 'import venv' 2>/dev/null; then break; fi
    done
    if [ -z "$py" ]; then
        say "no python3.12 here: the cp312 files are checked on the device only"; return
    fi
    rm -rf "$check/venv312" "$check/site312"
    "$py" -m venv "$check/venv312"
    # Ray's own requirements, all in the device image (missing_on_device checked that).
    "$check/venv312/bin/python" -m pip install -q click filelock msgpack packaging protobuf pyyaml requests \
        attrs typing-extensions numpy 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$check/venv312/bin/python" -m pip install -q --no-index --no-deps --no-compile --target "$check/site312" \
        "$GPU"/whl/*.whl
    "$check/venv312/bin/python" -c "import sys, tarfile
tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='tar')" "$GPU"/ray-*-cp312-slim.tar.xz "$check/site312"
    PYTHONPATH=$check/site312 RAY_USAGE_STATS_ENABLED=0 timeout 120 "$check/venv312/bin/python" -c "
import ray, soundfile, jsonschema
ray.init(address='local', include_dashboard=False, logging_level='ERROR')
@ray.remote
class Twice:
    def of(self, x):
        return 2 * x
assert ray.get(ray.remote(lambda: 42).remote()) == 42 and ray.get(Twice.remote().of.remote(21)) == 42
ray.shutdown()
print('carried cp312 files: Ray', ray.__version__, 'from', ray.__file__, 'ran a task and an actor; soundfile',
      soundfile.__version__)"
}

main() {
    local check=0
    case "${1:-}" in
        --check) check=1 ;;
        "") ;;
        *) say "usage: scripts/prepare_device.sh [--check]"; exit 2 ;;
    esac
    ignore_gpu_folder
    mkdir -p "$GPU"
    reference_recipe
    wheels
    ray_tarball
    local missing
    missing=$(missing_on_device)
    if [ -n "$missing" ]; then
        say "needed on the device but neither carried nor installed there:"; echo "$missing" >&2; exit 1
    fi
    ls -l "$GPU" "$GPU/whl" >&2
    report_size
    if [ "$check" = 1 ]; then
        check_carried_cp312
        check_slim_ray
    fi
}

main "$@"
