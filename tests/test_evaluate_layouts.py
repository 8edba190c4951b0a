"""umx-evaluate on the slakh and moisesdb layouts: which tracks, references summed as training sums them, oracles.

Every file holds 16-bit samples (integers / 32768, at most 1/8 of full scale), so sums of them are exact in
float32 whatever their order: references and mixtures are compared with ``torch.equal``.
"""
import hashlib
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import fake_scoring, make_models
from openunmix_like import data
from openunmix_like import evaluate as ev
from openunmix_like.cli import evaluate as cli
from openunmix_like.modeldir import AudioSettings, save_target

pytest.importorskip("museval")
pytest.importorskip("yaml")
RATE = 8000
SECONDS = 3.0
STFT = ["--nfft", "256", "--nhop", "64"]


def write(path, seed, channels=1, gain=4096):
    """Noise of integers / 32768 (exact in float32 and in sums of a few files), ``gain / 32768`` at most."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ints = np.random.default_rng(seed).integers(-gain, gain, size=(int(SECONDS * RATE), channels))
    sf.write(path, ints / 32768.0, RATE, subtype="PCM_16")


def read(path):
    """A file as training reads it: float32, two channels (a mono file's duplicated)."""
    audio = torch.from_numpy(sf.read(path, dtype="float32", always_2d=True)[0].T.copy())
    return audio.expand(2, -1).clone() if audio.shape[0] == 1 else audio


def total(paths):
    return torch.stack([read(p) for p in paths]).sum(0)


# ---------------------------------------------------------------- generated data sets

# Stem id -> (inst_class, is_drum, audio_rendered). S03 is not rendered but has a file; S04 is a second guitar.
SLAKH_STEMS = {"S00": ("Bass", False, True), "S01": ("Guitar", False, True), "S02": ("Drums", True, True),
               "S03": ("Piano", False, False), "S04": ("Guitar", False, True),
               "S05": ("Strings (continued)", False, True)}
NO_GUITAR = {k: v for k, v in SLAKH_STEMS.items() if v[0] != "Guitar"}


def slakh_track(folder, seed, stems=SLAKH_STEMS):
    lines = ["audio_dir: stems", "stems:"]
    for k, (sid, (inst_class, is_drum, rendered)) in enumerate(stems.items()):
        lines += [f"  {sid}:", f"    audio_rendered: {str(rendered).lower()}", f"    inst_class: {inst_class}",
                  f"    is_drum: {str(is_drum).lower()}", f"    program_num: {128 if is_drum else k}"]
        write(folder / "stems" / f"{sid}.flac", seed * 10 + k, gain=1024 * (k % 4 + 1))  # S03 too, never read
    (folder / "metadata.yaml").write_text("\n".join(lines) + "\n")
    write(folder / "mix.flac", seed + 999)  # never read: the mixture is the sum of the stems


def slakh_root(root):
    slakh_track(root / "train" / "Track00001", 1)
    slakh_track(root / "validation" / "Track01501", 2)
    slakh_track(root / "validation" / "Track01502", 3, NO_GUITAR)
    slakh_track(root / "test" / "Track01876", 4)
    slakh_track(root / "test" / "Track01877", 5)
    return root


def stems(track, *ids):
    return [track / "stems" / f"{sid}.flac" for sid in ids]


# Stem -> number of files summed into it.
MOISES_STEMS = {"vocals": 2, "bass": 1, "drums": 2, "guitar": 2, "piano": 1, "other": 1}


def moises_track(folder, seed):
    entries = []
    for k, (name, count) in enumerate(MOISES_STEMS.items()):
        files = []
        for j in range(count):
            uid = hashlib.md5(f"{folder.name}/{name}/{j}".encode()).hexdigest()
            write(folder / name / f"{uid}.wav", seed * 100 + 10 * k + j, channels=2)
            files.append({"id": uid, "extension": "wav", "trackType": name})
        entries.append({"id": f"stem-{k}", "stemName": name, "tracks": files})
    (folder / "data.json").write_text(json.dumps({"song": folder.name, "stems": entries}))


MOISES_IDS = [f"track-{t:02d}" for t in range(8)]


def moises_root(root):
    for t, track_id in enumerate(MOISES_IDS):
        moises_track(root / "moisesdb_v0.1" / track_id, t)
    return root


def moises_files(track, *names):
    doc = json.loads((track / "data.json").read_text())
    return [track / s["stemName"] / f"{e['id']}.wav" for s in doc["stems"] if s["stemName"] in names
            for e in s["tracks"]]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """A Slakh2100 root and a MoisesDB root, read but never changed by the tests that share them."""
    base = tmp_path_factory.mktemp("layouts")
    return slakh_root(base / "slakh"), moises_root(base / "moises")


def model_folder(path, targets=("bass", "guitar")):
    for target, m in make_models(targets, n_fft=256, hidden_size=4).items():
        save_target(path, target, m, AudioSettings(RATE, 256, 64, 2))
    return path


def run(root, layout, evaldir, *extra):
    return cli.main(["--root", str(root), "--layout", layout, "--evaldir", str(evaldir), "--quiet", *STFT, *extra])


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith("umx-evaluate: error: ")]


# ---------------------------------------------------------------- Slakh2100


def test_slakh_references_are_class_sums_and_the_mixture_every_rendered_stem(roots):
    root, _ = roots
    targets = ["bass", "drums", "guitar"]
    full, no_guitar = ev.slakh_tracks(str(root), "valid", targets)
    folder = root / "validation" / "Track01501"
    assert (full.name, no_guitar.name, full.rate, full.path) == ("Track01501", "Track01502", RATE, str(folder))
    assert torch.equal(full.references["guitar"], total(stems(folder, "S01", "S04")))  # two guitars summed
    assert torch.equal(full.references["drums"], read(folder / "stems" / "S02.flac"))  # is_drum
    # Every rendered stem: not S03 (unrendered, though its file exists), not mix.flac.
    assert torch.equal(full.mixture, total(stems(folder, "S00", "S01", "S02", "S04", "S05")))
    assert list(full.sources) == ["drums", "bass", "guitar", "strings_continued"]
    assert torch.equal(full.sources["strings_continued"], read(folder / "stems" / "S05.flac"))
    assert torch.equal(torch.stack(list(full.sources.values())).sum(0), full.mixture)
    # A class the track lacks: a silent reference, and no part of the mixture.
    assert not no_guitar.references["guitar"].any() and "guitar" not in no_guitar.sources
    # The same sums as training's validation set holds.
    valid = data.SlakhDataset(root, "valid", targets, silence_missing_targets=True, seq_duration=None,
                              random_chunks=False, sample_rate=RATE, nb_channels=2)
    for i, track in enumerate([full, no_guitar]):
        x, y = valid[i]
        assert torch.equal(x, track.mixture)
        assert all(torch.equal(y[k], track.references[t]) for k, t in enumerate(targets))
    # A residual: every stem of no target, summed into one reference.
    folder = root / "test" / "Track01877"
    [track] = ev.slakh_tracks(str(root), "test", ["guitar"], residual="rest", names=["Track01877"])
    assert list(track.sources) == ["guitar", "rest"]
    assert torch.equal(track.references["rest"], total(stems(folder, "S00", "S02", "S05")))


def test_slakh_model_is_scored_against_the_class_sums_with_a_silent_guitar(roots, tmp_path, monkeypatch):
    root, _ = roots
    seen = {}
    real = cli.score_track

    def score(name, refs, ests, rate):  # museval's, the references it was given kept
        seen[name, tuple(ests)] = refs
        return real(name, refs, ests, rate)

    monkeypatch.setattr(cli, "score_track", score)
    model = model_folder(tmp_path / "model")
    evaldir = tmp_path / "eval"
    assert run(root, "slakh", evaldir, "--model", str(model), "--niter", "0", "--with-oracles", "mix") == 0
    records = cli.load_records(evaldir / "model")
    assert sorted(records) == ["Track01501", "Track01502"]  # validation/, the default
    assert records["Track01502"]["silent_references"] == ["guitar"]
    assert "silent_references" not in records["Track01501"]
    table = ev.aggregate(records)
    assert (table["guitar"]["SDR"]["tracks"], table["bass"]["SDR"]["tracks"]) == (1, 2)
    assert all(math.isfinite(table[t]["SDR"]["median"]) for t in ("bass", "guitar"))
    folder = root / "validation" / "Track01501"
    refs = seen[("Track01501", ("bass", "guitar"))]
    assert np.array_equal(refs["guitar"], total(stems(folder, "S01", "S04")).numpy().T)
    assert np.array_equal(refs["bass"], read(folder / "stems" / "S00.flac").numpy().T)
    # The mixture oracle beside it estimates the model's targets; its SDR is the target's share of the
    # mixture's energy (the stems are independent noise), to BSSEval's projection error.
    mix = cli.load_records(evaldir / "MIX")
    assert [t["name"] for t in mix["Track01501"]["targets"]] == ["bass", "guitar"]
    mixture = total(stems(folder, "S00", "S01", "S02", "S04", "S05")).double()
    medians = ev.track_medians(mix["Track01501"])
    for target, ids in (("bass", ["S00"]), ("guitar", ["S01", "S04"])):
        source = total(stems(folder, *ids)).double()
        expected = 10 * math.log10(float(source.square().sum() / (mixture - source).square().sum()))
        assert medians[target]["SDR"] == pytest.approx(expected, abs=0.5), target


def test_slakh_oracles_share_the_mixture_among_every_class(roots, tmp_path, capsys):
    root, _ = roots
    evaldir = tmp_path / "eval"
    assert run(root, "slakh", evaldir, "--subset", "test", "--oracle", "irm2", "--with-oracles", "mix",
               "--targets", "guitar", "bass") == 0
    tables = {m: ev.aggregate(cli.load_records(evaldir / m)) for m in ("IRM2", "MIX")}
    assert sorted(cli.load_records(evaldir / "IRM2")) == ["Track01876", "Track01877"]  # test/
    for target in ("guitar", "bass"):
        assert tables["IRM2"][target]["SDR"]["median"] > tables["MIX"][target]["SDR"]["median"] + 5
    assert "| guitar |" in capsys.readouterr().out
    # The guitar's mask shares the mixture with the drums and strings too: over the guitar alone it would
    # be 1 everywhere, the mixture itself.
    [track] = ev.slakh_tracks(str(root), "test", ["guitar"], names=["Track01876"])
    refs = {"guitar": track.references["guitar"].numpy().T}
    shared = ev.oracle("irm2", track, ["guitar"], 256, 64)["guitar"]
    assert torch.allclose(ev.oracle("irm2", ev.Track("t", RATE, track.mixture, track.references), ["guitar"],
                                    256, 64)["guitar"], track.mixture, atol=1e-5)
    scores = ev.track_medians(ev.score_track("t", refs, {"guitar": shared.numpy().T}, RATE))
    assert scores["guitar"]["SDR"] > tables["MIX"]["guitar"]["SDR"]["median"] + 5


VALID, TEST = ["Track01501", "Track01502"], ["Track01876", "Track01877"]


@pytest.mark.parametrize("options, expected", [
    ([], VALID), (["--split", "valid"], VALID), (["--subset", "validation"], VALID),
    (["--subset", "train", "--split", "valid"], VALID), (["--split", "test"], TEST), (["--subset", "test"], TEST),
    (["--subset", "test", "--split", "test"], TEST), (["--subset", "train"], ["Track00001"]),
    (["--split", "train"], ["Track00001"]),
])
def test_slakh_split_and_subset_choose_the_folder(roots, tmp_path, monkeypatch, options, expected):
    root, _ = roots
    calls = fake_scoring(monkeypatch)
    assert run(root, "slakh", tmp_path / "eval", "--oracle", "mix", *options) == 0
    assert [name for name, _ in calls] == expected


def test_slakh_model_residual_is_every_other_class(roots, tmp_path, monkeypatch):
    root, _ = roots
    calls = fake_scoring(monkeypatch)
    model = model_folder(tmp_path / "model")
    assert run(root, "slakh", tmp_path / "eval", "--model", str(model), "--niter", "0", "--residual", "rest",
               "--with-oracles", "irm2", "--tracks", "Track01501") == 0
    [(_, model_refs), (_, oracle_refs)] = calls
    assert list(model_refs) == list(oracle_refs) == ["bass", "guitar", "rest"]  # the oracle estimates the same
    folder = root / "validation" / "Track01501"
    assert np.array_equal(model_refs["rest"], total(stems(folder, "S02", "S05")).numpy().T)  # drums, strings
    assert np.array_equal(oracle_refs["guitar"], total(stems(folder, "S01", "S04")).numpy().T)


def test_slakh_tracks_option_and_bad_tracks_are_one_line_each(tmp_path, capsys, monkeypatch):
    root = slakh_root(tmp_path / "slakh")
    calls = fake_scoring(monkeypatch)
    assert run(root, "slakh", tmp_path / "one", "--oracle", "mix", "--tracks", "Track01502") == 0
    assert [name for name, _ in calls] == ["Track01502"]
    valid = root / "validation"
    slakh_track(valid / "Track01503", 6)
    (valid / "Track01503" / "stems" / "S02.flac").write_bytes(b"fLaC but not really")
    slakh_track(valid / "Track01504", 7)
    (valid / "Track01504" / "stems" / "S05.flac").unlink()  # rendered, but its file is missing
    calls.clear()
    capsys.readouterr()
    assert run(root, "slakh", tmp_path / "eval", "--oracle", "mix") == 1
    assert [name for name, _ in calls] == ["Track01501", "Track01502"]  # the others are scored
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 2
    assert lines[0].startswith(f"umx-evaluate: error: {valid / 'Track01503' / 'stems' / 'S02.flac'}: unreadable")
    assert lines[1].startswith(f"umx-evaluate: error: {valid / 'Track01504' / 'stems' / 'S05.flac'}: missing")
    assert all(line.endswith("; repair or re-download that track") for line in lines)
    assert (tmp_path / "eval" / "results.md").exists()


def test_slakh_folders_that_are_not_tracks_are_left_out_and_a_track_without_metadata_named(
        tmp_path, capsys, monkeypatch):
    root = slakh_root(tmp_path / "slakh")
    (root / "validation" / ".ipynb_checkpoints").mkdir()
    (root / "validation" / "notes").mkdir()
    calls = fake_scoring(monkeypatch)
    assert run(root, "slakh", tmp_path / "eval", "--oracle", "mix") == 0
    assert [name for name, _ in calls] == ["Track01501", "Track01502"]
    (root / "validation" / "Track01503").mkdir()  # a track whose metadata is lost is still reported
    assert run(root, "slakh", tmp_path / "eval", "--oracle", "mix") == 1
    [line] = error_lines(capsys.readouterr().err)
    assert "Track01503" in line and "metadata.yaml" in line


def test_targets_are_spelt_as_training_spells_them(roots, tmp_path, monkeypatch):
    root, _ = roots
    calls = fake_scoring(monkeypatch)
    assert run(root, "slakh", tmp_path / "eval", "--oracle", "irm2", "--targets", "Guitar", "BASS") == 0
    assert [sorted(refs) for _, refs in calls] == [["bass", "guitar"]] * 2


# ---------------------------------------------------------------- MoisesDB


def test_moisesdb_references_as_training_groups_them(roots):
    _, root = roots
    [track] = ev.moisesdb_tracks(str(root), split=None, targets=["vocals", "other"], names=["track-03"])
    folder = root / "moisesdb_v0.1" / "track-03"
    assert (track.name, track.path) == ("track-03", str(folder))
    assert torch.equal(track.references["other"], total(moises_files(folder, "guitar", "piano", "other")))
    assert torch.equal(track.references["vocals"], total(moises_files(folder, "vocals")))
    assert len(moises_files(folder, "vocals")) == 2
    assert torch.equal(track.mixture, total(moises_files(folder, *MOISES_STEMS)))
    assert list(track.sources) == ["vocals", "drums", "bass", "other"]
    [track] = ev.moisesdb_tracks(str(root), split=None, stem_grouping="all", names=["track-03"])
    assert list(track.sources) == ["vocals", "drums", "bass", "other", "guitar", "piano"]
    assert torch.equal(track.references["other"], read(moises_files(folder, "other")[0]))
    assert torch.equal(track.references["guitar"], total(moises_files(folder, "guitar")))
    # The validation tracks, summed as training's validation set sums them.
    targets = ["vocals", "bass", "drums", "other"]
    tracks = list(ev.moisesdb_tracks(str(root), valid_tracks=3, targets=targets))
    valid = data.MoisesDBDataset(root, "valid", targets, valid_tracks=3, seq_duration=None, random_chunks=False,
                                 sample_rate=RATE, nb_channels=2)
    assert [t.name for t in tracks] == [t.path.name for t in valid.tracks] and len(tracks) == 3
    for i, track in enumerate(tracks):
        x, y = valid[i]
        assert torch.equal(x, track.mixture)
        assert all(torch.equal(y[k], track.references[t]) for k, t in enumerate(targets))


@pytest.mark.parametrize("options, expected", [
    ([], 1), (["--valid-tracks", "3"], 3), (["--split", "valid", "--valid-tracks", "3"], 3),
    (["--split", "train", "--valid-tracks", "3"], -5), (["--all-tracks"], 8),
])
def test_moisesdb_scores_the_validation_tracks_of_training_split(roots, tmp_path, monkeypatch, options, expected):
    _, root = roots
    calls = fake_scoring(monkeypatch)
    assert run(root, "moisesdb", tmp_path / "eval", "--oracle", "mix", *options) == 0
    by_hash = sorted(MOISES_IDS, key=lambda i: hashlib.sha1(i.encode()).hexdigest())
    wanted = sorted(by_hash[:expected] if expected > 0 else by_hash[expected:])  # -5: the last five
    assert sorted(name for name, _ in calls) == wanted
    if "--all-tracks" not in options:  # the split umx-train makes with the same --valid-tracks
        split = "train" if "train" in options else "valid"
        n = int(options[options.index("--valid-tracks") + 1]) if "--valid-tracks" in options else None
        trained = data.MoisesDBDataset(root, split, "vocals", valid_tracks=n, seq_duration=None, sample_rate=RATE,
                                       nb_channels=2)
        assert sorted(name for name, _ in calls) == sorted(t.path.name for t in trained.tracks)


def test_moisesdb_another_stem_grouping_scores_the_tracks_again(roots, tmp_path, monkeypatch):
    _, root = roots
    calls = fake_scoring(monkeypatch)
    evaldir = tmp_path / "eval"
    assert run(root, "moisesdb", evaldir, "--oracle", "mix", "--tracks", "track-00", "--all-tracks") == 0
    assert run(root, "moisesdb", evaldir, "--oracle", "mix", "--tracks", "track-00", "--all-tracks") == 0
    assert len(calls) == 1  # the same settings: kept
    assert sorted(calls[0][1]) == ["bass", "drums", "other", "vocals"]
    assert run(root, "moisesdb", evaldir, "--oracle", "mix", "--tracks", "track-00", "--all-tracks",
               "--stem-grouping", "all") == 0
    assert len(calls) == 2 and sorted(calls[1][1]) == ["bass", "drums", "guitar", "other", "piano", "vocals"]
    folder = root / "moisesdb_v0.1" / "track-00"
    assert np.array_equal(calls[1][1]["other"], read(moises_files(folder, "other")[0]).numpy().T)
    record = json.loads((evaldir / "MIX" / "track-00.json").read_text())
    assert record["settings"]["stem_grouping"] == "all"


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("layout, options, says", [
    ("slakh", ["--root", "{empty}"], "{empty}: not a Slakh2100 folder: validation/ is missing; expected"),
    ("slakh", ["--split", "test", "--root", "{moises}"], "{moises}: not a Slakh2100 folder: test/ is missing"),
    ("moisesdb", ["--root", "{empty}"], "{empty}: not a MoisesDB folder: expected <root>/<provider>/<track_id>"),
    ("moisesdb", ["--root", "{slakh}"], "{slakh}: not a MoisesDB folder"),
    ("slakh", ["--targets", "vocals", "bass"], "{slakh}/validation: no track holds a 'vocals' stem; the stems found "
                                               "are bass, drums, guitar, strings_continued; score the others alone "
                                               "with --targets bass"),
    ("slakh", ["--targets", "guitar", "--tracks", "Track01502"], "{slakh}/validation: no chosen track holds a "
                                                                 "'guitar' stem"),
    ("moisesdb", ["--targets", "guitar"], "{moises} (the 1 validation track(s) of its split): no track holds a "
                                          "'guitar' stem; the stems found are bass, drums, other, vocals; with "
                                          "--stem-grouping four the stems are vocals, bass, drums, other"),
    ("slakh", ["--tracks", "Track00001"], "--tracks Track00001: no such track in {slakh}/validation"),
    ("moisesdb", ["--tracks", "track-00"], "--tracks track-00: no such track in {moises} (the 1 validation"),
    ("slakh", ["--subset", "test", "--split", "valid"], "--subset test --split valid: they name different Slakh2100 "
                                                        "folders"),
    ("slakh", ["--subset", "omitted"], "--subset omitted: Slakh2100's folders are train, validation and test"),
    ("slakh", ["--is-wav"], "--is-wav is for --layout musdb"),
    ("slakh", ["--residual", "rest"], "--residual rest: with an oracle, name the targets it is the rest of"),
    ("moisesdb", ["--valid-tracks", "8"], "--valid-tracks 8: give from 1 to 7"),
    ("moisesdb", ["--valid-tracks", "0"], "--valid-tracks 0: give at least 1"),
    ("moisesdb", ["--all-tracks", "--valid-tracks", "2"], "--all-tracks scores every track, whatever the split: drop "
                                                          "--valid-tracks"),
    ("moisesdb", ["--split", "test"], "--split test: MoisesDB has no test split"),
    ("moisesdb", ["--subset", "test"], "--subset test: MoisesDB has no subsets"),
    ("folder", ["--stem-grouping", "all"], "--stem-grouping works with --layout moisesdb; drop it"),
    ("musdb", ["--all-tracks"], "--all-tracks works with --layout moisesdb; drop it"),
])
def test_bad_roots_and_options_are_one_line(roots, tmp_path, capsys, monkeypatch, layout, options, says):
    slakh, moises = roots
    (tmp_path / "empty").mkdir()
    places = {"{empty}": str(tmp_path / "empty"), "{slakh}": str(slakh), "{moises}": str(moises)}
    calls = fake_scoring(monkeypatch)
    argv = ["--layout", layout, "--root", str(slakh if layout == "slakh" else moises), "--oracle", "mix",
            "--evaldir", str(tmp_path / "eval"), *options]  # a --root in the options comes last: it counts
    for key, value in places.items():
        argv, says = [a.replace(key, value) for a in argv], says.replace(key, value)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("umx-evaluate: error: " + says), err
    assert not calls
