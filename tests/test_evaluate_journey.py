"""umx-evaluate as a researcher runs it: a track folder missing a source file, MUSDB18-HQ records kept apart."""
import argparse

import pytest

from helpers import fake_scoring, make_tracks
from openunmix_like import evaluate as ev
from openunmix_like.cli import evaluate as cli
from openunmix_like.errors import OpenUnmixLikeError

pytest.importorskip("museval")


def test_a_track_folder_missing_a_source_file_is_named_and_the_others_are_scored(tmp_path, capsys, monkeypatch):
    root = make_tracks(tmp_path / "data", n=3, seconds=1.0)
    (root / "song1" / "bass.wav").unlink()  # the mixture (sum of the rest) and the scores would leave bass out
    calls = fake_scoring(monkeypatch)
    evaldir = tmp_path / "eval"
    assert cli.main(["--root", str(root), "--layout", "folder", "--oracle", "irm2", "--nfft", "512", "--nhop", "128",
                     "--evaldir", str(evaldir), "--quiet"]) == 1
    assert [name for name, _ in calls] == ["song0", "song2"]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("umx-evaluate: error:")]
    assert lines == [f"umx-evaluate: error: {root / 'song1' / 'bass.wav'}: missing (the other track folders have "
                     "it); add it, all zeros if the track has no bass, or leave the track out with --tracks"]
    assert (evaldir / "results.md").exists() and not (evaldir / "IRM2" / "song1.json").exists()
    with pytest.raises(OpenUnmixLikeError, match="bass.wav: missing"):  # the Python API raises
        list(ev.folder_tracks(str(root)))
    assert [t.name for t in ev.folder_tracks(str(root), names=["song0", "song2"])] == ["song0", "song2"]


def test_musdb18_hq_scores_are_not_taken_for_musdb18_ones():
    def settings(*extra):
        args = cli.build_parser().parse_args(["--root", "musdb", "--oracle", "irm2", *extra])
        return cli.oracle_method(args, "irm2").identity["settings"]

    assert settings()["oracle"] == "irm2" and "is_wav" not in settings()  # records made before stay valid
    assert settings("--is-wav") != settings()
    args = argparse.Namespace(layout="folder", is_wav=False, stem_grouping=None)
    assert cli.data_settings(args) == {}
