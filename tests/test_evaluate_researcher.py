"""A researcher's journey through umx-evaluate and umx-compare: defects found by following docs/evaluation.md."""
import json

from openunmix_like import evaluate as ev
from openunmix_like.cli import compare


def record(sdr, model_sha256="a" * 64, **settings):
    """A umx-evaluate track record of one target scoring ``sdr`` in each of 3 windows, with what made it."""
    frames = [{"time": float(i), "duration": 1.0, "metrics": {m: sdr for m in ev.METRICS}} for i in range(3)]
    return {"targets": [{"name": "vocals", "frames": frames}], "model_sha256": model_sha256,
            "settings": {"niter": 1, **settings}}


def write(folder, records):
    folder.mkdir(parents=True)
    for name, r in records.items():
        (folder / f"{name}.json").write_text(json.dumps(r))
    return str(folder)


def test_compare_names_a_folder_whose_records_come_from_several_models(tmp_path, capsys):
    # umx-evaluate --tracks with a retrained model rescored two tracks and left the others' older records on
    # disk (docs/evaluation.md): that folder's side of the comparison is two models, not one.
    new = write(tmp_path / "eval" / "my-model", {"t0": record(5.0, "b" * 64), "t1": record(5.0, "b" * 64),
                                                 "t2": record(4.0), "t3": record(4.0)})
    old = write(tmp_path / "old" / "my-model", {f"t{k}": record(3.0, "c" * 64) for k in range(4)})
    assert compare.main([new, old]) == 0
    out = capsys.readouterr().out
    assert f"Scored by 2 different models in {new}" in out
    assert "bbbbbbbbbbbb on 2 tracks" in out and "aaaaaaaaaaaa on 2" in out
    assert old not in out.split("Scored by", 1)[1]  # the old side has one model: not named
    # One model a side, an oracle's null hash included: nothing said.
    assert compare.main([old, write(tmp_path / "mix", {f"t{k}": record(1.0, None) for k in range(4)})]) == 0
    assert "different models" not in capsys.readouterr().out


def test_compare_names_settings_that_differ_within_both_sides(tmp_path):
    # Both folders mix --niter 0 and 1 records: equal as "mixed", yet every difference mixes two settings.
    new = {f"t{k}": record(5.0, niter=k % 2) for k in range(4)}
    old = {f"t{k}": record(3.0, "c" * 64, niter=k % 2) for k in range(4)}
    result = ev.paired_difference(new, old)
    assert result["settings"] == {"niter": ("mixed", "mixed")}
    assert "Evaluated with different settings (new / old): niter mixed / mixed" in ev.paired_markdown(
        result, "new", "old")


def test_a_track_folder_of_any_audio_format_is_scored_and_a_source_given_twice_is_named(tmp_path, caplog):
    import shutil
    import subprocess

    import numpy as np
    import pytest
    import soundfile as sf

    from openunmix_like.errors import OpenUnmixLikeError

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    rate = 44100
    t = np.arange(2 * rate) / rate
    for name, freq in (("vocals", 440.0), ("drums", 220.0)):
        (tmp_path / "wav").mkdir(exist_ok=True)
        sf.write(tmp_path / "wav" / f"{name}.wav", np.stack([np.sin(2 * np.pi * freq * t)] * 2, 1) * 0.3, rate)
        (tmp_path / "root" / "mp3song").mkdir(parents=True, exist_ok=True)
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(tmp_path / "wav" / f"{name}.wav"),
                        str(tmp_path / "root" / "mp3song" / f"{name}.mp3")], check=True)
    (tmp_path / "root" / "notes").mkdir()  # no audio: said, not scored
    # Only wav and flac were read: the mp3 track was skipped without a word.
    tracks = list(ev.folder_tracks(str(tmp_path / "root")))
    assert [t.name for t in tracks] == ["mp3song"] and sorted(tracks[0].references) == ["drums", "vocals"]
    assert "notes: no source files (wav, flac, ogg" in caplog.text
    shutil.copy(tmp_path / "wav" / "vocals.wav", tmp_path / "root" / "mp3song")
    with pytest.raises(OpenUnmixLikeError, match=r"vocals\.mp3 and .*vocals\.wav: one vocals file in a track "
                                                 r"folder, not 2; keep one$"):
        ev.folder_track(tmp_path / "root" / "mp3song")
