"""Losses: parsing weighted sums, values against independent definitions, and each one trains."""
import pytest
import torch

from helpers import TINY_ARGS, Identity, music_like, tiny
from openunmix_like import metrics
from openunmix_like.losses import LOSSES, Loss, Objective, framewise_sdr, mrstft, parse_loss, sisdr


def test_parse_weighted_sums():
    assert parse_loss("mse") == Loss(((1.0, "mse"),))
    assert parse_loss("l1+0.5*mrstft") == Loss(((1.0, "l1"), (0.5, "mrstft")))
    assert parse_loss(" 2 * sisdr + 1e-2*wavl1 ") == Loss(((2.0, "sisdr"), (0.01, "wavl1")))
    assert str(parse_loss("l1+0.5*mrstft")) == "l1+0.5*mrstft"
    assert parse_loss("l1+0.5*mrstft").domains == {"magnitude", "waveform"}
    with pytest.raises(ValueError, match="unknown loss 'mae'; known: mse, l1, mrstft, sisdr, sdr, wavl1"):
        parse_loss("l1+mae")
    for bad in ("l1+", "0.5*", "*l1", "l1-mse", "half*l1"):
        with pytest.raises(ValueError, match="cannot read the term"):
            parse_loss(bad)


def test_weighted_sum_is_the_sum_of_the_weighted_terms():
    est = {"magnitude": torch.rand(2, 2, 33, 9), "waveform": torch.randn(2, 2, 4000)}
    ref = {"magnitude": torch.rand(2, 2, 33, 9), "waveform": torch.randn(2, 2, 4000)}
    total = parse_loss("l1+0.5*mrstft+3*mse")(est, ref)
    parts = (LOSSES["l1"][1](est["magnitude"], ref["magnitude"]) + 0.5 * mrstft(est["waveform"], ref["waveform"])
             + 3 * LOSSES["mse"][1](est["magnitude"], ref["magnitude"]))
    assert torch.allclose(total, parts)


def test_sisdr_matches_the_validation_metric():
    ref = torch.from_numpy(music_like(0.5, 8000, 1))
    est = 0.7 * ref + 0.1 * torch.randn_like(ref)
    assert float(sisdr(est[None], ref[None])) == pytest.approx(-metrics.si_sdr(ref, est), abs=1e-3)
    # Scale invariance, and per-channel averaging.
    assert float(sisdr(3 * est[None], ref[None])) == pytest.approx(float(sisdr(est[None], ref[None])), abs=1e-4)
    two = torch.stack([est, 0.5 * ref + 0.5 * torch.randn_like(ref)], dim=1)
    refs = torch.stack([ref, ref], dim=1)
    expected = -(metrics.si_sdr(ref, est) + metrics.si_sdr(ref, two[:, 1])) / 2
    assert float(sisdr(two, refs)) == pytest.approx(expected, abs=1e-3)


def test_framewise_sdr_is_the_mean_of_the_frames_sdr():
    torch.manual_seed(0)
    ref = torch.randn(2, 2, 3 * 1000 + 400, dtype=torch.float64)
    est = ref + torch.linspace(0.1, 1.0, ref.shape[-1], dtype=torch.float64) * torch.randn_like(ref)
    # Frames of 1000 samples: three, the last taking the 400-sample remainder; both channels together.
    bounds = [(0, 1000), (1000, 2000), (2000, 3400)]
    expected = [metrics.sdr_mdx(ref[b, :, lo:hi], est[b, :, lo:hi], eps=0.0) for b in range(2) for lo, hi in bounds]
    got = framewise_sdr(est, ref, frame=1000, cap_db=300.0)
    assert float(got) == pytest.approx(-sum(expected) / len(expected), abs=1e-6)
    # Shorter than one frame: one frame, the whole signal.
    whole = framewise_sdr(est[..., :700], ref[..., :700], frame=1000, cap_db=300.0)
    assert float(whole) == pytest.approx(-(metrics.sdr_mdx(ref[0, :, :700], est[0, :, :700], eps=0.0)
                                           + metrics.sdr_mdx(ref[1, :, :700], est[1, :, :700], eps=0.0)) / 2, abs=1e-6)


def test_framewise_sdr_caps_perfect_frames_and_leaves_out_silent_ones():
    torch.manual_seed(1)
    ref = torch.randn(1, 2, 4000)
    assert float(framewise_sdr(ref.clone(), ref, frame=1000)) == pytest.approx(-30.0, abs=1e-3)
    est = ref + 0.5 * torch.randn_like(ref)
    loud = float(framewise_sdr(est[..., :2000], ref[..., :2000], frame=1000))
    # Frames 3 and 4 silent in the reference: BSSEval gives them no score, nor does the loss,
    # whatever the estimate holds there.
    quiet_ref, noisy_est = ref.clone(), est.clone()
    quiet_ref[..., 2000:] = 0.0
    noisy_est[..., 2000:] = torch.randn(1, 2, 2000)
    assert float(framewise_sdr(noisy_est, quiet_ref, frame=1000)) == pytest.approx(loud, abs=1e-5)
    # All silent: 0, with finite gradients.
    est = torch.randn(1, 2, 3000, requires_grad=True)
    value = framewise_sdr(est, torch.zeros(1, 2, 3000), frame=1000)
    value.backward()
    assert float(value.detach()) == 0.0 and torch.isfinite(est.grad).all()


def test_mrstft_is_zero_only_for_equal_signals():
    ref = torch.from_numpy(music_like(0.5, 22050, 2))[None]
    assert float(mrstft(ref, ref)) == 0.0
    assert float(mrstft(0.5 * ref, ref)) > float(mrstft(0.9 * ref, ref)) > 0
    # Short inputs (shorter than the largest window) still work.
    assert torch.isfinite(mrstft(ref[..., :300], ref[..., :300] * 0.5))


@pytest.mark.parametrize("domain", ["magnitude", "complex", "waveform"])
def test_objective_brings_identity_estimates_back_to_the_mixture(domain):
    x = torch.from_numpy(music_like(0.3, 22050, 2))[None]
    objective = Objective(parse_loss("mse+wavl1"), domain, 512, 128)
    est = objective.estimates(Identity(domain), x, {"magnitude", "waveform"})
    # Mask 1 everywhere: the waveform is the mixture again, its magnitude the mixture's.
    assert torch.allclose(est["waveform"], x, atol=1e-5)
    assert torch.allclose(est["magnitude"], objective.stft(x).abs(), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(TINY_ARGS))
@pytest.mark.parametrize("loss", ["mse", "l1", "mrstft", "sisdr", "sdr", "wavl1", "l1+0.5*mrstft"])
def test_each_loss_decreases_on_a_tiny_overfit_problem(arch, loss):
    torch.manual_seed(0)
    x = torch.from_numpy(music_like(0.4, 22050, 2, seed=1))[None]
    y = torch.from_numpy(music_like(0.4, 22050, 2, seed=2))[None] * 0.3
    x = x + y
    model = tiny(arch).train()
    objective = Objective(parse_loss(loss), model.domain, 512, 128)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        value = objective(model, x, y)
        value.backward()
        optimizer.step()
        losses.append(float(value.detach()))
    assert all(v == v for v in losses)  # no NaN
    first, last = losses[0], min(losses[-5:])
    assert last < first - 0.1 * abs(first), (arch, loss, losses)
