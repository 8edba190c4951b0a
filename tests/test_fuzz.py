"""Fuzzing the audio loading and preprocessing layer: anything but our own errors is a bug."""
import math
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from helpers import make_models  # noqa: E402
from openunmix_like import AudioError, Separator, separate  # noqa: E402
from openunmix_like.audio import load, resample  # noqa: E402

SEPARATOR = Separator(make_models(n_fft=256), n_fft=256, n_hop=64, sample_rate=8000).freeze()
FUZZ = settings(deadline=None, max_examples=60, suppress_health_check=list(HealthCheck))

dtypes = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.uint8, np.int64,
                          np.complex64, np.bool_])
shapes = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=1, min_side=0, max_side=3000),
    st.tuples(st.integers(0, 9), st.integers(0, 2000)),
    st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 1000)),
    hnp.array_shapes(min_dims=4, max_dims=4, min_side=0, max_side=4),
)
rates = st.one_of(st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.just(44100),
                  st.just(8000))


@FUZZ
@given(data=st.data(), dtype=dtypes, shape=shapes, rate=rates)
def test_separate_accepts_or_raises_audio_error(data, dtype, shape, rate):
    elements = None
    if np.issubdtype(dtype, np.floating):
        elements = st.floats(allow_nan=True, allow_infinity=True, width=np.dtype(dtype).itemsize * 8)
    array = data.draw(hnp.arrays(dtype, shape, elements=elements))
    try:
        out = separate(array, rate, model=SEPARATOR, segment=0.05, overlap=0.01)
    except AudioError:
        return
    for stem in out.values():
        assert tuple(stem.shape) == array.shape
        assert torch.isfinite(stem).all()


@FUZZ
@given(orig=st.integers(1000, 200000), new=st.integers(1000, 200000), length=st.integers(1, 3000),
       channels=st.integers(1, 3))
def test_resample_length_and_finiteness(orig, new, length, channels):
    # A generator of its own: how much of torch's global one the examples drew would differ from run to run,
    # and with it the random inputs of the tests after this one.
    x = torch.randn(channels, length, generator=torch.Generator().manual_seed(length))
    y = resample(x, orig, new)
    assert y.shape == (channels, int(round(length * new / orig)))
    assert torch.isfinite(y).all()


subtypes = st.sampled_from(["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])


@FUZZ
@given(subtype=subtypes, channels=st.integers(1, 8), rate=st.integers(1000, 192000), frames=st.integers(0, 2000),
       special=st.sampled_from([None, np.nan, np.inf, 1e9]))
def test_load_random_wav_files(tmp_path_factory, subtype, channels, rate, frames, special):
    path = tmp_path_factory.mktemp("fuzz") / "x.wav"
    data = np.random.default_rng(frames).uniform(-1, 1, (frames, channels))
    if special is not None and frames and subtype in ("FLOAT", "DOUBLE"):
        data[frames // 2, 0] = special
    sf.write(path, data, rate, subtype=subtype)
    try:
        audio, got_rate = load(path)
    except AudioError as exc:
        assert str(path) in str(exc)
        return
    assert audio.shape == (channels, frames) and got_rate == rate and audio.dtype == torch.float32
    assert torch.isfinite(audio).all()


@pytest.mark.slow
@FUZZ
@given(blob=st.binary(min_size=0, max_size=3000), ext=st.sampled_from([".wav", ".flac", ".mp3", ".ogg", ".m4a"]),
       header=st.sampled_from([b"", b"RIFF\x24\x08\x00\x00WAVEfmt ", b"fLaC", b"ID3\x03\x00", b"OggS"]))
def test_load_random_bytes(tmp_path_factory, blob, ext, header):
    path = tmp_path_factory.mktemp("bytes") / f"x{ext}"
    path.write_bytes(header + blob)
    try:
        audio, rate = load(path)
    except AudioError as exc:
        assert str(path) in str(exc)
        return
    assert audio.dim() == 2 and audio.shape[1] > 0 and rate > 0 and torch.isfinite(audio).all()
    assert math.isfinite(float(audio.abs().max()))
    subprocess  # noqa: B018 - ffmpeg is exercised through load for the container formats
