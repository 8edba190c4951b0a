"""The conda environments pin what setup.py requires, with the same bounds."""
import re
from pathlib import Path

import pytest

import openunmix_like

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"soundfile": "pysoundfile"}


def setup_requirements():
    text = (ROOT / "setup.py").read_text()
    block = re.search(r"install_requires=\[(.*?)\]", text, re.S).group(1)
    return dict(re.findall(r'"([A-Za-z0-9_-]+)(>=[0-9.]+)"', block))


@pytest.mark.parametrize("env", ["cpu-linux", "gpu-linux-cuda", "cpu-osx"])
def test_environment_pins_match_setup(env):
    text = (ROOT / "environments" / f"{env}.yml").read_text()
    for name, bound in setup_requirements().items():
        conda_name = CONDA_NAMES.get(name, name)
        assert re.search(rf"- {re.escape(conda_name)}{re.escape(bound)}\s", text), (env, name, bound)


def test_version_in_one_place():
    assert re.fullmatch(r"\d+\.\d+\.\d+", openunmix_like.__version__)
    assert (ROOT / "openunmix_like" / "py.typed").exists()
    hits = [p for p in (ROOT / "openunmix_like").rglob("*.py") if "__version__ =" in p.read_text()]
    assert [p.name for p in hits] == ["__init__.py"]
