"""The slakh and moisesdb layouts: targets summed from files chosen by metadata, on tiny generated data sets.

Every file holds 16-bit samples (multiples of 1/32768, well below full scale), so sums of them are exact
in float32 whatever the order: targets and mixtures are compared with ``torch.equal``.
"""
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from openunmix_like import data, evaluate
from openunmix_like.augment import Compose
from openunmix_like.cli.train import main as train_main
from openunmix_like.training import TrainConfig, build_datasets
from openunmix_like.training.factory import stem_datasets

RATE = 8000
SECONDS = 1.0
TINY = ["--hidden-size", "8", "--nfft", "256", "--nhop", "64", "--batch-size", "2", "--seq-dur", "0.5",
        "--sample-rate", str(RATE), "--bandwidth", "3000", "--quiet"]


def write(path: Path, seed: int, channels: int = 1, seconds: float = SECONDS, subtype: str = "PCM_16"):
    """Exactly representable noise: integers / 32768, at most 1/8 of full scale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ints = np.random.default_rng(seed).integers(-4096, 4096, size=(int(seconds * RATE), channels))
    sf.write(path, ints / 32768.0, RATE, subtype=subtype)


def read(path: Path, frames: int = -1) -> torch.Tensor:
    """A file as the datasets give it: float32, stereo (mono duplicated)."""
    audio = torch.from_numpy(sf.read(path, frames=frames, dtype="float32", always_2d=True)[0].T.copy())
    return audio.expand(2, -1).clone() if audio.shape[0] == 1 else audio


def total(paths, frames: int = -1) -> torch.Tensor:
    return torch.stack([read(p, frames) for p in paths]).sum(0)


# ---------------------------------------------------------------- Slakh2100

# Stem id -> (inst_class, is_drum, audio_rendered). S03 is not rendered but has a file (left from an
# older render): it must still be skipped. S04 is a second guitar, summed into the guitar target.
SLAKH_STEMS = {"S00": ("Bass", False, True), "S01": ("Guitar", False, True), "S02": ("Drums", True, True),
               "S03": ("Piano", False, False), "S04": ("Guitar", False, True),
               "S05": ("Strings (continued)", False, True), "S06": ("Organ", False, False)}


def slakh_track(folder: Path, seed: int, stems=SLAKH_STEMS, seconds: float = SECONDS):
    lines = ["UUID: 0123", "audio_dir: stems", "stems:"]
    for k, (sid, (inst_class, is_drum, rendered)) in enumerate(stems.items()):
        lines += [f"  {sid}:", f"    audio_rendered: {str(rendered).lower()}", f"    inst_class: {inst_class}",
                  f"    is_drum: {str(is_drum).lower()}", f"    midi_program_name: Program {k}",
                  f"    program_num: {128 if is_drum else k}"]
        if rendered or sid == "S03":
            write(folder / "stems" / f"{sid}.flac", seed * 10 + k, seconds=seconds)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.yaml").write_text("\n".join(lines) + "\n")
    write(folder / "mix.flac", seed + 999, seconds=seconds)  # never read: the mixture is the sum of the stems


def slakh_root(root: Path) -> Path:
    no_guitar = {k: v for k, v in SLAKH_STEMS.items() if v[0] != "Guitar"}
    for i, name in enumerate(["Track00001", "Track00002", "Track00003"]):
        slakh_track(root / "train" / name, i, no_guitar if name == "Track00002" else SLAKH_STEMS)
    for i, name in enumerate(["Track01501", "Track01502"]):
        slakh_track(root / "validation" / name, 50 + i)
    return root


def stems(track: Path, *ids) -> list:
    return [track / "stems" / f"{sid}.flac" for sid in ids]


def kw(**more):
    return dict(dict(sample_rate=RATE, nb_channels=2, seq_duration=0.5, seed=3, random_chunks=False), **more)


def test_slakh_target_is_the_sum_of_its_class_and_the_mixture_of_every_rendered_stem(tmp_path, caplog):
    root = slakh_root(tmp_path / "slakh")
    with caplog.at_level(logging.INFO, logger="openunmix_like.data"):
        ds = data.SlakhDataset(root, "train", "Guitar", **kw())
    assert [t.path.name for t in ds.tracks] == ["Track00001", "Track00003"]  # Track00002 has no guitar
    assert "1 track(s) without guitar left out" in caplog.text
    assert "6 stem(s) with audio_rendered: false skipped" in caplog.text  # S03 and S06 of 3 tracks
    track = root / "train" / "Track00001"
    x, y = ds[0]
    n = RATE // 2
    assert y.shape == x.shape == (2, n)
    assert torch.equal(y, total(stems(track, "S01", "S04"), n))
    # The interferers are every other rendered stem: not S03 (unrendered, though its file exists), not mix.flac.
    assert torch.equal(x - y, total(stems(track, "S00", "S02", "S05"), n))
    # drums: the is_drum stems; a class with words in it, spelt as the target names it.
    _, drums = data.SlakhDataset(root, "train", "drums", **kw())[0]
    assert torch.equal(drums, read(track / "stems" / "S02.flac", n))
    strings = data.SlakhDataset(root, "train", "strings_continued", **kw())
    assert len(strings) == 3 and torch.equal(strings[1][1], read(root / "train/Track00002/stems/S05.flac", n))
    # The validation split is Slakh's validation/ folder, read as whole tracks.
    valid = data.SlakhDataset(root, "valid", "bass", **kw(seq_duration=None))
    x, y = valid[1]
    assert torch.equal(y, read(root / "validation/Track01502/stems/S00.flac"))
    assert torch.equal(x, total(stems(root / "validation/Track01502", "S00", "S01", "S02", "S04", "S05")))


def test_slakh_file_problems_are_one_warning_and_those_tracks_are_left_out(tmp_path, caplog):
    root = slakh_root(tmp_path / "slakh")
    train = root / "train"
    slakh_track(train / "Track00004", 4)
    (train / "Track00004" / "stems" / "S01.flac").unlink()  # rendered, but its file is missing
    slakh_track(train / "Track00005", 5)
    (train / "Track00005" / "metadata.yaml").write_text("stems: [S00: {inst_class: Bass\n")  # not YAML
    slakh_track(train / "Track00006", 6, seconds=0.25)  # shorter than the excerpts
    slakh_track(train / "Track00007", 7)
    (train / "Track00007" / "stems" / "S05.flac").write_bytes(b"fLaC but not really")
    (train / "Track00008").mkdir()  # no metadata at all
    with caplog.at_level(logging.WARNING, logger="openunmix_like.data"):
        ds = data.SlakhDataset(root, "train", "guitar", **kw())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "5 file(s) or track(s) left out" in text
    for expected in ["Track00004/stems/S01.flac: missing", "Track00005/metadata.yaml: unreadable",
                     "Track00006: shorter than --seq-dur", "Track00007/stems/S05.flac: unreadable",
                     "Track00008: no metadata.yaml"]:
        assert expected in text
    assert [t.path.name for t in ds.tracks] == ["Track00001", "Track00003"]


def test_slakh_several_targets_give_the_single_target_samples(tmp_path):
    root = slakh_root(tmp_path / "slakh")
    opts = kw(random_chunks=True, silence_missing_targets=True)
    stacked = data.SlakhDataset(root, "train", ["guitar", "bass"], **opts)
    singles = [data.SlakhDataset(root, "train", t, **opts) for t in ("guitar", "bass")]
    assert len(stacked) == 3
    for i in range(len(stacked)):
        x, y = stacked[i]
        assert y.shape == (2, 2, RATE // 2)
        for k, single in enumerate(singles):
            xs, ys = single[i]
            assert torch.equal(x, xs) and torch.equal(y[k], ys)
    x, y = stacked[1]  # Track00002: no guitar, kept with a silent one
    assert not y[0].any() and y[1].any() and x.any()
    first = read(root / "train/Track00001/stems/S00.flac", RATE // 2)
    assert not torch.equal(stacked[0][1][1], first)  # a random excerpt, not the first half second
    # Without --silence-missing-targets a track needs every target.
    assert len(data.SlakhDataset(root, "train", ["guitar", "bass"], **kw())) == 2
    assert len(data.SlakhDataset(root, "train", "bass", **kw())) == 3
    # With the source augmentations the first target still matches (same draws up to it).
    augmented = dict(opts, source_augmentations=Compose.from_names(["gain", "channelswap"]))
    a = data.SlakhDataset(root, "train", ["guitar", "bass"], **augmented)[2][1][0]
    b = data.SlakhDataset(root, "train", "guitar", **augmented)[2][1]
    assert torch.equal(a, b) and not torch.equal(a, singles[0][2][1])


def test_slakh_random_track_mix_and_samples_per_track(tmp_path):
    root = slakh_root(tmp_path / "slakh")
    n = RATE // 2
    rests = {t: total(stems(root / "train" / t, "S00", "S02", "S05"), n)
             for t in ("Track00001", "Track00002", "Track00003")}
    ds = data.SlakhDataset(root, "train", "guitar", random_track_mix=True, samples_per_track=6, **kw())
    assert len(ds) == 12
    borrowed = 0
    first_epoch = []
    for i in range(len(ds)):
        x, y = ds[i]
        first_epoch.append(x)
        own = ds.track_of(i).path.name
        assert torch.equal(y, total(stems(root / "train" / own, "S01", "S04"), n))
        source = [t for t, rest in rests.items() if torch.equal(x - y, rest)]
        assert len(source) == 1 and source[0] != "Track00002"  # a left-out track never lends interferers
        borrowed += source[0] != own
    assert 0 < borrowed < len(ds)
    ds.set_epoch(1)
    assert not all(torch.equal(ds[i][0], x) for i, x in enumerate(first_epoch))
    # Several targets: the first is the track's own, a further one comes from a random track holding it
    # (never silent, though Track00002 is kept with a silent guitar).
    guitars = {t: total(stems(root / "train" / t, "S01", "S04"), n) for t in ("Track00001", "Track00003")}
    ds = data.SlakhDataset(root, "train", ["bass", "guitar"], random_track_mix=True, silence_missing_targets=True,
                           samples_per_track=6, **kw())
    assert len(ds) == 18
    borrowed = 0
    for i in range(len(ds)):
        x, y = ds[i]
        own = ds.track_of(i).path.name
        assert torch.equal(y[0], read(root / "train" / own / "stems" / "S00.flac", n))
        source = [t for t, guitar in guitars.items() if torch.equal(y[1], guitar)]
        assert len(source) == 1
        borrowed += source[0] != own
    assert borrowed > 6  # the six items of Track00002 and some others


def test_slakh_preloading_and_statistics_read_the_same_sums(tmp_path):
    root = slakh_root(tmp_path / "slakh")
    augmented = Compose.from_names(["gain", "channelswap"])
    ds = data.SlakhDataset(root, "train", "bass", **kw(random_chunks=True, source_augmentations=augmented))
    before = [ds[i] for i in range(len(ds))]
    assert ds.preload_bytes() == 13 * 2 * 4 * RATE  # 5 + 3 + 5 rendered stems, float32 stereo
    ds.preload()
    for (x, y), (px, py) in zip(before, (ds[i] for i in range(len(ds)))):
        assert torch.equal(x, px) and torch.equal(y, py)
    mixtures = list(ds.iter_mixtures(whole_tracks=True))  # the input statistics: whole tracks, no augmentation
    assert len(mixtures) == 3
    assert torch.equal(mixtures[1], total(stems(root / "train/Track00002", "S00", "S02", "S05")))


def test_slakh_errors_name_what_was_expected(tmp_path, capsys):
    def fails(root, target, expected):
        assert train_main(["--dataset", "slakh", "--root", str(root), "--target", target,
                           "--output", str(tmp_path / "o"), *TINY]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err

    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "bass", "not a Slakh2100 folder: train/ is missing; expected")
    (tmp_path / "musdb-like" / "train" / "song").mkdir(parents=True)
    write(tmp_path / "musdb-like" / "train" / "song" / "bass.wav", 1)
    fails(tmp_path / "musdb-like", "bass", "train: no track folder holds a metadata.yaml; expected")
    fails(slakh_root(tmp_path / "slakh"), "vocals",
          "no track holds a 'vocals' stem; the stems found are bass, drums, guitar, strings_continued")


def test_slakh_trains_end_to_end(tmp_path):
    root = slakh_root(tmp_path / "slakh")
    out = tmp_path / "model"
    assert train_main(["--dataset", "slakh", "--root", str(root), "--target", "Guitar", "--epochs", "1",
                       "--samples-per-track", "2", "--random-track-mix", "--output", str(out), *TINY]) == 0
    record = json.loads((out / "guitar.json").read_text())
    assert record["args"]["dataset"] == "slakh" and record["args"]["target"] == "guitar"
    assert record["samples_history"] == [4]  # two tracks hold guitar, two excerpts each
    assert (out / "guitar.safetensors").is_file()


# ---------------------------------------------------------------- MoisesDB

# Stem -> number of files summed into it. Each track has all of vocals, bass, drums and some others.
MOISES_STEMS = {"vocals": 2, "bass": 1, "drums": 3, "guitar": 2, "piano": 1, "other_keys": 1, "other": 1}


def moises_track(folder: Path, seed: int, layout=MOISES_STEMS, short: bool = False):
    entries = []
    for k, (name, count) in enumerate(layout.items()):
        files = []
        for j in range(count):
            uid = hashlib.md5(f"{folder.name}-{name}-{j}".encode()).hexdigest()
            seconds = SECONDS - 0.01 if short and name == "drums" and not files else SECONDS  # 80 samples short
            write(folder / name / f"{uid}.wav", seed * 100 + k * 10 + j, channels=2, seconds=seconds)
            files.append({"id": uid, "extension": "wav", "trackType": f"{name} {j}", "has_bleed": False})
        entries.append({"id": f"stem-{k}", "stemName": name, "tracks": files})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.json").write_text(json.dumps({"artist": "a", "song": folder.name, "genre": "pop",
                                                  "stems": entries}))


def moises_root(root: Path, tracks: int = 6, provider: str = "moisesdb_v0.1") -> Path:
    for t in range(tracks):
        moises_track((root / provider if provider else root) / f"track-{t:02d}", t)
    return root


def files_of(track: Path, *names) -> list:
    doc = json.loads((track / "data.json").read_text())
    return [track / s["stemName"] / f"{e['id']}.wav" for s in doc["stems"] if s["stemName"] in names
            for e in s["tracks"]]


def test_moisesdb_four_stem_grouping_and_all_stems(tmp_path):
    root = moises_root(tmp_path / "moises")
    ds = data.MoisesDBDataset(root, "train", "other", **kw())  # default grouping: four
    assert len(ds) == 5  # one of six tracks validates
    track = ds.tracks[0].path
    n = RATE // 2
    x, y = ds[0]
    assert torch.equal(y, total(files_of(track, "guitar", "piano", "other_keys", "other"), n))
    assert torch.equal(x - y, total(files_of(track, "vocals", "bass", "drums"), n))
    _, drums = data.MoisesDBDataset(root, "train", "drums", **kw())[0]
    assert torch.equal(drums, total(files_of(track, "drums"), n)) and len(files_of(track, "drums")) == 3
    x_all, guitar = data.MoisesDBDataset(root, "train", "guitar", stem_grouping="all", **kw())[0]
    assert torch.equal(guitar, total(files_of(track, "guitar"), n)) and torch.equal(x_all, x)
    with pytest.raises(data.DatasetError, match="with --stem-grouping four the targets are vocals, bass, drums"):
        data.MoisesDBDataset(root, "train", "guitar", **kw())
    with pytest.raises(data.DatasetError, match="no track holds a 'wind' stem"):
        data.MoisesDBDataset(root, "train", "wind", stem_grouping="all", **kw())


def test_moisesdb_split_is_deterministic_disjoint_and_layout_free(tmp_path):
    root = moises_root(tmp_path / "moises", tracks=10)
    ids = sorted(f"track-{t:02d}" for t in range(10))
    by_hash = sorted(ids, key=lambda i: hashlib.sha1(i.encode()).hexdigest())

    def split(target, valid_tracks=None, where=root):
        args = dict(stem_grouping="all" if target == "piano" else "four", valid_tracks=valid_tracks, **kw())
        return ([t.path.name for t in data.MoisesDBDataset(where, s, target, **args).tracks]
                for s in ("train", "valid"))

    train, valid = split("vocals")
    assert valid == by_hash[:1] and sorted(train + valid) == ids  # default: 10 %
    train, valid = split("vocals", 3)
    assert valid == sorted(by_hash[:3]) and not set(train) & set(valid) and sorted(train + valid) == ids
    assert list(map(list, split("piano", 3))) == [train, valid]  # whatever the target
    flat = moises_root(tmp_path / "flat", tracks=10, provider="")  # <root>/<track_id>/data.json
    assert list(map(list, split("bass", 3, flat))) == [train, valid]
    with pytest.raises(data.DatasetError, match="--valid-tracks 10: give from 1 to 9"):
        data.MoisesDBDataset(root, "train", "vocals", valid_tracks=10, **kw())


def test_moisesdb_problems_whole_track_validation_and_several_targets(tmp_path, caplog):
    root = moises_root(tmp_path / "moises", tracks=8)
    provider = root / "moisesdb_v0.1"
    moises_track(provider / "track-08", 8)
    next((provider / "track-08" / "drums").iterdir()).unlink()  # listed in data.json, missing
    (provider / "track-09").mkdir()
    (provider / "track-09" / "data.json").write_text("{not json")
    moises_track(provider / "track-10", 10, {"bass": 1, "drums": 1, "guitar": 1})  # an instrumental
    with caplog.at_level(logging.INFO, logger="openunmix_like.data"):
        ds = data.MoisesDBDataset(root, "train", "vocals", valid_tracks=2, **kw())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "track-08/drums/" in warnings[0] and "missing (listed in data.json)" in warnings[0]
    assert "track-09/data.json: unreadable" in warnings[0]
    assert "1 track(s) without vocals left out" in caplog.text
    names = [t.path.name for t in ds.tracks]
    assert "track-10" not in names and len(names) == 6
    # --targets: the stacked targets are the single-target items' targets, of one mixture.
    stacked = data.MoisesDBDataset(root, "train", ["vocals", "bass", "drums", "other"], valid_tracks=2,
                                   silence_missing_targets=True, **kw(random_chunks=True))
    assert len(stacked) == 7 and stacked.tracks[-1].path.name == "track-10"
    for k, target in enumerate(["vocals", "bass", "drums", "other"]):
        single = data.MoisesDBDataset(root, "train", target, valid_tracks=2, silence_missing_targets=True,
                                      **kw(random_chunks=True))
        for i in (0, 6):
            (x, y), (x1, y1) = stacked[i], single[i]
            assert torch.equal(x, x1) and torch.equal(y[k], y1)
    assert not stacked[6][1][0].any() and stacked[6][1][3].any()  # silent vocals, guitar in other
    # Validation: whole tracks, cut to the shortest file of the track.
    moises_track(tmp_path / "short" / "p" / "track-00", 0, short=True)
    moises_track(tmp_path / "short" / "p" / "track-01", 1, short=True)
    valid_track = data.moisesdb_split(data.moisesdb_track_dirs(tmp_path / "short"), 1)[1][0]
    valid = data.MoisesDBDataset(tmp_path / "short", "valid", "vocals", valid_tracks=1, **kw(seq_duration=None))
    x, y = valid[0]
    shortest = min(sf.info(p).frames for p in files_of(valid_track, *MOISES_STEMS))
    assert shortest == RATE - 80 and x.shape == y.shape == (2, shortest)
    assert torch.equal(y, torch.stack([read(p)[:, :shortest] for p in files_of(valid_track, "vocals")]).sum(0))


def test_moisesdb_options_and_bad_root(tmp_path, capsys):
    root = moises_root(tmp_path / "moises")
    cfg = TrainConfig(dataset="moisesdb", root=str(root), target="other", seq_dur=0.5, sample_rate=RATE,
                      samples_per_track=2, random_track_mix=True)
    train, valid = build_datasets(cfg)
    assert isinstance(train, data.MoisesDBDataset) and len(train) == 10 and train.random_track_mix
    assert len(valid) == 1 and valid.seq_duration is None and not valid.random_track_mix
    train, _ = stem_datasets(cfg, ["bass", "drums"])
    assert train.nb_targets == 2
    (tmp_path / "empty").mkdir()
    for args, expected in [
        (["--root", str(tmp_path / "empty"), "--target", "vocals"], "not a MoisesDB folder: expected "
                                                                     "<root>/<provider>/<track_id>/data.json"),
        (["--root", str(root), "--target", "guitar"], "--target guitar: with --stem-grouping four"),
        (["--root", str(root), "--target", "vocals", "--valid-tracks", "0"], "--valid-tracks 0: give at least 1"),
    ]:
        assert train_main(["--dataset", "moisesdb", *args, "--output", str(tmp_path / "o"), *TINY]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    assert train_main(["--dataset", "trackfolder_fix", "--root", str(root), "--stem-grouping", "all",
                       "--output", str(tmp_path / "o"), *TINY]) == 1
    assert "--stem-grouping works with --dataset moisesdb; drop it" in capsys.readouterr().err


def test_moisesdb_trains_four_targets_together_end_to_end(tmp_path):
    root = moises_root(tmp_path / "moises")
    out = tmp_path / "model"
    targets = ["vocals", "bass", "drums", "other"]
    assert train_main(["--dataset", "moisesdb", "--root", str(root), "--targets", *targets, "--epochs", "1",
                       "--preload", "on", "--valid-tracks", "2", "--output", str(out), *TINY]) == 0
    for target in targets:
        record = json.loads((out / f"{target}.json").read_text())
        assert record["args"]["target"] == target and record["args"]["stem_grouping"] == "four"
        assert record["args"]["preload"] == "on" and record["samples_history"] == [4]
    assert json.loads((out / "separator.json").read_text())["targets"] == targets


# ---------------------------------------------------------------- against what the released data sets hold


def test_slakh_audio_dir_that_leads_nowhere_reads_the_tracks_stems_folder(tmp_path):
    # slakh2100_flac_redux's train/Track00616/metadata.yaml names the renderer's folder
    # (ethman/slakh-utils#25); its stems are in stems/ like every other track's.
    root = slakh_root(tmp_path / "slakh")
    track = root / "train" / "Track00001"
    meta = track / "metadata.yaml"
    meta.write_text(meta.read_text().replace(
        "audio_dir: stems", "audio_dir: Volumes/data/manilow/generated_data/dataset3_last_file/Track00001/stems"))
    ds = data.SlakhDataset(root, "train", "guitar", **kw())
    assert [t.path.name for t in ds.tracks] == ["Track00001", "Track00003"]
    assert torch.equal(ds[0][1], total(stems(track, "S01", "S04"), RATE // 2))
    sources = data.stem_track_sources("slakh", track)  # evaluation reads it the same way
    assert [f.path for _, files in sources for f in files] == stems(track, "S00", "S01", "S02", "S04", "S05")
    # An audio_dir that exists is still the one read.
    other = tmp_path / "other" / "train" / "Track00001"
    slakh_track(other, 1, {"S00": ("Bass", False, True)})
    (other / "stems").rename(other / "audio")
    (other / "metadata.yaml").write_text((other / "metadata.yaml").read_text().replace("audio_dir: stems",
                                                                                      "audio_dir: audio"))
    assert data.stem_track_sources("slakh", other)[0][1][0].path == other / "audio" / "S00.flac"


def _with_empty_wind_stem(track: Path) -> None:
    doc = json.loads((track / "data.json").read_text())
    doc["stems"].append({"id": "stem-x", "stemName": "wind", "tracks": []})
    (track / "data.json").write_text(json.dumps(doc))


def test_moisesdb_stem_without_files_is_no_stem(tmp_path):
    root = moises_root(tmp_path / "moises")
    for track in (root / "moisesdb_v0.1").iterdir():
        _with_empty_wind_stem(track)
    # It used to be an interferer without audio: every item of the track failed with an AttributeError.
    ds = data.MoisesDBDataset(root, "train", "vocals", **kw())
    for i in range(len(ds)):
        x, y = ds[i]
        track = ds.tracks[i].path
        assert torch.equal(x, total(files_of(track, *[s for s in ("vocals", "bass", "drums", "guitar", "piano",
                                                                   "other_keys", "other")]), RATE // 2))
    # Nor is it a stem a target can name (every target would be silent).
    with pytest.raises(data.DatasetError, match="no track holds a 'wind' stem"):
        data.MoisesDBDataset(root, "train", "wind", stem_grouping="all", silence_missing_targets=True, **kw())
    track = next((root / "moisesdb_v0.1").iterdir())
    assert "wind" not in [key for key, _ in data.stem_track_sources("moisesdb", track)]


def test_moisesdb_data_json_is_utf8_whatever_the_locale(tmp_path):
    root = moises_root(tmp_path / "moises", tracks=3)
    for k, track in enumerate(sorted((root / "moisesdb_v0.1").iterdir())):
        doc = json.loads((track / "data.json").read_text())
        doc["artist"] = "João Gilberto"  # MoisesDB's artists and titles are not all ASCII
        text = json.dumps(doc, ensure_ascii=False)
        # One written with a BOM, as some editors save UTF-8.
        (track / "data.json").write_bytes(("\ufeff" if k == 0 else "").encode() + text.encode("utf-8"))
    assert len(data.MoisesDBDataset(root, "train", "vocals", valid_tracks=1, **kw())) == 2
    # Under a C locale without UTF-8 mode (or Windows' cp1252), reading with the locale's encoding failed.
    script = ("import sys; from openunmix_like import data; "
              "print(len(data.MoisesDBDataset(sys.argv[1], 'train', 'vocals', valid_tracks=1, sample_rate=8000, "
              "nb_channels=2, seq_duration=0.5)))")
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0")
    done = subprocess.run([sys.executable, "-X", "utf8=0", "-c", script, str(root)], env=env, capture_output=True,
                          text=True, encoding="utf-8", cwd=Path(__file__).parent)
    assert done.returncode == 0 and done.stdout.split() == ["2"], done.stderr


def test_moisesdb_root_of_one_track_says_so(tmp_path, capsys):
    root = tmp_path / "moises"
    moises_track(root / "moisesdb_v0.1" / "only", 0)
    assert train_main(["--dataset", "moisesdb", "--root", str(root), "--target", "vocals",
                       "--output", str(tmp_path / "o"), *TINY]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "MoisesDB holds 1 track folder(s)" in err, err
    assert "--valid-tracks" not in err  # not given: the old message blamed "--valid-tracks 1: give from 1 to 0"
    # Every track of it can still be scored.
    assert [t.name for t in evaluate.moisesdb_tracks(str(root), None, targets=["vocals"])] == ["only"]


def test_training_and_evaluation_give_the_same_references(tmp_path):
    """A validation track read whole by training and by umx-evaluate: the same mixture and targets."""
    root = slakh_root(tmp_path / "slakh")
    for target in ("guitar", "drums", "strings_continued"):
        x, y = data.SlakhDataset(root, "valid", target, **kw(seq_duration=None))[0]
        track = next(evaluate.slakh_tracks(str(root), "valid", [target]))
        assert torch.equal(x, track.mixture) and torch.equal(y, track.references[target])
    assert set(track.references) == {data.stem_key(c) if not d else "drums" for c, d, r in SLAKH_STEMS.values() if r}
    moises = moises_root(tmp_path / "moises", tracks=4)
    for grouping, target in (("four", "other"), ("all", "piano")):
        x, y = data.MoisesDBDataset(moises, "valid", target, stem_grouping=grouping, valid_tracks=1,
                                    **kw(seq_duration=None))[0]
        track = next(evaluate.moisesdb_tracks(str(moises), "valid", 1, grouping, [target]))
        assert torch.equal(x, track.mixture) and torch.equal(y, track.references[target])
    assert torch.equal(read(files_of(Path(track.path), "piano")[0]), track.references["piano"])


def test_moisesdb_stem_missing_from_the_validation_tracks_only_is_named_so(tmp_path, capsys):
    root = tmp_path / "moises"
    for t in range(10):  # three tracks hold wind; the validation track (track-05) does not
        moises_track(root / "p" / f"track-{t:02d}", t, dict(MOISES_STEMS, wind=1) if t < 3 else MOISES_STEMS)
    assert [p.name for p in data.moisesdb_split(data.moisesdb_track_dirs(root))[1]] == ["track-05"]
    assert len(data.MoisesDBDataset(root, "train", "wind", stem_grouping="all", **kw())) == 3
    assert train_main(["--dataset", "moisesdb", "--root", str(root), "--target", "wind", "--stem-grouping", "all",
                       "--output", str(tmp_path / "o"), *TINY]) == 1
    err = capsys.readouterr().err.strip()
    # It said "<root>: no track holds a 'wind' stem", false of the root.
    assert len(err.splitlines()) == 1, err
    assert f"{root} (the 1 validation track(s) of its split): no track holds a 'wind' stem" in err, err
    assert "another --valid-tracks N" in err


def test_slakh_unrendered_stem_without_inst_class_does_not_drop_its_track(tmp_path):
    root = slakh_root(tmp_path / "slakh")
    track = root / "train" / "Track00001"
    meta = track / "metadata.yaml"
    lines = meta.read_text().splitlines()
    at = lines.index("  S03:")  # the unrendered stem of SLAKH_STEMS
    assert lines[at + 1].strip() == "audio_rendered: false" and lines[at + 2].strip().startswith("inst_class:")
    meta.write_text("\n".join(lines[:at + 2] + lines[at + 3:]) + "\n")
    sources = data.stem_track_sources("slakh", track)
    assert [f.path for _, files in sources for f in files] == stems(track, "S00", "S01", "S02", "S04", "S05")
    # A rendered stem without one still stops its track, naming it.
    lines = meta.read_text().splitlines()
    at = lines.index("  S01:")
    meta.write_text("\n".join(lines[:at + 2] + lines[at + 3:]) + "\n")
    with pytest.raises(data.DatasetError, match=f"^{meta}: stem S01 has no inst_class$"):
        data.stem_track_sources("slakh", track)
