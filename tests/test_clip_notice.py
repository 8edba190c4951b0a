"""``--clip rescale`` (the default) says when it turns a track's stems down.

A clipped or loud master gives stems that add up to more than full scale; rescaling keeps them
summing to the input but makes every stem quieter than the input, which went unsaid.
"""
import json
import logging
import subprocess
import sys

import numpy as np
import soundfile as sf

from helpers import music_like
from openunmix_like.stems import separate_file
from openunmix_like.writer import StemWriter

RATE = 44100


def clipped_master(path, seconds=4.0):
    x = music_like(seconds, RATE, 2, 1)
    sf.write(path, np.clip(x / np.abs(x).max() * 1.5, -1, 1).T, RATE)  # 3.5 dB into the clip
    return path


def umx_separate(*args, cwd):
    return subprocess.run([sys.executable, "-m", "openunmix_like.cli.separate", *map(str, args), "--quiet"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_rescaled_db_is_the_gain_applied_and_zero_when_nothing_peaks(tmp_path):
    import torch

    for clip, peak, expected in (("rescale", 2.0, 6.0206), ("rescale", 0.9, 0.0), ("clamp", 2.0, 0.0)):
        with StemWriter({"a": tmp_path / clip / f"{peak}.wav"}, RATE, 1, bits=32, clip=clip) as writer:
            writer.write({"a": torch.full((1, 100), peak)})
            assert round(writer.rescaled_db, 4) == expected
            writer.finish()
        written = sf.read(tmp_path / clip / f"{peak}.wav")[0]
        assert np.allclose(written, min(peak, 1.0) if clip == "clamp" else peak * 10 ** (-expected / 20))


def test_a_clipped_master_is_reported_once_with_the_gain_and_what_to_do(tmp_path):
    song = clipped_master(tmp_path / "loud.wav")
    done = umx_separate(song, "--outdir", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "over full scale" in line]
    assert len(lines) == 1, done.stderr
    db = float(lines[0].split("turned down ")[1].split(" dB")[0])
    assert lines[0].startswith(f"{song}: the stems peaked") and "--clip clamp keeps their level" in lines[0]
    stems = [sf.read(p)[0] for p in sorted((tmp_path / "out" / "loud").glob("*.wav"))]
    assert db > 0 and max(np.abs(s).max() for s in stems) <= 1.0
    clamped = umx_separate(song, "--outdir", tmp_path / "clamped", "--clip", "clamp", cwd=tmp_path)
    assert clamped.returncode == 0 and "over full scale" not in clamped.stderr
    kept = [sf.read(p)[0] for p in sorted((tmp_path / "clamped" / "loud").glob("*.wav"))]
    # Clamping kept the level (cutting only the few samples beyond full scale); rescaling turned it down db.
    lower = 10 * np.log10(sum(np.sum(k ** 2) for k in kept) / sum(np.sum(s ** 2) for s in stems))
    assert abs(lower - db) < 0.1, (lower, db)


def test_a_track_within_full_scale_says_nothing_and_python_callers_get_a_warning(tmp_path, caplog):
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, (music_like(3.0, RATE, 2, 2) * 0.1).T, RATE)
    done = umx_separate(quiet, "--outdir", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0 and "over full scale" not in done.stderr
    song = clipped_master(tmp_path / "loud.wav", seconds=3.0)
    with caplog.at_level(logging.WARNING, logger="openunmix_like"):
        separate_file(song, tmp_path / "py", targets=["vocals", "drums", "bass", "other"])
    said = [r.getMessage() for r in caplog.records if "over full scale" in r.getMessage()]
    assert len(said) == 1 and 'clip="clamp" keeps their level' in said[0]


def test_the_ray_engine_says_it_as_the_local_engine_does_and_records_the_gain(tmp_path, model_dir, ray_cluster,
                                                                               capsys, caplog):
    from openunmix_like.catalogue import records
    from openunmix_like.cli.separate import main

    songs = tmp_path / "in"
    songs.mkdir()
    loud = clipped_master(songs / "loud.wav", seconds=2.0)
    sf.write(songs / "quiet.wav", (music_like(2.0, RATE, 2, 2) * 0.1).T, RATE)
    common = [str(songs), "--model", str(model_dir()), "--niter", "0", "--quiet"]
    with caplog.at_level(logging.WARNING, logger="openunmix_like"):  # in this process: the CLI's log lines
        assert main(common + ["--outdir", str(tmp_path / "local")]) == 0
    local = [r.getMessage() for r in caplog.records if "over full scale" in r.getMessage()]
    assert main(common + ["--engine", "ray", "--outdir", str(tmp_path / "ray")]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "over full scale" in line]
    assert len(local) == 1 and said == local, (local, said)
    assert said[0].startswith(f"{loud}: the stems peaked") and "--clip clamp keeps their level" in said[0]
    db = float(said[0].split("turned down ")[1].split(" dB")[0])
    for name, expected in (("loud", db), ("quiet", 0.0)):
        record = json.loads((tmp_path / "ray" / name / records.DONE_NAME).read_text())
        assert round(record["rescaled_db"], 1) == expected, name
    assert main(common + ["--engine", "ray", "--outdir", str(tmp_path / "ray")]) == 0  # a rerun skips both
    assert "over full scale" not in capsys.readouterr().err
