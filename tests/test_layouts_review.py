"""The slakh and moisesdb layouts against what the released data sets hold (defects found in review).

The fake trees come from the builders of ``test_data_layouts.py``.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from openunmix_like import data, evaluate
from openunmix_like.cli.train import main as train_main
from test_data_layouts import (MOISES_STEMS, RATE, SLAKH_STEMS, TINY, files_of, kw, moises_root,
                               moises_track, read, slakh_root, slakh_track, stems, total)


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
