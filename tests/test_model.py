import dataclasses
import io
import json
import re

import pytest
import torch

from openunmix_like.errors import ModelError
from openunmix_like.model import OpenUnmix, bandwidth_to_max_bin, config_from_state_dict, widen
from openunmix_like.modeldir import load_model_dir
from openunmix_like.pretrained import known_files, pretrained_table

# Published shapes (see the compatibility notes): name -> constructor arguments.
PUBLISHED = {
    "umx": dict(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=1487),
    "umxhq": dict(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=1487),
    "umxl": dict(nb_bins=2049, nb_channels=2, hidden_size=1024, max_bin=1487),
    "umxse": dict(nb_bins=513, nb_channels=1, hidden_size=256, max_bin=513),
}


def published_keys(hidden, nb_bins, max_bin, nb_channels, layers=3, bidirectional=True):
    """The state-dict layout of the reference model, written out independently."""
    lstm_hidden = hidden // 2 if bidirectional else hidden
    keys = {
        "input_mean": (max_bin,), "input_scale": (max_bin,),
        "output_scale": (nb_bins,), "output_mean": (nb_bins,),
        "fc1.weight": (hidden, nb_channels * max_bin),
        "fc2.weight": (hidden, 2 * hidden),
        "fc3.weight": (nb_channels * nb_bins, hidden),
    }
    for bn, n in (("bn1", hidden), ("bn2", hidden), ("bn3", nb_channels * nb_bins)):
        keys.update({f"{bn}.weight": (n,), f"{bn}.bias": (n,), f"{bn}.running_mean": (n,),
                     f"{bn}.running_var": (n,), f"{bn}.num_batches_tracked": ()})
    for k in range(layers):
        for sfx in ([""] + (["_reverse"] if bidirectional else [])):
            keys[f"lstm.weight_ih_l{k}{sfx}"] = (4 * lstm_hidden, hidden if k == 0 or not bidirectional else hidden)
            keys[f"lstm.weight_hh_l{k}{sfx}"] = (4 * lstm_hidden, lstm_hidden)
            keys[f"lstm.bias_ih_l{k}{sfx}"] = (4 * lstm_hidden,)
            keys[f"lstm.bias_hh_l{k}{sfx}"] = (4 * lstm_hidden,)
    return keys


def test_max_bin_of_16khz_bandwidth():
    assert bandwidth_to_max_bin(44100, 4096, 16000) == 1487


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_state_dict_layout_matches_published(name):
    args = PUBLISHED[name]
    model = OpenUnmix(**args)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == published_keys(args["hidden_size"], args["nb_bins"], args["max_bin"], args["nb_channels"])


def test_parameter_counts_match_published():
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(OpenUnmix(**PUBLISHED["umxhq"])) == 8_893_348
    assert count(OpenUnmix(**PUBLISHED["umxl"])) == 28_257_188


def test_unidirectional_layout():
    model = OpenUnmix(nb_bins=257, hidden_size=32, max_bin=100, unidirectional=True)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == published_keys(32, 257, 100, 2, bidirectional=False)
    assert config_from_state_dict(model.state_dict()).unidirectional


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_files_reload_with_legacy_keys(tmp_path, name):
    """Random weights saved under the published file names load back identically."""
    entry = pretrained_table()[name]
    torch.manual_seed(0)
    originals = {}
    for target, file in entry["files"].items():
        model = OpenUnmix(**PUBLISHED[name]).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.1)
        state = dict(model.state_dict())
        # Weights published with 1.0 carry these; a loader must ignore them.
        state["stft.window"] = torch.hann_window(8)
        state["transform.0.window"] = torch.hann_window(8)
        state["sample_rate"] = torch.tensor(44100.0)
        torch.save(state, tmp_path / file)
        originals[target] = model
    models, settings = load_model_dir(tmp_path, known=known_files())
    assert settings.sample_rate == entry["sample_rate"] and settings.n_fft == entry["nfft"]
    assert settings.n_hop == entry["nhop"] and settings.nb_channels == entry["nb_channels"]
    assert set(models) == set(entry["files"])
    x = torch.rand(1, PUBLISHED[name]["nb_channels"], PUBLISHED[name]["nb_bins"], 5)
    for target, model in models.items():
        ref = originals[target]
        assert model.config == config_from_state_dict(ref.state_dict())
        for key, value in ref.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
        with torch.no_grad():
            assert torch.allclose(model(x), ref(x))


def test_unidirectional_model_reloads(model_dir):
    folder = model_dir(unidirectional=True, hidden_size=12)
    models, _ = load_model_dir(folder)
    assert all(m.config.unidirectional and m.config.hidden_size == 12 for m in models.values())


def test_forward_is_mask_times_input():
    model = OpenUnmix(nb_bins=65, nb_channels=2, hidden_size=8, max_bin=30).eval()
    x = torch.rand(3, 2, 65, 7)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert (y >= 0).all()
    assert torch.equal(model(torch.zeros_like(x)).detach(), torch.zeros_like(x))


def test_pickled_code_in_pth_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "evil"
    folder.mkdir()
    buffer = io.BytesIO()
    torch.save({"input_mean": Evil()}, buffer)
    (folder / "vocals.pth").write_bytes(buffer.getvalue())
    with pytest.raises(ModelError, match="vocals.pth"):
        load_model_dir(folder)
    assert not marker.exists()


def test_wrong_shapes_name_target_key_and_shapes(model_dir):
    folder = model_dir()
    (folder / "vocals.json").unlink()
    state = OpenUnmix(nb_bins=257, hidden_size=16, max_bin=128).state_dict()
    state["fc3.weight"] = torch.zeros(10, 16)
    (folder / "vocals.safetensors").unlink()
    torch.save(state, folder / "vocals.pth")
    with pytest.raises(ModelError, match=r"'vocals'.*fc3.weight.*\(10, 16\).*\(514, 16\)"):
        load_model_dir(folder, targets=["vocals"])


def test_missing_target_is_named(model_dir):
    folder = model_dir()
    with pytest.raises(ModelError, match="piano"):
        load_model_dir(folder, targets=["vocals", "piano"])


def test_no_targets_asked_for_is_refused(model_dir):
    folder = model_dir()
    with pytest.raises(ModelError, match=f"^{re.escape(str(folder))}: targets=\\[\\] asks for no target; name at least "
                                         "one of bass, drums, other, vocals, or pass None for all$"):
        load_model_dir(folder, targets=[])


def test_the_bundled_model_refuses_no_targets():
    from openunmix_like import Separator

    with pytest.raises(ModelError, match="targets=\\[\\] asks for no target; name at least one of bass, drums"):
        Separator.from_pretrained(targets=[])


def test_separator_json_listing_no_target_with_weights_is_refused(model_dir):
    folder = model_dir()
    meta = json.loads((folder / "separator.json").read_text())
    (folder / "separator.json").write_text(json.dumps({**meta, "targets": ["piano", "organ"]}))
    with pytest.raises(ModelError, match=f"^{re.escape(str(folder / 'separator.json'))}: none of its targets "
                                         r"\(piano, organ\) has weights in this folder \(available: bass, drums, "
                                         r"other, vocals\); fix its targets list or name the targets$"):
        load_model_dir(folder)
    # Targets named by the caller are still loaded.
    assert list(load_model_dir(folder, targets=["drums"])[0]) == ["drums"]


def test_inference_forward_leaves_input_untouched_and_equals_training_path():
    model = OpenUnmix(nb_bins=65, nb_channels=2, hidden_size=8, max_bin=30).eval()
    x = torch.rand(2, 2, 65, 9)
    before = x.clone()
    with_grad = model(x)
    with torch.inference_mode():
        no_grad = model(x)
    assert torch.equal(x, before)
    assert torch.allclose(with_grad, no_grad)


@pytest.mark.parametrize("unidirectional", [False, True])
def test_a_widened_model_computes_the_same_output_and_its_new_units_learn(unidirectional):
    torch.manual_seed(0)
    model = OpenUnmix(nb_bins=65, nb_channels=2, hidden_size=8, max_bin=40, unidirectional=unidirectional)
    with torch.no_grad():  # trained-looking batch norm statistics and non-trivial weights
        for _ in range(3):
            model(torch.rand(3, 2, 65, 20))
        model.output_mean.fill_(0.3)
    model.eval()
    wide = widen(model, 16, torch.Generator().manual_seed(1)).eval()
    assert wide.config == dataclasses.replace(model.config, hidden_size=16)
    x = torch.rand(2, 2, 65, 30)
    assert torch.allclose(wide(x), model(x), atol=1e-6)
    # The new units are not cut off: the weights that read them get gradients from the first step.
    wide.train()
    wide(x).square().mean().backward()
    assert wide.fc3.weight.grad[:, 8:].abs().sum() > 0
    assert wide.lstm.weight_ih_l0.grad.abs().sum() > 0


def test_widening_refuses_a_narrower_or_odd_width():
    model = OpenUnmix(nb_bins=65, hidden_size=8, max_bin=40)
    with pytest.raises(ValueError, match="narrow"):
        widen(model, 4)
    with pytest.raises(ValueError, match="even"):
        widen(model, 11)


def test_the_mask_multiplies_a_detached_mixture_as_in_the_reference():
    # With fc3 at zero the network's output is a constant mask, so the only path from the
    # input to the output is the mixture the mask multiplies: the reference detaches it, and
    # the input gradient is then zero (not the mask), while parameter gradients still flow.
    model = OpenUnmix(nb_bins=65, nb_channels=2, hidden_size=8, max_bin=40).eval()
    with torch.no_grad():
        model.fc3.weight.zero_()
        model.output_mean.fill_(2.0)
    x = torch.rand(1, 2, 65, 6, requires_grad=True)
    out = model(x)
    assert torch.allclose(out, torch.relu(model.bn3.bias.view(2, 65)[None, :, :, None]
                                          * model.output_scale[:, None] + 2.0) * x, atol=1e-6)
    out.sum().backward()
    assert torch.count_nonzero(x.grad) == 0
    assert model.output_mean.grad is not None and torch.count_nonzero(model.output_mean.grad) > 0
