"""The wheel holds the whole package (bundled model, web page, tables), and an installed wheel
separates offline from any folder: what ``pip install openunmix-like`` gives a user."""
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def package_files() -> set:
    """The package's files in this checkout: tracked by git where it is a checkout, else on disk."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(["git", "ls-files", "-z", "openunmix_like"], cwd=ROOT, capture_output=True,
                                check=True).stdout.decode().split("\0")
        return {name for name in listed if name and (ROOT / name).is_file()}
    return {str(p.relative_to(ROOT)) for p in (ROOT / "openunmix_like").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in [*package_files(), "setup.py", "pyproject.toml", "README.md"]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(src)], check=True, capture_output=True)
    (found,) = dist.glob("openunmix_like-*.whl")
    return found


def test_the_wheel_holds_every_file_of_the_package(wheel):
    with zipfile.ZipFile(wheel) as z:
        inside = {n for n in z.namelist() if n.startswith("openunmix_like/")}
        entry_points = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
    assert inside == package_files()
    assert {"openunmix_like/models/default/vocals.safetensors", "openunmix_like/web/static/app.js",
            "openunmix_like/pretrained.json"} <= inside
    for command in ("umx-separate", "umx-train", "umx-evaluate", "umx-compare", "umx-export", "umx-synth",
                    "umx-web"):
        assert f"{command} = openunmix_like.cli:{command.replace('-', '_')}" in entry_points, command


def test_an_installed_wheel_separates_the_demo_offline(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    # The test environment's packages (torch, ...) are visible; the wheel installed in the venv comes first.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, capture_output=True)
    where = subprocess.run([str(python), "-c", "import openunmix_like; print(openunmix_like.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(env_dir)
    done = subprocess.run([str(env_dir / "bin" / "umx-separate"), str(ROOT / "examples" / "synth-demo.flac"),
                           "--outdir", "out", "--quiet"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    frames = sf.info(str(ROOT / "examples" / "synth-demo.flac")).frames
    for target in ("vocals", "drums", "bass", "other"):
        assert sf.info(str(tmp_path / "out" / "synth-demo" / f"{target}.wav")).frames == frames
