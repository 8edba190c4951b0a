import numpy as np
import pytest
import torch

from openunmix_like.filtering import expectation_maximization, invert_hermitian, wiener, window_bounds

norbert = pytest.importorskip("norbert")


def random_problem(nb_channels, nb_sources=3, frames=40, bins=17, seed=0, v_channels=None):
    rng = np.random.default_rng(seed)
    v = rng.random((frames, bins, v_channels or nb_channels, nb_sources)) * 3
    x = (rng.standard_normal((frames, bins, nb_channels)) + 1j * rng.standard_normal((frames, bins, nb_channels))) * 5
    return v, x


@pytest.mark.parametrize("nb_channels", [1, 2])
@pytest.mark.parametrize("softmask", [False, True])
@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_agrees_with_norbert(nb_channels, softmask, iterations):
    v, x = random_problem(nb_channels, seed=iterations)
    ref = norbert.wiener(v.copy(), x.copy(), iterations=iterations, use_softmask=softmask, eps=1e-10)
    out = wiener(torch.from_numpy(v), torch.from_numpy(x), iterations, softmask=softmask, eps=1e-10).numpy()
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_agrees_with_norbert_for_mono_spectrograms_of_stereo_mix():
    v, x = random_problem(2, v_channels=1, seed=5)
    ref = norbert.wiener(v.copy(), x.copy(), iterations=2, eps=1e-10)
    out = wiener(torch.from_numpy(v), torch.from_numpy(x), 2, softmask=True, eps=1e-10).numpy()
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_em_agrees_with_norbert_single_precision():
    v, x = random_problem(2, seed=3)
    y0 = norbert.softmask(v, x, eps=1e-6).astype(np.complex64)
    ref = norbert.expectation_maximization(y0.copy(), x.astype(np.complex64), iterations=2, eps=1e-6)[0]
    out = expectation_maximization(torch.from_numpy(y0), torch.from_numpy(x.astype(np.complex64)), 2, eps=1e-6)
    assert out.dtype == torch.complex64
    assert np.abs(out.numpy() - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("dtype,cdtype", [(torch.float32, torch.complex64), (torch.float64, torch.complex128)])
def test_keeps_precision(dtype, cdtype):
    v = torch.rand(10, 5, 2, 3, dtype=dtype)
    x = torch.randn(10, 5, 2, dtype=cdtype)
    for softmask in (False, True):
        assert wiener(v, x, 1, softmask=softmask).dtype == cdtype


def test_does_not_modify_inputs():
    v = torch.rand(10, 5, 2, 3, dtype=torch.float64)
    x = torch.randn(10, 5, 2, dtype=torch.complex128) * 100
    v0, x0 = v.clone(), x.clone()
    wiener(v, x, 2)
    assert torch.equal(v, v0) and torch.equal(x, x0)


def test_residual_and_softmask_sum_to_mixture():
    v = torch.rand(10, 5, 2, 3, dtype=torch.float64)
    x = torch.randn(10, 5, 2, dtype=torch.complex128)
    assert torch.allclose(wiener(v, x, 0, residual=True).sum(-1), x)
    assert torch.allclose(wiener(v, x, 0, softmask=True).sum(-1), x, atol=1e-8)


def test_windows_filter_independently():
    v = torch.rand(25, 5, 2, 3, dtype=torch.float64)
    x = torch.randn(25, 5, 2, dtype=torch.complex128)
    whole = wiener(v, x, 1, win_len=10)
    parts = torch.cat([wiener(v[a:b], x[a:b], 1) for a, b in [(0, 10), (10, 20), (20, 25)]])
    assert torch.allclose(whole, parts)
    # An offset of 7 frames on the global grid moves the cuts to frames 3, 13, 23.
    assert window_bounds(25, 10, 7) == [(0, 3), (3, 13), (13, 23), (23, 25)]
    shifted = wiener(v, x, 1, win_len=10, win_offset=7)
    assert torch.allclose(shifted[3:13], wiener(v[3:13], x[3:13], 1))


def test_closed_form_inverse():
    m = torch.randn(50, 2, 2, dtype=torch.complex128)
    m = m @ m.conj().transpose(-1, -2) + torch.eye(2)
    assert torch.allclose(invert_hermitian(m) @ m, torch.eye(2, dtype=m.dtype).expand_as(m), atol=1e-10)
    m3 = torch.randn(4, 3, 3, dtype=torch.complex128) + 3 * torch.eye(3)
    assert torch.allclose(invert_hermitian(m3), torch.linalg.inv(m3))


@pytest.mark.parametrize("nb_channels", [1, 2])
@pytest.mark.parametrize("softmask", [False, True])
@pytest.mark.parametrize("iterations", [1, 3])
def test_one_source_without_residual_agrees_with_norbert(nb_channels, softmask, iterations):
    # The reference and norbert run the EM on a single source; it used to raise here.
    v, x = random_problem(nb_channels, nb_sources=1, seed=10 + iterations)
    ref = norbert.wiener(v.copy(), x.copy(), iterations=iterations, use_softmask=softmask, eps=1e-10)
    out = wiener(torch.from_numpy(v), torch.from_numpy(x), iterations, softmask=softmask, eps=1e-10)
    assert out.shape == ref.shape == (40, 17, nb_channels, 1) and out.dtype == torch.complex128
    assert np.abs(out.numpy() - ref).max() <= 1e-9 * np.abs(ref).max()


def test_one_source_is_the_mixture_where_its_estimate_covers_it():
    v = torch.rand(30, 9, 2, 1) + 1.0  # far above the EM's regulariser everywhere
    x = torch.randn(30, 9, 2, dtype=torch.complex64) * 3
    for softmask in (False, True):
        out = wiener(v, x, 2, softmask=softmask)
        assert out.shape == (30, 9, 2, 1) and out.dtype == torch.complex64
        assert torch.allclose(out[..., 0], x, rtol=1e-4, atol=1e-4)


def test_one_source_fast_path_equals_straightforward():
    from openunmix_like.filtering import wiener_fast

    spec = torch.rand(1, 2, 20, 30, dtype=torch.float64)
    mix = torch.randn(2, 20, 30, dtype=torch.complex128) * 20
    fast = wiener_fast(spec, mix, 2)
    slow = wiener(spec.permute(3, 2, 1, 0), mix.permute(2, 1, 0), 2).permute(3, 2, 1, 0)
    assert fast.shape == slow.shape == (1, 2, 20, 30)
    assert (fast - slow).abs().max() <= 1e-12 * slow.abs().max()


@pytest.mark.parametrize("nb_channels", [1, 2])
@pytest.mark.parametrize("softmask", [False, True])
def test_one_source_agrees_with_reference_openunmix(nb_channels, softmask):
    """Runs where the reference package imports (see shared/tools/reference-openunmix); skipped elsewhere."""
    reference = pytest.importorskip("openunmix.filtering")
    v, x = random_problem(nb_channels, nb_sources=1, seed=20)
    v, x = torch.from_numpy(v), torch.from_numpy(x)
    ref = reference.wiener(v, torch.view_as_real(x), iterations=2, softmask=softmask)  # (T, F, C, 2, J)
    ref = torch.view_as_complex(ref.transpose(-1, -2).contiguous())
    out = wiener(v, x, 2, softmask=softmask)
    # The reference's regulariser is sqrt(eps) in single precision: equal up to that rounding.
    assert (out - ref).abs().max() <= 1e-6 * ref.abs().max()


@pytest.mark.parametrize("iterations", [0, 1, 2])
@pytest.mark.parametrize("softmask", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_path_equals_straightforward(iterations, softmask, residual, dtype):
    from openunmix_like.filtering import wiener_fast

    torch.manual_seed(iterations)
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    spec = torch.rand(3, 2, 70, 45, dtype=dtype) * 2
    mix = torch.randn(2, 70, 45, dtype=cdtype) * 30  # large enough for the max-abs scaling
    mix[:, 5, 7] = 0  # a silent bin
    fast = wiener_fast(spec, mix, iterations, softmask, residual, win_len=20, win_offset=3, block_bins=16)
    slow = wiener(spec.permute(3, 2, 1, 0), mix.permute(2, 1, 0), iterations, softmask, residual,
                  win_len=20, win_offset=3).permute(3, 2, 1, 0)
    assert fast.dtype == cdtype and fast.shape == slow.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert (fast - slow).abs().max() <= tol * slow.abs().max()


@pytest.mark.parametrize("channels,spec_channels", [(2, 1), (1, 1), (3, 3)])
def test_fast_path_other_layouts(channels, spec_channels):
    from openunmix_like.filtering import wiener_fast

    spec = torch.rand(2, spec_channels, 9, 30, dtype=torch.float64)
    mix = torch.randn(channels, 9, 30, dtype=torch.complex128)
    fast = wiener_fast(spec, mix, 1)
    slow = wiener(spec.permute(3, 2, 1, 0), mix.permute(2, 1, 0), 1).permute(3, 2, 1, 0)
    assert fast.shape == (2, channels, 9, 30)
    assert torch.allclose(fast, slow, rtol=1e-9, atol=1e-12)


def test_fast_path_gives_the_same_result_whatever_the_block_of_bins():
    from openunmix_like.filtering import CPU_BLOCK_BINS, wiener_fast

    torch.manual_seed(5)
    spec = torch.rand(4, 2, 300, 60) * 2
    mix = torch.randn(2, 300, 60, dtype=torch.complex64) * 30
    default = wiener_fast(spec, mix, 1, win_len=25)  # CPU_BLOCK_BINS on the CPU
    assert torch.equal(wiener_fast(spec, mix, 1, win_len=25, block_bins=CPU_BLOCK_BINS), default)
    for block in (300, 7):  # bins are independent: only float rounding differs
        other = wiener_fast(spec, mix, 1, win_len=25, block_bins=block)
        assert (other - default).abs().max() <= 1e-6 * default.abs().max()
