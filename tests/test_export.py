"""umx-export: every architecture to TorchScript and ONNX, run against the torch model."""
import json

import numpy as np
import pytest
import torch

from helpers import tiny_folder
from openunmix_like import export as export_module
from openunmix_like.architectures import ARCHITECTURES
from openunmix_like.cli.export import main as export_main
from openunmix_like.export import example_input, onnx_opsets
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


@pytest.mark.parametrize("opset", ["0", "-1", "99", str(onnx_opsets()[0] - 1), str(onnx_opsets()[1] + 1)])
def test_an_opset_the_exporter_lacks_is_one_line_before_any_work(tmp_path, capsys, opset):
    low, high = onnx_opsets()
    out = tmp_path / "o"
    # The model does not exist either: the opset is checked before anything is loaded.
    assert export_main([str(tmp_path / "nowhere"), "--format", "onnx", "--opset", opset, "--outdir", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"umx-export: error: --opset {opset}: the ONNX exporter of torch {torch.__version__} writes "
                   f"opsets {low} to {high}; give one of those (default {export_module.default_opset()})"]
    assert not out.exists()


def test_an_outdir_that_is_a_file_is_one_line_before_any_work(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for outdir, says in ((afile, f"--outdir {afile}: is a file"),
                         (afile / "a" / "b", f"--outdir {afile / 'a' / 'b'}: {afile} is a file")):
        assert export_main([str(tmp_path / "nowhere"), "--format", "torchscript", "--outdir", str(outdir)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"umx-export: error: {says}"), err
    assert afile.read_text() == "keep me" and [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_a_failed_export_leaves_no_folder_or_file_behind(tmp_path, capsys, monkeypatch):
    folder = tiny_folder(tmp_path, "umx", SETTINGS, targets=("vocals", "bass"))
    calls = []

    def fails_on_the_second_target(model, path, n_hop):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("unsupported operator\nmore detail")
        path.write_bytes(b"exported")

    monkeypatch.setattr(export_module, "export_torchscript", fails_on_the_second_target)
    new = tmp_path / "new" / "deeper"
    assert export_main([str(folder), "--format", "torchscript", "--outdir", str(new), "--no-check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the torchscript export failed (unsupported operator)" in err[0], err
    assert not (tmp_path / "new").exists()  # the first target's file and both new folders are gone
    # A folder that was there is left as it was: the first target's file is not renamed into it.
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    calls.clear()
    assert export_main([str(folder), "--format", "torchscript", "--outdir", str(kept), "--no-check"]) == 1
    assert [p.name for p in kept.iterdir()] == ["notes.txt"] and (kept / "notes.txt").read_text() == "mine"


@pytest.mark.slow
@pytest.mark.skipif(export_module.onnx_opsets()[0] > 8, reason="the exporter in use does not write opset 8")
def test_an_onnx_file_onnxruntime_cannot_load_is_one_line_and_not_kept(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    folder = tiny_folder(tmp_path, "umx", SETTINGS, targets=("vocals",))
    out = tmp_path / "onnx"
    # At opset 8 torch's exporter writes LSTMs with ConstantFill, an experimental op onnxruntime lacks.
    assert export_main([str(folder), "--format", "onnx", "--opset", "8", "--outdir", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vocals.onnx: onnxruntime cannot run the exported file" in err[0], err
    assert "Traceback" not in "".join(err) and not out.exists()
    # Named as asked, not by the hidden partial file it was written in.
    assert err[0].startswith(f"umx-export: error: {out / 'vocals.onnx'}: onnxruntime cannot run"), err
    assert f"Load model from {out / 'vocals.onnx'} failed" in err[0] and ".partial" not in err[0], err
