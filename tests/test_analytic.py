"""Analytic-DPM's optimal variance on the exact Gaussian oracle."""

import numpy as np
import pytest
import torch

from ddpmkit import Denoiser, GaussianMixture, NoiseSchedule, SeededNoise
from ddpmkit.analytic import estimate_eps_moment, gaussian_eps_moment
from ddpmkit.samplers.ddpm import ddpm

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
    def run(**options):
        noise = SeededNoise(range(64), (1, 16, 16), dtype=torch.float64)
        return ddpm(Denoiser(GAUSS.model(SCHED), SCHED), noise(), SCHED.grid(50), noise=noise, **options)

    small = run(variance="small")
    optimal = run(variance="optimal", eps_moment=gaussian_eps_moment(SCHED, S))
    assert 0.43 < small.std().item() < 0.46
    assert abs(optimal.std().item() - S) < 0.015 and abs(optimal.mean().item() - MU) < 0.016
    # the table is the sampler's option, read where the sampler is: only ``optimal`` uses it
    torch.testing.assert_close(run(variance="small", eps_moment=gaussian_eps_moment(SCHED, S)), small, rtol=0, atol=0)


def test_optimal_variance_needs_the_moment():
    den = Denoiser(GAUSS.model(SCHED), SCHED)
    x = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match="variance='optimal' needs the model's eps moments .* `ddpmkit moments"):
        ddpm(den, x, SCHED.grid(10), noise=None, variance="optimal")
    with pytest.raises(ValueError, match="eps_moment must hold 1000 finite values, one per timestep; got 10 values"):
        ddpm(den, x, SCHED.grid(10), noise=None, variance="optimal", eps_moment=np.ones(10))
    with pytest.raises(ValueError, match="eps_moment must hold 1000 finite values.*not all finite"):
        ddpm(den, x, SCHED.grid(10), noise=None, variance="optimal", eps_moment=np.full(1000, np.nan))
    assert den.nfe == 0
    with pytest.raises(TypeError):  # the table is the sampler's, no longer the denoiser's
        Denoiser(GAUSS.model(SCHED), SCHED, eps_moment=np.ones(1000))


def test_eps_moment_of_a_model_over_its_training_data():
    from types import SimpleNamespace

    from ddpmkit.analytic import eps_moment_of_model

    sched = NoiseSchedule("linear", 100)
    model = SimpleNamespace(net=GaussianMixture.gaussian(0.0, 0.5, (1, 8, 8)).model(sched), schedule=sched,
                            prediction="eps", shape=(1, 8, 8), device=torch.device("cpu"))
    moment, info = eps_moment_of_model(model, "digits", num=64, timesteps=5, seed=1)
    assert moment.shape == (100,) and np.all(np.isfinite(moment))
    assert info == {"dataset": "digits", "images": 64, "timesteps": 5, "seed": 1}
    with pytest.raises(ValueError, match="--timesteps 101 exceeds the model's 100 timesteps"):
        eps_moment_of_model(model, "digits", timesteps=101)
    with pytest.raises(ValueError, match=r"--dataset digits has images of shape \(1, 8, 8\); the model makes"):
        eps_moment_of_model(SimpleNamespace(**{**vars(model), "shape": (1, 4, 4)}), "digits")
