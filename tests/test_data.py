"""Training datasets on tiny folders made here, and on the MUSDB18 excerpts."""
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import MUSDB_7S, NAMES, RATE, require, track_folders, write
from openunmix_like import augment, data, evaluate

def common(**kw):
    return dict(dict(sample_rate=RATE, nb_channels=2, seq_duration=1.0, seed=1), **kw)


def test_trackfolder_fix_sums_sources_and_reports_problems(tmp_path, caplog):
    root = track_folders(tmp_path)
    (root / "train" / "t2" / "bass.wav").unlink()  # missing interferer
    write(root / "train" / "t3" / "vocals.wav", 0.5, 7)  # too short
    for name in NAMES[1:]:
        write(root / "train" / "t3" / f"{name}.wav", 0.5, 8)
    with caplog.at_level(logging.WARNING):
        ds = data.FixedSourcesTrackFolderDataset(root, "train", "vocals.wav", ["drums.wav", "bass.wav", "other.wav"],
                                                 **common())
    assert len(ds) == 2
    assert "t2: missing bass.wav" in caplog.text and "t3: shorter than --seq-dur" in caplog.text
    x, y = ds[0]
    assert x.shape == y.shape == (2, RATE)
    # Without augmentation and mixing the mixture is exactly the sum of the track's excerpts.
    plain = data.FixedSourcesTrackFolderDataset(root, "train", "vocals.wav", ["drums.wav", "bass.wav", "other.wav"],
                                                **common(random_chunks=False))
    x, y = plain[1]
    ref = [torch.from_numpy(sf.read(root / "train" / "t1" / f"{n}.wav", frames=RATE, dtype="float32")[0].T)
           for n in NAMES]
    assert torch.allclose(y, ref[0]) and torch.allclose(x, sum(ref), atol=1e-6)


def test_trackfolder_fix_random_mix_and_epochs(tmp_path):
    root = track_folders(tmp_path, tracks=4)
    ds = data.FixedSourcesTrackFolderDataset(root, "train", "vocals.wav", ["drums.wav", "bass.wav", "other.wav"],
                                             random_track_mix=True, **common())
    a = ds[0]
    assert torch.equal(ds[0][0], a[0])  # deterministic per (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], a[0])
    valid = data.FixedSourcesTrackFolderDataset(root, "valid", "vocals.wav", ["drums.wav"],
                                                **common(seq_duration=None, random_chunks=False))
    assert valid[0][0].shape == (2, 2 * RATE)  # validation: whole tracks


def test_aligned_track_folders_and_parallel_folders(tmp_path):
    for split in ("train", "valid"):
        for t in range(2):
            write(tmp_path / "a" / split / f"{t}" / "mixture.wav", 2.0, t)
            write(tmp_path / "a" / split / f"{t}" / "vocals.wav", 2.0, t + 10)
            write(tmp_path / "b" / split / "raw" / f"take{t}.wav", 2.0, t, channels=1)
            write(tmp_path / "b" / split / "mixed" / f"take{t}.wav", 2.0, t + 20, channels=1)
    ds = data.AlignedDataset(tmp_path / "a", "train", "mixture.wav", "vocals.wav", **common(random_chunks=False))
    x, y = ds[1]
    mix = sf.read(tmp_path / "a" / "train" / "1" / "mixture.wav", frames=RATE, dtype="float32")[0].T
    assert len(ds) == 2 and torch.allclose(x, torch.from_numpy(mix))
    ds = data.AlignedDataset(tmp_path / "b", "train", "raw", "mixed", **common(nb_channels=1))
    x, y = ds[0]
    assert len(ds) == 2 and x.shape == y.shape == (1, RATE)


def test_sourcefolder(tmp_path):
    for split in ("train", "valid"):
        for i in range(3):
            write(tmp_path / split / "speech" / f"s{i}.wav", 1.5, i)
            write(tmp_path / split / "noise" / f"n{i}.wav", 2.5, i + 10, channels=1)
    write(tmp_path / "train" / "noise" / "short.wav", 0.2, 99)
    (tmp_path / "train" / "noise" / "broken.wav").write_bytes(b"RIFF....nonsense")
    ds = data.SourceFolderDataset(tmp_path, "train", "speech", ["noise"], nb_samples=7,
                                  **common(source_augmentations=None))
    assert len(ds) == 7 and len(ds.files["noise"]) == 3
    x, y = ds[3]
    assert x.shape == y.shape == (2, RATE)
    assert (x - y).abs().max() > 0  # the interferer is in the mixture


def test_trackfolder_var_and_silence_missing_targets(tmp_path):
    for split in ("train", "valid"):
        write(tmp_path / split / "a" / "vocals.wav", 2.0, 1)
        write(tmp_path / split / "a" / "piano.wav", 2.0, 2)
        write(tmp_path / split / "a" / "mixture.wav", 2.0, 3)  # never used as a source
        write(tmp_path / split / "b" / "accordion.wav", 2.0, 4)  # no target
    ds = data.VariableSourcesTrackFolderDataset(tmp_path, "train", "vocals.wav", **common(random_chunks=False))
    assert len(ds) == 1
    x, y = ds[0]
    piano = sf.read(tmp_path / "train" / "a" / "piano.wav", frames=RATE, dtype="float32")[0].T
    assert torch.allclose(x - y, torch.from_numpy(piano), atol=1e-6)
    ds = data.VariableSourcesTrackFolderDataset(tmp_path, "train", "vocals.wav", silence_missing_targets=True,
                                                **common(random_chunks=False))
    assert len(ds) == 2
    x, y = ds[1]
    assert torch.count_nonzero(y) == 0 and x.abs().max() > 0


def test_missing_split_folder_is_named(tmp_path):
    with pytest.raises(data.DatasetError, match="valid: missing"):
        data.AlignedDataset(tmp_path, "valid", "a.wav", "b.wav", **common())


def test_reads_only_the_excerpt(tmp_path, monkeypatch):
    write(tmp_path / "long.wav", 30.0, 1)
    calls = []
    real_read = sf.read

    def spy(*args, **kw):
        calls.append(kw.get("frames"))
        return real_read(*args, **kw)

    monkeypatch.setattr(sf, "read", spy)
    f = data.scan(tmp_path / "long.wav", [])
    out = data.read_excerpt(f, 10.0, 0.5, RATE, 2)
    assert out.shape == (2, RATE // 2) and calls == [RATE // 2]


@pytest.mark.slow
def test_augmentations_pickle_and_work_in_worker_processes(tmp_path):
    chain = augment.Compose.from_names(["gain", "channelswap", "force_stereo"])
    clone = pickle.loads(pickle.dumps(chain))
    import random

    mono = torch.ones(1, 10)
    out = clone(mono, random.Random(0))
    assert out.shape == (2, 10) and 0.25 <= float(out[0, 0]) < 1.25
    swapped = augment.channelswap(torch.tensor([[1.0], [2.0]]), random.Random(1))
    assert swapped.shape == (2, 1)
    root = track_folders(tmp_path)
    ds = data.FixedSourcesTrackFolderDataset(root, "train", "vocals.wav", ["drums.wav"], random_track_mix=True,
                                             **common(source_augmentations=chain))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="spawn")
    batches = list(loader)
    assert sum(b[0].shape[0] for b in batches) == len(ds)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.Compose.from_names(["reverse"])


@pytest.mark.slow
@pytest.mark.musdb
def test_musdb_splits_targets_and_cache():
    pytest.importorskip("musdb")
    root = require(MUSDB_7S).parent
    musdb_cache = data.default_musdb_cache(root)
    train = data.MUSDBDataset(root, "vocals", "train", samples_per_track=3, random_track_mix=True,
                              cache_dir=musdb_cache, **common(sample_rate=44100, seq_duration=2.0))
    valid = data.MUSDBDataset(root, "accompaniment", "valid", cache_dir=musdb_cache,
                              **common(sample_rate=44100, seq_duration=None, random_chunks=False))
    assert len(train.tracks) == 80 and len(train) == 240 and len(valid) == 14
    x, y = train[5]
    assert x.shape == y.shape == (2, 88200)
    # Validation: full tracks of the released mixture (coded on its own, close to the sum of the sources),
    # accompaniment = the sources but the vocals.
    mix, acc = valid[0]
    vocals = data.read_excerpt(valid.tracks[0]["vocals"], 0, None, 44100, 2)
    err = (mix - acc - vocals[:, : mix.shape[-1]]).pow(2).mean() / mix.pow(2).mean()
    assert mix.shape[-1] > 44100 * 6 and err < 1e-2
    assert len(list(musdb_cache.iterdir())) == 94
    with pytest.raises(data.DatasetError, match="not a MUSDB source"):
        data.MUSDBDataset(root, "piano", "train", cache_dir=musdb_cache, **common())


def test_stats_ignore_augmentation(tmp_path):
    from openunmix_like.training import input_statistics

    root = track_folders(tmp_path)
    ds = data.FixedSourcesTrackFolderDataset(root, "train", "vocals.wav", ["drums.wav"], random_track_mix=True,
                                             **common(source_augmentations=augment.Compose.from_names(["gain"])))
    mean, std = input_statistics(ds, 512, 128)
    # Direct computation over the same excerpts, unaugmented and unmixed.
    plain = data.FixedSourcesTrackFolderDataset(root, "train", "vocals.wav", ["drums.wav"], **common())
    mags = []
    for i in range(len(plain)):
        x = plain[i][0]
        spec = torch.stft(x, 512, 128, window=torch.hann_window(512), return_complex=True).abs().mean(0)
        mags.append(spec.double())
    allmag = torch.cat(mags, dim=1)
    assert torch.allclose(mean.double(), allmag.mean(1), rtol=1e-4, atol=1e-7)
    ref_std = allmag.std(1, unbiased=False)
    assert torch.allclose(std.double(), torch.maximum(ref_std, 1e-4 * ref_std.max()), rtol=1e-3, atol=1e-7)
    assert np.isfinite(std.numpy()).all()


def _layouts(root: Path):
    """One small data set of each folder layout, built under ``root``."""
    track_folders(root / "fix")
    for split in ("train", "valid"):
        for t in range(2):
            write(root / "aligned" / split / f"{t}" / "mixture.wav", 1.5, t)
            write(root / "aligned" / split / f"{t}" / "vocals.wav", 1.5, t + 10)
        for i in range(2):
            write(root / "src" / split / "speech" / f"s{i}.wav", 1.5, i)
            write(root / "src" / split / "noise" / f"n{i}.wav", 1.5, i + 10)
        write(root / "var" / split / "a" / "vocals.wav", 1.5, 1)
        write(root / "var" / split / "a" / "piano.wav", 1.5, 2)
        write(root / "var" / split / "b" / "vocals.wav", 1.5, 3)
        write(root / "var" / split / "b" / "organ.wav", 1.5, 4)
    return {
        "aligned": data.AlignedDataset(root / "aligned", "train", "mixture.wav", "vocals.wav", **common()),
        "sourcefolder": data.SourceFolderDataset(root / "src", "train", "speech", ["noise"], nb_samples=5,
                                                 **common()),
        "trackfolder_fix": data.FixedSourcesTrackFolderDataset(root / "fix", "train", "vocals.wav",
                                                               ["drums.wav", "bass.wav", "other.wav"], **common()),
        "trackfolder_var": data.VariableSourcesTrackFolderDataset(root / "var", "train", "vocals.wav", **common()),
    }


def _iterate(ds) -> int:
    """Count the items of a plain ``for`` loop, failing (not hanging) when it runs past the end."""
    count = 0
    for x, y in ds:
        count += 1
        assert count <= len(ds), "iteration went past the end of the data set"
        assert x.shape == y.shape
    return count


@pytest.mark.parametrize("layout", ["aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var"])
def test_plain_iteration_ends_and_indices_work_like_a_sequence(tmp_path, layout):
    ds = _layouts(tmp_path)[layout]
    assert _iterate(ds) == len(ds)
    assert torch.equal(ds[-1][0], ds[len(ds) - 1][0]) and torch.equal(ds[-len(ds)][0], ds[0][0])
    for index in (len(ds), len(ds) + 3, -len(ds) - 1):
        with pytest.raises(IndexError, match="out of range"):
            ds[index]
    assert torch.equal(ds[np.int64(1)][0], ds[1][0])  # numpy and tensor indices from samplers still work


def test_a_failing_last_item_is_replaced_by_an_item_of_the_data_set(tmp_path, caplog):
    ds = _layouts(tmp_path)["aligned"]
    first = ds[0]
    last_input = ds.pairs[-1][0].path
    last_input.write_bytes(b"RIFF....nonsense")  # breaks after the scan: found when the item is read
    with caplog.at_level(logging.WARNING):
        x, y = ds[-1]
    assert torch.equal(x, ds[0][0]) and torch.equal(y, first[1])  # wrapped round to item 0
    assert "skipping a sample" in caplog.text and str(last_input) in caplog.text
    assert _iterate(ds) == len(ds)


@pytest.mark.slow
@pytest.mark.musdb
def test_musdb_plain_iteration_ends():
    pytest.importorskip("musdb")
    root = require(MUSDB_7S).parent
    ds = data.MUSDBDataset(root, "vocals", "train", samples_per_track=2,
                           **common(sample_rate=44100, seq_duration=0.5))
    assert len(ds) == 2 * len(ds.tracks) > 0
    assert _iterate(ds) == len(ds)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_hidden_folders_and_files_are_not_tracks_or_sources(tmp_path, caplog):
    """What a killed umx-synth leaves (``.name.partial/``) and what macOS copies beside each file
    (``._vocals.wav``, not audio) are left out instead of being reported as broken tracks."""
    root = track_folders(tmp_path, tracks=2)
    for split in ("train", "valid"):
        write(root / split / ".t9.partial" / "vocals.wav", 2.0, 9)  # a song cut short: no other stems
        for track in ("t0", "t1"):
            (root / split / track / "._vocals.wav").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    names = ["drums.wav", "bass.wav", "other.wav"]
    with caplog.at_level(logging.WARNING):
        fixed = data.FixedSourcesTrackFolderDataset(root, "train", "vocals.wav", names, **common())
        variable = data.VariableSourcesTrackFolderDataset(root, "train", "vocals.wav", ext=".wav", **common())
        assert data.default_track_files(root, "vocals") == ("vocals.wav", sorted(names))
        tracks = list(evaluate.folder_tracks(str(root / "valid")))
    assert len(fixed) == len(variable) == 2 and [t.name for t in tracks] == ["t0", "t1"]
    assert caplog.text == ""
    x, y = variable[0]  # the resource fork is not taken for an interferer
    assert x.shape == y.shape == (2, RATE)
    # Parallel folders (aligned) and source folders skip hidden files below them too.
    for layout in ("raw", "mixed"):
        for k in range(2):
            write(tmp_path / "al" / "train" / layout / "set" / f"{k}.wav", 2.0, k)
        (tmp_path / "al" / "train" / layout / "._0.wav").write_bytes(b"\x00\x05\x16\x07")
    aligned = data.AlignedDataset(tmp_path / "al", "train", "raw", "mixed", **common())
    assert len(aligned.pairs) == 2
