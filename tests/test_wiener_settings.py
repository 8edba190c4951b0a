"""One set of Wiener settings (WienerSettings) behind Separator, separate(), umx-separate and torch.hub."""
import dataclasses

import pytest
import torch

from helpers import make_models
from openunmix_like import Separator, WienerSettings, separate
from openunmix_like.cli.separate import build_parser, load_separator


def test_defaults_are_defined_once_and_read_everywhere(model_dir):
    folder = model_dir()
    defaults = WienerSettings()
    assert (defaults.niter, defaults.softmask, defaults.residual, defaults.wiener_win_len) == (1, False, None, 300)
    assert Separator(make_models(n_fft=512), n_fft=512, n_hop=128).wiener == defaults
    assert Separator.from_pretrained(folder).wiener == defaults
    args = build_parser().parse_args(["song.wav", "--model", str(folder), "--quiet"])
    assert load_separator(args).wiener == defaults
    import hubconf  # the repository root is on sys.path under pytest

    bundled = hubconf.default(targets=["vocals"], niter=0)
    assert bundled.wiener == defaults.replace(niter=0) and bundled.target_names == ["vocals"]


def test_keywords_override_a_settings_object_and_unknown_ones_are_refused(model_dir):
    folder = model_dir()
    base = WienerSettings(niter=0, residual="rest")
    sep = Separator.from_pretrained(folder, wiener=base, softmask=True)
    assert sep.wiener == WienerSettings(niter=0, softmask=True, residual="rest")
    assert (sep.niter, sep.softmask, sep.residual, sep.wiener_win_len) == (0, True, "rest", 300)
    assert sep.target_names[-1] == "rest"
    with pytest.raises(TypeError, match="nitre"):
        Separator.from_pretrained(folder, nitre=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sep.wiener.niter = 3
    with pytest.raises(TypeError, match="pass niter, softmask, residual and wiener_win_len as keywords"):
        Separator(make_models(n_fft=512), 1, n_fft=512, n_hop=128)  # the reference's positional niter


def test_off_has_one_meaning_and_bad_values_are_refused():
    assert WienerSettings(wiener_win_len=0) == WienerSettings(wiener_win_len=None)
    assert WienerSettings(wiener_win_len=0).wiener_win_len is None
    for bad in (dict(niter=-1), dict(niter=1.5), dict(wiener_win_len=-3), dict(residual="")):
        with pytest.raises(ValueError):
            WienerSettings(**bad)


def test_whole_input_filtering_is_the_same_through_every_entry_point(model_dir, tmp_path):
    folder = model_dir()
    audio = torch.rand(2, 22050) - 0.5
    whole = separate(audio, 44100, model=Separator.from_pretrained(folder, wiener_win_len=None))
    zero = separate(audio, 44100, model=str(folder), wiener_win_len=0)
    windowed = separate(audio, 44100, model=str(folder), wiener=WienerSettings(wiener_win_len=4))
    assert all(torch.equal(whole[k], zero[k]) for k in whole)
    assert any(not torch.allclose(whole[k], windowed[k]) for k in whole)  # the setting reaches the filter
    args = build_parser().parse_args(["x.wav", "--model", str(folder), "--wiener-win-len", "0", "--quiet"])
    assert load_separator(args).wiener_win_len is None


def test_sample_rate_is_an_int_where_it_is_one(model_dir):
    assert Separator.from_pretrained(model_dir()).sample_rate == 44100
    assert isinstance(Separator.from_pretrained(model_dir("m2")).sample_rate, int)
    assert Separator(make_models(n_fft=512), n_fft=512, n_hop=128, sample_rate=22050.0).sample_rate == 22050
    assert type(Separator(make_models(n_fft=512), n_fft=512, n_hop=128, sample_rate=22050.0).sample_rate) is int
    assert Separator(make_models(n_fft=512), n_fft=512, n_hop=128, sample_rate=11025.5).sample_rate == 11025.5


def test_the_reference_packages_residual_flag_is_taken(model_dir):
    # Code written for the reference package passes residual=True (a target named "residual") or False.
    assert WienerSettings(residual=True).residual == "residual" and WienerSettings(residual=False).residual is None
    sep = Separator.from_pretrained(str(model_dir()), targets=["vocals"], residual=True, precision="fp32")
    assert sep.target_names == ["vocals", "residual"]
    audio = torch.randn(1, 2, 44100) * 0.1
    with torch.no_grad():
        estimates = sep(audio)
    assert estimates.shape == (1, 2, 2, 44100)
    stems = separate(audio[0], 44100, model=str(model_dir()), targets=["vocals"], residual=True, precision="fp32")
    assert sorted(stems) == ["residual", "vocals"]
