import numpy as np
import pytest
import soundfile as sf
import torch

from openunmix_like import AudioError
from openunmix_like.audio import info, load, resample


def test_load_excerpt_is_frame_exact(wav_file):
    path = wav_file("a.wav", seconds=2.0)
    full, rate = load(path)
    part, _ = load(path, start=0.5, duration=0.25)
    assert full.shape == (2, 88200) and full.dtype == torch.float32
    assert torch.equal(part, full[:, 22050:22050 + 11025])
    assert info(path).nb_frames == 88200 and info(path).duration == 2.0


@pytest.mark.parametrize("orig,new", [(44100, 48000), (48000, 44100), (8000, 44100), (96000, 44100)])
def test_resample_keeps_a_sine(orig, new):
    t = torch.arange(orig) / orig
    x = torch.sin(2 * torch.pi * 440 * t)[None].repeat(2, 1)
    y = resample(x, orig, new)
    assert y.shape == (2, new) and y.dtype == x.dtype
    ref = torch.sin(2 * torch.pi * 440 * torch.arange(new) / new)
    mid = slice(new // 10, -new // 10)
    assert (y[0, mid] - ref[mid]).abs().max() < 1e-2


def test_errors_name_the_file(tmp_path, wav_file):
    with pytest.raises(AudioError, match="nope.wav: no such file"):
        load(tmp_path / "nope.wav")
    text = tmp_path / "text.wav"
    text.write_text("hello")
    with pytest.raises(AudioError, match="text.wav"):
        load(text)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full((100, 2), np.nan, dtype=np.float32), 44100, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: holds NaN"):
        load(nan)
    with pytest.raises(AudioError, match="no audio samples"):
        load(wav_file("short.wav", seconds=0.1), start=5.0)
