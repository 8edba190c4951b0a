"""``openunmix_like.stems.separate_file``: umx-separate's files from Python, with its guarantees."""
import re
import threading

import numpy as np
import pytest
import soundfile as sf

from openunmix_like import AudioError, Separator, separate, separate_file
from openunmix_like.cli.separate import main
from openunmix_like.stems import Cancelled, track_name

TARGETS = ["vocals", "drums", "bass", "other"]


def read(path):
    return sf.read(str(path), dtype="float32", always_2d=True)


def test_the_files_equal_umx_separates_to_the_bit(model_dir, wav_file, tmp_path):
    model, song = model_dir(), wav_file("song.flac", seconds=3.0, rate=48000)
    # Short segments, so that the file goes through several chunks and cross-fades.
    options = dict(segment=1.0, overlap=0.25, ext="flac", bits=24, start=0.3, duration=2.2)
    written = separate_file(song, tmp_path / "py", str(model), **options)
    assert main([str(song), "--model", str(model), "--outdir", str(tmp_path / "cli"), "--quiet", "--segment", "1",
                 "--overlap", "0.25", "--ext", "flac", "--bits", "24", "--start", "0.3", "--duration", "2.2"]) == 0
    assert written == {t: tmp_path / "py" / "song" / f"{t}.flac" for t in TARGETS}
    for target, path in written.items():
        ours, rate = read(path)
        theirs, _ = read(tmp_path / "cli" / "song" / f"{target}.flac")
        assert rate == 48000 and ours.shape == (round(2.2 * 48000), 2)
        assert np.array_equal(ours, theirs), target
        assert sf.info(str(path)).subtype == "PCM_24"


def test_the_stems_are_the_separation_of_the_file(model_dir, wav_file, tmp_path):
    separator = Separator.from_pretrained(str(model_dir()), precision="fp32")
    song = wav_file("song.wav", seconds=2.0)
    written = separate_file(song, tmp_path, separator, ext="wav", bits=32, clip="none", segment=None)
    audio, rate = read(song)
    expected = separate(np.ascontiguousarray(audio.T), rate, model=separator, segment=None)
    for target, path in written.items():
        assert np.allclose(read(path)[0].T, expected[target].numpy(), atol=1e-6), target


def test_templates_aggregates_and_the_model_name(model_dir, wav_file, tmp_path):
    model, song = model_dir(name="my-model"), wav_file("take 1.stem.mp4.wav", seconds=1.0)
    written = separate_file(song, tmp_path, model, filename="{model}/{track}-{target}.{ext}",
                            aggregate={"accompaniment": ["drums", "bass", "other"], "vocals": ["vocals"]})
    assert written == {"accompaniment": tmp_path / "my-model" / "take 1.stem.mp4-accompaniment.wav",
                       "vocals": tmp_path / "my-model" / "take 1.stem.mp4-vocals.wav"}
    assert all(p.is_file() for p in written.values())
    assert track_name("x/Song.STEM.MP4") == "Song" and track_name("a.b.wav") == "a.b"
    bundled = separate_file(song, tmp_path / "b", targets=["bass"], filename="{model}_{target}.{ext}", niter=0)
    assert list(bundled.values()) == [tmp_path / "b" / "default_bass.wav"]


def test_existing_stems_are_kept_unless_overwrite(model_dir, wav_file, tmp_path):
    model, song = model_dir(), wav_file("song.wav", seconds=1.0)
    vocals = tmp_path / "out" / "song" / "vocals.wav"
    vocals.parent.mkdir(parents=True)
    vocals.write_bytes(b"earlier")
    with pytest.raises(AudioError, match=r"vocals\.wav: exists; pass overwrite=True to overwrite it"):
        separate_file(song, tmp_path / "out", model)
    assert vocals.read_bytes() == b"earlier" and sorted(p.name for p in vocals.parent.iterdir()) == ["vocals.wav"]
    separate_file(song, tmp_path / "out", model, overwrite=True)
    assert sf.info(str(vocals)).frames == 44100


def test_an_unreadable_file_names_itself_and_writes_nothing(model_dir, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav file at all")
    with pytest.raises(AudioError, match="bad.wav"):
        separate_file(bad, tmp_path / "out", model_dir())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(ext="ogg"), "ext='ogg': choose from wav, flac, mp3"),
    (dict(ext="mp3", bits=24), "bits=24 is for wav and flac"),
    (dict(mp3_bitrate=128), "mp3_bitrate is for ext='mp3'"),
    (dict(ext="mp3", mp3_bitrate=100), "mp3_bitrate=100: choose from"),
    (dict(ext="flac", bits=32), "ext='flac', bits=32"),
    (dict(start=-1), "start must be"),
    (dict(duration=0), "duration must be"),
    (dict(segment=float("nan")), "segment must be"),
    (dict(filename="{track}.{ext}"), "filename '{track}.{ext}' gives the same file for several targets"),
    (dict(filename="{track.x}/{target}"), "filename '{track.x}/{target}': bad template"),
    (dict(aggregate={}), "aggregate={}: name at least one stem"),
    (dict(aggregate={"all": ["guitar"]}), "unknown targets"),
])
def test_arguments_no_file_could_use_are_one_line_value_errors(model_dir, wav_file, tmp_path, kwargs, message):
    song = wav_file("song.wav", seconds=0.5)
    with pytest.raises(ValueError, match=re.escape(message)):
        separate_file(song, tmp_path / "out", model_dir(), **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_separator_keeps_its_own_settings(model_dir, wav_file, tmp_path):
    separator = Separator.from_pretrained(str(model_dir()))
    song = wav_file("song.wav", seconds=0.5)
    with pytest.raises(ValueError, match="targets, niter would not change a Separator"):
        separate_file(song, tmp_path, separator, targets=["vocals"], niter=0)
    with pytest.raises(ValueError, match=r"\{model\} needs the model's name"):
        separate_file(song, tmp_path, separator, filename="{model}/{target}.{ext}")


def test_progress_and_cancelling(model_dir, wav_file, tmp_path):
    model, song = model_dir(), wav_file("song.wav", seconds=3.0)
    seen = []
    separate_file(song, tmp_path / "a", model, segment=1.0, overlap=0.1, on_progress=seen.append)
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == pytest.approx(1.0)

    cancel = threading.Event()
    with pytest.raises(Cancelled):
        separate_file(song, tmp_path / "b", model, segment=1.0, overlap=0.1,
                      on_progress=lambda fraction: cancel.set(), cancel=cancel)
    assert not (tmp_path / "b").exists()  # no stems, no partial files, no folders
