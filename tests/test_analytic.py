"""Analytic-DPM's optimal variance on the exact Gaussian oracle."""

import numpy as np
import pytest
import torch

from ddpmkit import GaussianMixture, NoiseSchedule, sample
from ddpmkit.analytic import estimate_eps_moment, gaussian_eps_moment

SCHED = NoiseSchedule("linear", 1000)
MU, S = 0.3, 0.5
GAUSS = GaussianMixture.gaussian(MU, S, (1, 16, 16))


def test_monte_carlo_moment_matches_closed_form():
    data = GAUSS.sample(512, torch.Generator().manual_seed(0)).float()
    est = estimate_eps_moment(GAUSS.model(SCHED), SCHED, data, num_timesteps=11)
    exact = gaussian_eps_moment(SCHED, S)
    grid = np.round(np.linspace(0, 999, 11)).astype(int)
    # 512 images x 256 pixels per timestep: relative error well below 1%
    np.testing.assert_allclose(est[grid], exact[grid], rtol=0.01, atol=0.003)
    assert est.shape == (1000,) and np.all((est > 0) & (est <= 1.0 + 1e-2))


def test_optimal_variance_removes_the_under_dispersion():
    """On N(0.3, 0.5^2), respaced ancestral sampling with the small variance at 50 steps gives std
    about 0.447; Analytic-DPM's optimal variance brings it back to 0.5."""
    kw = dict(sampler="ddpm", steps=50, shape=(64, 1, 16, 16), dtype=torch.float64)
    small = sample(GAUSS.model(SCHED), SCHED, variance="small", **kw)
    optimal = sample(GAUSS.model(SCHED), SCHED, variance="optimal", eps_moment=gaussian_eps_moment(SCHED, S), **kw)
    assert 0.43 < small.std().item() < 0.46
    assert abs(optimal.std().item() - S) < 0.015 and abs(optimal.mean().item() - MU) < 0.016


def test_optimal_variance_needs_the_moment():
    with pytest.raises(ValueError, match="variance='optimal' needs the model's eps moments"):
        sample(GAUSS.model(SCHED), SCHED, sampler="ddpm", steps=10, shape=(1, 1, 16, 16), variance="optimal")
    with pytest.raises(ValueError, match="eps_moment must hold 1000 finite values"):
        sample(GAUSS.model(SCHED), SCHED, sampler="ddpm", steps=10, shape=(1, 1, 16, 16), variance="optimal",
               eps_moment=np.ones(10))
