"""umx-compare: paired track-by-track comparison of two umx-evaluate result folders."""
import json
import math

import numpy as np
import pytest

from helpers import make_tracks
from openunmix_like import evaluate as ev
from openunmix_like.cli import compare
from openunmix_like.cli import evaluate as evaluate_cli
from openunmix_like.errors import OpenUnmixLikeError


def record(scores):
    """A umx-evaluate track record: target -> list of per-window SDRs (other metrics set equal)."""
    return {"targets": [{"name": name, "frames": [
        {"time": float(i), "duration": 1.0, "metrics": {m: v for m in ev.METRICS}} for i, v in enumerate(values)]}
        for name, values in scores.items()]}


def write(folder, records):
    folder.mkdir(parents=True)
    for name, r in records.items():
        (folder / f"{name}.json").write_text(json.dumps(r))
    return folder


def pair(shifts):
    """Old and new records of len(shifts) tracks; the new vocals gain shifts[k] on track k, drums 0."""
    rng = np.random.default_rng(1)
    old, new = {}, {}
    for k, shift in enumerate(shifts):
        vocals, drums = rng.normal(5, 3, 9), rng.normal(3, 2, 9)
        old[f"t{k}"] = record({"vocals": list(vocals), "drums": list(drums)})
        new[f"t{k}"] = record({"vocals": list(vocals + shift), "drums": list(drums)})
    return new, old


def test_paired_difference_recovers_a_known_change():
    new, old = pair([0.4, 0.2, 0.6, 0.2])
    r = ev.paired_difference(new, old)
    assert r["targets"] == pytest.approx({"vocals": 0.35, "drums": 0.0})
    assert r["mean"] == pytest.approx(0.175)  # mean over targets, then over tracks
    low, high = r["interval"]
    assert 0.1 <= low < 0.175 < high <= 0.3  # bootstrap means lie between the smallest and largest track
    assert (r["better"], r["worse"], r["tracks"]) == (4, 0, 4)
    assert "is better: the interval excludes 0" in ev.paired_markdown(r, "new", "old")
    # The same scores against themselves: no difference.
    same = ev.paired_difference(old, old)
    assert same["mean"] == 0 and same["interval"] == (0, 0) and same["better"] == same["worse"] == 0
    assert "no difference shown" in ev.paired_markdown(same, "a", "b")


def test_a_change_that_goes_both_ways_is_not_called_a_difference():
    new, old = pair([1.0, -1.2, 0.8, -0.9, 0.5, -0.4])
    r = ev.paired_difference(new, old)
    assert r["interval"][0] < 0 < r["interval"][1] and (r["better"], r["worse"]) == (3, 3)
    few = [ev.paired_difference(new, old, resamples=30, seed=seed)["interval"] for seed in (0, 3, 0)]
    assert few[0] != few[1] and few[0] == few[2]  # the draws follow the seed


def test_only_common_tracks_and_targets_are_compared_and_silent_windows_skipped():
    new, old = pair([0.5, 0.5])
    new["extra"] = record({"vocals": [1.0]})
    old["t1"]["targets"].append({"name": "bass", "frames": [{"metrics": {m: 2.0 for m in ev.METRICS}}]})
    new["t0"]["targets"][0]["frames"][0]["metrics"]["SDR"] = math.nan  # a silent window
    r = ev.paired_difference(new, old)
    assert r["tracks"] == 2 and r["only_new"] == ["extra"] and r["only_old"] == []
    assert set(r["targets"]) == {"vocals", "drums"}
    assert "Not compared, scored only by new: extra." in ev.paired_markdown(r, "new", "old")
    with pytest.raises(OpenUnmixLikeError, match="no track in common"):
        ev.paired_difference({"a": new["t0"]}, {"b": old["t0"]})
    with pytest.raises(OpenUnmixLikeError, match="metric 'PESQ'"):
        ev.paired_difference(new, old, metric="PESQ")


@pytest.mark.slow
def test_cli_compares_umx_evaluate_folders(tmp_path, capsys):
    pytest.importorskip("museval")
    root = make_tracks(tmp_path / "data")
    evaldir = tmp_path / "eval"
    assert evaluate_cli.main(["--root", str(root), "--layout", "folder", "--oracle", "irm2", "--with-oracles",
                              "mix", "--nfft", "512", "--nhop", "128", "--evaldir", str(evaldir), "--quiet"]) == 0
    capsys.readouterr()
    assert compare.main([str(evaldir / "IRM2"), str(evaldir / "MIX")]) == 0
    out = capsys.readouterr().out
    assert "IRM2 is better: the interval excludes 0" in out and "better on 3, worse on 0 of 3 tracks" in out
    row = [line for line in out.splitlines() if line.startswith("| +")][0]
    assert all(float(v) > 5 for v in row.strip("| ").split(" | "))
    # An evaldir stands for its --method folder.
    assert compare.main([str(evaldir), str(evaldir / "MIX"), "--method", "IRM2", "--metric", "SIR"]) == 0
    assert "SIR of" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "empty", "broken", "resamples", "model folder", "list", "no frames",
                                  "seed", "huge resamples"])
def test_cli_errors_are_one_line_naming_the_folder(tmp_path, capsys, case):
    good = write(tmp_path / "good", pair([0.1])[0])
    bad = tmp_path / "bad"
    args = [str(good), str(bad)]
    named = str(bad)
    contents = {"broken": "{not json", "model folder": json.dumps({"nb_bins": 2049, "hidden_size": 512}),
                "list": "[1, 2]", "no frames": json.dumps({"targets": [{"name": "vocals"}]})}
    if case != "missing":
        bad.mkdir()
    if case in contents:  # a umx-evaluate result cut off, a model folder (umx-compare model model2), other JSON
        (bad / "t0.json").write_text(contents[case])
        named = str(bad / "t0.json")
    elif case in ("resamples", "seed", "huge resamples"):
        option, value = {"resamples": ("--resamples", "0"), "seed": ("--seed", "-1"),
                         "huge resamples": ("--resamples", "10000000000000")}[case]
        args = [str(good), str(good), option, value]
        named = f"{option} {value}: "
    assert compare.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("umx-compare: error: ")
    assert named in err


def test_bootstrap_draws_in_blocks_give_the_same_interval_as_one_draw(monkeypatch):
    new, old = pair([1.0, -1.2, 0.8, -0.9, 0.5, -0.4])
    whole = ev.paired_difference(new, old, resamples=1000, seed=4)
    kept = np.array([np.mean([ev.track_medians(new[k])[t]["SDR"] - ev.track_medians(old[k])[t]["SDR"]
                              for t in ("vocals", "drums")]) for k in sorted(new)])
    draws = np.random.default_rng(4).integers(0, kept.size, size=(1000, kept.size))  # the draws as documented
    assert whole["interval"] == pytest.approx(tuple(np.percentile(kept[draws].mean(axis=1), [2.5, 97.5])))
    monkeypatch.setattr(ev, "BOOTSTRAP_BLOCK", 6 * 64)  # blocks of 64 draws: memory bounded, same statistics
    blocks = ev.paired_difference(new, old, resamples=1000, seed=4)
    assert blocks["interval"] == pytest.approx(whole["interval"], abs=0.15) and blocks["mean"] == whole["mean"]


def test_tracks_scored_on_different_lengths_are_named(tmp_path):
    # The same track name scored on a 7-second preview and on the full track: 7 against 20 windows.
    rng = np.random.default_rng(2)
    old = {f"t{k}": record({"vocals": list(rng.normal(5, 1, 20))}) for k in range(4)}
    new = {name: record({"vocals": [v["frames"][i]["metrics"]["SDR"] for v in r["targets"] for i in range(7)]})
           for name, r in old.items()}
    new["t3"] = old["t3"]
    r = ev.paired_difference(new, old)
    assert r["lengths"] == {"t0": (7, 20), "t1": (7, 20), "t2": (7, 20)}
    text = ev.paired_markdown(r, "preview", "full")
    assert "Scored on audio of different lengths (preview / full, in 1 s windows): t0 (7 / 20 s)" in text
    assert "t3" not in text.split("Scored on audio")[1]
    # Records of the same lengths add no such line.
    assert ev.paired_difference(old, old)["lengths"] == {}
    assert "different lengths" not in ev.paired_markdown(ev.paired_difference(old, old), "a", "b")
