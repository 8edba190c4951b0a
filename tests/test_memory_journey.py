"""Memory that must not grow with a track's length beyond the audio itself.

The catalogue engine passes tracks shorter than ``--stream-over`` whole between its Ray stages
(docs/catalogue.md): the write stage gets a track's stems from the object store. It may hold those
stems, not further copies of them: the test measures with tracemalloc how the stage's peak grows
from a short track to a longer one, with small blocks so that the tracks can stay short.
"""
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from helpers import music_like
from openunmix_like.catalogue import stages

RATE = 22050
TARGETS = ("vocals", "drums", "bass", "other")


def options(**changes) -> stages.Options:
    fields = dict(start=0.0, duration=None, segment=2.0, overlap=1.0, batch_segments=1, keep_model_rate=False,
                  aggregate=None, ext="wav", bits=16, clip="rescale", model="m", model_sha256="abc", settings={})
    return stages.Options(**{**fields, **changes})


def traced_peak(function, *args):
    """``(result, peak bytes numpy and Python allocated while function ran)``."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = function(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 4,096 frames where the stages and the writer stream, so that short tracks are many blocks long."""
    from openunmix_like import writer

    monkeypatch.setattr(stages, "BLOCK_FRAMES", 4096)
    monkeypatch.setattr(writer, "BLOCK", 4096)


def test_the_write_stage_encodes_whole_stems_block_by_block(tmp_path, small_blocks):
    peaks, sizes = [], []
    for seconds in (8.0, 32.0):
        mix = music_like(seconds, RATE, seed=2)
        stems = np.stack([mix * share for share in (0.4, 0.3, 0.2, 0.1)])  # (nb_targets, nb_channels, n)
        out = tmp_path / f"out-{seconds:g}"
        track = stages.Track("song.wav", "song", 0, {t: str(out / f"{t}.wav") for t in TARGETS},
                             str(out / "_done.json"))
        opts = options(ext="wav", bits=32, clip="none")
        _, peak = traced_peak(stages.write, track, stages.Separated(stems, RATE), TARGETS, opts)
        for j, target in enumerate(TARGETS):  # float32 wav: the stems as given, to the bit
            np.testing.assert_array_equal(sf.read(out / f"{target}.wav", dtype="float32")[0].T, stems[j])
        peaks.append(peak)
        sizes.append(stems.nbytes)
    growth = (peaks[1] - peaks[0]) / (sizes[1] - sizes[0])
    # Given the stems as one chunk, the writer took the absolute values (for the peak) and a contiguous copy of
    # each whole stem in turn: a quarter of the stems at a time.
    assert growth < 0.1, f"write's peak grows by {growth:.2f} times the stems"
