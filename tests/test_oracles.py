"""Samplers against the exact denoiser of Gaussian data, where the truth is known in closed form."""

import math

import numpy as np
import pytest
import torch

from ddpmkit import GaussianMixture, NoiseSchedule, SeededNoise, sample

MU, S = 0.3, 0.5
SCHED = NoiseSchedule("linear", 1000)


def test_mixture_denoiser_is_tweedie():
    """E[x0 | x_t] = (x_t + (1 - abar) grad log p(x_t)) / sqrt(abar) (Tweedie's formula), with the
    score taken by autograd of the marginal density written out independently."""
    g = torch.Generator().manual_seed(0)
    means, w, s = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64), 0.3
    gm = GaussianMixture(means, s, w)
    for abar in (0.999, 0.5, 0.02):
        x = torch.randn(4, 5, generator=g, dtype=torch.float64).requires_grad_()
        var = abar * s**2 + (1 - abar)
        comp = -((x[:, None, :] - math.sqrt(abar) * means) ** 2).sum(-1) / (2 * var) + torch.log(w)
        torch.logsumexp(comp, 1).sum().backward()
        tweedie = (x + (1 - abar) * x.grad) / math.sqrt(abar)
        torch.testing.assert_close(gm.denoise(x.detach(), abar), tweedie.detach(), rtol=1e-10, atol=1e-10)


def test_mixture_sampling_and_model_outputs():
    gm = GaussianMixture.gaussian(MU, S, (2, 3))
    x = gm.sample(20000, torch.Generator().manual_seed(1))
    assert abs(x.mean().item() - MU) < 0.01 and abs(x.std().item() - S) < 0.01
    xt = torch.randn(4, 2, 3, dtype=torch.float64)
    t = torch.full((4,), 500)
    ab = SCHED.alphas_cumprod[500]
    eps, x0, v = (gm.model(SCHED, p)(xt, t) for p in ("eps", "x0", "v"))
    torch.testing.assert_close(xt, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps)
    torch.testing.assert_close(v, math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0)


def ddim_errors(prediction, steps, spacing="trailing"):
    gm = GaussianMixture.gaussian(MU, S, (1, 8, 8))
    x_T = SeededNoise(range(8), (1, 8, 8), dtype=torch.float64)()
    exact = gm.ode_solution(x_T, SCHED.alphas_cumprod[-1], 1.0)
    errs = []
    for n in steps:
        x = sample(gm.model(SCHED, prediction), SCHED, sampler="ddim", steps=n, spacing=spacing,
                   prediction=prediction, init_noise=x_T, dtype=torch.float64)
        errs.append(((x - exact) ** 2).mean().sqrt().item())
    return np.array(errs)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_converges_to_probability_flow_ode_with_order_one(prediction):
    steps = [10, 20, 40, 80, 160]
    errs = ddim_errors(prediction, steps)
    order = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(order - 1.0) < 0.15, (order, errs)
    assert errs[-1] < 0.01


def test_ode_solution_is_a_flow():
    gm = GaussianMixture.gaussian(MU, S, (3,))
    x = torch.randn(5, 3, dtype=torch.float64)
    direct = gm.ode_solution(x, 0.01, 0.9)
    torch.testing.assert_close(gm.ode_solution(gm.ode_solution(x, 0.01, 0.3), 0.3, 0.9), direct)
    # the flow pushes N(0, I)-ish marginals to the data: from abar ~ 0 it maps x to MU + S x
    torch.testing.assert_close(gm.ode_solution(x, 1e-12, 1.0), MU + S * x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler,opts", [("ddpm", {"variance": "small"}), ("ddpm", {"variance": "large"}),
                                          ("ddim", {"eta": 1.0}), ("ddim", {"eta": 0.0})])
def test_full_chain_samples_have_the_data_moments(sampler, opts):
    gm = GaussianMixture.gaussian(MU, S, (1, 16, 16))
    n = 64  # 16384 independent scalars: standard errors 0.004 (mean), 0.003 (std)
    x = sample(gm.model(SCHED, "eps"), SCHED, sampler=sampler, steps=1000, shape=(n, 1, 16, 16),
               dtype=torch.float64, **opts)
    assert abs(x.mean().item() - MU) < 0.016
    assert abs(x.std().item() - S) < 0.015
