"""Review of umx-export and umx-synth as a deploying user and a corpus maker would use them.

umx-export: the exported files at other batch sizes and lengths, mono and stereo, every architecture; the
documented recipe around them reproducing umx-separate; quiet exports. umx-synth: see the tests below.
"""
import json
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import music_like, tiny_folder
from openunmix_like.architectures import ARCHITECTURES
from openunmix_like.cli.export import main as export_main
from openunmix_like.cli.separate import main as separate_main
from openunmix_like.export import example_input, export_models
from openunmix_like.modeldir import AudioSettings, load_model_dir

DOCS = Path(__file__).resolve().parents[1] / "docs" / "architectures.md"
RATE = 22050


def settings(channels):
    return AudioSettings(RATE, 512, 128, channels)


def relative(got, want):
    return float(np.abs(np.asarray(got) - np.asarray(want)).max() / np.abs(np.asarray(want)).max())


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_exported_files_take_any_batch_size(tmp_path, name, channels):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    folder = tiny_folder(tmp_path, name, settings(channels), targets=("vocals",))
    model = load_model_dir(folder)[0]["vocals"].eval()
    for fmt, suffix in (("onnx", "onnx"), ("torchscript", "pt")):
        out = tmp_path / fmt
        assert export_main([str(folder), "--format", fmt, "--outdir", str(out)]) == 0
        shape = json.loads((out / "export.json").read_text())["targets"]["vocals"]["input"]["shape"]
        assert shape[0] is None and shape[1] == channels
        if fmt == "onnx":
            session = ort.InferenceSession(str(out / "vocals.onnx"), providers=["CPUExecutionProvider"])
            run = lambda x: session.run(None, {"mix": x.numpy()})[0]  # noqa: E731
        else:
            scripted = torch.jit.load(str(out / "vocals.pt"))
            run = lambda x: scripted(x).detach().numpy()  # noqa: E731
        # Three different items: an export that froze the batch of 1, or mixed the items, fails here.
        x = example_input(model, 11, 128, batch=3)
        with torch.no_grad():
            want = model(x).numpy()
        got = run(x)
        assert got.shape == want.shape, (fmt, got.shape)
        assert relative(got, want) < 1e-4, fmt


def test_a_torchscript_export_is_quiet(tmp_path):
    folder = tiny_folder(tmp_path, "umx", settings(2), targets=("vocals",))
    models, audio_settings = load_model_dir(folder)[:2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_models(models, audio_settings, tmp_path / "ts", "torchscript")
    assert [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)] == []


def test_exporting_leaves_the_callers_models_as_they_were(tmp_path):
    folder = tiny_folder(tmp_path, "umx", settings(2), targets=("vocals",))
    models = load_model_dir(folder)[0]
    audio_settings = load_model_dir(folder)[1]
    model = models["vocals"].train().double()  # training, in float64: the files are float32 all the same
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_models(models, audio_settings, tmp_path / "onnx", "onnx")
    assert models["vocals"] is model and model.training
    assert all(v.dtype == torch.float64 for v in model.state_dict().values() if v.is_floating_point())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def documented_recipe() -> str:
    """The indented code block after the docs' 'Running the exported models as umx-separate runs them'."""
    lines = DOCS.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Running the exported models as"))
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("    "))
    end = next(i for i in range(first, len(lines)) if lines[i].strip() and not lines[i].startswith("    "))
    return textwrap.dedent("\n".join(lines[first:end]))


@pytest.mark.parametrize("name, channels, targets", [
    ("umx", 2, ("vocals",)), ("umx", 1, ("vocals", "drums")), ("unet2d", 2, ("vocals", "drums")),
    ("unet1d", 1, ("vocals",)), ("tfattn", 2, ("vocals", "drums")),
], ids=["umx-stereo-1", "umx-mono-2", "unet2d-stereo-2", "unet1d-mono-1", "tfattn-stereo-2"])
def test_the_documented_recipe_reproduces_umx_separate(tmp_path, monkeypatch, name, channels, targets):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    folder = tiny_folder(tmp_path, name, settings(channels), targets=targets)
    work = tmp_path / "work"
    work.mkdir()
    sf.write(work / "song.wav", music_like(1.5, RATE, channels, seed=4).T, RATE, subtype="FLOAT")
    assert export_main([str(folder), "--format", "onnx", "--outdir", str(work / "my-tfattn-onnx")]) == 0
    assert separate_main([str(work / "song.wav"), "--model", str(folder), "--outdir", str(tmp_path / "sep"),
                          "--bits", "32", "--clip", "none", "--precision", "fp32", "--quiet"]) == 0
    monkeypatch.chdir(work)
    exec(compile(documented_recipe(), str(DOCS), "exec"), {})
    for target in targets:
        got, rate = sf.read(work / f"{target}.wav", always_2d=True)
        want, _ = sf.read(tmp_path / "sep" / "song" / f"{target}.wav", always_2d=True)
        assert rate == RATE and got.shape == want.shape, (target, got.shape, want.shape)
        assert relative(got, want) < 1e-4, target
