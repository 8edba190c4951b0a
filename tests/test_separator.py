import json

import pytest
import torch

import openunmix_like.pretrained as pretrained
from helpers import make_models
from openunmix_like import ModelError, Separator
from openunmix_like.modeldir import load_model_dir


def tiny_separator(targets=("vocals", "drums", "bass", "other"), **kw):
    return Separator(make_models(targets), n_fft=512, n_hop=128, **kw).freeze()


def test_forward_shape_and_order():
    sep = tiny_separator()
    audio = torch.randn(2, 2, 10000) * 0.1
    out = sep(audio)
    assert out.shape == (2, 4, 2, 10000)
    assert sep.target_names == ["vocals", "drums", "bass", "other"]
    # Batch items are separated independently.
    assert torch.allclose(out[1:], sep(audio[1:]), atol=1e-6)


def test_softmask_without_em_sums_to_mixture():
    sep = tiny_separator(niter=0, softmask=True)
    audio = torch.randn(1, 2, 8000) * 0.1
    assert torch.allclose(sep(audio).sum(1), audio, atol=1e-5)


def test_named_residual_completes_the_mixture():
    sep = tiny_separator(targets=("vocals",), residual="accompaniment", niter=1)
    audio = torch.randn(1, 2, 8000) * 0.1
    out = sep(audio)
    assert sep.target_names == ["vocals", "accompaniment"]
    assert out.shape == (1, 2, 2, 8000)
    # EM keeps the sum close to the mixture.
    assert (out.sum(1) - audio).square().sum() < 0.01 * audio.square().sum()


def test_single_target_with_em_needs_no_residual_name():
    sep = tiny_separator(targets=("vocals",), niter=1)
    assert sep(torch.randn(1, 2, 6000)).shape == (1, 1, 2, 6000)


@pytest.mark.parametrize("nb_channels", [1, 3, 6])
def test_other_channel_counts(nb_channels):
    sep = tiny_separator()
    audio = torch.randn(1, nb_channels, 6000) * 0.1
    out = sep(audio)
    assert out.shape == (1, 4, nb_channels, 6000)
    close = lambda a, b: (a - b).abs().max() <= 1e-4 * b.abs().max()  # noqa: E731
    if nb_channels == 1:
        # Without EM, mono equals the mean of the duplicated stereo pair's estimates.
        no_em = tiny_separator(niter=0)
        assert close(no_em(audio)[:, :, 0], no_em(audio.expand(-1, 2, -1)).mean(2))
        assert torch.isfinite(out).all()
    else:
        # Channels 3-4 are separated as their own stereo pair; a last odd channel as mono.
        assert close(out[:, :, 2:4], sep(audio[:, 2:4]))
        assert close(out[:, :, :2], sep(audio[:, :2]))


def test_mono_model_filters_every_channel():
    sep = Separator(make_models(("speech", "noise"), nb_channels=1), n_fft=512, n_hop=128, nb_channels=1).freeze()
    assert sep(torch.randn(1, 2, 6000)).shape == (1, 2, 2, 6000)


def test_input_shorter_than_a_frame():
    sep = tiny_separator()
    assert sep(torch.randn(1, 2, 100)).shape == (1, 4, 2, 100)


def test_to_dict_and_aggregate():
    sep = tiny_separator()
    est = sep(torch.randn(1, 2, 5000))
    named = sep.to_dict(est)
    assert list(named) == ["vocals", "drums", "bass", "other"]
    agg = sep.to_dict(est, aggregate={"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]})
    assert list(agg) == ["vocals", "accompaniment"]
    assert torch.allclose(agg["accompaniment"], est[:, 1] + est[:, 2] + est[:, 3])
    with pytest.raises(ValueError, match="piano"):
        sep.to_dict(est, aggregate={"x": ["piano"]})


def test_from_pretrained_folder_ours(model_dir):
    folder = model_dir()
    sep = Separator.from_pretrained(folder, targets=["drums", "vocals"], niter=0)
    assert sep.target_names == ["drums", "vocals"] and sep.n_fft == 512 and not sep.training
    assert all(not p.requires_grad for p in sep.parameters())
    assert Separator.from_pretrained(folder).target_names == ["vocals", "drums", "bass", "other"]


def test_from_pretrained_reference_layout(tmp_path):
    """separator.json with nfft/nhop, <target>-<hash>.pth, <target>.json with args."""
    folder = tmp_path / "ref"
    folder.mkdir()
    models = make_models(("vocals", "other"), n_fft=1024, hidden_size=8)
    for target, m in models.items():
        torch.save(m.state_dict(), folder / f"{target}-0123abcd.pth")
        (folder / f"{target}.json").write_text(json.dumps({"args": {"nfft": 1024, "nhop": 256, "nb_channels": 2,
                                                                    "hidden_size": 8}, "best_loss": 1.0}))
    (folder / "separator.json").write_text(json.dumps({"nfft": 1024, "nhop": 256, "sample_rate": 22050.0,
                                                       "nb_channels": 2}))
    sep = Separator.from_pretrained(str(folder), niter=0)
    assert (sep.n_fft, sep.n_hop, sep.sample_rate) == (1024, 256, 22050.0)
    audio = torch.randn(1, 2, 4000)
    direct = Separator(models, niter=0, n_fft=1024, n_hop=256)
    with torch.no_grad():
        got, want = sep.to_dict(sep(audio)), direct.to_dict(direct(audio))
    assert sorted(got) == ["other", "vocals"]
    for name in got:
        assert torch.allclose(got[name], want[name], atol=1e-6)


def test_ambiguous_hashed_files_are_refused(model_dir):
    folder = model_dir()
    state = torch.load(folder / "vocals.pth", weights_only=True)
    for name in ("vocals.pth", "vocals.safetensors"):
        (folder / name).unlink()
    torch.save(state, folder / "vocals-aaaaaaaa.pth")
    torch.save(state, folder / "vocals-bbbbbbbb.pth")
    with pytest.raises(ModelError, match="vocals-aaaaaaaa.pth, vocals-bbbbbbbb.pth"):
        load_model_dir(folder)


def test_bundled_default_loads_offline(model_dir, monkeypatch):
    folder = model_dir("bundled")
    monkeypatch.setattr(pretrained, "BUNDLED_MODEL_DIR", folder)
    sep = Separator.from_pretrained()
    assert sep.target_names == ["vocals", "drums", "bass", "other"]


def test_missing_bundled_model_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "BUNDLED_MODEL_DIR", tmp_path / "none")
    with pytest.raises(ModelError, match="no bundled model.*umxhq"):
        Separator.from_pretrained()


def test_unknown_name():
    with pytest.raises(ModelError, match="not a published model"):
        Separator.from_pretrained("umx-nonexistent")


def test_settings_mismatch_is_reported(model_dir):
    folder = model_dir()
    (folder / "separator.json").write_text(json.dumps({"nfft": 4096, "nhop": 1024, "sample_rate": 44100,
                                                       "nb_channels": 2}))
    with pytest.raises(ModelError, match="n_fft=4096"):
        Separator.from_pretrained(folder)


def test_hubconf_gives_the_same_loader(model_dir, monkeypatch):
    import importlib.util
    from pathlib import Path

    monkeypatch.setattr(pretrained, "BUNDLED_MODEL_DIR", model_dir("bundled"))
    spec = importlib.util.spec_from_file_location("hubconf", Path(__file__).parents[1] / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    sep = hub.default(targets=["vocals"], niter=0)
    assert isinstance(sep, Separator) and sep.target_names == ["vocals"]
    assert callable(hub.umxhq) and callable(hub.umxse)


def test_models_must_match_the_stft():
    with pytest.raises(ValueError, match="257 bins but n_fft=256"):
        Separator(make_models(n_fft=512), n_fft=256, n_hop=64)
