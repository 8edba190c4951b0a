"""Paths that no other test ran (found by measuring branch coverage), each once a defect a user could meet."""
import pytest

from helpers import MUSDB_7S, make_models, make_tracks, require, track_folders
from openunmix_like.cli import evaluate as evaluate_cli
from openunmix_like.cli.train import main as train_main
from openunmix_like.modeldir import AudioSettings, save_target

TINY_TRAIN = ["--hidden-size", "8", "--nfft", "512", "--nhop", "128", "--batch-size", "2", "--seq-dur", "0.5",
              "--sample-rate", "22050", "--quiet", "--device", "cpu"]


def error_lines(text: str, prog: str) -> list:
    return [line for line in text.splitlines() if line.startswith(f"{prog}: error: ")]


# ---------------------------------------------------------------- umx-train


def test_resuming_from_a_models_weights_instead_of_a_checkpoint_is_one_line(tmp_path, capsys):
    # A model folder's weights look like a checkpoint to torch.load (a dict of tensors); resuming
    # from one used to end in a KeyError traceback.
    weights = tmp_path / "model"
    for target, model in make_models(("vocals",), n_fft=512, hidden_size=8).items():
        save_target(weights, target, model, AudioSettings(22050, 512, 128, 2))
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    for given in (weights / "vocals.pth", weights / "vocals.safetensors"):
        code = train_main([str(a) for a in ("--dataset", "trackfolder_fix", "--root", root, "--target", "vocals",
                                            "--output", tmp_path / "out", "--epochs", "1", "--checkpoint", given,
                                            *TINY_TRAIN)])
        err = capsys.readouterr().err
        assert code == 1 and "Traceback" not in err, err
        [line] = error_lines(err, "umx-train")
        assert line.startswith(f"umx-train: error: {given}: not a training checkpoint"), line
        assert "--model" in line


def test_a_run_that_cannot_resume_leaves_no_new_output_folder(tmp_path, capsys):
    # The TensorBoard writer used to be made before the checkpoint was read: a run refused at that point
    # left a new --output holding only tensorboard/<target>/events.*, where a failed run should leave none.
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    out = tmp_path / "models" / "new"
    code = train_main([str(a) for a in ("--dataset", "trackfolder_fix", "--root", root, "--target", "vocals",
                                        "--output", out, "--epochs", "1", "--checkpoint", tmp_path / "no.chkpnt",
                                        *TINY_TRAIN)])
    [line] = error_lines(capsys.readouterr().err, "umx-train")
    assert code == 1 and "no checkpoint file" in line, line
    assert not (tmp_path / "models").exists()


def test_optimiser_and_schedule_numbers_no_run_could_use_are_one_line_before_any_data_is_read(tmp_path, monkeypatch,
                                                                                              capsys):
    # Torch's own messages ("Factor should be < 1.0.", "Invalid weight_decay value: -1.0", for a NaN --bandwidth
    # "max_bin must be in 1..257, got 0") used to come after the data was read and named no option; a NaN
    # --clip-grad was taken for "no clipping" without a word.
    import openunmix_like.training.factory as factory

    def no_data(*args, **kwargs):
        raise AssertionError("read the data before refusing")

    monkeypatch.setattr(factory, "build_datasets", no_data)
    root = track_folders(tmp_path / "data", tracks=1, seconds=1.0)
    for option, value, said in (("--lr-decay-gamma", "1.5", "--lr-decay-gamma 1.5: give the factor"),
                                ("--lr-decay-gamma", "0", "--lr-decay-gamma 0: give the factor"),
                                ("--weight-decay", "-1", "--weight-decay -1: give an L2 weight decay of 0 or more"),
                                ("--weight-decay", "nan", "--weight-decay nan: give an L2 weight decay"),
                                ("--lr-decay-patience", "-2", "--lr-decay-patience -2: give a number of epochs"),
                                ("--patience", "-1", "--patience -1: give a number of epochs"),
                                ("--clip-grad", "nan", "--clip-grad, --ckpt-every, --max-minutes and --stop-after"),
                                ("--max-minutes", "nan", "--clip-grad, --ckpt-every, --max-minutes and --stop-after"),
                                ("--bandwidth", "nan", "--bandwidth nan: give a frequency in Hz above 0")):
        code = train_main([str(a) for a in ("--dataset", "trackfolder_fix", "--root", root, "--target", "vocals",
                                            "--output", tmp_path / "out", option, value, *TINY_TRAIN)])
        [line] = error_lines(capsys.readouterr().err, "umx-train")
        assert code == 1 and line.startswith(f"umx-train: error: {said}"), (option, value, line)
        assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- umx-evaluate


def test_evaluating_tracks_named_with_a_typo_is_refused_before_scoring(tmp_path, capsys):
    # --layout folder used to leave out a --tracks name it did not find without a word (status 0 with the
    # other tracks; "no track was scored" when none was found), where the other layouts refuse it.
    root = make_tracks(tmp_path / "data", n=2, seconds=1.0)
    evaldir = tmp_path / "eval"
    args = ["--root", str(root), "--layout", "folder", "--oracle", "mix", "--evaldir", str(evaldir), "--quiet"]
    assert evaluate_cli.main([*args, "--tracks", "song0", "sogn1"]) == 1
    [line] = error_lines(capsys.readouterr().err, "umx-evaluate")
    assert line == f"umx-evaluate: error: --tracks sogn1: no such track in {root}; give track names from there"
    assert not evaldir.exists()  # nothing scored, no folder left
    assert evaluate_cli.main([*args, "--tracks", "song1"]) == 0
    assert sorted(p.name for p in (evaldir / "MIX").iterdir()) == ["song1.json"]


def test_evaluating_musdb_tracks_named_with_a_typo_is_refused_before_any_is_decoded():
    from openunmix_like import evaluate as ev
    from openunmix_like.errors import OpenUnmixLikeError

    pytest.importorskip("musdb")
    root = require(MUSDB_7S).parent
    with pytest.raises(OpenUnmixLikeError, match=r"^--tracks Actions - One Minute: no such track in .*, subset "
                                                 r"'train', split 'valid'; give track names from there$"):
        next(ev.musdb_tracks(str(root), "train", split="valid", names=["Actions - One Minute Smile",
                                                                       "Actions - One Minute"]))


# ---------------------------------------------------------------- umx-separate


def test_a_pattern_reaching_into_the_output_folder_takes_no_earlier_stems_for_songs(tmp_path, model_dir,
                                                                                       wav_file, monkeypatch):
    # A folder search leaves --outdir out; a recursive pattern over the same tree used to take the stems an
    # earlier run left there for songs, and separated them into stems of stems.
    from openunmix_like.cli.separate import main as separate_main

    model = model_dir()
    wav_file("music/song.wav", seconds=1.0)
    monkeypatch.chdir(tmp_path)
    args = ["music/**/*.wav", "--model", str(model), "--outdir", "music/stems", "--quiet"]
    assert separate_main(args) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "music").rglob("*.wav"))
    assert len(written) == 5  # the song and its four stems
    assert separate_main([*args, "--targets", "vocals", "--skip-existing"]) == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "music").rglob("*.wav")) == written


def test_a_weight_file_given_as_the_model_names_the_folder_to_give(tmp_path, model_dir, wav_file, capsys):
    # "<file>: model folder not found" used to say of a file that exists that it was not there.
    from openunmix_like.cli.separate import main as separate_main

    weights = model_dir() / "vocals.safetensors"
    song = wav_file("song.wav", seconds=0.5)
    assert separate_main([str(song), "--model", str(weights), "--outdir", str(tmp_path / "out"), "--quiet"]) == 1
    [line] = error_lines(capsys.readouterr().err, "umx-separate")
    assert line == (f"umx-separate: error: {weights}: is a file, and a model is a folder; give the folder that "
                    f"holds it ({weights.parent}), with its other targets and separator.json")
    assert not (tmp_path / "out").exists()


def test_naming_one_file_twice_in_two_spellings_separates_it_once(tmp_path, model_dir, wav_file, monkeypatch,
                                                                   capsys):
    # song.wav and its absolute path used to be two inputs writing the same stems: the second was refused
    # with advice ({folder} in --filename) that would have separated the one song twice; status 1.
    from openunmix_like.cli.separate import main as separate_main

    model = model_dir()
    song = wav_file("in/song.wav", seconds=1.0)
    monkeypatch.chdir(tmp_path / "in")
    assert separate_main(["song.wav", str(song), ".", "--model", str(model), "--outdir", str(tmp_path / "out"),
                          "--filename", "{folder}/{track}/{target}.{ext}"]) == 0
    captured = capsys.readouterr()
    assert "error" not in captured.err
    assert captured.out.splitlines()[0].startswith("song.wav -> ")  # the first spelling is the one kept
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.wav")) == \
        [f"song/{t}.wav" for t in ("bass", "drums", "other", "vocals")]


# ---------------------------------------------------------------- umx-compare


def _record(sdr: float) -> dict:
    metrics = {"SDR": sdr, "SIR": 10.0, "SAR": 10.0, "ISR": 10.0}
    return {"targets": [{"name": "vocals", "frames": [{"time": 0.0, "duration": 1.0, "metrics": metrics}]}]}


def test_comparing_results_of_one_track_claims_no_winner(tmp_path, capsys):
    # With one track in common every bootstrap draw is that track: the interval has width 0 and used to
    # "exclude 0", so one track's difference was reported as "new is better".
    import json

    from openunmix_like.cli.compare import main as compare_main

    for name, sdrs in (("new", {"a": 5.0, "b": 6.0}), ("old", {"a": 4.0, "c": 3.0})):
        (tmp_path / name).mkdir()
        for track, sdr in sdrs.items():
            (tmp_path / name / f"{track}.json").write_text(json.dumps(_record(sdr)))
    assert compare_main([str(tmp_path / "new"), str(tmp_path / "old")]) == 0
    out = capsys.readouterr().out
    assert "+1.000 to +1.000 dB" in out and "better on 1, worse on 0 of 1 tracks" in out
    assert "is better" not in out and "no difference shown: one track tells nothing" in out
    (tmp_path / "old" / "b.json").write_text(json.dumps(_record(4.5)))  # two tracks: a verdict again
    assert compare_main([str(tmp_path / "new"), str(tmp_path / "old")]) == 0
    assert "new is better: the interval excludes 0" in capsys.readouterr().out


# ---------------------------------------------------------------- umx-web


def test_a_web_limit_given_as_inf_or_nan_is_one_line_before_the_server_starts(tmp_path, capsys):
    # --max-upload-mb inf (meant as "no limit") used to stop umx-web with an OverflowError traceback, nan with a
    # ValueError; --max-minutes inf started a server whose /api/limits answered 500 (inf is no JSON number).
    pytest.importorskip("uvicorn")
    from openunmix_like.cli.web import main as web_main

    for option in ("--max-upload-mb", "--max-minutes", "--keep-mb"):
        for value in ("inf", "nan"):
            assert web_main([option, value, "--jobs-dir", str(tmp_path / "jobs"), "--port", "0"]) == 1
            [line] = error_lines(capsys.readouterr().err, "umx-web")
            assert line.startswith(f"umx-web: error: {option} {value}: give a number above 0"), line
    assert not (tmp_path / "jobs").exists()
