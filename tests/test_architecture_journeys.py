"""What a user meets with a model folder of another architecture than Open-Unmix (unet2d, unet1d, tfattn):
options of Open-Unmix's LSTM refused, a failed ONNX export in one line, the export recipe's stated command."""
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import RATE, music_like, tiny_folder, track_folders
from test_export_synth_review import documented_recipe
from openunmix_like.cli.export import main as export_main
from openunmix_like.cli.separate import main as separate_main
from openunmix_like.cli.train import main as train_main
from openunmix_like.export import onnx_opsets
from openunmix_like.modeldir import AudioSettings

DOCS = Path(__file__).resolve().parents[1] / "docs" / "architectures.md"
OTHERS = ["unet2d", "unet1d", "tfattn"]
SETTINGS = AudioSettings(RATE, 512, 128, 2)
TINY_FLAGS = {
    "unet2d": ["--hidden-size", "4", "--arch-args", "nb_layers=3"],
    "unet1d": ["--hidden-size", "4", "--arch-args", "nb_layers=3"],
    "tfattn": ["--hidden-size", "8", "--arch-args", "depths=1,2", "num_heads=1,2", "window_size=4", "patch_size=2"],
}
STFT = ["--dataset", "trackfolder_fix", "--nfft", "512", "--nhop", "128", "--batch-size", "2", "--seq-dur", "0.5",
        "--sample-rate", str(RATE), "--quiet"]
TRAIN = STFT + ["--target", "vocals", "--epochs", "1"]


# ---------------------------------------------------------------- umx-train


@pytest.mark.parametrize("option", [["--unidirectional"], ["--bandwidth", "8000"]], ids=["unidirectional", "bandwidth"])
@pytest.mark.parametrize("name", OTHERS)
def test_options_of_the_umx_lstm_are_refused_for_a_new_model_of_another_architecture(tmp_path, capsys, name, option):
    root = track_folders(tmp_path / "data", tracks=1, seconds=1.0, names=("vocals", "drums"))
    out = tmp_path / "model"
    assert train_main(TRAIN + ["--root", str(root), "--output", str(out), "--arch", name, *TINY_FLAGS[name],
                               *option]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"umx-train: error: {option[0]}") and err.count("\n") == 1, err
    assert f"'{name}' model" in err and "no LSTM" in err and "drop the option" in err
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("option", [["--unidirectional"], ["--bandwidth", "5000"]], ids=["unidirectional", "bandwidth"])
@pytest.mark.parametrize("name", ["unet1d", "tfattn"])
def test_options_of_the_umx_lstm_are_refused_when_fine_tuning_another_architecture(tmp_path, capsys, name, option):
    base = tiny_folder(tmp_path, name, SETTINGS, targets=("vocals",))
    root = track_folders(tmp_path / "data", tracks=1, seconds=1.0, names=("vocals", "drums"))
    out = tmp_path / "tuned"
    assert train_main(TRAIN + ["--root", str(root), "--output", str(out), "--model", str(base), *option]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"umx-train: error: {option[0]}") and err.count("\n") == 1, err
    assert f"its 'vocals' model, a '{name}' one, has no LSTM" in err
    assert not out.exists()


# ---------------------------------------------------------------- umx-export


@pytest.mark.skipif(onnx_opsets()[0] > 9, reason="the exporter in use refuses these opsets before any work")
@pytest.mark.parametrize("name, opset", [("tfattn", 11), ("unet2d", 9)])
def test_an_onnx_export_the_opset_cannot_hold_fails_in_one_line(tmp_path, capfd, name, opset):
    pytest.importorskip("onnx")
    folder = tiny_folder(tmp_path, name, SETTINGS, targets=("vocals",))
    capfd.readouterr()
    assert export_main([str(folder), "--format", "onnx", "--opset", str(opset), "--outdir", str(tmp_path / "x")]) == 1
    out, err = capfd.readouterr()  # file descriptors: the exporter's C++ log bypasses sys.stdout and sys.stderr
    assert out == "" and err.count("\n") == 1, (out[:300], err[:300])
    assert err.startswith("umx-export: error:") and "vocals.onnx: the onnx export failed" in err and "--opset" in err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    # A later export in the same process (the exporter leaves its log switched on) still reports its files.
    assert export_main([str(folder), "--format", "onnx", "--outdir", str(tmp_path / "y"), "--no-check"]) == 0
    out, err = capfd.readouterr()
    assert "vocals.onnx" in out and "graph" not in out + err


# ---------------------------------------------------------------- the export recipe's stated equality


def documented_command() -> list:
    """The options of the ``umx-separate`` command the docs say the recipe's stems equal."""
    text = " ".join(DOCS.read_text().split())
    return re.search(r"The stems equal those of `umx-separate ([^`]+)`", text).group(1).split()


@pytest.mark.parametrize("name", OTHERS)
def test_the_stated_umx_separate_command_equals_the_recipe_where_auto_precision_is_bf16(tmp_path, monkeypatch,
                                                                                         name):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    monkeypatch.setenv("UMX_AUTO_PRECISION", "bf16")  # what `auto` takes on CPUs with bfloat16 units
    folder = tiny_folder(tmp_path, name, SETTINGS, targets=("vocals", "drums"))
    work = tmp_path / "work"
    work.mkdir()
    sf.write(work / "song.wav", music_like(1.5, RATE, 2, seed=4).T, RATE, subtype="FLOAT")
    assert export_main([str(folder), "--format", "onnx", "--outdir", str(work / "my-tfattn-onnx")]) == 0
    assert separate_main([str(work / "song.wav"), "--model", str(folder), "--outdir", str(tmp_path / "sep"),
                          *documented_command(), "--quiet"]) == 0
    monkeypatch.chdir(work)
    exec(compile(documented_recipe(), str(DOCS), "exec"), {})
    for target in ("vocals", "drums"):
        got = sf.read(work / f"{target}.wav", always_2d=True)[0]
        want = sf.read(tmp_path / "sep" / "song" / f"{target}.wav", always_2d=True)[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-4, target


# ---------------------------------------------------------------- StreamingSeparator


@pytest.mark.parametrize("name", OTHERS)
def test_streaming_a_folder_of_another_architecture_is_refused_for_the_model_not_the_filter(tmp_path, name):
    from openunmix_like import Separator, StreamingSeparator
    from openunmix_like.errors import ModelError

    separator = Separator.from_pretrained(str(tiny_folder(tmp_path, name, SETTINGS)))  # the folder's niter: 1
    assert separator.wiener.niter == 1
    with pytest.raises(ModelError) as excinfo:  # not "use niter=0", after which it would be refused all the same
        StreamingSeparator(separator)
    message = str(excinfo.value)
    assert "\n" not in message and f"target 'vocals' is a {name} model" in message and "causal" in message


# ---------------------------------------------------------------- a whole journey


@pytest.mark.parametrize("name", OTHERS)
def test_train_two_targets_resume_fine_tune_and_separate_a_long_song(tmp_path, name):
    import json

    root = track_folders(tmp_path / "data", tracks=1, seconds=1.0, names=("vocals", "drums", "bass"))
    model, tuned = tmp_path / "model", tmp_path / "tuned"
    common = STFT + ["--root", str(root)]
    arch = ["--arch", name, *TINY_FLAGS[name]]
    two = ["--targets", "vocals", "drums", "--output", str(model), *arch]
    assert train_main(common + two + ["--epochs", "1"]) == 0
    assert train_main(common + two + ["--epochs", "2", "--resume", "auto"]) == 0
    records = {t: json.loads((model / f"{t}.json").read_text()) for t in ("vocals", "drums")}
    assert all(r["architecture"] == name and r["epochs_trained"] == 2 for r in records.values())
    assert train_main(common + ["--output", str(tuned), "--model", str(model), "--epochs", "1"]) == 0
    assert json.loads((tuned / "vocals.json").read_text())["model_args"] == records["vocals"]["model_args"]

    song = tmp_path / "song.wav"
    mix = music_like(2.5, RATE, 2, seed=5)
    sf.write(song, mix.T, RATE, subtype="FLOAT")
    out = tmp_path / "sep"
    assert separate_main([str(song), "--model", str(model), "--outdir", str(out), "--residual", "rest", "--niter",
                          "0", "--segment", "1", "--overlap", "0.25", "--bits", "32", "--clip", "none",
                          "--quiet"]) == 0
    stems = {t: sf.read(out / "song" / f"{t}.wav", always_2d=True, dtype="float32")[0].T
             for t in ("vocals", "drums", "rest")}
    assert all(s.shape == mix.shape and np.isfinite(s).all() for s in stems.values())
    assert np.abs(sum(stems.values()) - mix).max() < 1e-5  # with --niter 0 the residual is exact
