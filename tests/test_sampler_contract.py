"""One contract, checked for every registered sampler."""

import inspect

import pytest
import torch

from ddpmkit import GaussianMixture, NoiseSchedule, SeededNoise, sample
from ddpmkit.samplers import SAMPLERS, min_steps, nfe_for, sampler_options, steps_for_nfe

SCHED = NoiseSchedule("cosine", 1000)
MIX = GaussianMixture(torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(0)), 0.2)
SHAPE = (2, 3, 3)


class Counting:
    def __init__(self):
        self.calls, self.model = 0, MIX.model(SCHED, "v")

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_finite(name, dtype):
    x = sample(MIX.model(SCHED, "v"), SCHED, sampler=name, steps=7, prediction="v", shape=(3, *SHAPE), dtype=dtype)
    assert x.shape == (3, *SHAPE) and x.dtype == dtype and torch.isfinite(x).all()


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("spacing", ["trailing", "karras"])
def test_seed_invariance(name, spacing):
    kw = dict(sampler=name, steps=6, spacing=spacing, prediction="v", dtype=torch.float64)
    full = sample(MIX.model(SCHED, "v"), SCHED, shape=(5, *SHAPE), seeds=[3, 1, 4, 1, 5], **kw)
    parts = sample(MIX.model(SCHED, "v"), SCHED, shape=(5, *SHAPE), seeds=[3, 1, 4, 1, 5], batch_size=2, **kw)
    one = sample(MIX.model(SCHED, "v"), SCHED, shape=(1, *SHAPE), seeds=[4], **kw)
    torch.testing.assert_close(parts, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one[0], full[2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full[1], full[3], rtol=1e-12, atol=1e-12)  # the same seed twice


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 2, 5, 12])
def test_reported_nfe_is_the_number_of_model_calls(name, steps):
    model = Counting()
    if steps < min_steps(name):  # refused, before any network call, rather than run as another sampler
        with pytest.raises(ValueError, match=f"{name} needs at least .* steps .*; got {steps}"):
            sample(model, SCHED, sampler=name, steps=steps, prediction="v", shape=(2, *SHAPE))
        with pytest.raises(ValueError, match="needs at least"):
            nfe_for(name, steps)
        assert model.calls == 0
        return
    x, info = sample(model, SCHED, sampler=name, steps=steps, prediction="v", shape=(2, *SHAPE), return_info=True)
    assert info["nfe"] == model.calls == nfe_for(name, steps)
    assert len(info["grid"]) == steps


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_nfe_budget(name):
    for budget in (5, 10, 20):
        least = min_steps(name)
        if nfe_for(name, least) > budget:  # restart's fewest steps cost 15 NFE: smaller budgets are refused
            with pytest.raises(ValueError, match=f"needs more than {budget} network evaluations"):
                steps_for_nfe(name, budget, SCHED.T)
            continue
        steps = steps_for_nfe(name, budget, SCHED.T)
        assert nfe_for(name, steps) <= budget < nfe_for(name, steps + 1)
        model = Counting()
        sample(model, SCHED, sampler=name, nfe=budget, prediction="v", shape=(1, *SHAPE))
        assert model.calls == nfe_for(name, steps)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_options_are_documented_and_checked(name):
    fn = SAMPLERS[name]
    doc = inspect.getdoc(fn)
    assert doc and ("et al." in doc or "k-diffusion" in doc), f"{name} must cite its paper"
    with pytest.raises(ValueError, match=f"unknown option 'bogus' for sampler '{name}'; valid: "):
        sample(MIX.model(SCHED, "v"), SCHED, sampler=name, steps=3, prediction="v", shape=(1, *SHAPE), bogus=1)
    for opt, default in sampler_options(name).items():
        if isinstance(default, float) and opt != "s_tmax":
            with pytest.raises(ValueError, match=opt):
                sample(MIX.model(SCHED, "v"), SCHED, sampler=name, steps=3, prediction="v", shape=(1, *SHAPE),
                       **{opt: -1.0})


ZSNR = NoiseSchedule("linear", 1000, zero_terminal_snr=True)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_zero_terminal_snr(name):
    """From pure noise (abar_{T-1} = 0) a sampler either works (VP solvers: their first step is the
    exact one from lambda = -inf) or says clearly that it needs a finite sigma (the EDM family)."""
    gm = GaussianMixture.gaussian(0.3, 0.5, (1, 4, 4))
    kw = dict(sampler=name, steps=8, prediction="v", shape=(4, 1, 4, 4), dtype=torch.float64)
    if name in ("euler", "heun", "euler-ancestral", "restart"):
        with pytest.raises(ValueError, match="finite sigma"):
            sample(gm.model(ZSNR, "v"), ZSNR, **kw)
        return
    x = sample(gm.model(ZSNR, "v"), ZSNR, **kw)
    assert torch.isfinite(x).all()
    if name in ("ddim", "dpmpp-2m", "dpmpp-3m", "unipc"):  # deterministic: they converge to the exact flow
        x_T = SeededNoise(range(4), (1, 4, 4), dtype=torch.float64)()
        abar_0 = ZSNR.alphas_cumprod[0]
        exact = gm.denoise(gm.ode_solution(x_T, 0.0, abar_0), abar_0)
        x = sample(gm.model(ZSNR, "v"), ZSNR, **dict(kw, steps=32, shape=None), init_noise=x_T)
        assert ((x - exact) ** 2).mean().sqrt() < 0.04  # measured: ddim 0.038, the others < 0.01


def test_optimal_variance_refuses_zero_terminal_snr():
    gm = GaussianMixture.gaussian(0.3, 0.5, (1, 4, 4))
    with pytest.raises(ValueError, match="undefined at abar = 0"):
        sample(gm.model(ZSNR, "v"), ZSNR, sampler="ddpm", variance="optimal", eps_moment=[0.5] * 1000, steps=8,
               prediction="v", shape=(1, 1, 4, 4))
