"""umx-evaluate: BSSEval scores, oracles, resuming, and the fast training metrics."""
import json
import math

import numpy as np
import pytest
import torch

from helpers import MUSDB_7S, make_models, make_tracks, music_like, require, track_folders
from openunmix_like import evaluate as ev
from openunmix_like.cli import evaluate as cli
from openunmix_like.metrics import sdr_mdx, si_sdr
from openunmix_like.modeldir import AudioSettings, save_target

pytest.importorskip("museval")
RATE = 16000  # as helpers.make_tracks writes


def test_fast_metrics_match_their_formulas():
    s = torch.from_numpy(music_like(1.0, seed=1))
    noise = 0.1 * torch.randn_like(s)
    energy, error = float(s.double().square().sum()), float(noise.double().square().sum())
    expected = 10 * math.log10((energy + 1e-7) / (error + 1e-7))
    assert sdr_mdx(s, s + noise) == pytest.approx(expected, abs=1e-6)
    # SI-SDR ignores the estimate's scale; SDR does not.
    assert si_sdr(s, 3 * (s + noise)) == pytest.approx(si_sdr(s, s + noise), abs=1e-6)
    assert sdr_mdx(s, 3 * (s + noise)) < sdr_mdx(s, s + noise)
    flat_s, flat_n = s.double().flatten(), noise.double().flatten()
    alpha = ((flat_s + flat_n) @ flat_s) / (flat_s @ flat_s)
    target = alpha * flat_s
    ref = 10 * math.log10(float(target.square().sum()) / float((target - flat_s - flat_n).square().sum()))
    assert si_sdr(s, s + noise) == pytest.approx(ref, abs=1e-6)
    assert sdr_mdx(s, s) > 100


@pytest.mark.slow
def test_perfect_estimates_score_far_above_oracles(tmp_path):
    track = next(ev.folder_tracks(make_tracks(tmp_path, n=1)))
    refs = {t: r.numpy().T for t, r in track.references.items()}
    # Exact copies give infinite SDR (museval stores NaN); a -100 dB perturbation stays finite.
    rng = np.random.default_rng(1)
    nearly = {t: r + 1e-5 * rng.standard_normal(r.shape).astype(np.float32) for t, r in refs.items()}
    perfect = ev.track_medians(ev.score_track(track.name, refs, nearly, track.rate))
    irm2 = ev.oracle("irm2", track, list(refs), 512, 128)
    oracle_scores = ev.track_medians(ev.score_track(track.name, refs, {t: e.numpy().T for t, e in irm2.items()},
                                                    track.rate))
    for target in refs:
        assert perfect[target]["SDR"] > oracle_scores[target]["SDR"] + 30


@pytest.mark.slow
def test_a_silent_estimate_is_scored_far_below_the_others(tmp_path, caplog):
    track = next(ev.folder_tracks(make_tracks(tmp_path, n=1)))
    refs = {t: r.numpy().T for t, r in track.references.items()}
    irm2 = {t: e.numpy().T for t, e in ev.oracle("irm2", track, list(refs), 512, 128).items()}
    silent_target = next(iter(refs))
    estimates = dict(irm2, **{silent_target: np.zeros_like(irm2[silent_target])})
    record = ev.score_track(track.name, refs, estimates, track.rate)  # museval alone refuses all zeros
    scores = ev.track_medians(record)
    oracle_scores = ev.track_medians(ev.score_track(track.name, refs, irm2, track.rate))
    assert record["silent_estimates"] == [silent_target] and silent_target in caplog.text
    assert abs(scores[silent_target]["SDR"]) < 0.5 < oracle_scores[silent_target]["SDR"] - 10
    assert abs(record["fast_metrics"][silent_target]["SDR_mdx"]) < 1e-6
    others = [t for t in refs if t != silent_target]
    assert all(math.isfinite(scores[t]["SDR"]) for t in others)


@pytest.mark.slow
def test_oracles_order_and_cli_tables(tmp_path, capsys):
    root = make_tracks(tmp_path / "data")
    evaldir = tmp_path / "eval"
    code = cli.main(["--root", str(root), "--layout", "folder", "--oracle", "irm2", "--with-oracles", "irm1", "ibm2",
                     "mwf", "mix", "--nfft", "512", "--nhop", "128", "--evaldir", str(evaldir), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "**IRM2**" in out and "| MIX |" in out
    tables = {m: ev.aggregate(cli.load_records(evaldir / m)) for m in ("IRM2", "IRM1", "IBM2", "MWF", "MIX")}
    for target in ("vocals", "drums", "bass"):
        sdr = {m: t[target]["SDR"]["median"] for m, t in tables.items()}
        assert sdr["IRM2"] > sdr["MIX"] + 5 and sdr["MWF"] > sdr["MIX"] + 5 and sdr["IRM1"] > sdr["MIX"]
    assert (evaldir / "results.md").exists() and (evaldir / "sdr-boxplot.png").stat().st_size > 0
    rows = (evaldir / "results.csv").read_text().splitlines()
    assert rows[0] == "method,target,metric,median,mean,tracks" and len(rows) == 1 + 5 * 3 * 4


@pytest.mark.slow
def test_model_beside_oracles_with_closed_fraction_and_resume(tmp_path, capsys, monkeypatch):
    root = make_tracks(tmp_path / "data")
    model = tmp_path / "model"
    for target, m in make_models(("vocals", "drums", "bass"), n_fft=512).items():
        save_target(model, target, m, AudioSettings(RATE, 512, 128, 2))
    evaldir = tmp_path / "eval"
    args = ["--root", str(root), "--layout", "folder", "--model", str(model), "--with-oracles", "irm2", "mix",
            "--nfft", "512", "--nhop", "128", "--evaldir", str(evaldir), "--niter", "0", "--quiet",
            "--outdir", str(tmp_path / "estimates")]
    assert cli.main(args + ["--tracks", "song0", "song1"]) == 0
    assert sorted(p.name for p in (evaldir / "model").iterdir()) == ["song0.json", "song1.json"]
    assert (tmp_path / "estimates" / "model" / "song0" / "vocals.wav").exists()
    capsys.readouterr()
    scored = []
    real = cli.score_track
    monkeypatch.setattr(cli, "score_track", lambda name, *a: scored.append(name) or real(name, *a))
    assert cli.main(args) == 0  # "interrupted" after two tracks: only the third is scored now
    assert scored == ["song2", "song2", "song2"]  # model, IRM2, MIX
    out = capsys.readouterr().out
    assert "Share of the SDR distance from the mixture to IRM2 that model closes" in out
    assert len(cli.load_records(evaldir / "model")) == 3


@pytest.mark.slow
def test_parallel_scoring_matches_serial(tmp_path):
    root = make_tracks(tmp_path / "data", n=2)
    for cores, name in ((1, "serial"), (2, "parallel")):
        assert cli.main(["--root", str(root), "--layout", "folder", "--oracle", "irm1", "--nfft", "512",
                         "--nhop", "128", "--evaldir", str(tmp_path / name), "--cores", str(cores), "--quiet"]) == 0
    a = json.loads((tmp_path / "serial" / "IRM1" / "song1.json").read_text())
    b = json.loads((tmp_path / "parallel" / "IRM1" / "song1.json").read_text())
    assert a["targets"] == b["targets"]


@pytest.mark.slow
def test_train_reports_fast_metric_every_n_epochs(tmp_path):
    from openunmix_like.cli.train import main as train_main

    root = track_folders(tmp_path / "d")
    out = tmp_path / "m"
    assert train_main(["--dataset", "trackfolder_fix", "--root", str(root), "--target-file", "vocals.wav",
                       "--interferer-files", "drums.wav", "--output", str(out), "--epochs", "3", "--eval-every", "2",
                       "--hidden-size", "8", "--nfft", "512", "--nhop", "128", "--batch-size", "2", "--seq-dur", "0.5",
                       "--sample-rate", "22050", "--quiet"]) == 0
    record = json.loads((out / "vocals.json").read_text())
    sdr = record["valid_sdr_mdx_history"]
    assert sdr[0] is None and isinstance(sdr[1], float) and sdr[2] is None
    assert isinstance(record["valid_si_sdr_history"][1], float)


@pytest.mark.slow
@pytest.mark.musdb
def test_musdb_mixture_from_sources():
    root = require(MUSDB_7S).parent
    [stored] = ev.musdb_tracks(str(root), "train", split="valid", names=["Actions - One Minute Smile"])
    [summed] = ev.musdb_tracks(str(root), "train", split="valid", names=["Actions - One Minute Smile"],
                               mixture_from_sources=True)
    sources = sum(summed.references[k] for k in ("vocals", "drums", "bass", "other"))
    assert torch.allclose(summed.mixture, sources, atol=1e-6)
    assert not torch.allclose(stored.mixture, sources, atol=1e-4)  # the stored mixture is encoded on its own
