"""Schedules against their closed forms and diffusers' tables; grids against diffusers' set_timesteps."""

import math

import numpy as np
import pytest
import torch

from ddpmkit.schedule import NoiseSchedule, check_grid, make_grid

from conftest import diffusers  # the tests marked needs_diffusers skip without it (see conftest.py)


def test_linear_closed_form():
    s = NoiseSchedule("linear", 1000)
    t = np.arange(1000)
    beta = 1e-4 + (0.02 - 1e-4) * t / 999
    np.testing.assert_allclose(s.betas, beta, rtol=0, atol=1e-15)
    # abar_t = prod(1 - beta): compare with a sum of logs computed independently
    np.testing.assert_allclose(s.alphas_cumprod, np.exp(np.cumsum(np.log1p(-beta))), rtol=1e-12)
    assert s.betas.dtype == np.float64 and s.alphas_cumprod.dtype == np.float64
    assert s.alphas_cumprod[-1] == pytest.approx(4.036e-5, rel=1e-3)  # DDPM's abar_T


def test_linear_scales_default_endpoints_with_T():
    s = NoiseSchedule("linear", 100)
    assert s.betas[0] == pytest.approx(1e-3) and s.betas[-1] == pytest.approx(0.2)
    s2 = NoiseSchedule("linear", 100, beta_start=1e-4, beta_end=0.02)
    assert s2.betas[-1] == pytest.approx(0.02)


def test_cosine_closed_form():
    s = NoiseSchedule("cosine", 1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    capped = s.betas >= 0.999 - 1e-12
    assert capped.sum() == 1 and capped[-1]  # only the last beta hits the 0.999 cap
    expect = np.array([f((t + 1) / 1000) / f(0) for t in range(999)])
    np.testing.assert_allclose(s.alphas_cumprod[:999], expect, rtol=1e-10)


def test_sigmoid_closed_form():
    s = NoiseSchedule("sigmoid", 1000)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    g = lambda u: (sig(3) - sig(6 * u - 3)) / (sig(3) - sig(-3))  # noqa: E731
    ok = s.betas < 0.999
    expect = np.array([g((t + 1) / 1000) / g(0) for t in range(1000)])
    np.testing.assert_allclose(s.alphas_cumprod[ok], expect[ok], rtol=1e-9)
    assert np.all(np.diff(s.alphas_cumprod) < 0)


@pytest.mark.parametrize(
    "name,theirs,kw",
    [
        ("linear", "linear", dict(beta_start=1e-4, beta_end=0.02)),
        ("scaled_linear", "scaled_linear", dict(beta_start=0.00085, beta_end=0.012)),
        ("cosine", "squaredcos_cap_v2", {}),
    ],
)
@pytest.mark.needs_diffusers
def test_schedules_match_diffusers(name, theirs, kw):
    ours = NoiseSchedule(name, 1000)
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs, **kw)
    np.testing.assert_allclose(ours.betas, ref.betas.double().numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.double().numpy(), rtol=1e-4)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine", "sigmoid"])
def test_zero_terminal_snr(name):
    base = NoiseSchedule(name, 1000)
    z = NoiseSchedule(name, 1000, zero_terminal_snr=True)
    assert z.alphas_cumprod[-1] == 0.0
    assert z.alphas_cumprod[0] == pytest.approx(base.alphas_cumprod[0], rel=1e-12)
    # Lin et al. Algorithm 1 is an affine map of sqrt(abar)
    sa, sz = np.sqrt(base.alphas_cumprod), np.sqrt(z.alphas_cumprod)
    np.testing.assert_allclose(sz, (sa - sa[-1]) * sa[0] / (sa[0] - sa[-1]), atol=1e-12)
    assert np.isneginf(z.log_snr[-1])


@pytest.mark.needs_diffusers
@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine", "sigmoid"])
def test_zero_terminal_snr_matches_diffusers(name):
    base = NoiseSchedule(name, 1000)
    z = NoiseSchedule(name, 1000, zero_terminal_snr=True)
    ref = diffusers.schedulers.scheduling_ddpm.rescale_zero_terminal_snr(torch.tensor(base.betas))
    np.testing.assert_allclose(z.betas, ref.numpy(), atol=1e-12)


def test_sigma_and_log_snr():
    s = NoiseSchedule("linear", 1000)
    ab = s.alphas_cumprod
    np.testing.assert_allclose(s.sigmas, np.sqrt((1 - ab) / ab))
    np.testing.assert_allclose(s.log_snr, np.log(ab / (1 - ab)))
    np.testing.assert_allclose(s.log_snr, -2 * np.log(s.sigmas))


def test_abar_at_integers_and_fractions():
    s = NoiseSchedule("cosine", 1000)
    assert s.abar_at(17) == s.alphas_cumprod[17]
    np.testing.assert_array_equal(s.abar_at(np.arange(1000)), s.alphas_cumprod)
    # a scalar grid point (int, float or numpy float: the samplers' fast path) is the array path's value
    for t in (0, 17, 999, 17.0, np.float64(998.0)):
        assert s.abar_at(t) == s.abar_at(np.array([t]))[0] and type(s.abar_at(t)) is float
    for bad in (1000, 1000.0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="outside"):
            s.abar_at(bad)
    # halfway, logSNR is the mean of its neighbours' (log sigma interpolation, as in k-diffusion)
    lam = 0.5 * (s.log_snr[17] + s.log_snr[18])
    assert s.abar_at(17.5) == pytest.approx(1 / (1 + math.exp(-lam)), rel=1e-12)
    x = s.abar_at(np.linspace(0, 999, 5001))
    assert np.all(np.diff(x) < 0)
    z = NoiseSchedule("linear", 1000, zero_terminal_snr=True)
    assert 0 < z.abar_at(998.5) < z.alphas_cumprod[998] and z.abar_at(999) == 0.0
    with pytest.raises(ValueError, match="outside"):
        s.abar_at(1000)
    with pytest.raises(ValueError, match="outside"):
        s.abar_at(-0.5)


def test_config_round_trip():
    s = NoiseSchedule("sigmoid", 500, tau=0.7, zero_terminal_snr=True)
    s2 = NoiseSchedule.from_config(s.to_config())
    np.testing.assert_array_equal(s.betas, s2.betas)
    assert s2.to_config() == s.to_config()


def test_schedule_errors():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'; valid: linear, scaled_linear, cosine, sigmoid"):
        NoiseSchedule("quadratic")
    with pytest.raises(ValueError, match="unknown parameter 'tau' for schedule 'linear'"):
        NoiseSchedule("linear", tau=1.0)
    with pytest.raises(ValueError, match="T=1"):
        NoiseSchedule("linear", 1)
    with pytest.raises(ValueError, match="outside"):
        NoiseSchedule("linear", 1000, beta_end=1.5)


def diffusers_grid(T, n, spacing, offset=0):
    sch = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    sch.set_timesteps(n)
    return sch.timesteps.numpy()


@pytest.mark.needs_diffusers
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("T", [1000, 100])
def test_grids_match_diffusers(spacing, T):
    for n in range(1, T + 1):
        ours, ref = make_grid(T, n, spacing), diffusers_grid(T, n, spacing)
        if spacing == "trailing" and len(ref) == n + 1:
            # diffusers' float np.arange sometimes yields one extra entry, -1; the rest agrees
            assert ref[-1] == -1
            ref = ref[:-1]
        np.testing.assert_array_equal(ours, ref, err_msg=f"T={T} steps={n} {spacing}")
        assert len(ours) == n and np.all(np.diff(ours) < 0) and ours.min() >= 0 and ours.max() <= T - 1
    ddpm = diffusers.DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    for n in (1, 7, 10, 50, T):
        ddpm.set_timesteps(n)
        np.testing.assert_array_equal(make_grid(T, n, spacing), ddpm.timesteps.numpy()[:n])


@pytest.mark.needs_diffusers
def test_leading_offset_matches_diffusers():
    np.testing.assert_array_equal(make_grid(1000, 50, "leading", offset=1), diffusers_grid(1000, 50, "leading", 1))


def test_leading_offset_and_trailing_start():
    assert make_grid(1000, 50, "leading", offset=1).tolist() == list(range(981, 0, -20))  # leading shifted by 1
    assert make_grid(1000, 1, "trailing").tolist() == [999]
    assert make_grid(1000, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert make_grid(1000, 1000, "leading").tolist() == list(range(999, -1, -1))


def test_grid_errors():
    with pytest.raises(ValueError, match="unknown spacing 'uniform'; valid: leading, trailing, linspace"):
        make_grid(1000, 10, "uniform")
    for bad in (0, 1001, 2.5):
        with pytest.raises(ValueError, match=r"steps=.* is not valid; need an integer in \[1, 1000\]"):
            make_grid(1000, bad)
    with pytest.raises(ValueError, match="descending"):
        check_grid([10, 20], 1000)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        check_grid([1000, 5], 1000)
