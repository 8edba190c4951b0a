"""umx-train on data, options and output folders that must fail cleanly or lose nothing.

Every case here was once a defect: a model replaced or a folder wrecked by a later
run, a resume that picked another run's checkpoint, tracebacks for bad data or
numbers, reasons left unsaid, a cache that outlived its source, validation items
that changed every epoch.
"""
import hashlib
import logging
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

import openunmix_like.training.factory as factory
from helpers import MUSDB_7S, require, track_folders, write
from openunmix_like import data
from openunmix_like.cli.train import main as train_main
from openunmix_like.training import TrainConfig
from openunmix_like.training.factory import build_datasets
from openunmix_like.training.loop import loader

TINY = ["--hidden-size", "8", "--nfft", "512", "--nhop", "128", "--batch-size", "2", "--seq-dur", "0.5",
        "--sample-rate", "22050", "--quiet", "--device", "cpu"]


def train(*args, tiny=TINY) -> int:
    return train_main([str(a) for a in args] + tiny)


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("umx-train: error: ")]
    assert len(lines) == 1, lines
    return lines[0]


def digests(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def no_data_read(monkeypatch):
    monkeypatch.setattr(factory, "build_datasets", lambda *a, **k: pytest.fail("read the data before refusing"))


# ---------------------------------------------------------------- the output folder


def test_a_model_with_other_settings_is_refused_before_the_folder_is_touched(tmp_path, monkeypatch, capsys):
    root, out = track_folders(tmp_path / "data"), tmp_path / "model"
    assert train("--dataset", "trackfolder_fix", "--root", root, "--target", "vocals", "--output", out,
                 "--epochs", "1") == 0
    before = digests(out)
    no_data_read(monkeypatch)
    assert train("--dataset", "trackfolder_fix", "--root", root, "--target", "drums", "--output", out,
                 "--epochs", "1", tiny=[*TINY, "--nfft", "1024", "--nhop", "256"]) == 1
    line = error_line(capsys)
    assert "holds vocals with" in line and "use another --output" in line
    assert digests(out) == before


def test_a_fresh_run_does_not_replace_a_model_silently_and_force_starts_over(tmp_path, caplog):
    root, out = track_folders(tmp_path / "data"), tmp_path / "model"
    run = ["--dataset", "trackfolder_fix", "--root", root, "--target", "vocals", "--output", out]
    assert train(*run, "--epochs", "3", "--samples-per-track", "3", "--ckpt-every", "2") == 0
    assert list((out / "checkpoints").glob("vocals-step*.chkpnt"))
    before = digests(out)
    assert train(*run, "--epochs", "1") == 1
    assert digests(out) == before  # refused: continue with --resume auto, or --force
    assert train(*run, "--epochs", "1", "--force") == 0
    assert not list((out / "checkpoints").glob("vocals-step*.chkpnt"))  # the replaced run's are gone
    assert json_of(out / "vocals.json")["epochs_trained"] == 1
    with caplog.at_level(logging.INFO):
        assert train_main([str(a) for a in [*run, "--epochs", "2", "--resume", "auto"]]
                          + [a for a in TINY if a != "--quiet"]) == 0
    assert f"resuming from {out / 'vocals.chkpnt'} at epoch 2" in caplog.text


def json_of(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def test_several_targets_refuse_one_checkpoint_file(tmp_path, capsys):
    root, out = track_folders(tmp_path / "data"), tmp_path / "model"
    assert train("--dataset", "trackfolder_fix", "--root", root, "--targets", "vocals", "drums", "--output", out,
                 "--epochs", "1") == 0
    assert train("--dataset", "trackfolder_fix", "--root", root, "--targets", "vocals", "drums", "--output",
                 tmp_path / "again", "--checkpoint", out / "vocals.chkpnt", "--epochs", "2") == 1
    assert "with --targets, give the folder holding each target's <target>.chkpnt" in error_line(capsys)
    assert train("--dataset", "trackfolder_fix", "--root", root, "--targets", "vocals", "drums", "--output",
                 tmp_path / "again", "--checkpoint", out, "--epochs", "2") == 0
    history = json_of(tmp_path / "again" / "drums.json")["train_loss_history"]
    assert history[0] == json_of(out / "drums.json")["train_loss_history"][0]  # drums resumed from drums


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_an_unwritable_output_is_refused_before_any_data_is_read(tmp_path, monkeypatch, capsys, kind):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    out = blocker if kind == "a file" else blocker / "out"
    no_data_read(monkeypatch)
    assert train("--dataset", "trackfolder_fix", "--root", tmp_path, "--target", "vocals", "--output", out) == 1
    line = error_line(capsys)
    said = "is a file, not a folder; give a folder" if kind == "a file" else "cannot write there ("
    assert line.startswith(f"umx-train: error: --output {out}: {said}"), line


def test_a_run_that_stops_before_writing_leaves_no_new_output_folder(tmp_path, capsys):
    out = tmp_path / "models" / "new"
    assert train("--dataset", "trackfolder_fix", "--root", tmp_path / "nothing", "--target", "vocals",
                 "--output", out) == 1
    assert "trackfolder_fix needs" in error_line(capsys)
    assert not (tmp_path / "models").exists()  # made for the run, removed with it
    (tmp_path / "kept").mkdir()  # a folder that was there stays
    assert train("--dataset", "trackfolder_fix", "--root", tmp_path / "nothing", "--target", "vocals",
                 "--output", tmp_path / "kept") == 1
    assert (tmp_path / "kept").is_dir()


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("options,message", [
    (["--nb-channels", "3"], "--nb-channels 3: give 1 (mono) or 2 (stereo)"),
    (["--nhop", "0"], "--nfft 512 --nhop 0"),
    (["--hidden-size", "0"], "--hidden-size 0: give a width of at least 1"),
    (["--sample-rate", "0"], "--sample-rate 0: give a rate in Hz"),
    (["--seq-dur", "0"], "--seq-dur 0 trains on whole tracks, which differ in length and cannot share a batch"),
    (["--lr", "0"], "--lr 0: give a learning rate above 0"),
])
def test_numbers_no_model_could_use_are_one_line_before_any_data_is_read(tmp_path, monkeypatch, capsys, options,
                                                                         message):
    no_data_read(monkeypatch)
    assert train("--dataset", "trackfolder_fix", "--root", tmp_path, "--target", "vocals", "--output",
                 tmp_path / "out", tiny=[*TINY, *options]) == 1
    assert message in error_line(capsys)


def test_the_reference_audio_backend_option_is_accepted(tmp_path):
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    assert train("--dataset", "trackfolder_fix", "--root", root, "--target", "vocals", "--output", tmp_path / "m",
                 "--epochs", "1", "--audio-backend", "soundfile") == 0


# ---------------------------------------------------------------- folder layouts


def test_a_source_the_first_track_lacks_is_not_dropped_from_every_mixture(tmp_path, caplog):
    root = track_folders(tmp_path / "data")
    (root / "train" / "t0" / "bass.wav").unlink()
    target, interferers = data.default_track_files(root, "vocals")
    assert (target, interferers) == ("vocals.wav", ["bass.wav", "drums.wav", "other.wav"])
    with caplog.at_level(logging.WARNING):
        train_set, _ = build_datasets(TrainConfig(dataset="trackfolder_fix", root=str(root), seq_dur=0.5,
                                                  sample_rate=22050))
    assert len(train_set.tracks) == 2 and "t0: missing bass.wav" in caplog.text


def test_a_file_few_track_folders_have_is_reported_and_left_out(tmp_path, caplog):
    root = track_folders(tmp_path / "data")
    write(root / "train" / "t1" / "piano.wav", 2.0, seed=9)
    with caplog.at_level(logging.WARNING):
        assert data.default_track_files(root, "vocals")[1] == ["bass.wav", "drums.wav", "other.wav"]
    assert "piano.wav in fewer than half of the 3 track folders" in caplog.text


def test_sourcefolder_says_why_no_file_is_usable(tmp_path, capsys):
    for split in ("train", "valid"):
        for name in ("speech", "noise"):
            write(tmp_path / "data" / split / name / "a.wav", 0.3, seed=1)
    assert train("--dataset", "sourcefolder", "--root", tmp_path / "data", "--target", "speech", "--output",
                 tmp_path / "m") == 1
    line = error_line(capsys)
    assert "no usable *.wav files" in line and "a.wav: shorter than --seq-dur 0.5 s" in line
    assert "lower --seq-dur" in line


def test_trackfolder_says_why_no_track_is_usable(tmp_path, capsys):
    root = track_folders(tmp_path / "data", seconds=1.0)
    assert train("--dataset", "trackfolder_fix", "--root", root, "--target", "vocals", "--output", tmp_path / "m",
                 tiny=[*TINY, "--seq-dur", "5"]) == 1
    line = error_line(capsys)
    assert "no usable track folder" in line and "shorter than --seq-dur 5" in line


def test_sourcefolder_validation_items_are_the_same_every_epoch(tmp_path):
    for split in ("train", "valid"):
        for name in ("speech", "noise"):
            for k in range(4):
                write(tmp_path / "data" / split / name / f"{k}.wav", 2.0, seed=k + 10 * len(name))
    cfg = TrainConfig(dataset="sourcefolder", root=str(tmp_path / "data"), target="speech", seq_dur=0.5,
                      sample_rate=22050, nb_valid_samples=4)
    _, valid_set = build_datasets(cfg)
    ctx = SimpleNamespace(cfg=SimpleNamespace(seed=42, batch_size=2, nb_workers=0), device=torch.device("cpu"))
    epochs = [[x for x, _ in loader(ctx, valid_set, epoch, train=False)] for epoch in (1, 2, 3)]
    for batches in epochs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(epochs[0], batches))


def test_preloading_an_unreadable_file_is_one_line_naming_it(tmp_path, capsys):
    root = track_folders(tmp_path / "data")
    bad = root / "train" / "t0" / "vocals.wav"
    audio, rate = sf.read(bad)
    audio[100, 0] = np.nan
    sf.write(bad, audio, rate, subtype="FLOAT")
    assert train("--dataset", "trackfolder_fix", "--root", root, "--target", "vocals", "--output", tmp_path / "m",
                 "--preload", "on") == 1
    line = error_line(capsys)
    assert f"{bad}: NaN or infinite samples" in line and "--preload off" in line


# ---------------------------------------------------------------- MUSDB18


def musdb_root(tmp_path: Path, names) -> Path:
    root = tmp_path / "musdb" / "train"
    root.mkdir(parents=True)
    for name in names:
        (root / f"{name}.stem.mp4").symlink_to(require(MUSDB_7S) / f"{name}.stem.mp4")
    return root.parent


TRACKS = ["ANiMAL - Clinic A", "ANiMAL - Easy Tiger", "A Classic Education - NightOwl"]


def test_a_corrupt_stem_file_is_one_line_naming_it(tmp_path, capsys):
    root = musdb_root(tmp_path, TRACKS[:2])
    (root / "train" / "Broken - Song.stem.mp4").write_bytes(os.urandom(5000))
    assert train("--dataset", "musdb", "--root", root, "--target", "vocals", "--output", tmp_path / "m",
                 "--samples-per-track", "1") == 1
    line = error_line(capsys)
    assert "Broken - Song.stem.mp4: not a readable .stem.mp4; re-download it" in line


def test_musdb_without_ffmpeg_says_to_install_it_not_that_the_files_are_bad(tmp_path, capsys, monkeypatch):
    import shutil

    root = musdb_root(tmp_path, TRACKS[:2])
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert train("--dataset", "musdb", "--root", root, "--target", "vocals", "--output", tmp_path / "m",
                 "--samples-per-track", "1") == 1
    assert error_line(capsys) == ("umx-train: error: ffmpeg is needed to decode MUSDB18's .stem.mp4 files; "
                                  "install it (e.g. apt-get install ffmpeg)")
    assert not (tmp_path / "m").exists()


def test_a_stem_file_short_of_streams_is_left_out_by_name_and_leaves_no_partial_file(tmp_path, caplog):
    root = musdb_root(tmp_path, TRACKS[:2])
    bad = root / "train" / "Short - Streams.stem.mp4"  # ffprobe reads it; it has two streams, not five
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=f=440:d=2", "-f", "lavfi",
                    "-i", "sine=f=220:d=2", "-map", "0", "-map", "1", "-c:a", "aac", "-f", "mp4", str(bad)],
                   check=True)
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING):
        dataset = data.MUSDBDataset(root, "vocals", "train", cache_dir=cache, seq_duration=1.0, sample_rate=44100,
                                    nb_channels=2, samples_per_track=1)
    assert sorted(path.name for path in cache.iterdir()) == sorted([*TRACKS[:2], "Short - Streams"])
    assert len(dataset.tracks) == 2 and list((cache / "Short - Streams").iterdir()) == []
    assert f"{bad}: cannot decode" in caplog.text and "1 file(s) or track(s) left out" in caplog.text


def test_musdb_with_every_track_too_short_says_so(tmp_path, capsys):
    root = musdb_root(tmp_path, TRACKS[:2])
    assert train("--dataset", "musdb", "--root", root, "--target", "vocals", "--output", tmp_path / "m",
                 "--samples-per-track", "1", tiny=[*TINY, "--seq-dur", "30"]) == 1
    line = error_line(capsys)
    assert "no usable MUSDB tracks in the train split" in line and "shorter than --seq-dur 30" in line


def test_a_stem_file_replaced_under_its_name_is_decoded_again(tmp_path):
    root = musdb_root(tmp_path, TRACKS[:1])
    cache = tmp_path / "cache"

    def vocals():
        dataset = data.MUSDBDataset(root, split="train", seq_duration=1.0, sample_rate=44100, nb_channels=2,
                                    cache_dir=cache, samples_per_track=1)
        return sf.read(dataset.tracks[0]["vocals"].path)[0]

    first = vocals()
    link = root / "train" / f"{TRACKS[0]}.stem.mp4"
    link.unlink()
    link.symlink_to(MUSDB_7S / f"{TRACKS[1]}.stem.mp4")
    second = vocals()
    expected = data.MUSDBDataset(musdb_root(tmp_path / "other", TRACKS[1:2]), split="train", seq_duration=1.0,
                                 sample_rate=44100, nb_channels=2, cache_dir=tmp_path / "cache2", samples_per_track=1)
    assert not np.array_equal(first, second)
    assert np.array_equal(second, sf.read(expected.tracks[0]["vocals"].path)[0])


def hq_root(tmp_path: Path) -> Path:
    for k, name in enumerate(["Some Artist - First", "Some Artist - Second"]):
        for j, source in enumerate(["mixture", "vocals", "drums", "bass", "other"]):
            write(tmp_path / "hq" / "train" / name / f"{source}.wav", 1.5, seed=10 * k + j, rate=44100)
    return tmp_path / "hq"


def test_musdb18_hq_track_missing_a_source_is_left_out(tmp_path, caplog):
    root = hq_root(tmp_path)
    (root / "train" / "Some Artist - First" / "bass.wav").unlink()
    with caplog.at_level(logging.WARNING):
        dataset = data.MUSDBDataset(root, split="train", is_wav=True, seq_duration=0.5, sample_rate=44100,
                                    nb_channels=2, samples_per_track=1)
    assert len(dataset.tracks) == 1 and "Some Artist - First: missing bass.wav" in caplog.text


def test_musdb18_hq_without_is_wav_is_told_to_add_it(tmp_path, capsys):
    assert train("--dataset", "musdb", "--root", hq_root(tmp_path), "--target", "vocals", "--output",
                 tmp_path / "m") == 1
    assert "this looks like MUSDB18-HQ: add --is-wav" in error_line(capsys)


# ---------------------------------------------------------------- interruption

SLOW_TRAINING = ("import sys, time\n"
                 "from openunmix_like.training import loop\n"
                 "from openunmix_like.cli.train import main\n"
                 "save, step = loop.save_epoch, loop.train_batch\n"
                 "def saved(*a, **k):\n"
                 "    save(*a, **k)\n"
                 "    print('saved', flush=True)\n"
                 "def slow(*a, **k):\n"
                 "    time.sleep(0.3)\n"
                 "    return step(*a, **k)\n"
                 "loop.save_epoch, loop.train_batch = saved, slow\n"
                 "sys.exit(main(sys.argv[1:]))\n")


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])  # Ctrl+C, a kill or a job scheduler's stop
def test_ctrl_c_is_one_line_and_the_run_resumes(tmp_path, signum):
    import signal
    import subprocess
    import sys

    root, out = track_folders(tmp_path / "data"), tmp_path / "model"
    run = ["--dataset", "trackfolder_fix", "--root", root, "--target", "vocals", "--output", out,
           "--samples-per-track", "8"]
    child = subprocess.Popen([sys.executable, "-c", SLOW_TRAINING, *map(str, run), "--epochs", "3", *TINY],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "saved"  # epoch 1 is on disk; epoch 2 takes over 3 s
        child.send_signal(getattr(signal, signum))
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 130 and "Traceback" not in err, err
    assert f"umx-train: interrupted; the checkpoints in {out} are complete" in err
    assert train(*run, "--epochs", "2", "--resume", "auto") == 0
    assert json_of(out / "vocals.json")["epochs_trained"] == 2
