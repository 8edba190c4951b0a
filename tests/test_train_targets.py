"""umx-train --targets: several targets from one stream of mixtures, each into the files a run of its own writes."""
import json

import pytest
import torch

from helpers import MUSDB_7S, RATE, require, track_folders
from openunmix_like import Separator
from openunmix_like.cli.train import main as train_main
from openunmix_like.data import FixedSourcesTrackFolderDataset
from openunmix_like.training import TrainConfig, run_targets

TINY = ["--hidden-size", "8", "--nfft", "512", "--nhop", "128", "--batch-size", "2", "--seq-dur", "0.5",
        "--sample-rate", "22050", "--quiet"]


def train(*args) -> int:
    return train_main([str(a) for a in args] + TINY)


def test_every_target_gets_its_own_files_and_the_folder_separates(tmp_path):
    root = track_folders(tmp_path / "data", tracks=3, seconds=1.0)
    out = tmp_path / "model"
    assert train("--dataset", "trackfolder_fix", "--root", root, "--targets", "vocals", "drums", "bass",
                 "--epochs", "2", "--output", out) == 0
    for target in ("vocals", "drums", "bass"):
        for ext in ("safetensors", "pth", "json", "csv", "chkpnt"):
            assert (out / f"{target}.{ext}").is_file()
        record = json.loads((out / f"{target}.json").read_text())
        assert record["args"]["target"] == target and record["args"]["target_file"] == f"{target}.wav"
        assert record["args"]["interferer_files"] == ["other.wav"]
        assert record["epochs_trained"] == 2 and record["steps_trained"] == 4
    assert json.loads((out / "separator.json").read_text())["targets"] == ["vocals", "drums", "bass"]
    separator = Separator.from_pretrained(out)
    assert separator.target_names == ["vocals", "drums", "bass"]
    assert separator(torch.rand(1, 2, RATE)).shape == (1, 3, 2, RATE)
    # Resumed: each target continues from its own checkpoint.
    assert train("--dataset", "trackfolder_fix", "--root", root, "--targets", "vocals", "drums", "bass",
                 "--epochs", "3", "--resume", "auto", "--output", out) == 0
    assert all(json.loads((out / f"{t}.json").read_text())["epochs_trained"] == 3 for t in ("vocals", "drums", "bass"))


def test_the_stacked_items_hold_each_targets_source_of_the_same_mixture(tmp_path):
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    kw = dict(seq_duration=0.5, sample_rate=RATE, nb_channels=2, seed=1)
    stacked = FixedSourcesTrackFolderDataset(root, "train", ["vocals.wav", "drums.wav"], ["bass.wav", "other.wav"],
                                             **kw)
    single = FixedSourcesTrackFolderDataset(root, "train", "vocals.wav", ["drums.wav", "bass.wav", "other.wav"], **kw)
    for i in range(len(stacked)):
        (x, y), (x1, y1) = stacked[i], single[i]
        assert y.shape == (2,) + x.shape and torch.equal(x, x1) and torch.equal(y[0], y1)


def test_the_mixture_stft_is_taken_once_per_batch_for_all_targets(tmp_path, monkeypatch):
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    cfg = TrainConfig(root=str(root), output=str(tmp_path / "m"), dataset="trackfolder_fix",
                      targets=["vocals", "drums", "bass"], hidden_size=8, nfft=512, nhop=128, batch_size=2,
                      seq_dur=0.5, sample_rate=RATE, epochs=1, quiet=True, source_augmentations=[])
    from openunmix_like.training import loop

    shared = []
    step = loop.step

    def spy(ctx, x, y, mix_stft=None):
        shared.append(mix_stft is not None)
        return step(ctx, x, y, mix_stft=mix_stft)

    monkeypatch.setattr(loop, "step", spy)
    histories = run_targets(cfg)
    assert set(histories) == {"vocals", "drums", "bass"} and shared == [True] * 3
    assert all(len(h.train_loss) == 1 for h in histories.values())


def test_max_minutes_ends_every_target_at_the_same_batch_and_saves_it(tmp_path):
    root = track_folders(tmp_path / "data", tracks=8, seconds=1.0)  # 4 batches of 2 per epoch
    out = tmp_path / "model"
    assert train("--dataset", "trackfolder_fix", "--root", root, "--targets", "vocals", "drums",
                 "--epochs", "50", "--max-minutes", "1e-6", "--output", out) == 0
    for target in ("vocals", "drums"):
        record = json.loads((out / f"{target}.json").read_text())
        # One step, then the budget is spent: the partial epoch is validated and saved.
        assert record["epochs_trained"] == 1 and record["steps_trained"] == 1
        assert (out / f"{target}.safetensors").is_file()


def test_samples_per_track_makes_an_epoch_that_many_passes_over_the_tracks(tmp_path):
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    out = tmp_path / "model"
    assert train("--dataset", "trackfolder_fix", "--root", root, "--targets", "vocals", "drums",
                 "--samples-per-track", "3", "--epochs", "1", "--output", out) == 0
    assert json.loads((out / "vocals.json").read_text())["steps_trained"] == 3  # 2 tracks x 3 / batch 2
    assert json.loads((out / "vocals.json").read_text())["args"]["samples_per_track"] == 3


def test_samples_per_track_draws_each_item_anew_and_is_refused_where_unused(tmp_path, capsys):
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    kw = dict(seq_duration=0.5, sample_rate=RATE, nb_channels=2, seed=1, random_track_mix=True)
    names = ["vocals.wav", "drums.wav"], ["bass.wav", "other.wav"]
    once = FixedSourcesTrackFolderDataset(root, "train", *names, **kw)
    thrice = FixedSourcesTrackFolderDataset(root, "train", *names, samples_per_track=3, **kw)
    assert len(thrice) == 3 * len(once) == 6 and thrice.stats_indices() == [0, 3]
    items = [thrice[i][0] for i in range(len(thrice))]
    assert all(not torch.equal(items[i], items[j]) for i in range(6) for j in range(i))
    assert train("--dataset", "aligned", "--root", root, "--input-file", "bass.wav", "--output-file", "vocals.wav",
                 "--samples-per-track", "2", "--epochs", "1", "--output", tmp_path / "o") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--samples-per-track works with --dataset musdb or trackfolder_fix" in err


@pytest.mark.parametrize("extra,message", [
    (["--dataset", "sourcefolder"], "train one --target per run"),
    (["--dataset", "trackfolder_fix", "--ckpt-every", "2"], "--ckpt-every works with one --target"),
    (["--dataset", "trackfolder_fix", "--target-file", "vocals.wav"], "drop --target-file"),
])
def test_what_several_targets_do_not_support_is_one_line(tmp_path, capsys, extra, message):
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    assert train("--root", root, "--targets", "vocals", "drums", "--epochs", "1", "--output", tmp_path / "o",
                 *extra) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


@pytest.mark.slow
@pytest.mark.musdb
def test_musdb_targets_together(tmp_path):
    root = require(MUSDB_7S).parent
    out = tmp_path / "m"
    assert train_main(["--dataset", "musdb", "--root", str(root), "--targets", "vocals", "accompaniment",
                       "--samples-per-track", "1", "--epochs", "1", "--output", str(out), "--hidden-size", "8",
                       "--nfft", "512", "--nhop", "128", "--batch-size", "8", "--seq-dur", "1", "--quiet"]) == 0
    assert Separator.from_pretrained(out).target_names == ["vocals", "accompaniment"]
