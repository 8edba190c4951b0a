"""bfloat16 products for Open-Unmix models and ``precision="auto"``."""
import copy

import pytest
import torch

from helpers import make_models
from openunmix_like import Separator
from openunmix_like import separator as separator_module
from openunmix_like.separator import AUTO_PRECISION_ENV, cpu_has_native_bf16, resolve_precision


def model_with_statistics():
    """A tiny Open-Unmix model whose batch norms hold non-trivial running statistics."""
    model = make_models(targets=("vocals",), hidden_size=16)["vocals"]
    generator = torch.Generator().manual_seed(4)
    for bn in (model.bn1, model.bn2, model.bn3):
        bn.running_mean.normal_(0, 0.5, generator=generator)
        bn.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.freeze()


def test_auto_is_bf16_on_cpus_with_bfloat16_units_only(monkeypatch):
    monkeypatch.delenv(AUTO_PRECISION_ENV, raising=False)
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(separator_module, "cpu_has_native_bf16", lambda: native)
        assert resolve_precision("auto", "cpu") == expected
        assert resolve_precision("auto", "cuda") == "fp32"  # GPUs: float32 unless asked
        assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16", "cuda") == "bf16"
    monkeypatch.setenv(AUTO_PRECISION_ENV, "bf16")
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match=f"{AUTO_PRECISION_ENV}='fp16'"):
        resolve_precision("auto")
    with pytest.raises(ValueError, match="precision 'fp16': choose one of auto, fp32, bf16"):
        resolve_precision("fp16")


def test_processor_check_reads_the_cpu_flags():
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    flags = next(line for line in text.splitlines() if line.startswith("flags")).split()
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_from_pretrained_resolves_auto_for_its_device(monkeypatch, model_dir):
    folder = model_dir()
    monkeypatch.delenv(AUTO_PRECISION_ENV, raising=False)
    monkeypatch.setattr(separator_module, "cpu_has_native_bf16", lambda: True)
    sep = Separator.from_pretrained(folder)
    assert sep.precision == "bf16"
    assert {m.product_dtype for m in sep.target_models.values()} == {torch.bfloat16}
    monkeypatch.setattr(separator_module, "cpu_has_native_bf16", lambda: False)
    sep = Separator.from_pretrained(folder)
    assert sep.precision == "fp32" and {m.product_dtype for m in sep.target_models.values()} == {torch.float32}
    with pytest.raises(AttributeError):
        sep.precision = "bf16"  # fixed at construction: the weights were chosen for it


def test_bf16_products_keep_scaling_norms_and_mask_in_float32():
    model = model_with_statistics()
    mag = torch.rand(2, 2, 257, 40) * 3
    low = copy.deepcopy(model).cast_products(torch.bfloat16)
    assert low.product_dtype == torch.bfloat16
    assert {p.dtype for n, p in low.named_parameters() if n.startswith(("fc", "lstm"))} == {torch.bfloat16}
    assert {p.dtype for n, p in low.named_parameters() if not n.startswith(("fc", "lstm"))} == {torch.float32}
    with torch.inference_mode():
        a, b = model(mag), low(mag)
    assert b.dtype == torch.float32 and b.shape == a.shape
    error = float((a - b).abs().max() / a.abs().max())
    assert 0 < error < 0.02  # bfloat16 keeps 8 bits of mantissa; the float32 parts add no error


def test_inference_path_equals_the_autograd_path():
    """Without autograd, batch norm and the output scaling are one affine map applied in place."""
    model = model_with_statistics()
    mag = torch.rand(1, 2, 257, 30) * 3
    with torch.inference_mode():
        fast = model(mag)
    with torch.enable_grad():
        plain = model(mag.requires_grad_()).detach()
    assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-6 * float(plain.abs().max()))


def test_bf16_separator_converts_copies_not_the_callers_models():
    models = make_models(n_fft=512)
    before = {n: copy.deepcopy(m.state_dict()) for n, m in models.items()}
    sep = Separator(models, n_fft=512, n_hop=128, precision="bf16")
    assert {m.product_dtype for m in sep.target_models.values()} == {torch.bfloat16}
    for name, model in models.items():
        assert model.product_dtype == torch.float32
        assert all(torch.equal(v, before[name][k]) for k, v in model.state_dict().items())


def test_command_line_defaults(monkeypatch):
    from openunmix_like.catalogue.engine import _on_cpu
    from openunmix_like.cli.evaluate import build_parser as evaluate_parser
    from openunmix_like.cli.separate import build_parser as separate_parser

    args = separate_parser().parse_args(["song.wav"])
    assert args.precision == "auto"
    assert evaluate_parser().parse_args(["--root", "x"]).precision == "fp32"  # scores independent of the machine
    monkeypatch.delenv(AUTO_PRECISION_ENV, raising=False)
    monkeypatch.setattr(separator_module, "cpu_has_native_bf16", lambda: True)
    # The catalogue's driver loads on its CPU for actors on the device asked for.
    assert _on_cpu(args).precision == "bf16" and _on_cpu(args).device == "cpu"
    args.device = "cuda"
    assert _on_cpu(args).precision == "fp32" and _on_cpu(args).device == "cpu"


def test_a_bad_auto_precision_setting_is_a_one_line_error(monkeypatch, capsys, model_dir, wav_file, tmp_path):
    from openunmix_like.cli.separate import main as separate_main

    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp16")
    song = wav_file(seconds=1.0)
    assert separate_main([str(song), "--model", str(model_dir()), "--outdir", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"umx-separate: error: --precision auto: {AUTO_PRECISION_ENV}='fp16': set it to fp32 or bf16, "
                   "or unset it")
    assert not (tmp_path / "out").exists()
