"""A model folder's own Wiener setting: ``"niter"`` in ``separator.json``.

``umx-train --dataset aligned`` writes ``"niter": 0`` (EM with one target never outputs more than the input,
which a model that processes its input needs to); every entry point that was given no ``niter`` uses the
folder's, an explicit one wins, and folders without the key (the bundled and published models) keep 1.
"""
import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import make_models, make_tracks, music_like, fake_scoring, track_folders, write
from openunmix_like import Separator, WienerSettings, separate
from openunmix_like.catalogue import records
from openunmix_like.cli import evaluate as evaluate_cli
from openunmix_like.cli.separate import main as separate_main
from openunmix_like.cli.train import main as train_main
from openunmix_like.errors import ModelError
from openunmix_like.modeldir import AudioSettings, save_target
from openunmix_like.pretrained import bundled_model_dir, own_niter

RATE = 22050
SETTINGS = AudioSettings(RATE, 512, 128, 2)
TINY = ["--sample-rate", str(RATE), "--nfft", "512", "--nhop", "128", "--hidden-size", "8", "--batch-size", "2",
        "--seq-dur", "0.5", "--epochs", "1", "--device", "cpu", "--quiet"]
ALIGNED = ["--dataset", "aligned", "--input-file", "raw", "--output-file", "mixed", "--target", "mixed", *TINY]
TRAIN_LOG = "openunmix_like.training.checkpoint"


def own_folder(path, niter, targets=("mixed",)):
    """A tiny random-weight model folder whose ``separator.json`` says ``niter`` (``None``: no key)."""
    for target, model in make_models(targets, n_fft=512, hidden_size=8).items():
        save_target(path, target, model, SETTINGS, niter=niter)
    return path


def stems(folder, track="song"):
    return {p.stem: sf.read(p, dtype="float32")[0] for p in sorted((folder / track).glob("*.wav"))}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Raw takes and their processed versions (a gain of 1.6), as ``--dataset aligned`` reads them."""
    root = tmp_path_factory.mktemp("pairs")
    for split, count in (("train", 4), ("valid", 1)):
        for k in range(count):
            raw = music_like(1.5, RATE, 2, seed=k + (100 if split == "valid" else 0)).T * 0.5
            for name, audio in (("raw", raw), ("mixed", 1.6 * raw)):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                sf.write(root / split / name / f"take{k}.wav", audio, RATE, subtype="FLOAT")
    return root


# ---------------------------------------------------------------- training


def test_aligned_training_writes_niter_0_and_separation_training_keeps_the_folders_value(pairs, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=TRAIN_LOG)
    out = tmp_path / "mix-model"
    assert train_main([*ALIGNED, "--root", str(pairs), "--output", str(out)]) == 0
    assert json.loads((out / "separator.json").read_text())["niter"] == 0
    assert Separator.from_pretrained(out).niter == 0
    # A separation target trained into the same folder: the folder's one value stays, and training says so.
    caplog.clear()
    tracks = track_folders(tmp_path / "tracks", tracks=2, seconds=1.5)
    assert train_main(["--dataset", "trackfolder_fix", "--root", str(tracks), "--target-file", "vocals.wav",
                       "--interferer-files", "drums.wav", "--output", str(out), *TINY]) == 0
    record = json.loads((out / "separator.json").read_text())
    assert record["targets"] == ["mixed", "vocals"] and record["niter"] == 0
    warned = [r.getMessage() for r in caplog.records if r.name == TRAIN_LOG and r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith(f"{out / 'separator.json'} says niter 0, which separating "
                                                     "vocals with this folder uses too")


def test_aligned_training_into_a_folder_of_separation_targets_sets_niter_0_for_all_and_warns(pairs, tmp_path,
                                                                                                caplog):
    caplog.set_level(logging.INFO, logger=TRAIN_LOG)
    out = own_folder(tmp_path / "both", None, targets=("vocals", "drums"))
    assert train_main([*ALIGNED, "--root", str(pairs), "--output", str(out)]) == 0
    record = json.loads((out / "separator.json").read_text())
    assert record["targets"] == ["vocals", "drums", "mixed"] and record["niter"] == 0
    warned = [r.getMessage() for r in caplog.records if r.name == TRAIN_LOG and r.levelno == logging.WARNING]
    assert warned == [f"{out / 'separator.json'}: niter becomes 0 for all its targets, vocals, drums separated "
                      "with niter 1 until now: this --dataset aligned model loses what it learns to EM; train it "
                      "into another --output to keep them as they were"]


def test_save_target_keeps_the_folders_niter_unless_it_is_given(tmp_path):
    folder = own_folder(tmp_path / "m", 3)
    for target, model in make_models(("other",), n_fft=512, hidden_size=8).items():
        save_target(folder, target, model, SETTINGS)
    assert json.loads((folder / "separator.json").read_text())["niter"] == 3
    own_folder(folder, 0)
    assert json.loads((folder / "separator.json").read_text())["niter"] == 0
    assert "niter" not in json.loads((own_folder(tmp_path / "plain", None) / "separator.json").read_text())


# ---------------------------------------------------------------- entry points


def test_umx_separate_uses_the_folders_niter_unless_given(tmp_path):
    folder = own_folder(tmp_path / "mix-model", 0)
    write(tmp_path / "song.wav", 1.0, seed=3, rate=RATE)
    common = [str(tmp_path / "song.wav"), "--model", str(folder), "--bits", "32", "--clip", "none", "--quiet"]
    out = {}
    for name, options in (("own", []), ("0", ["--niter", "0"]), ("1", ["--niter", "1"])):
        assert separate_main([*common, *options, "--outdir", str(tmp_path / name)]) == 0
        out[name] = stems(tmp_path / name)["mixed"]
    assert np.array_equal(out["own"], out["0"])
    assert np.abs(out["own"] - out["1"]).max() > 0.01 * np.abs(out["own"]).max()


def test_python_entry_points_use_the_folders_niter_unless_given(tmp_path):
    folder = own_folder(tmp_path / "mix-model", 0)
    assert Separator.from_pretrained(folder).niter == 0
    assert Separator.from_pretrained(folder, niter=None).niter == 0  # None: the model's own
    assert Separator.from_pretrained(folder, niter=2).niter == 2
    assert Separator.from_pretrained(folder, wiener=WienerSettings()).niter == 1  # a full setting, niter 1 in it
    assert Separator.from_pretrained(folder, residual="rest").wiener == WienerSettings(niter=0, residual="rest")
    audio = torch.from_numpy(music_like(1.0, RATE, 2, seed=4))
    own = separate(audio, RATE, model=str(folder))["mixed"]
    assert torch.equal(own, separate(audio, RATE, model=str(folder), niter=0)["mixed"])
    assert (own - separate(audio, RATE, model=str(folder), niter=1)["mixed"]).abs().max() > 0.01 * own.abs().max()


def test_the_bundled_model_and_folders_without_the_key_keep_niter_1(tmp_path):
    assert "niter" not in json.loads((bundled_model_dir() / "separator.json").read_text())
    assert Separator.from_pretrained().niter == 1
    assert own_niter(None) is None and own_niter("default") is None
    assert own_niter("umxhq") is None  # a published model's name, nothing downloaded
    assert Separator.from_pretrained(own_folder(tmp_path / "plain", None)).niter == 1


def test_a_web_job_uses_the_folders_niter(tmp_path):
    from openunmix_like.web.jobs import run_job

    folder = own_folder(tmp_path / "mix-model", 0)
    job = tmp_path / "job"
    write(job / "input.wav", 1.0, seed=5, rate=RATE)
    spec = {"input": str(job / "input.wav"), "filename": "take.wav", "ext": "wav", "bits": 16, "bitrate": None,
            "model_arg": str(folder), "targets": None, "residual": None}
    cache = {}
    assert run_job(spec, lambda fraction: None, cache, 5.0) == ["mixed"]
    assert [separator.niter for separator in cache.values()] == [0]


def test_umx_evaluate_records_the_niter_that_made_the_scores(tmp_path, monkeypatch):
    root = make_tracks(tmp_path / "data", n=1, seconds=1.0)
    folder = tmp_path / "model"
    for target, model in make_models(("vocals", "drums"), n_fft=512, hidden_size=4).items():
        save_target(folder, target, model, AudioSettings(16000, 512, 128, 2), niter=0)
    scored = fake_scoring(monkeypatch)
    record = tmp_path / "eval" / "model" / "song0.json"

    def run(*options):
        scored.clear()
        assert evaluate_cli.main(["--root", str(root), "--layout", "folder", "--nfft", "512", "--nhop", "128",
                                  "--evaldir", str(tmp_path / "eval"), "--model", str(folder), "--quiet",
                                  *options]) == 0
        return len(scored), json.loads(record.read_text())["settings"]["niter"]

    assert run() == (1, 0)
    assert run("--niter", "0") == (0, 0)  # the same setting: kept
    assert run("--niter", "1") == (1, 1)


def test_a_catalogue_rerun_compares_the_niter_that_made_the_stems(tmp_path, ray_cluster, capsys):
    folder = own_folder(tmp_path / "mix-model", 0)
    write(tmp_path / "in" / "song.wav", 0.5, seed=6, rate=RATE)
    common = [str(tmp_path / "in"), "--model", str(folder), "--engine", "ray", "--outdir", str(tmp_path / "out")]
    assert separate_main(common) == 0
    done = json.loads((tmp_path / "out" / "song" / records.DONE_NAME).read_text())
    assert done["settings"]["niter"] == 0
    capsys.readouterr()
    assert separate_main([*common, "--niter", "0"]) == 0
    assert "0 done, 1 skipped (finished before), 0 failed" in capsys.readouterr().err
    assert separate_main([*common, "--niter", "1"]) == 0
    assert "1 done, 0 skipped" in capsys.readouterr().err


# ---------------------------------------------------------------- a bad value


@pytest.mark.parametrize("value", [-1, 1.5, "0", True, None, [0]])
def test_a_bad_niter_is_one_line_naming_the_file(tmp_path, capsys, value):
    folder = own_folder(tmp_path / "mix-model", 0)
    path = folder / "separator.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "niter": value}))
    shown = json.dumps(value)
    expected = (f"{path}: niter must be a whole number of Wiener EM iterations, 0 or more, not {shown}; fix it, "
                "or delete the key for the default (1)")
    with pytest.raises(ModelError) as refused:
        Separator.from_pretrained(folder)
    assert str(refused.value) == expected
    write(tmp_path / "song.wav", 0.5, seed=7, rate=RATE)
    for options in ([], ["--niter", "0"]):  # a broken file is refused whatever the command asks
        assert separate_main([str(tmp_path / "song.wav"), "--model", str(folder), "--outdir", str(tmp_path / "out"),
                              "--quiet", *options]) == 1
        assert capsys.readouterr().err.strip().splitlines() == [f"umx-separate: error: {expected}"]
    assert not (tmp_path / "out").exists()


def test_a_whole_number_written_as_a_float_is_taken(tmp_path):
    folder = own_folder(tmp_path / "mix-model", 0)
    path = folder / "separator.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "niter": 2.0}))
    assert Separator.from_pretrained(folder).niter == 2
