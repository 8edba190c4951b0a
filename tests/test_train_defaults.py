"""umx-train's short form: the file and folder names a data layout implies when no flag names them."""
import json

import pytest
import soundfile as sf

from helpers import RATE, music_like, track_folders, write
from openunmix_like import Separator
from openunmix_like.cli.separate import main as separate_main
from openunmix_like.cli.train import main as train_main
from openunmix_like.data import DatasetError, default_source_dirs, default_track_files

TINY = ["--hidden-size", "8", "--nfft", "512", "--nhop", "128", "--batch-size", "2", "--seq-dur", "0.5",
        "--sample-rate", "22050", "--epochs", "1", "--quiet"]


def train(*args) -> int:
    return train_main([str(a) for a in args] + TINY)


def flac_tracks_with_mixture(root):
    """Track folders of FLAC sources plus a mixture.wav that must not count as a source."""
    for split in ("train", "valid"):
        for t in range(2):
            (root / split / f"t{t}").mkdir(parents=True)
            for k, name in enumerate(("vocals", "drums", "bass")):
                sf.write(root / split / f"t{t}" / f"{name}.flac", music_like(1.0, RATE, seed=10 * t + k).T, RATE)
            sf.write(root / split / f"t{t}" / "mixture.wav", music_like(1.0, RATE, seed=99).T, RATE)
    return root


def test_the_design_cards_usage_line_trains_and_its_folder_separates(tmp_path):
    root = flac_tracks_with_mixture(tmp_path / "data")
    out = tmp_path / "model"
    assert train("--dataset", "trackfolder_fix", "--target", "vocals", "--root", root, "--output", out) == 0
    args = json.loads((out / "vocals.json").read_text())["args"]
    assert args["target_file"] == "vocals.flac"
    assert args["interferer_files"] == ["bass.flac", "drums.flac"]  # every other source, not mixture.wav
    assert (args["arch"], args["loss"], args["hidden_size"]) == ("umx", "mse", 8)  # resolved, not None
    song = tmp_path / "song.wav"
    write(song, 1.0, seed=5)
    assert separate_main([str(song), "--model", str(out), "--outdir", str(tmp_path / "sep"), "--quiet"]) == 0
    assert (tmp_path / "sep" / "song" / "vocals.wav").is_file()


def test_explicit_flags_win_over_the_defaults(tmp_path):
    root = flac_tracks_with_mixture(tmp_path / "data")
    out = tmp_path / "model"
    assert train("--dataset", "trackfolder_fix", "--target", "vocals", "--root", root, "--output", out,
                 "--interferer-files", "drums.flac") == 0
    args = json.loads((out / "vocals.json").read_text())["args"]
    assert (args["target_file"], args["interferer_files"]) == ("vocals.flac", ["drums.flac"])
    assert default_track_files(root, "vocals", target_file="bass.flac") == ("bass.flac", ["drums.flac",
                                                                                         "vocals.flac"])


def test_sourcefolder_short_form_takes_the_targets_folder_and_every_other(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "valid"):
        for k, name in enumerate(("speech", "noise", "music")):
            for i in range(2):
                write(root / split / name / f"{i}.wav", 1.0, seed=10 * k + i)
    assert default_source_dirs(root, "speech") == ("speech", ["music", "noise"])
    assert default_source_dirs(root, "speech", interferer_dirs=["noise"]) == ("speech", ["noise"])
    out = tmp_path / "model"
    assert train("--dataset", "sourcefolder", "--target", "speech", "--root", root, "--output", out,
                 "--nb-train-samples", "4", "--nb-valid-samples", "2") == 0
    args = json.loads((out / "speech.json").read_text())["args"]
    assert (args["target_dir"], args["interferer_dirs"]) == ("speech", ["music", "noise"])
    assert Separator.from_pretrained(out).target_names == ["speech"]


def test_trackfolder_var_defaults_to_the_target_with_the_extension(tmp_path):
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    out = tmp_path / "model"
    assert train("--dataset", "trackfolder_var", "--target", "drums", "--root", root, "--output", out) == 0
    assert json.loads((out / "drums.json").read_text())["args"]["target_file"] == "drums.wav"


def test_a_layout_without_the_target_is_one_clear_line(tmp_path, capsys):
    root = flac_tracks_with_mixture(tmp_path / "data")
    assert train("--dataset", "trackfolder_fix", "--target", "piano", "--root", root, "--output",
                 tmp_path / "o") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "piano.<ext>" in err and "--target-file" in err
    assert train("--dataset", "sourcefolder", "--target", "piano", "--root", root, "--output", tmp_path / "o") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "piano: missing" in err and "--target-dir" in err
    write(root / "train" / "t0" / "vocals.wav", 1.0, seed=1)
    with pytest.raises(DatasetError, match="vocals.flac, vocals.wav all could be the 'vocals' target"):
        default_track_files(root, "vocals")
