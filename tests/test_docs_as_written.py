"""The Python snippets of README.md and docs/inference.md, run as written, offline.

Each ```python block runs in a fresh folder holding the files it names (``song.mp3``,
``song.wav``, ``album/*.flac``). The bundled model is used as it is; a published model's
name (``"umxhq"``), which would need a download, is replaced by a tiny random-weight model
folder of the same layout. The blocks of one file run in order in one namespace, as a reader
would paste them one after the other.
"""
import re
import shutil
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import music_like

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = re.compile(r"""(["'])(umxhq|umxl|umxse|umx)\1""")

pytestmark = pytest.mark.skipif(not shutil.which("ffmpeg"), reason="the snippets write mp3 stems (ffmpeg)")


def python_blocks(doc: str):
    return re.findall(r"^```python\n(.*?)^```", (ROOT / doc).read_text(), flags=re.S | re.M)


def run_blocks(blocks, namespace, model_folder):
    for block in blocks:
        code = PUBLISHED.sub(repr(str(model_folder)), block)
        exec(compile(code, "<doc snippet>", "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


@pytest.fixture
def song_folder(tmp_path, monkeypatch):
    """A folder with the files the snippets name, as the current folder."""
    work = tmp_path / "work"
    (work / "album").mkdir(parents=True)
    sf.write(work / "song.mp3", music_like(3.0, 44100, 2, seed=1).T, 44100)
    sf.write(work / "album" / "a.flac", music_like(2.0, 44100, 2, seed=2).T, 44100)
    sf.write(work / "album" / "b.flac", music_like(2.0, 22050, 1, seed=3).T, 22050)
    song = np.concatenate([music_like(10.0, 44100, 2, seed=s) for s in range(9)], axis=1)  # 90 s
    sf.write(work / "song.wav", song.T, 44100)
    monkeypatch.chdir(work)
    return work


def test_readme_snippets_run_as_written(song_folder, model_dir):
    blocks = python_blocks("README.md")
    assert len(blocks) >= 2 and "separate_file" in blocks[0]
    ns = run_blocks(blocks, {}, model_dir("umxhq-like"))

    assert ns["estimates"].shape == (1, 4, 2, 44100 * 10)
    assert ns["stems"]["vocals"].shape == (2, 44100 * 10)
    written = ns["written"]
    assert written == {t: Path("separated") / "song" / f"{t}.wav" for t in ("vocals", "drums", "bass", "other")}
    for path in written.values():
        assert sf.info(path).frames == sf.info("song.mp3").frames
    assert ns["separator"].target_names == ["vocals", "drums", "bass", "other"]


def test_inference_md_snippets_run_as_written(song_folder, model_dir):
    blocks = python_blocks("docs/inference.md")
    assert any("separate_file" in block for block in blocks)
    audio = (0.2 * torch.rand(1, 2, 44100 * 3)).float()
    ns = run_blocks(blocks, {"audio": audio, "sample_rate": 44100}, model_dir("umxhq-like"))

    assert set(ns["stems"]) == {"vocals", "drums", "bass", "other"}
    assert ns["stems"]["vocals"].shape == audio.shape
    # The album loop: mp3 stems of each song under stems/<song>/.
    assert ns["written"] == {t: Path("stems") / "b" / f"{t}.mp3" for t in ("vocals", "drums", "bass", "other")}
    for song in ("a", "b"):
        assert sorted(p.name for p in (song_folder / "stems" / song).iterdir()) == [
            "bass.mp3", "drums.mp3", "other.mp3", "vocals.mp3"]
    # The second call: 60 s from 30 s, vocals and the rest, 24-bit flac, named by the template.
    assert sorted(p.name for p in (song_folder / "out").iterdir()) == ["song-accompaniment.flac", "song-vocals.flac"]
    info = sf.info(song_folder / "out" / "song-vocals.flac")
    assert (info.frames, info.subtype) == (60 * 44100, "PCM_24")


def test_the_level_matching_timings_file_is_the_one_measured():
    """docs/inference.md gives a script for its 10-minute file: at 3 s, it makes what the measurement used
    (the tests' ``music_like`` with seed 5), written as the page says."""
    text = (ROOT / "docs" / "inference.md").read_text()
    script = textwrap.dedent(text.split("The 10-minute file of the time and memory figures")[1].split("\n\n", 1)[1]
                             .split("\n\n###")[0])
    assert "rate, seconds = 44100, 600.0" in script and 'sf.write("long.wav"' in script
    written = {}
    namespace = {"sf": types.SimpleNamespace(write=lambda path, data, rate, subtype: written.update(
        path=path, data=data, rate=rate, subtype=subtype))}
    code = script.replace("rate, seconds = 44100, 600.0", "rate, seconds = 44100, 3.0").replace(
        "import soundfile as sf\n", "")
    exec(compile(code, "<doc script>", "exec"), namespace)  # noqa: S102 - our own docs
    assert (written["path"], written["rate"], written["subtype"]) == ("long.wav", 44100, "PCM_16")
    assert np.array_equal(written["data"], music_like(3.0, 44100, 2, 5).T)
