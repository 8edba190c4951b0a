"""The data sets ``umx-train`` builds draw what the reference Open-Unmix 1.3.0 recipe draws for the same options
(measured side by side by ``scripts/reference_layout_parity.py``)."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import MUSDB_7S, require
from openunmix_like import data
from openunmix_like.training.config import TrainConfig
from openunmix_like.training.factory import build_datasets

RATE = 8000


def clock(path, seconds, offset=0.0):
    """A stereo file whose samples are its own time in seconds (plus ``offset``): an excerpt says where it starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * RATE)) / RATE + offset
    sf.write(path, np.stack([t, t], axis=1).astype(np.float32) * 0.1, RATE, subtype="FLOAT")


def test_sourcefolder_validation_excerpts_are_drawn_at_random_positions_once(tmp_path):
    for split in ("train", "valid"):
        for k in range(3):
            clock(tmp_path / split / "speech" / f"s{k}.wav", 4.0 + k)
            clock(tmp_path / split / "noise" / f"n{k}.wav", 3.0 + k)
    cfg = TrainConfig(dataset="sourcefolder", root=str(tmp_path), target="speech", seq_dur=0.5, sample_rate=RATE,
                      nb_valid_samples=40)
    _, valid = build_datasets(cfg)
    valid.set_epoch(0)
    starts = [float(valid[k][1][0, 0]) * 10 for k in range(len(valid))]
    # The reference draws them like the training excerpts (a random file, a random position), seeded per item;
    # reading every file from its start would validate on intros (often silence) only.
    assert len(valid) == 40 and max(starts) > 1.5 and len({round(s, 3) for s in starts}) > 20
    again = [valid[k] for k in range(len(valid))]
    assert all(torch.equal(a[1], valid[k][1]) for k, a in enumerate(again))
    x, y = valid[3]
    assert x.shape == (2, RATE // 2) and not torch.equal(x, y)  # an interferer is in the mixture


def hq_track(root, name, mixture_gain):
    """A MUSDB18-HQ track folder whose ``mixture.wav`` is ``mixture_gain`` times the sum of its sources."""
    rng = np.random.default_rng(len(name))
    sources = {s: rng.uniform(-0.2, 0.2, (2 * 44100, 2)).astype(np.float32) for s in data.MUSDB_SOURCES}
    folder = root / "train" / name
    folder.mkdir(parents=True)
    for s, audio in sources.items():
        sf.write(folder / f"{s}.wav", audio, 44100, subtype="FLOAT")
    mixture = mixture_gain * sum(sources.values())
    sf.write(folder / "mixture.wav", mixture, 44100, subtype="FLOAT")
    return torch.from_numpy(mixture.T.copy()), torch.from_numpy(sources["vocals"].T.copy())


def test_musdb_validation_reads_the_released_mixture_and_training_sums_the_sources(tmp_path):
    pytest.importorskip("musdb")
    mixture, vocals = hq_track(tmp_path, "Leaf - Summerghost", 0.5)  # one of musdb's validation tracks
    hq_track(tmp_path, "Generated - Song", 0.5)
    cfg = TrainConfig(dataset="musdb", root=str(tmp_path), is_wav=True, target="vocals", seq_dur=1.0,
                      source_augmentations=[])
    train, valid = build_datasets(cfg)
    x, y = valid[0]
    assert len(valid) == 1 and torch.allclose(y, vocals) and torch.allclose(x, mixture)
    assert all("mixture" not in track for track in train.tracks)  # training mixtures are sums of sources


@pytest.mark.slow
@pytest.mark.musdb
def test_musdb_stem_validation_is_the_mixture_stream_of_the_stem_file(tmp_path):
    musdb = pytest.importorskip("musdb")
    root = require(MUSDB_7S).parent
    valid = data.MUSDBDataset(root, "vocals", "valid", cache_dir=tmp_path / "cache", sample_rate=44100,
                              nb_channels=2, seq_duration=None, random_chunks=False)
    x, _ = valid[0]
    track = next(t for t in musdb.DB(root=str(root), subsets="train", split="valid").tracks
                 if t.name == valid.tracks[0]["vocals"].path.parent.name)
    released = torch.from_numpy(track.audio.T.astype(np.float32))
    assert torch.allclose(x, released[:, : x.shape[-1]], atol=1 / 2 ** 14)  # 16-bit wav in the cache
    # The cache holds the samples musdb decodes (16-bit, over 32768), every stream, whatever decodes them.
    stems = track.stems
    streams = {"mixture": track.stem_id, **{name: source.stem_id for name, source in track.sources.items()}}
    assert sorted(streams) == sorted(valid.tracks[0])
    for name, stream in streams.items():
        cached, rate = sf.read(valid.tracks[0][name].path, dtype="int16")
        assert rate == track.rate and np.array_equal(cached, (stems[stream] * 32768).astype(np.int16)), name
    summed = torch.stack([data.read_excerpt(valid.tracks[0][s], 0, None, 44100, 2) for s in data.MUSDB_SOURCES]).sum(0)
    coding = (x - summed[:, : x.shape[-1]]).pow(2).mean() / x.pow(2).mean()
    assert 1e-4 < coding < 1e-1  # the AAC mixture is its own encode: about 25 dB from the sum


@pytest.mark.musdb
@pytest.mark.parametrize("is_wav", [False, True])
def test_the_musdb_listing_is_the_musdb_packages(tmp_path, is_wav):
    """Tracks, order, split and streams as ``musdb.DB`` lists them, without its probe of every file."""
    musdb = pytest.importorskip("musdb")
    names = ["ANiMAL - Rockshow", "ANiMAL - Clinic A", "A Classic Education - NightOwl"]  # the first is valid
    train = tmp_path / "train"
    train.mkdir()
    for name in names:
        if is_wav:
            hq_track(tmp_path, name, 1.0)
        else:
            (train / f"{name}.stem.mp4").symlink_to(require(MUSDB_7S) / f"{name}.stem.mp4")
    (train / "notes.txt").write_text("not a track")
    for split in ("train", "valid", None):
        ours = data.musdb_layout(tmp_path, "train", split, is_wav)
        theirs = musdb.DB(root=str(tmp_path), subsets="train", split=split, is_wav=is_wav).tracks
        assert [t.name for t in ours] == [t.name for t in theirs] and ours, split
        for mine, track in zip(ours, theirs):
            assert mine.path == Path(track.path)
            if is_wav:
                assert mine.sources == {name: Path(s.path) for name, s in track.sources.items()}
            else:
                assert mine.stem_ids == {"mixture": track.stem_id,
                                         **{name: s.stem_id for name, s in track.sources.items()}}
    with pytest.raises(data.DatasetError, match="valid split is part of the train subset"):
        data.musdb_layout(tmp_path, "test", "valid")
