"""umx-evaluate: BSSEval scores, oracles, resuming, and the fast training metrics."""
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import MUSDB_7S, make_models, make_tracks, music_like, require, track_folders
from openunmix_like import evaluate as ev
from openunmix_like.cli import evaluate as cli
from openunmix_like.errors import OpenUnmixLikeError
from openunmix_like.metrics import sdr_mdx, si_sdr
from openunmix_like.modeldir import AudioSettings, save_target
from openunmix_like.transforms import ISTFT, STFT

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


@pytest.mark.parametrize("method", ["irm1", "irm2", "mwf"])
def test_an_oracle_of_some_targets_shares_the_mixture_with_every_source(tmp_path, method):
    """irm2 of vocals alone is the vocals' share of a mixture of four sources, not the whole mixture."""
    track = next(ev.folder_tracks(make_tracks(tmp_path, n=1)))
    every = ev.oracle(method, track, list(track.references), 512, 128)
    alone = ev.oracle(method, track, ["vocals"], 512, 128)
    assert torch.allclose(alone["vocals"], every["vocals"], atol=1e-6)
    assert (alone["vocals"] - track.mixture).abs().max() > 0.1 * track.mixture.abs().max()


def test_a_musdb_oracle_of_some_targets_shares_the_mixture_with_every_source():
    root = require(MUSDB_7S).parent
    [track] = ev.musdb_tracks(str(root), "train", split="valid", names=["Actions - One Minute Smile"])
    every = ev.oracle("irm2", track, ["vocals", "drums", "bass", "other"])
    alone = ev.oracle("irm2", track, ["vocals"])
    assert torch.allclose(alone["vocals"], every["vocals"], atol=1e-6)
    # As SiSEC 2018's reference code defines it: the vocals' mask is their power over the four sources'
    # (not over vocals and accompaniment), and accompaniment is the sum of the other three estimates.
    stft, istft = STFT(4096, 1024), ISTFT(4096, 1024)
    power = {k: stft(track.sources[k].double()).abs() ** 2 for k in ("vocals", "drums", "bass", "other")}
    mask = power["vocals"] / (1e-10 + sum(power.values()))
    expected = istft(mask * stft(track.mixture.double()), length=track.mixture.shape[-1]).float()
    pair = ev.oracle("irm2", track, ["vocals", "accompaniment"])
    assert torch.allclose(pair["vocals"], expected, atol=1e-5)
    assert torch.allclose(pair["accompaniment"], every["drums"] + every["bass"] + every["other"], atol=1e-5)


@pytest.mark.parametrize("method", ["irm1", "ibm2", "mwf"])
def test_overlapping_targets_count_no_source_twice(method):
    root = require(MUSDB_7S).parent
    [track] = ev.musdb_tracks(str(root), "train", split="valid", names=["Actions - One Minute Smile"])
    every = ev.oracle(method, track, ["vocals", "drums", "bass", "other"])
    both = ev.oracle(method, track, ["drums", "accompaniment"])
    assert torch.allclose(both["drums"], every["drums"], atol=1e-5)
    assert torch.allclose(both["accompaniment"], every["drums"] + every["bass"] + every["other"], atol=1e-5)


# ---------------------------------------------------------------- defects found by the audit


def _cli(root, evaldir, *extra):
    return cli.main(["--root", str(root), "--layout", "folder", "--nfft", "512", "--nhop", "128",
                     "--evaldir", str(evaldir), "--quiet", *extra])


def _error_lines(text):
    return [line for line in text.splitlines() if line.startswith("umx-evaluate: error: ")]


@pytest.mark.slow
def test_a_silent_reference_is_scored_nan_and_the_others_as_museval_scores_them(tmp_path, capsys):
    import museval

    root = make_tracks(tmp_path / "data", n=1, seconds=1.0)
    sf.write(root / "song0" / "bass.wav", np.zeros((RATE, 2), dtype=np.float32), RATE)  # a song without bass
    track = next(ev.folder_tracks(root))
    refs = {t: r.numpy().T for t, r in track.references.items()}
    irm2 = {t: e.numpy().T for t, e in ev.oracle("irm2", track, list(refs), 512, 128).items()}
    record = ev.score_track(track.name, refs, irm2, track.rate)  # museval alone refuses a silent reference
    scores = {t["name"]: t["frames"] for t in record["targets"]}
    assert record["silent_references"] == ["bass"]
    assert all(math.isnan(f["metrics"][m]) for f in scores["bass"] for m in ev.METRICS) and len(scores["bass"]) == 1
    assert math.isnan(record["fast_metrics"]["bass"]["SDR_mdx"])
    # The others are what museval gives when the silent source is left out: SDR to its 5 decimals, SIR to
    # 1e-3 dB (on these pure tones with linked channels museval's own SIR moves by 1e-4 dB for an input
    # perturbed by one part in 1e15).
    present = [t for t in refs if t != "bass"]
    sdr, isr, sir, sar = museval.evaluate(np.stack([refs[t] for t in present]), np.stack([irm2[t] for t in present]),
                                          win=RATE, hop=RATE)
    for j, target in enumerate(present):
        assert [f["metrics"]["SDR"] for f in scores[target]] == pytest.approx(sdr[j], abs=1e-5)
        assert [f["metrics"]["SIR"] for f in scores[target]] == pytest.approx(sir[j], abs=1e-3)
    # The command scores the track and its table skips the silent target.
    assert _cli(root, tmp_path / "eval", "--oracle", "irm2") == 0
    table = ev.aggregate(cli.load_records(tmp_path / "eval" / "IRM2"))
    assert table["bass"]["SDR"]["tracks"] == 0 and table["vocals"]["SDR"]["tracks"] == 1
    assert "| vocals |" in capsys.readouterr().out


def _fake_scoring(monkeypatch):
    """Replace BSSEval in the command by a record of one 1 dB window per target; returns the tracks scored."""
    scored = []

    def score(name, refs, ests, rate):
        scored.append(name)
        return {"targets": [{"name": t, "frames": [{"time": 0.0, "duration": 1.0, "metrics": dict.fromkeys(
            ev.METRICS, 1.0)}]} for t in ests]}

    monkeypatch.setattr(cli, "score_track", score)
    monkeypatch.setattr(cli, "boxplot", lambda *args: False)
    return scored


def test_a_rerun_with_another_model_or_settings_scores_the_tracks_again(tmp_path, capsys, monkeypatch):
    root = make_tracks(tmp_path / "data", n=1, seconds=1.0)
    for folder, seed in ((tmp_path / "model", 0), (tmp_path / "other" / "model", 1)):  # the same folder name
        for target, m in make_models(("vocals", "drums"), n_fft=512, hidden_size=4, seed=seed).items():
            save_target(folder, target, m, AudioSettings(RATE, 512, 128, 2))
    scored = _fake_scoring(monkeypatch)
    evaldir = tmp_path / "eval"
    path = evaldir / "model" / "song0.json"

    def run(model, *extra):
        scored.clear()
        assert _cli(root, evaldir, "--model", str(model), "--niter", "0", *extra) == 0
        return len(scored), json.loads(path.read_text())

    n, first = run(tmp_path / "model")
    assert n == 1 and len(first["model_sha256"]) == 64 and first["settings"]["niter"] == 0
    assert run(tmp_path / "model")[0] == 0  # the same model and settings: kept
    n, record = run(tmp_path / "model", "--targets", "vocals")
    assert n == 1 and [t["name"] for t in record["targets"]] == ["vocals"]
    n, record = run(tmp_path / "other" / "model", "--targets", "vocals")
    assert n == 1 and record["model_sha256"] != first["model_sha256"]
    assert "another model or other settings" in capsys.readouterr().err
    # A record of an older version, which says nothing of what made it, is not trusted either.
    path.write_text(json.dumps({k: v for k, v in record.items() if k not in ("model_sha256", "settings")}))
    assert run(tmp_path / "other" / "model", "--targets", "vocals")[0] == 1
    # The oracles' settings count as well (the mixture's STFT settings do not: it has none).
    for oracle, nfft, expected in (("irm2", "512", 1), ("irm2", "512", 0), ("irm2", "256", 1), ("mix", "512", 1),
                                   ("mix", "256", 0)):
        scored.clear()
        assert cli.main(["--root", str(root), "--layout", "folder", "--oracle", oracle, "--nfft", nfft, "--nhop",
                         "64", "--evaldir", str(evaldir), "--quiet"]) == 0
        assert len(scored) == expected, (oracle, nfft)


def _with_bad_track(tmp_path, change):
    """song0, and a track "bad" (scored first) like it but for ``change(folder)``."""
    root = make_tracks(tmp_path / "data", n=1, seconds=1.0)
    bad = root / "bad"
    bad.mkdir()
    for path in (root / "song0").iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    change(bad)
    return root


def _resave(path, rate=RATE, channels=None, seconds=None):
    audio, old_rate = sf.read(path, dtype="float32")
    if seconds is not None:
        audio = audio[:int(seconds * old_rate)]
    if channels == 1:
        audio = audio[:, 0]
    sf.write(path, audio, rate)


@pytest.mark.parametrize("case, named, says", [
    ("rate", "bass.wav", "8000 Hz, the other files of track bad have 16000 Hz; resample it to 16000 Hz"),
    ("mono", "bass.wav", "1 channel(s), the other files of track bad have 2 channel(s)"),
    ("short mixture", "mixture.wav", "8000 samples, the other files of track bad have 16000 samples"),
    ("corrupt", "drums.wav", "not a readable audio file"),
])
def test_a_bad_track_is_one_line_naming_its_file_and_the_batch_goes_on(tmp_path, capsys, monkeypatch, case, named,
                                                                       says):
    def change(folder):
        if case == "rate":
            _resave(folder / "bass.wav", rate=8000)  # the same samples, said to be at another rate
        elif case == "mono":
            _resave(folder / "bass.wav", channels=1)
        elif case == "short mixture":
            (folder / "mixture.wav").write_bytes((folder / "vocals.wav").read_bytes())
            _resave(folder / "mixture.wav", seconds=0.5)
        else:
            (folder / "drums.wav").write_bytes(b"RIFF garbage")

    root = _with_bad_track(tmp_path, change)
    scored = _fake_scoring(monkeypatch)
    evaldir = tmp_path / "eval"
    assert _cli(root, evaldir, "--oracle", "irm2") == 1
    assert scored == ["song0"] and (evaldir / "IRM2" / "song0.json").exists() and (evaldir / "results.md").exists()
    [line] = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"umx-evaluate: error: {root / 'bad' / named}: ") and says in line
    with pytest.raises(OpenUnmixLikeError, match=named):  # the Python API raises
        list(ev.folder_tracks(root))


def test_a_damaged_result_file_is_scored_again_and_an_unexpected_error_stops_one_track(tmp_path, capsys,
                                                                                       monkeypatch):
    root = make_tracks(tmp_path / "data", n=2, seconds=1.0)
    scored = _fake_scoring(monkeypatch)
    evaldir = tmp_path / "eval"
    assert _cli(root, evaldir, "--oracle", "irm2") == 0
    (evaldir / "IRM2" / "song0.json").write_text('{"targets": [')  # cut off
    (evaldir / "IRM2" / "song1.json").write_text('[1, 2]')  # not a record
    scored.clear()
    capsys.readouterr()
    assert _cli(root, evaldir, "--oracle", "irm2") == 0
    assert scored == ["song0", "song1"] and len(cli.load_records(evaldir / "IRM2")) == 2
    err = capsys.readouterr().err
    assert "IRM2/song0.json: unreadable or not a track result; the track is scored again" in err
    assert not _error_lines(err)
    # A failure that is nobody's fault in particular (here one made up) is one line too; the batch goes on.
    real = cli.score_track
    monkeypatch.setattr(cli, "score_track", lambda name, *a: 1 / 0 if name == "song0" else real(name, *a))
    assert _cli(root, tmp_path / "eval2", "--oracle", "irm2") == 1
    [line] = _error_lines(capsys.readouterr().err)
    assert line == (f"umx-evaluate: error: {root / 'song0'} (IRM2): unexpected ZeroDivisionError: division by zero "
                    "(run with --verbose for details)")
    assert sorted(cli.load_records(tmp_path / "eval2" / "IRM2")) == ["song1"]


@pytest.mark.parametrize("options, says", [
    (["--evaldir", "{file}"], "--evaldir {file}: is a file, not a folder"),
    (["--outdir", "{file}/estimates"], "--outdir {file}/estimates: cannot write there"),
    (["--nfft", "0"], "--nfft 0 --nhop 1024: give an STFT length of 2 or more"),
    (["--nhop", "-1"], "--nfft 4096 --nhop -1: give"),
    (["--nfft", "256", "--nhop", "512"], "--nfft 256 --nhop 512: give"),
    (["--cores", "0"], "--cores 0: give 1 or more"),
    (["--layout", "musdb", "--split", "valid"], "--split valid: splits exist only in the train subset; add --subset "
                                                "train"),
])
def test_bad_options_are_one_line_before_any_track_is_read(tmp_path, capsys, monkeypatch, options, says):
    afile = tmp_path / "afile"
    afile.write_text("")
    for reader in ("folder_tracks", "musdb_tracks"):  # umx-evaluate imports them from evaluate as it reads
        monkeypatch.setattr(ev, reader, lambda *a, **k: pytest.fail("a track was read"))
    options = [o.replace("{file}", str(afile)) for o in options]
    code = cli.main(["--root", str(tmp_path), "--layout", "folder", "--oracle", "irm2",
                     "--evaldir", str(tmp_path / "eval"), *options])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("umx-evaluate: error: " + says.replace("{file}", str(afile)))


@pytest.mark.parametrize("how", ["KeyboardInterrupt", "inside museval"])
def test_ctrl_c_keeps_the_results_written_and_exits_130(tmp_path, capsys, monkeypatch, how):
    root = make_tracks(tmp_path / "data", n=3, seconds=1.0)
    scored = _fake_scoring(monkeypatch)
    fake = cli.score_track

    def interrupted(name, *args):
        if name != "song1":
            return fake(name, *args)
        if how == "KeyboardInterrupt":
            raise KeyboardInterrupt
        try:  # museval's except clause names np.linalg.linalg, gone in numpy 2: Ctrl+C becomes an AttributeError
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise AttributeError("module 'numpy.linalg' has no attribute 'linalg'")

    monkeypatch.setattr(cli, "score_track", interrupted)
    evaldir = tmp_path / "eval"
    assert _cli(root, evaldir, "--oracle", "irm2") == 130
    assert scored == ["song0"]  # song2 not started
    assert [p.name for p in (evaldir / "IRM2").iterdir()] == ["song0.json"]  # no partial file
    assert json.loads((evaldir / "IRM2" / "song0.json").read_text())["settings"]["oracle"] == "irm2"
    err = capsys.readouterr().err
    assert err == (f"umx-evaluate: error: interrupted: 1 track results written to {evaldir} in this run are kept; "
                   "run the same command again to score the other tracks\n")


def test_a_run_that_scores_nothing_leaves_no_new_folder(tmp_path, capsys):
    evaldir, outdir = tmp_path / "results" / "eval", tmp_path / "estimates"
    assert cli.main(["--root", str(tmp_path / "nothing"), "--layout", "folder", "--oracle", "mix",
                     "--evaldir", str(evaldir), "--outdir", str(outdir), "--quiet"]) == 1
    assert "no track folders" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # both made for the run, removed with it


def test_a_musdb_track_that_cannot_be_decoded_is_named():
    class Undecodable:  # what musdb gives for a .stem.mp4 that ffmpeg cannot read
        name, path = "A - B", "/data/musdb18/test/A - B.stem.mp4"

        @property
        def stems(self):
            raise RuntimeError("ffmpeg error:\n invalid data found")

    expected = r"^/data/musdb18/test/A - B.stem.mp4: cannot decode it \(RuntimeError: ffmpeg error: invalid data"
    with pytest.raises(OpenUnmixLikeError, match=expected):
        ev._musdb_track(Undecodable(), mixture_from_sources=False)


def test_sources_a_few_samples_apart_are_cut_to_the_shortest(tmp_path):
    root = make_tracks(tmp_path / "data", n=1, seconds=1.0)
    folder = next(p for p in root.iterdir() if p.is_dir())
    audio, rate = sf.read(folder / "bass.wav", dtype="float32")
    sf.write(folder / "bass.wav", audio[:-100], rate)  # an export that rounded its length differently
    [track] = list(ev.folder_tracks(root))
    assert {a.shape[-1] for a in [track.mixture, *track.references.values()]} == {audio.shape[0] - 100}
