"""The medleydb and dsd100 layouts, for umx-train and umx-evaluate, on tiny generated copies of the released folders.

Every file holds 16-bit samples (integers / 32768, at most 1/8 of full scale), so sums of them are exact in
float32 whatever the order: targets, references and mixtures are compared with ``torch.equal``.
"""
import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import fake_scoring
from openunmix_like import data
from openunmix_like import evaluate as ev
from openunmix_like.cli import evaluate as cli
from openunmix_like.cli.train import main as train_main
from openunmix_like.training import TrainConfig, build_datasets

yaml = pytest.importorskip("yaml")
RATE = 44100
SECONDS = 1.0
TINY = ["--hidden-size", "8", "--nfft", "512", "--nhop", "256", "--batch-size", "2", "--seq-dur", "0.5", "--quiet"]
STFT = ["--nfft", "512", "--nhop", "256"]


def ints(seed: int, channels: int = 2, seconds: float = SECONDS) -> np.ndarray:
    return np.random.default_rng(seed).integers(-4096, 4096, size=(int(seconds * RATE), channels))


def write(path: Path, samples: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples / 32768.0, RATE, subtype="PCM_16")


def read(path: Path, frames: int = -1) -> torch.Tensor:
    """A file as the data sets give it: float32, two channels (a mono file's duplicated)."""
    audio = torch.from_numpy(sf.read(path, frames=frames, dtype="float32", always_2d=True)[0].T.copy())
    return audio.expand(2, -1).clone() if audio.shape[0] == 1 else audio


def total(paths, frames: int = -1) -> torch.Tensor:
    return torch.stack([read(p, frames) for p in paths]).sum(0)


def kw(**more):
    return dict(dict(sample_rate=RATE, nb_channels=2, seq_duration=0.5, seed=3, random_chunks=False), **more)


def by_hash(names):
    return sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())


def evaluate(root, layout, evaldir, *extra):
    return cli.main(["--root", str(root), "--layout", layout, "--evaldir", str(evaldir), "--quiet", *STFT, *extra])


def one_line(text: str, prefix: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), text
    return lines[0]


# ---------------------------------------------------------------- MedleyDB

# Stem id -> (instrument, component), shaped as the released <TrackName>_METADATA.yaml files hold them. S04 is
# labelled with a list (its first label names it); S07 is a synthesizer playing the bass line (component: bass),
# which is other: the groups follow the labels. S03 (tambourine) is drums; S08 (vibraphone, pitched) is other.
MEDLEY_STEMS = {"S01": ("electric bass", "bass"), "S02": ("drum set", ""), "S03": ("tambourine", ""),
                "S04": (["male singer", "vocalists"], "melody"), "S05": ("female singer", ""),
                "S06": ("clean electric guitar", ""), "S07": ("synthesizer", "bass"), "S08": ("vibraphone", "")}
GROUPS = {"vocals": ["S04", "S05"], "drums": ["S02", "S03"], "bass": ["S01"], "other": ["S06", "S07", "S08"]}
# The room microphones of a recording whose stems bleed into each other.
BLEED_STEMS = {"S01": ("double bass", "bass"), "S02": ("female singer", "melody"), "S03": ("Main System", "")}
MEDLEY_NAMES = [f"Artist{k}_Song{k}" for k in range(7)]
BLEEDING = "Artist6_Song6"


def medley_track(folder: Path, seed: int, stems=MEDLEY_STEMS, bleed: bool = False, metadata: Path = None):
    """A track folder as MedleyDB ships it; the metadata in ``metadata`` (a Metadata/ folder) where given."""
    name = folder.name
    doc = {"album": "", "artist": name.split("_")[0], "composer": [name.split("_")[0]], "excerpt": "no",
           "genre": "Singer/Songwriter", "has_bleed": "yes" if bleed else "no", "instrumental": "no",
           "mix_filename": f"{name}_MIX.wav", "origin": "Weathervane Music", "producer": [],
           "raw_dir": f"{name}_RAW", "stem_dir": f"{name}_STEMS", "stems": {}, "title": name.split("_")[1],
           "version": 1.2, "website": []}
    weighted = 0
    for k, (sid, (instrument, component)) in enumerate(stems.items()):
        filename = f"{name}_STEM_{sid[1:]}.wav"
        samples = ints(seed * 100 + k)
        write(folder / f"{name}_STEMS" / filename, samples)
        weighted = weighted + samples // (k + 2)  # the released mixes weight the stems: never read
        doc["stems"][sid] = {"component": component, "filename": filename, "instrument": instrument,
                             "raw": {"R01": {"filename": f"{name}_RAW_{sid[1:]}_01.wav", "instrument": instrument}}}
    write(folder / f"{name}_RAW" / f"{name}_RAW_01_01.wav", ints(seed + 555))
    write(folder / f"{name}_MIX.wav", weighted)
    where = metadata or folder
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{name}_METADATA.yaml").write_text(yaml.safe_dump(doc))


def medley_root(root: Path, audio: str = "", metadata: bool = False) -> Path:
    """Seven tracks at ``<root>/<audio>/<TrackName>/``; the last has bleed. With ``metadata``, the metadata files
    are in ``<root>/Metadata/``, as the medleydb package keeps them, not in the track folders."""
    for k, name in enumerate(MEDLEY_NAMES):
        medley_track(root / audio / name, k, BLEED_STEMS if name == BLEEDING else MEDLEY_STEMS, name == BLEEDING,
                     root / "Metadata" if metadata else None)
    return root


def stem_files(track: Path, *ids) -> list:
    return [track / f"{track.name}_STEMS" / f"{track.name}_STEM_{sid[1:]}.wav" for sid in ids]


def test_medleydb_four_groups_are_sums_of_their_labels_and_the_mixture_every_stem(tmp_path, caplog):
    root = medley_root(tmp_path / "MedleyDB")
    with caplog.at_level(logging.INFO, logger="openunmix_like.data"):
        vocals = data.MedleyDBDataset(root, "train", "vocals", **kw())
    train = sorted(set(MEDLEY_NAMES) - {by_hash(MEDLEY_NAMES)[0], BLEEDING})  # 1 of 7 validates; bleed left out
    assert [t.path.name for t in vocals.tracks] == train
    assert "1 track(s) with has_bleed: yes left out (--include-bleed keeps them)" in caplog.text
    track = vocals.tracks[0].path
    n = RATE // 2
    x, y = vocals[0]
    assert y.shape == x.shape == (2, n)
    assert torch.equal(y, total(stem_files(track, *GROUPS["vocals"]), n))  # the listed stem counts as male singer
    assert torch.equal(x, total(stem_files(track, *MEDLEY_STEMS), n))  # every stem, at unit gain: not the _MIX.wav
    assert not torch.equal(x, read(track / f"{track.name}_MIX.wav", n))
    for target in ("drums", "bass", "other"):
        x_t, y_t = data.MedleyDBDataset(root, "train", target, **kw())[0]
        assert torch.equal(x_t, x) and torch.equal(y_t, total(stem_files(track, *GROUPS[target]), n)), target
    # --stem-grouping all: one label each, spelt as stem_key spells it.
    _, singer = data.MedleyDBDataset(root, "train", "female singer", stem_grouping="all", **kw())[0]
    assert torch.equal(singer, read(stem_files(track, "S05")[0], n))
    with pytest.raises(data.DatasetError, match="with --stem-grouping four the targets are vocals, bass, drums"):
        data.MedleyDBDataset(root, "train", "female_singer", **kw())
    # --include-bleed: the bleeding track too, its Main System (room microphones) an other stem.
    kept = data.MedleyDBDataset(root, "train", "other", include_bleed=True, **kw())
    assert [t.path.name for t in kept.tracks] == sorted(train + [BLEEDING])
    bleeding = root / BLEEDING
    assert torch.equal(kept[len(kept) - 1][1], read(stem_files(bleeding, "S03")[0], n))


def test_medleydb_metadata_apart_and_nested_folders_read_the_same_tracks(tmp_path):
    flat = medley_root(tmp_path / "flat")
    apart = medley_root(tmp_path / "MedleyDB", audio="Audio", metadata=True)  # as the medleydb package reads it
    assert not list((apart / "Audio").rglob("*_METADATA.yaml"))
    for grouping, target in (("four", "bass"), ("all", "drum_set")):
        a = data.MedleyDBDataset(flat, "valid", target, stem_grouping=grouping, valid_tracks=2, **kw())
        b = data.MedleyDBDataset(apart, "valid", target, stem_grouping=grouping, valid_tracks=2, **kw())
        assert [t.path.name for t in a.tracks] == [t.path.name for t in b.tracks]
        assert all(torch.equal(u, v) for i in range(len(a)) for u, v in zip(a[i], b[i]))
    assert {p.parent.name for p in data.medleydb_track_dirs(apart)} == {"Audio"}
    # MedleyDB 2.0 beside 1.0: <root>/V1/<TrackName>/ and <root>/V2/<TrackName>/.
    medley_track(tmp_path / "both" / "V1" / "Old_Track", 1)
    medley_track(tmp_path / "both" / "V2" / "New_Track", 2)
    assert [p.name for p in data.medleydb_track_dirs(tmp_path / "both")] == ["Old_Track", "New_Track"]


def test_medleydb_split_is_the_same_for_umx_train_and_umx_evaluate(tmp_path, monkeypatch):
    root = medley_root(tmp_path / "MedleyDB")
    calls = fake_scoring(monkeypatch)
    valid_names = sorted(set(by_hash(MEDLEY_NAMES)[:3]) - {BLEEDING})
    for target, grouping in (("vocals", "four"), ("electric_bass", "all")):  # whatever the target
        valid = data.MedleyDBDataset(root, "valid", target, stem_grouping=grouping, valid_tracks=3, **kw())
        assert [t.path.name for t in valid.tracks] == valid_names
    train = [t.path.name for t in data.MedleyDBDataset(root, "train", "vocals", valid_tracks=3, **kw()).tracks]
    assert not set(train) & set(valid_names) and sorted(train + valid_names + [BLEEDING]) == MEDLEY_NAMES
    assert evaluate(root, "medleydb", tmp_path / "e1", "--oracle", "mix", "--valid-tracks", "3") == 0
    assert sorted(name for name, _ in calls) == valid_names
    calls.clear()
    assert evaluate(root, "medleydb", tmp_path / "e2", "--oracle", "mix", "--valid-tracks", "3", "--split",
                    "train") == 0
    assert sorted(name for name, _ in calls) == train
    calls.clear()
    assert evaluate(root, "medleydb", tmp_path / "e3", "--oracle", "mix", "--all-tracks", "--include-bleed") == 0
    assert sorted(name for name, _ in calls) == MEDLEY_NAMES
    # umx-train --include-bleed: the same split, the bleeding track among the training ones.
    cfg = TrainConfig(dataset="medleydb", root=str(root), target="vocals", valid_tracks=3, include_bleed=True,
                      sample_rate=RATE, seq_dur=0.5)
    train_set, valid_set = build_datasets(cfg)
    assert [t.path.name for t in train_set.tracks] == sorted(train + [BLEEDING])
    assert [t.path.name for t in valid_set.tracks] == valid_names


def test_medleydb_references_are_the_groups_training_sums(tmp_path):
    root = medley_root(tmp_path / "MedleyDB")
    targets = ["vocals", "drums", "bass", "other"]
    tracks = list(ev.medleydb_tracks(str(root), "valid", 2, targets=targets))
    valid = data.MedleyDBDataset(root, "valid", targets, valid_tracks=2, **kw(seq_duration=None))
    assert [t.name for t in tracks] == [t.path.name for t in valid.tracks] and len(tracks) == 2
    for i, track in enumerate(tracks):
        x, y = valid[i]
        folder = root / track.name
        assert torch.equal(x, track.mixture) and torch.equal(x, total(stem_files(folder, *MEDLEY_STEMS)))
        for k, target in enumerate(targets):
            assert torch.equal(y[k], track.references[target])
            assert torch.equal(track.references[target], total(stem_files(folder, *GROUPS[target]))), target
    [track] = ev.medleydb_tracks(str(root), None, stem_grouping="all", names=[MEDLEY_NAMES[0]])
    assert sorted(track.sources) == ["clean_electric_guitar", "drum_set", "electric_bass", "female_singer",
                                     "male_singer", "synthesizer", "tambourine", "vibraphone"]


@pytest.mark.slow
def test_medleydb_trains_and_its_model_is_scored(tmp_path):
    pytest.importorskip("museval")
    root = medley_root(tmp_path / "MedleyDB")
    out = tmp_path / "model"
    assert train_main(["--dataset", "medleydb", "--root", str(root), "--target", "vocals", "--epochs", "1",
                       "--valid-tracks", "2", "--samples-per-track", "2", "--output", str(out), *TINY]) == 0
    record = json.loads((out / "vocals.json").read_text())
    assert record["args"]["dataset"] == "medleydb" and record["args"]["stem_grouping"] == "four"
    assert record["args"]["valid_tracks"] == 2 and record["args"]["include_bleed"] is False
    assert record["samples_history"] == [8]  # 7 tracks, 2 validate, 1 bleeds: 4 train, 2 excerpts each
    evaldir = tmp_path / "eval"
    assert evaluate(root, "medleydb", evaldir, "--model", str(out), "--niter", "0", "--valid-tracks", "2") == 0
    records = cli.load_records(evaldir / "model")
    assert sorted(records) == sorted(set(by_hash(MEDLEY_NAMES)[:2]) - {BLEEDING})
    table = ev.aggregate(records)
    assert list(table) == ["vocals"] and math.isfinite(table["vocals"]["SDR"]["median"])
    assert records[sorted(records)[0]]["settings"]["stem_grouping"] == "four"


def test_medleydb_bad_files_are_named_in_training_and_evaluation(tmp_path, caplog, capsys, monkeypatch):
    root = medley_root(tmp_path / "MedleyDB")
    broken = root / MEDLEY_NAMES[0]
    stem_files(broken, "S06")[0].unlink()  # listed, missing
    lost = root / MEDLEY_NAMES[1]
    (lost / f"{lost.name}_METADATA.yaml").write_text("stems: [S01: {instrument: bass\n")  # not YAML
    with caplog.at_level(logging.WARNING, logger="openunmix_like.data"):
        ds = data.MedleyDBDataset(root, "train", "vocals", valid_tracks=1, **kw())
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{stem_files(broken, 'S06')[0]}: missing (listed in {broken.name}_METADATA.yaml)" in warning
    assert f"{lost / lost.name}_METADATA.yaml: unreadable" in warning
    left = {by_hash(MEDLEY_NAMES)[0], BLEEDING, broken.name, lost.name}  # validation, bleed, the bad two
    assert [t.path.name for t in ds.tracks] == sorted(set(MEDLEY_NAMES) - left)
    calls = fake_scoring(monkeypatch)
    capsys.readouterr()
    assert evaluate(root, "medleydb", tmp_path / "eval", "--oracle", "mix", "--all-tracks") == 1
    assert sorted(name for name, _ in calls) == MEDLEY_NAMES[2:6]  # the others are scored
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("umx-evaluate: error: ")]
    assert lines == [f"umx-evaluate: error: {stem_files(broken, 'S06')[0]}: missing (listed in {broken.name}"
                     "_METADATA.yaml); repair or re-download that track",
                     f"umx-evaluate: error: {lost / lost.name}_METADATA.yaml: unreadable ("
                     + lines[1].split(": unreadable (", 1)[1]]
    assert lines[1].endswith("; repair or re-download that track")
    # A track folder whose metadata is nowhere: named, with where to find it.
    (lost / f"{lost.name}_METADATA.yaml").unlink()
    with pytest.raises(data.DatasetError, match=f"^{lost / lost.name}_METADATA.yaml: missing .*medleydb package"):
        data.stem_track_sources("medleydb", lost)


def test_medleydb_wrong_root_and_a_target_no_track_holds_are_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    root = medley_root(tmp_path / "MedleyDB")
    calls = fake_scoring(monkeypatch)
    for argv, says in [
        (["--root", str(tmp_path / "empty"), "--target", "vocals"],
         f"{tmp_path / 'empty'}: not a MedleyDB folder: expected <root>/<TrackName>/"),
        (["--root", str(root), "--target", "theremin", "--stem-grouping", "all"],
         f"{root} (the 6 training track(s) of its split): no track holds a 'theremin' stem; the stems found are "
         "clean_electric_guitar, drum_set, electric_bass, female_singer, male_singer, synthesizer, tambourine, "
         "vibraphone"),
        (["--root", str(root), "--target", "guitar"], "--target guitar: with --stem-grouping four (the default) the "
                                                      "targets are vocals, bass, drums, other"),
    ]:
        assert train_main(["--dataset", "medleydb", *argv, "--output", str(tmp_path / "o"), *TINY]) == 1
        assert says in one_line(capsys.readouterr().err, "umx-train: error: ")
    for argv, says in [
        (["--root", str(tmp_path / "empty")], f"{tmp_path / 'empty'}: not a MedleyDB folder"),
        (["--targets", "theremin", "--stem-grouping", "all"],
         f"{root} (the 1 validation track(s) of its split): no track holds a 'theremin' stem; the stems found are "),
        (["--split", "test"], "--split test: MedleyDB has no test split"),
    ]:
        assert evaluate(root, "medleydb", tmp_path / "eval", "--oracle", "mix", *argv) == 1
        one_line(capsys.readouterr().err, f"umx-evaluate: error: {says}")
    assert not calls


# ---------------------------------------------------------------- DSD100

DSD_SOURCES = ("vocals", "drums", "bass", "other")
DEV = [f"{k:03d} - Artist {k} - Song {k}" for k in range(1, 7)]
TEST = [f"{k:03d} - Artist {k} - Song {k}" for k in range(51, 54)]


def dsd_root(root: Path) -> Path:
    """DSD100 as released: Sources/{Dev,Test}/<track>/<source>.wav and Mixtures/{Dev,Test}/<track>/mixture.wav,
    the mixture the exact sum of the sources."""
    for folder, names in (("Dev", DEV), ("Test", TEST)):
        for k, name in enumerate(names):
            sources = [ints(1000 * (folder == "Test") + 10 * k + j) for j in range(len(DSD_SOURCES))]
            for source, samples in zip(DSD_SOURCES, sources):
                write(root / "Sources" / folder / name / f"{source}.wav", samples)
            write(root / "Mixtures" / folder / name / "mixture.wav", sum(sources))
    return root


def test_dsd100_targets_are_the_source_files_and_dev_is_split_by_hash(tmp_path):
    root = dsd_root(tmp_path / "DSD100")
    n = RATE // 2
    valid_names = sorted(by_hash(DEV)[:2])
    for target in DSD_SOURCES:
        train = data.DSD100Dataset(root, "train", target, valid_tracks=2, **kw())
        assert [t.path.name for t in train.tracks] == sorted(set(DEV) - set(valid_names))
        track = train.tracks[0].path
        x, y = train[0]
        assert torch.equal(y, read(track / f"{target}.wav", n))
        assert torch.equal(x, total([track / f"{s}.wav" for s in DSD_SOURCES], n))
    valid = data.DSD100Dataset(root, "valid", "vocals", valid_tracks=2, **kw(seq_duration=None))
    assert [t.path.name for t in valid.tracks] == valid_names and valid[0][0].shape == (2, RATE)
    assert len(data.DSD100Dataset(root, "valid", "vocals", **kw()).tracks) == 1  # default: 10 % of Dev, at least 1
    test = data.DSD100Dataset(root, "test", "bass", **kw())
    assert [t.path.name for t in test.tracks] == TEST
    # The shipped mixture is the sum of the sources: the sum that is read is the mixture the release holds.
    mixture = root / "Mixtures" / "Test" / TEST[0] / "mixture.wav"
    assert torch.equal(test[0][0], read(mixture, n))


def test_dsd100_evaluation_reads_what_training_and_the_folder_layout_read(tmp_path, monkeypatch):
    root = dsd_root(tmp_path / "DSD100")
    tracks = list(ev.dsd100_tracks(str(root), "test", targets=["vocals"], residual="accompaniment"))
    assert [t.name for t in tracks] == TEST
    folders = list(ev.folder_tracks(str(root / "Sources" / "Test")))
    for track, folder in zip(tracks, folders):
        assert torch.equal(track.mixture, folder.mixture)
        mixture = root / "Mixtures" / "Test" / track.name / "mixture.wav"
        assert torch.equal(track.mixture, read(mixture))  # as the shipped mixture
        assert torch.equal(track.references["vocals"], folder.references["vocals"])
        assert torch.equal(track.references["accompaniment"],
                           sum(folder.references[s] for s in ("drums", "bass", "other")))
    valid = data.DSD100Dataset(root, "valid", list(DSD_SOURCES), valid_tracks=2, **kw(seq_duration=None))
    for i, track in enumerate(ev.dsd100_tracks(str(root), "valid", 2, targets=list(DSD_SOURCES))):
        x, y = valid[i]
        assert track.name == valid.tracks[i].path.name and torch.equal(x, track.mixture)
        assert all(torch.equal(y[k], track.references[s]) for k, s in enumerate(DSD_SOURCES))
    calls = fake_scoring(monkeypatch)
    choices = (([], TEST), (["--split", "valid", "--valid-tracks", "2"], by_hash(DEV)[:2]),
               (["--split", "train"], by_hash(DEV)[1:]))
    for k, (options, expected) in enumerate(choices):
        calls.clear()
        assert evaluate(root, "dsd100", tmp_path / f"eval{k}", "--oracle", "mix", *options) == 0
        assert sorted(name for name, _ in calls) == sorted(expected), options


@pytest.mark.slow
def test_dsd100_trains_and_its_model_is_scored_on_test(tmp_path):
    pytest.importorskip("museval")
    root = dsd_root(tmp_path / "DSD100")
    out = tmp_path / "model"
    assert train_main(["--dataset", "dsd100", "--root", str(root), "--targets", "vocals", "drums", "--epochs", "1",
                       "--output", str(out), *TINY]) == 0
    for target in ("vocals", "drums"):
        record = json.loads((out / f"{target}.json").read_text())
        assert record["args"]["dataset"] == "dsd100" and record["samples_history"] == [5]  # 6 Dev tracks, 1 validates
    evaldir = tmp_path / "eval"
    assert evaluate(root, "dsd100", evaldir, "--model", str(out), "--niter", "0", "--tracks", TEST[0]) == 0
    table = ev.aggregate(cli.load_records(evaldir / "model"))
    assert sorted(table) == ["drums", "vocals"] and all(math.isfinite(table[t]["SDR"]["median"]) for t in table)


def test_dsd100_problems_are_one_line_naming_the_file(tmp_path, capsys, caplog, monkeypatch):
    (tmp_path / "empty").mkdir()
    root = dsd_root(tmp_path / "DSD100")
    calls = fake_scoring(monkeypatch)
    for argv, says in [
        (["--root", str(tmp_path / "empty"), "--target", "vocals"],
         f"{tmp_path / 'empty'}: not a DSD100 folder: Sources/Dev/ is missing; expected "),
        (["--root", str(root), "--target", "guitar"], "--target guitar: DSD100's sources are vocals, drums, bass, "
                                                      "other; train one of them"),
        (["--root", str(root), "--target", "vocals", "--stem-grouping", "all"],
         "--stem-grouping works with --dataset moisesdb; drop it for --dataset dsd100 (medleydb takes it too)"),
        (["--root", str(root), "--target", "vocals", "--include-bleed"],
         "--include-bleed works with --dataset medleydb; drop it for --dataset dsd100"),
    ]:
        assert train_main(["--dataset", "dsd100", *argv, "--output", str(tmp_path / "o"), *TINY]) == 1
        assert says in one_line(capsys.readouterr().err, "umx-train: error: ")
    for argv, says in [
        (["--root", str(tmp_path / "empty")], f"{tmp_path / 'empty'}: not a DSD100 folder: Sources/Test/ is missing"),
        (["--valid-tracks", "2"], "--valid-tracks chooses the validation tracks of Sources/Dev"),
        (["--subset", "test"], "--subset test: DSD100's tracks are chosen with --split"),
        (["--targets", "guitar"], f"{root / 'Sources' / 'Test'}: no track holds a 'guitar' stem; the stems found are "
                                  "bass, drums, other, vocals"),
        (["--include-bleed"], "--include-bleed works with --layout medleydb; drop it"),
    ]:
        assert evaluate(root, "dsd100", tmp_path / "eval", "--oracle", "mix", *argv) == 1
        one_line(capsys.readouterr().err, f"umx-evaluate: error: {says}")
        assert not calls
    # A missing and an unreadable source file: named; training leaves those tracks out, evaluation scores the others.
    missing = root / "Sources" / "Test" / TEST[1] / "bass.wav"
    missing.unlink()
    unreadable = root / "Sources" / "Dev" / by_hash(DEV)[-1] / "other.wav"
    unreadable.write_bytes(b"RIFF but not really")
    with caplog.at_level(logging.WARNING, logger="openunmix_like.data"):
        train = data.DSD100Dataset(root, "train", "vocals", **kw())
    assert [t.path.name for t in train.tracks] == sorted(set(DEV) - {by_hash(DEV)[0], by_hash(DEV)[-1]})
    assert f"{unreadable}: unreadable" in caplog.text
    assert evaluate(root, "dsd100", tmp_path / "eval", "--oracle", "mix") == 1
    assert [name for name, _ in calls] == [TEST[0], TEST[2]]
    one_line(capsys.readouterr().err, f"umx-evaluate: error: {missing}: missing (a DSD100 track holds vocals.wav, "
                                      "drums.wav, bass.wav, other.wav); repair or re-download that track")
