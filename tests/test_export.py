"""umx-export: every architecture to TorchScript and ONNX, run against the torch model."""
import json

import numpy as np
import pytest
import torch

from helpers import tiny_folder
from openunmix_like.architectures import ARCHITECTURES
from openunmix_like.cli.export import main as export_main
from openunmix_like.export import example_input
from openunmix_like.modeldir import AudioSettings, load_model_dir

SETTINGS = AudioSettings(22050, 512, 128, 2)


def relative(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_onnx_runs_in_onnxruntime_like_torch(tmp_path, name, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    folder = tiny_folder(tmp_path, name, SETTINGS, targets=("vocals",))
    out = tmp_path / "onnx"
    assert export_main([str(folder), "--format", "onnx", "--outdir", str(out)]) == 0
    assert "max deviation from the model" in capsys.readouterr().out
    record = json.loads((out / "export.json").read_text())
    assert record["n_fft"] == 512 and record["targets"]["vocals"]["architecture"] == name
    model = load_model_dir(folder)[0]["vocals"].eval()
    session = ort.InferenceSession(str(out / "vocals.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["mix"]
    # Frame counts other than the export example's: the frames axis is free.
    for nb_frames in (9, 50, 131):
        x = example_input(model, nb_frames, SETTINGS.n_hop)
        got = session.run(None, {"mix": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == want.shape
        assert relative(got, want) < 1e-4, (name, nb_frames)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_torchscript_equals_torch(tmp_path, name):
    folder = tiny_folder(tmp_path, name, SETTINGS, targets=("vocals", "bass"))
    out = tmp_path / "ts"
    assert export_main([str(folder), "--format", "torchscript", "--outdir", str(out), "--targets", "bass"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bass.pt", "export.json"]
    model = load_model_dir(folder)[0]["bass"].eval()
    scripted = torch.jit.load(str(out / "bass.pt"))
    x = example_input(model, 23, SETTINGS.n_hop)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), rtol=1e-5, atol=1e-6 * float(model(x).abs().max()))


def test_export_errors_are_one_line(tmp_path, capsys):
    assert export_main([str(tmp_path / "nowhere"), "--format", "onnx", "--outdir", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.startswith("umx-export: error:")
