"""Identities between samplers and with the closed-form posterior."""

import math

import torch

from ddpmkit import GaussianMixture, NoiseSchedule, sample
from ddpmkit.samplers.ddim import ddim_step
from ddpmkit.samplers.ddpm import ddpm_step

SCHED = NoiseSchedule("cosine", 1000)


def posterior_by_bayes(x_t, x0, abar_t, abar_s):
    """q(x_s | x_t, x0) ∝ q(x_t | x_s) q(x_s | x0), multiplied out as two Gaussians in x_s."""
    alpha = abar_t / abar_s  # the jump's 1 - beta
    prec = 1 / (1 - abar_s) + alpha / (1 - alpha)
    mean = (math.sqrt(abar_s) * x0 / (1 - abar_s) + math.sqrt(alpha) * x_t / (1 - alpha)) / prec
    return mean, 1 / prec


def test_ddpm_step_is_the_closed_form_posterior():
    g = torch.Generator().manual_seed(0)
    x_t, x0, z = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    for t, s in [(999, 998), (500, 499), (700, 300), (60, 0)]:
        ab_t, ab_s = SCHED.alphas_cumprod[t], SCHED.alphas_cumprod[s]
        mean, var = posterior_by_bayes(x_t, x0, ab_t, ab_s)
        out, sigma = ddpm_step(x_t, x0, ab_t, ab_s, "small", z)
        assert math.isclose(sigma**2, var, rel_tol=1e-10)
        torch.testing.assert_close(out, mean + sigma * z, rtol=1e-10, atol=1e-10)
        out, sigma = ddpm_step(x_t, x0, ab_t, ab_s, "large", z)
        assert math.isclose(sigma**2, 1 - ab_t / ab_s, rel_tol=1e-12)


def test_ddpm_step_is_algorithm_2():
    """Ho et al. Algorithm 2: x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma z."""
    g = torch.Generator().manual_seed(1)
    x_t, eps, z = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = 400
    ab_t, ab_s = SCHED.alphas_cumprod[t], SCHED.alphas_cumprod[t - 1]
    beta, alpha = SCHED.betas[t], SCHED.alphas[t]
    x0 = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    out, sigma = ddpm_step(x_t, x0, ab_t, ab_s, "large", z)
    torch.testing.assert_close(out, (x_t - beta / math.sqrt(1 - ab_t) * eps) / math.sqrt(alpha) + math.sqrt(beta) * z)


def test_ddim_eta_one_step_equals_ddpm_small_step():
    g = torch.Generator().manual_seed(2)
    x0, eps, z = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    ab_t, ab_s = SCHED.alphas_cumprod[800], SCHED.alphas_cumprod[650]
    x_t = math.sqrt(ab_t) * x0 + math.sqrt(1 - ab_t) * eps  # eps and x0 consistent with x_t
    a, _ = ddim_step(x_t, eps, x0, ab_t, ab_s, 1.0, z)
    b, _ = ddpm_step(x_t, x0, ab_t, ab_s, "small", z)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_ddim_eta_one_sampler_equals_respaced_ddpm_small():
    g = torch.Generator().manual_seed(3)
    gm = GaussianMixture(torch.randn(5, 1, 4, 4, generator=g), 0.2)
    for spacing, steps in [("trailing", 25), ("leading", 10), ("linspace", 7)]:
        kw = dict(steps=steps, spacing=spacing, shape=(6, 1, 4, 4), seeds=range(6), dtype=torch.float64)
        a = sample(gm.model(SCHED, "v"), SCHED, sampler="ddim", eta=1.0, prediction="v", **kw)
        b = sample(gm.model(SCHED, "v"), SCHED, sampler="ddpm", variance="small", prediction="v", **kw)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
        c = sample(gm.model(SCHED, "v"), SCHED, sampler="ddim", eta=0.0, prediction="v", **kw)
        assert (a - c).abs().max() > 0.01  # the identity is not trivially true
