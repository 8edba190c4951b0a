"""umx-export --format onnx with torch's torch.export-based exporter, the one used once torch drops its
TorchScript-based exporter (checked here on torch 2.13 by making the package believe it is gone): no
deprecation notice, files that run at any batch and length (Open-Unmix's BLSTM included), opsets stated
truthfully, and one line when onnxscript is missing. While torch has the TorchScript-based exporter, that one
is used: 11 times faster on the BLSTM."""
import functools
import inspect
import json
import sys
import warnings

import numpy as np
import pytest
import torch

from helpers import tiny_folder
from openunmix_like import export as export_module
from openunmix_like.cli.export import main as export_main
from openunmix_like.export import example_input, export_models, onnx_opsets, uses_dynamo_exporter
from openunmix_like.modeldir import AudioSettings, load_model_dir

SETTINGS = AudioSettings(22050, 512, 128, 2)
TAKES_DYNAMIC_SHAPES = "dynamic_shapes" in inspect.signature(torch.onnx.export).parameters


@pytest.fixture
def new_exporter(monkeypatch):
    """The package as it runs on a torch without the TorchScript-based exporter."""
    if export_module.torch_version() < (2, 13) or not TAKES_DYNAMIC_SHAPES:
        pytest.skip("the torch.export-based exporter is checked from torch 2.13 on")
    monkeypatch.setattr(export_module, "torchscript_exporter_available", lambda: False)
    assert uses_dynamo_exporter()


def exporter_calls(monkeypatch) -> list:
    """The ``dynamo`` argument of every ``torch.onnx.export`` call from now on."""
    calls, real = [], torch.onnx.export

    @functools.wraps(real)  # its signature too: the package reads which exporters it offers from it
    def spy(*args, **kwargs):
        calls.append(kwargs.get("dynamo"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", spy)
    return calls


def max_relative_error(path, model, shapes) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, nb_frames in shapes:
        x = example_input(model, nb_frames, SETTINGS.n_hop, batch)
        got = session.run(None, {"mix": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == want.shape, (batch, nb_frames)
        worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
    return worst


@pytest.mark.usefixtures("new_exporter")
@pytest.mark.slow
def test_two_blstm_targets_export_quietly_with_the_new_exporter_and_run_at_any_batch_and_length(tmp_path,
                                                                                                  monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    folder = tiny_folder(tmp_path, "umx", SETTINGS, targets=("vocals", "drums"))
    models, settings = load_model_dir(folder)[:2]
    calls = exporter_calls(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DeprecationWarning or FutureWarning that reaches the caller fails it
        exported = export_models(models, settings, tmp_path / "onnx", "onnx")
    assert calls == [True, True]  # never the TorchScript-based exporter torch deprecates
    assert json.loads((tmp_path / "onnx" / "export.json").read_text())["opset"] == 18
    # The second target too: torch 2.13 froze its frames at the example's 64 after a first export.
    for target in ("vocals", "drums"):
        assert exported[target].max_error < 1e-5
        error = max_relative_error(tmp_path / "onnx" / f"{target}.onnx", models[target].eval(),
                                   [(1, 9), (3, 131), (2, 64)])
        assert error < 1e-5, target


@pytest.mark.usefixtures("new_exporter")
@pytest.mark.slow
@pytest.mark.parametrize("which", ["lowest", "highest"])
def test_the_file_has_the_opset_asked_for(tmp_path, which):
    opset = onnx_opsets()[0 if which == "lowest" else 1]
    assert opset == 18 or which == "highest"
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    folder = tiny_folder(tmp_path, "unet1d", SETTINGS, targets=("vocals",))
    out = tmp_path / "onnx"
    assert export_main([str(folder), "--format", "onnx", "--opset", str(opset), "--outdir", str(out)]) == 0
    written = {o.domain: o.version for o in onnx.load(str(out / "vocals.onnx")).opset_import}
    assert written[""] == opset and json.loads((out / "export.json").read_text())["opset"] == opset
    model = load_model_dir(folder)[0]["vocals"].eval()
    assert max_relative_error(out / "vocals.onnx", model, [(1, 9), (3, 131)]) < 1e-5


@pytest.mark.usefixtures("new_exporter")
def test_opset_17_the_old_default_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    # The new exporter writes 18 and up; asked for 17 it may keep 18 and label nothing wrong.
    out = tmp_path / "o"
    assert export_main([str(tmp_path / "nowhere"), "--format", "onnx", "--opset", "17", "--outdir", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"umx-export: error: --opset 17: the ONNX exporter of torch {torch.__version__} writes opsets "
                   f"18 to {onnx_opsets()[1]}; give one of those (default 18)"]
    assert not out.exists()


@pytest.mark.usefixtures("new_exporter")
def test_without_onnxscript_one_line_names_the_extra_before_any_work(tmp_path, monkeypatch, capsys):
    folder = tiny_folder(tmp_path, "umx", SETTINGS, targets=("vocals",))
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    out = tmp_path / "onnx"
    assert export_main([str(folder), "--format", "onnx", "--outdir", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "onnxscript is not installed: pip install 'openunmix-like[export]'" in err[0], err
    assert not out.exists()


@pytest.mark.slow
def test_while_torch_has_the_torchscript_exporter_it_is_used_quietly_with_its_opsets(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    assert export_module.torchscript_exporter_available()  # torch 2.13 still has it
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # not needed there
    assert onnx_opsets()[0] < 18 and export_module.default_opset() == 17
    calls = exporter_calls(monkeypatch)
    folder = tiny_folder(tmp_path, "umx", SETTINGS, targets=("vocals",))
    out = tmp_path / "onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its deprecation notice is torch's, not the user's to act on
        assert export_main([str(folder), "--format", "onnx", "--outdir", str(out)]) == 0, capsys.readouterr().err
    assert calls == [False] and json.loads((out / "export.json").read_text())["opset"] == 17
    model = load_model_dir(folder)[0]["vocals"].eval()
    assert max_relative_error(out / "vocals.onnx", model, [(1, 9), (3, 131)]) < 1e-5
