"""Print a ``sitecustomize.py`` that hides the packages installed here but absent on the GPU machine.

Put the folder holding its output first on ``PYTHONPATH`` and a process (and every
process it starts with that environment: Ray's workers too) imports only what the
device image has (the package list in KINDS.md) plus the wheels carried to it, so
a missing dependency shows up here, at no device time, as the ImportError it would
raise there.

    python scripts/device_like_site.py /work/.library/device/KINDS.md .gpu/whl > block/sitecustomize.py
    PYTHONPATH=block:.gpu-site python -c "import pydantic"   # ModuleNotFoundError, as on the device
"""
from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
from pathlib import Path

# Always importable: the package under test, and Ray (the slim build travels).
ALWAYS = {"openunmix-like", "ray"}

TEMPLATE = '''"""Written by scripts/device_like_site.py: modules absent on the GPU machine cannot be found."""
import importlib.machinery
import sys

HIDDEN = {{
{names}
}}


class _PathFinderWithout:
    """sys.path's finder, blind to HIDDEN: find_spec answers None, as for a module not installed."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in HIDDEN:
            return None
        return self.finder.find_spec(fullname, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [_PathFinderWithout(f) if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
'''


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution(wheel: Path) -> str:
    """The normalised distribution name of a wheel file."""
    return normalise(wheel.name.split("-")[0])


def device_packages(kinds: Path) -> set:
    """Distribution names of the device image, from the 'Packages:' line of KINDS.md."""
    text = kinds.read_text()
    if "Packages: " not in text:
        raise SystemExit(f"{kinds}: no 'Packages: ' list found")
    listed = text.split("Packages: ", 1)[1].split(".\n", 1)[0]
    return {normalise(name) for name in listed.split(", ")}


def hidden_modules(allowed: set) -> list:
    """Top-level modules installed here whose every distribution is outside ``allowed``."""
    hidden = []
    for module, dists in importlib.metadata.packages_distributions().items():
        if module in sys.stdlib_module_names or not module.isidentifier():
            continue
        if not any(normalise(d) in allowed for d in dists):
            hidden.append(module)
    return sorted(hidden)


def sitecustomize(names) -> str:
    """The text of a ``sitecustomize.py`` hiding the top-level modules ``names``."""
    return TEMPLATE.format(names="\n".join(f"    {name!r}," for name in sorted(names)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kinds", type=Path, help="KINDS.md of the device tool")
    p.add_argument("wheels", type=Path, help="folder of the wheels carried to the device")
    args = p.parse_args(argv)
    carried = {distribution(w) for w in args.wheels.glob("*.whl")}
    names = hidden_modules(device_packages(args.kinds) | carried | ALWAYS)
    print(sitecustomize(names), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
