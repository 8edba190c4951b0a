"""The Python API on odd inputs: gradients, dtypes, devices, empty and non-finite audio, and arguments
that would be ignored or could never work give either the right result or one line saying what to do."""
import numpy as np
import pytest
import torch

import openunmix_like.pretrained as pretrained
from helpers import make_models, music_like
from openunmix_like import AudioError, ModelError, Separator, separate
from openunmix_like.filtering import wiener, wiener_fast


def tiny(niter=1, **kw):
    """A tiny four-target separator as a user builds it: not frozen, so its parameters want gradients."""
    return Separator(make_models(n_fft=512), n_fft=512, n_hop=128, niter=niter, **kw).eval()


def audio(nb_samples=1, nb_channels=2, n=6000, seed=0):
    return torch.from_numpy(music_like(n / 44100, 44100, nb_channels * nb_samples, seed)).reshape(
        nb_samples, nb_channels, n)


def close(a, b, tol=1e-5):
    return float((a - b).abs().max()) <= tol * float(b.abs().max())


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("niter", [0, 1])
@pytest.mark.parametrize("nb_channels", [1, 2, 3])
def test_a_separator_that_is_not_frozen_separates_with_autograd_on(niter, nb_channels):
    sep, x = tiny(niter), audio(2, nb_channels)
    out = sep(x)  # autograd on: the parameters require gradients
    assert out.requires_grad and out.shape == (2, 4, nb_channels, 6000)
    with torch.no_grad():
        assert close(out.detach(), sep(x))
    out.square().sum().backward()
    grad = sep.target_models["vocals"].fc1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("niter", [0, 1])
def test_parameter_gradients_through_the_separator_match_finite_differences(niter):
    sep, x = tiny(niter).double(), audio(1, 2, 3000).double()
    weights = torch.randn((1, 4, 2, 3000), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    param = sep.target_models["vocals"].fc1.weight
    (sep(x) * weights).sum().backward()
    direction = torch.randn(param.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h, values = 1e-6, []
    with torch.no_grad():
        for step in (h, -2 * h, h):
            param += step * direction
            values.append(float((sep(x) * weights).sum()))
    numeric = (values[0] - values[1]) / (2 * h)
    assert abs(float((param.grad * direction).sum()) - numeric) <= 1e-5 * abs(numeric)


def test_audio_that_requires_grad_gets_a_gradient():
    x = audio().requires_grad_()
    tiny().freeze()(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ---------------------------------------------------------------- dtypes, types, devices


def test_float_audio_of_another_dtype_is_separated_in_the_separators_dtype():
    sep = tiny().freeze()
    x = audio()
    assert torch.equal(sep(x.double()), sep(x))  # float64 -> float32 is exact for float32 samples
    for dtype in (torch.float16, torch.bfloat16):
        low = x.to(dtype)
        out = sep(low)
        assert out.dtype == torch.float32 and torch.equal(out, sep(low.float()))
    assert sep.double()(x).dtype == torch.float64  # a float64 separator takes float32 audio too


@pytest.mark.parametrize("bad, match", [
    ((audio() * 32767).short(), "dtype torch.int16.*float samples in \\[-1, 1\\]"),
    (audio() > 0, "dtype torch.bool"),
    (audio().to(torch.complex64), "dtype torch.complex64"),
    (audio().numpy(), "must be a torch.Tensor .*got ndarray.*torch.as_tensor"),
    (audio().tolist(), "must be a torch.Tensor .*got list"),
])
def test_audio_that_is_not_a_float_tensor_is_a_one_line_type_error(bad, match):
    with pytest.raises(TypeError, match=match):
        tiny().freeze()(bad)


def test_audio_on_another_device_than_the_models_is_one_line():
    with pytest.raises(ValueError, match="audio is on meta but the separator's models are on cpu"):
        tiny().freeze()(audio().to("meta"))


def test_a_separator_converted_to_float16_says_so_on_the_cpu():
    with pytest.raises(TypeError, match="computes in torch.float16.*separator.float\\(\\)"):
        tiny().freeze().half()(audio())


# ---------------------------------------------------------------- empty and non-finite audio


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_samples_are_refused_instead_of_nan_estimates(value):
    x = audio()
    x[0, 1, 1234] = value
    with pytest.raises(ValueError, match="NaN or infinite samples.*nan_to_num"):
        tiny().freeze()(x)


def test_an_empty_batch_gives_empty_estimates_and_no_channels_is_refused():
    sep = tiny().freeze()
    assert sep(audio()[:0]).shape == (0, 4, 2, 6000)
    with pytest.raises(ValueError, match="no channels"):
        sep(audio()[:, :0])


# ---------------------------------------------------------------- frame offsets


def test_frame_offsets_may_be_numpy_or_tensor_integers_but_not_fractions():
    sep, x = tiny(wiener_win_len=8).freeze(), audio(2)
    expected = sep(x, frame_offset=3)
    assert torch.equal(sep(x, frame_offset=np.int64(3)), expected)
    assert torch.equal(sep(x, frame_offset=torch.tensor(3)), expected)
    assert torch.equal(sep(x, frame_offset=np.array([3, 3])), expected)
    with pytest.raises(TypeError, match="frame_offset must be a whole number of frames"):
        sep(x, frame_offset=2.5)


# ---------------------------------------------------------------- construction and to_dict


@pytest.mark.parametrize("models, kw, error, match", [
    (list(make_models(n_fft=512).values()), {}, TypeError, "target_models must map target names to models"),
    (make_models(n_fft=512, nb_channels=1), {}, ValueError, "takes 1 channel\\(s\\) but nb_channels=2"),
    (make_models(n_fft=512), dict(nb_channels=3), ValueError, "nb_channels must be 1 .* or 2"),
    (make_models(n_fft=512), dict(n_hop=0), ValueError, "n_hop must be a whole number of samples from 1 to"),
    (make_models(n_fft=512), dict(n_hop=512), ValueError, "n_hop must be .* n_fft - 1 \\(511\\)"),
    (make_models(n_fft=512), dict(sample_rate=0), ValueError, "sample_rate must be the models' rate in Hz"),
])
def test_settings_no_separator_can_work_with_are_refused_at_construction(models, kw, error, match):
    with pytest.raises(error, match=match):
        Separator(models, **{"n_fft": 512, "n_hop": 128, **kw})


def test_to_dict_refuses_estimates_that_are_not_forwards():
    sep = tiny().freeze()
    est = sep(audio())
    for bad in (est[:, :2], est[0]):
        with pytest.raises(ValueError, match="estimates must be \\(nb_samples, 4 targets"):
            sep.to_dict(bad)
    with pytest.raises(TypeError, match="aggregate must map new names to lists of targets"):
        sep.to_dict(est, aggregate=["vocals"])


# ---------------------------------------------------------------- from_pretrained


def test_a_device_or_settings_that_cannot_work_are_refused_before_loading(model_dir, monkeypatch):
    folder = model_dir()

    def load_models(*args, **kw):
        raise AssertionError("loaded (and maybe downloaded) before the arguments were checked")

    monkeypatch.setattr(pretrained, "load_models", load_models)
    with pytest.raises(ValueError, match="device 'gpu': not a torch device"):
        Separator.from_pretrained(folder, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda': this machine has no CUDA; use 'cpu'"):
            Separator.from_pretrained(folder, device="cuda")
    with pytest.raises(TypeError, match="wiener must be a WienerSettings"):
        Separator.from_pretrained(folder, wiener={"niter": 0})


def test_targets_may_be_one_name(model_dir):
    assert Separator.from_pretrained(model_dir(), targets="vocals").target_names == ["vocals"]


def test_a_target_asked_for_twice_is_refused_not_reduced_to_one(model_dir):
    with pytest.raises(ModelError, match="target.s. vocals asked for more than once; name each target once"):
        Separator.from_pretrained(model_dir(), targets=["vocals", "drums", "vocals"])


# ---------------------------------------------------------------- separate()


def test_separate_takes_numpy_sample_rates():
    sep, x = tiny().freeze(), audio()[0]
    expected = separate(x, 22050, model=sep)
    for rate in (np.int64(22050), np.float32(22050), np.float64(22050)):
        got = separate(x, rate, model=sep)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    with pytest.raises(AudioError, match="sample_rate"):
        separate(x, np.float64("nan"), model=sep)


@pytest.mark.parametrize("options", [dict(targets=["vocals"]), dict(residual="rest"), dict(niter=0),
                                     dict(device="meta"), dict(precision="bf16")])
def test_separate_refuses_options_a_given_separator_would_ignore(options):
    with pytest.raises(ValueError, match="would not change a Separator passed as model"):
        separate(audio()[0], 44100, model=tiny().freeze(), **options)


def test_separate_takes_a_given_separators_own_device_and_precision():
    sep, x = tiny().freeze(), audio()[0]
    expected = separate(x, 44100, model=sep)
    for options in (dict(device="cpu"), dict(device=torch.device("cpu")), dict(precision="fp32")):
        got = separate(x, 44100, model=sep, **options)
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_separate_says_what_a_model_is_when_given_something_else():
    with pytest.raises(TypeError, match="a model is a name .*got dict.*Separator"):
        separate(audio()[0], 44100, model=make_models(n_fft=512))


@pytest.mark.parametrize("options, match", [
    (dict(segment=float("nan")), "segment must be a number of seconds"),
    (dict(segment=-1), "segment must be a number of seconds"),
    (dict(overlap=-1), "overlap must be a number of seconds"),
    (dict(overlap=float("inf")), "overlap must be a number of seconds"),
    (dict(batch_segments=2.5), "batch_segments must be at least 1, a whole number"),
])
def test_separate_refuses_segmenting_that_cannot_work(options, match):
    with pytest.raises(ValueError, match=match):
        separate(audio(n=44100)[0], 44100, model=tiny().freeze(), **options)


# ---------------------------------------------------------------- the Wiener filter


def frame_major_wiener_fast(spectrograms, mix_stft, iterations):
    return wiener_fast(spectrograms.permute(3, 2, 1, 0), mix_stft.permute(2, 1, 0), iterations).permute(3, 2, 1, 0)


@pytest.mark.parametrize("iterations", [0, 1])
@pytest.mark.parametrize("filter_", [wiener, frame_major_wiener_fast])
def test_the_wiener_filters_work_in_the_higher_precision_of_their_inputs(filter_, iterations):
    generator = torch.Generator().manual_seed(0)
    spectrograms = torch.rand((30, 17, 2, 3), generator=generator, dtype=torch.float64)
    mix = torch.randn((30, 17, 2), generator=generator, dtype=torch.complex128)
    for spec, x in ((spectrograms, mix.to(torch.complex64)), (spectrograms.float(), mix)):
        out = filter_(spec, x, iterations)
        assert out.dtype == torch.complex128
        assert torch.equal(out, filter_(spec.double(), x.to(torch.complex128), iterations))
    half = filter_(spectrograms.half(), mix.to(torch.complex64), iterations)
    assert half.dtype == torch.complex64  # single at least: no complex32 estimates


def test_the_wiener_filter_names_the_reference_layout_of_the_mixture():
    spectrograms, mix = torch.rand(30, 17, 2, 3), torch.randn(30, 17, 2, 2)
    with pytest.raises(TypeError, match="mix_stft must be a complex STFT.*torch.view_as_complex"):
        wiener(spectrograms, mix, 1)


@pytest.mark.parametrize("aggregate, error, match", [
    ({"x": 5}, TypeError, r"aggregate\['x'\] must be a target name or a list of them"),
    ({"x": []}, ValueError, r"aggregate\['x'\] is empty"),
    ({1: ["vocals"]}, ValueError, "stem name 1 is not a non-empty string"),
    ({}, ValueError, "name at least one stem"),
])
def test_an_aggregate_that_is_not_names_to_targets_is_one_line_before_separating(aggregate, error, match,
                                                                                  monkeypatch):
    sep = tiny().freeze()
    with pytest.raises(error, match=match):
        sep.to_dict(sep(audio()), aggregate=aggregate)
    monkeypatch.setattr(type(sep), "forward", lambda *a, **k: pytest.fail("separated before refusing"))
    with pytest.raises(error, match=match):
        separate(audio()[0], 44100, model=sep, aggregate=aggregate)
