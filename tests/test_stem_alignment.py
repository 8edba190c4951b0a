"""Stems a musician drops into a DAW beside the song: as long as it (or the excerpt), sample-aligned with it
as ffmpeg decodes it, at its rate and in its speaker layout.

With a ``residual`` target the stems add up to the mixture exactly (float rounding), whatever the model,
so the sum of 32-bit float stems is compared with the input sample by sample: any offset, missing or
extra sample, or wrong decoding of the input shows.
"""
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from helpers import music_like
from openunmix_like import separate_file
from openunmix_like.audio import load

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="needs ffmpeg and ffprobe")
RATE = 44100
# Encoder options by file name; an encoder ffmpeg lacks skips its cases.
CODECS = {"cbr.mp3": ["-c:a", "libmp3lame", "-b:a", "128k"], "vbr.mp3": ["-c:a", "libmp3lame", "-q:a", "4"],
          # AAC without perceptual noise substitution, whose noise is drawn anew wherever decoding starts.
          "song.m4a": ["-c:a", "aac", "-aac_pns", "0"], "song.aac": ["-c:a", "aac", "-aac_pns", "0"]}


def encoders():
    result = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True)
    return result.stdout


def encode(source, path, options, *before):
    """ffmpeg's encoding of the wav ``source`` (after the inputs ``before``) into ``path``."""
    codec = options[options.index("-c:a") + 1]
    if f" {codec} " not in encoders():
        pytest.skip(f"this ffmpeg has no {codec} encoder")
    subprocess.run(["ffmpeg", "-v", "error", "-y", *before, "-i", str(source), *options, str(path)], check=True)
    return path


def ffmpeg_decoded(path, tmp_path):
    """``path`` as ffmpeg (and a DAW using it) decodes it, ``(n, channels)`` float32."""
    out = tmp_path / f"{path.name}.decoded.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(path), "-map", "0:a:0", "-c:a", "pcm_f32le", str(out)],
                   check=True)
    return sf.read(str(out), dtype="float32", always_2d=True)[0]


@pytest.fixture
def song(tmp_path):
    path = tmp_path / "source.wav"
    sf.write(path, music_like(4.0, RATE, 2, seed=3).T, RATE, subtype="FLOAT")
    return path


def sum_of_stems(written):
    stems = [sf.read(str(p), dtype="float64", always_2d=True) for p in written.values()]
    assert {rate for _, rate in stems} == {RATE}
    return sum(x for x, _ in stems)


@pytest.mark.parametrize("name", list(CODECS))
@pytest.mark.parametrize("start, duration", [(1.2345678, 1.7654321), (1e-5, 1.0)])
def test_an_excerpt_of_a_compressed_file_is_that_span_of_the_whole_file(song, tmp_path, name, start, duration):
    # ffmpeg seeks to the sample but starts decoding there cold: the excerpt's first 500-2,000 samples
    # were wrong (up to -9 dBFS off, a click in every stem), even for a start that rounds to sample 0.
    path = encode(song, tmp_path / name, CODECS[name])
    whole = ffmpeg_decoded(path, tmp_path)
    excerpt, rate = load(path, start, duration)
    first, n = round(start * rate), round(duration * rate)
    assert excerpt.shape == (2, n)
    np.testing.assert_allclose(excerpt.numpy().T, whole[first : first + n], atol=1e-6)


@pytest.mark.parametrize("name", ["cbr.mp3", "song.m4a"])
def test_excerpt_stems_add_up_to_that_span_of_the_decoded_input(model_dir, song, tmp_path, name):
    path = encode(song, tmp_path / name, CODECS[name])
    whole = ffmpeg_decoded(path, tmp_path)
    written = separate_file(path, tmp_path / "out", str(model_dir()), bits=32, clip="none", start=0.5,
                            duration=2.5, segment=1.0, overlap=0.25, niter=0, residual="rest")
    total = sum_of_stems(written)
    first, n = round(0.5 * RATE), round(2.5 * RATE)
    assert total.shape == (n, 2)
    np.testing.assert_allclose(total, whole[first : first + n], atol=1e-5)


def with_silent_intro(song, path, options):
    """``song`` after 2 s of silence, encoded into ``path``."""
    return encode(song, path, ["-filter_complex", "[0][1]concat=n=2:v=0:a=1", *options],
                  "-f", "lavfi", "-t", "2", "-i", f"anullsrc=r={RATE}:cl=stereo")


def test_a_bitrate_guessed_duration_is_not_taken_for_truncation(model_dir, song, tmp_path):
    # A VBR mp3 without a Xing header that opens with silence: ffprobe guesses its duration from the
    # first frames' 32 kbit/s (several times too long), and the file was refused as "truncated".
    path = with_silent_intro(song, tmp_path / "intro.mp3", ["-c:a", "libmp3lame", "-q:a", "2", "-write_xing", "0"])
    whole = ffmpeg_decoded(path, tmp_path)
    written = separate_file(path, tmp_path / "out", str(model_dir()), bits=32, clip="none", niter=0, residual="rest")
    np.testing.assert_allclose(sum_of_stems(written), whole, atol=1e-5)


def test_raw_adts_aac_is_read_whole(song, tmp_path):
    # Raw ADTS states no length either: ffprobe guessed 118 s for these 6 s, and the file was refused.
    # It holds no priming information, so its first 1,024 samples are the encoder's delay; ffmpeg (and
    # DAWs) keep them, and so do we: the stems line up with the file as they play it.
    path = with_silent_intro(song, tmp_path / "song.aac", CODECS["song.aac"])
    whole = ffmpeg_decoded(path, tmp_path)
    audio, _ = load(path)
    np.testing.assert_array_equal(audio.numpy().T, whole)


def channel_layout(path):
    cmd = ["ffprobe", "-v", "error", "-show_entries", "stream=channel_layout", "-of", "csv=p=0", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("layout", ["5.1", "5.1(side)"])
def test_wav_stems_of_a_surround_input_keep_its_speakers(model_dir, song, tmp_path, layout):
    # Six channels were written as plain wav: "unknown" layout, six loose channels in a DAW.
    pan = "|FL=c0|FR=c1|FC=0.5*c0+0.5*c1|LFE=0.2*c0"
    pan += "|SL=c0|SR=c1" if layout == "5.1(side)" else "|BL=c0|BR=c1"
    path = encode(song, tmp_path / "surround.wav", ["-af", f"pan={layout}{pan}", "-c:a", "pcm_s16le"])
    assert channel_layout(path) == layout
    for bits in (16, 32):
        written = separate_file(path, tmp_path / f"out{bits}", str(model_dir()), bits=bits, niter=0, duration=1.0)
        for stem in written.values():
            assert channel_layout(stem) == layout, stem
            assert sf.info(str(stem)).channels == 6 and sf.info(str(stem)).frames == RATE


def test_the_catalogue_stages_keep_a_surround_inputs_speakers_too(model_dir, song, tmp_path):
    # --engine ray decodes, separates and writes in separate stages: the layout must travel between them,
    # for tracks passed whole and for long ones streamed inside their separation actor.
    from openunmix_like import Separator
    from openunmix_like.catalogue import stages

    pan = "pan=5.1|FL=c0|FR=c1|FC=0.5*c0+0.5*c1|LFE=0.2*c0|BL=c0|BR=c1"
    path = encode(song, tmp_path / "surround.wav", ["-af", pan, "-c:a", "pcm_s16le"])
    separator = Separator.from_pretrained(str(model_dir()), niter=0)
    for stream_over in (None, 0.5):
        options = stages.Options(0.0, 1.0, 30.0, 2.0, 1, False, None, "wav", 16, "rescale", "m", "abc", {},
                                 stream_over=stream_over)
        out = tmp_path / f"out-{stream_over}"
        track = stages.Track(str(path), "surround", path.stat().st_size,
                             {name: str(out / f"{name}.wav") for name in separator.target_names}, str(out / "done"))
        decoded = stages.decode(track, options)
        separated = stages.SeparationWorker().separate(track, decoded, options, separator)
        stages.write(track, separated, separator.target_names, options)
        for name in separator.target_names:
            assert channel_layout(out / f"{name}.wav") == "5.1", (stream_over, name)
