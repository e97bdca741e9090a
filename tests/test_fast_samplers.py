"""The fast samplers: identities, convergence orders on the exact Gaussian denoiser, moments of the
stochastic ones, and trajectory parity with diffusers' schedulers on the same grid and noise."""

import math

import numpy as np
import pytest
import torch

from ddpmkit import GaussianMixture, NoiseSchedule, SeededNoise, sample
from ddpmkit.prediction import Denoiser
from ddpmkit.samplers import SAMPLERS

from conftest import diffusers  # without diffusers, the tests that use it skip (see conftest.py)

SCHED = NoiseSchedule("linear", 1000)
MU, S = 0.3, 0.5
GAUSS = GaussianMixture.gaussian(MU, S, (1, 6, 6))
MIX = GaussianMixture(torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0.3)


def test_euler_is_ddim():
    kw = dict(steps=12, shape=(4, 1, 4, 4), dtype=torch.float64, spacing="trailing")
    a = sample(MIX.model(SCHED), SCHED, sampler="euler", **kw)
    b = sample(MIX.model(SCHED), SCHED, sampler="ddim", **kw)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def errors_against_exact_flow(sampler, steps_list, spacing="logsnr"):
    """RMS error of x_0 against the exact probability-flow ODE solution from the same x_T to the
    last grid point (t = 0, shared by every grid), followed by the same final denoising step."""
    x_T = SeededNoise(range(8), (1, 6, 6), dtype=torch.float64)()
    abar_first, abar_last = SCHED.alphas_cumprod[-1], SCHED.alphas_cumprod[0]
    exact = GAUSS.denoise(GAUSS.ode_solution(x_T, abar_first, abar_last), abar_last)
    errs = []
    for n in steps_list:
        x = sample(GAUSS.model(SCHED), SCHED, sampler=sampler, steps=n, spacing=spacing, init_noise=x_T,
                   dtype=torch.float64)
        errs.append(((x - exact) ** 2).mean().sqrt().item())
    return np.array(errs)


@pytest.mark.parametrize("sampler,order", [("euler", 1), ("ddim", 1), ("heun", 2), ("dpmpp-2m", 2)])
def test_convergence_order(sampler, order):
    steps = [16, 32, 64, 128]
    errs = errors_against_exact_flow(sampler, steps)
    fitted = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(fitted - order) < 0.3, (sampler, fitted, errs)


def test_dpmpp_3m_order():
    """3M is third order once started, but its first step is first order and its second step
    second order (as in DPM-Solver++ and diffusers), and a first-order start leaves an O(h^2)
    global error. So the observed order falls from about 3 towards 2 as steps grow; measured here:
    2.65 (16 -> 32 steps), 2.28, 2.10 (64 -> 128). Its error stays below 2M's: 1.3x lower at 16
    steps, 2.3x at 32, 2.9x at 128."""
    steps = [16, 32, 64, 128]
    e3, e2 = errors_against_exact_flow("dpmpp-3m", steps), errors_against_exact_flow("dpmpp-2m", steps)
    local = -np.diff(np.log(e3)) / np.log(2)
    assert 2.4 < local[0] < 3.3 and 1.8 < local[-1] < 2.4, local
    assert np.all(e3 < e2) and np.all(e3[1:] < e2[1:] / 2), (e3, e2)


@pytest.mark.parametrize(
    "sampler,opts,steps",
    [
        # first-order stochastic samplers under-disperse by O(1/N) (std 0.47 at 100 steps, 0.495 at
        # 400, like respaced ddpm), so they get more steps than the second-order ones
        ("euler-ancestral", {}, 400),
        ("euler", {"s_churn": 40.0}, 400),
        ("heun", {"s_churn": 40.0, "s_tmax": 50.0}, 100),
        ("dpmpp-2m-sde", {}, 100),
        ("restart", {}, 40),
    ],
)
def test_stochastic_samplers_reach_the_data_moments(sampler, opts, steps):
    gm = GaussianMixture.gaussian(MU, S, (1, 16, 16))
    x = sample(gm.model(SCHED), SCHED, sampler=sampler, steps=steps, spacing="karras", shape=(64, 1, 16, 16),
               dtype=torch.float64, **opts)
    assert abs(x.mean().item() - MU) < 0.016, x.mean().item()
    assert abs(x.std().item() - S) < 0.015, x.std().item()


# -- parity with diffusers -----------------------------------------------------------------------
class StepNoise:
    """Our sampler's noise(): call k returns what torch.Generator seeded 100 + k draws, which is what
    diffusers draws at step k when given that generator."""

    def __init__(self, shape):
        self.shape, self.k = shape, 0

    def __call__(self):
        z = torch.randn(self.shape, generator=torch.Generator().manual_seed(100 + self.k), dtype=torch.float64)
        self.k += 1
        return z


def ours(name, x_T, grid, model, **opts):
    den = Denoiser(model, SCHED, "eps")
    return SAMPLERS[name](den, x_T.clone(), grid, noise=StepNoise(x_T.shape), **opts)


def their_loop(sched, model, x_T, sigma0, ve, stochastic=False, variance_noise=False, states=None):
    y = x_T * math.sqrt(1 + sigma0**2) if ve else x_T.clone()  # the exact VE start (see the README)
    for i, t in enumerate(sched.timesteps):
        inp = sched.scale_model_input(y, t) if ve else y
        out = model(inp, torch.full((len(y),), float(t)))
        kw = {}
        if stochastic and variance_noise:
            kw["variance_noise"] = torch.randn(y.shape, generator=torch.Generator().manual_seed(100 + i), dtype=torch.float64)
        elif stochastic:
            kw["generator"] = torch.Generator().manual_seed(100 + i)
        y = sched.step(out, t, y, **kw).prev_sample
        if states is not None:
            states.append(y)
    return y


def our_sigmas(grid):
    ab = SCHED.abar_at(np.asarray(grid, dtype=np.float64))
    return np.append(np.sqrt((1 - ab) / ab), 0.0)


def on_our_grid(cls, steps, **kw):
    """(diffusers' multistep scheduler ``cls`` on our trailing grid of ``steps``, the grid): its
    timesteps checked to be ours, its sigmas replaced by ours in float64 (so both sides compute alike)."""
    sched = getattr(diffusers, cls)(num_train_timesteps=1000, trained_betas=SCHED.betas.tolist(),
                                    timestep_spacing="trailing", **kw)
    sched.set_timesteps(steps)
    grid = SCHED.grid(steps, "trailing")
    np.testing.assert_array_equal(sched.timesteps.numpy(), grid)
    sched.sigmas = torch.tensor(our_sigmas(grid))
    return sched, grid


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("name,cls,kw", [
    ("euler", "EulerDiscreteScheduler", {}),
    ("euler-ancestral", "EulerAncestralDiscreteScheduler", {}),
    ("heun", "HeunDiscreteScheduler", {}),
])
def test_edm_family_parity(steps, name, cls, kw):
    sched = getattr(diffusers, cls)(num_train_timesteps=1000, trained_betas=SCHED.betas.tolist(),
                                    timestep_spacing="trailing", **kw)
    sched.set_timesteps(steps)
    grid = SCHED.grid(steps, "trailing")
    sig = torch.tensor(our_sigmas(grid))
    if name == "heun":
        np.testing.assert_array_equal(sched.timesteps.numpy()[::2], grid)
        sched.sigmas = torch.cat([sig[:1], sig[1:-1].repeat_interleave(2), sig[-1:]])
    else:
        np.testing.assert_array_equal(sched.timesteps.numpy(), grid)
        sched.sigmas = sig
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = MIX.model(SCHED, "eps")
    theirs = their_loop(sched, model, x_T, float(sig[0]), ve=True, stochastic=name == "euler-ancestral")
    # diffusers' Euler steps compute in float32, hence 1e-5 rather than float64 round-off
    torch.testing.assert_close(ours(name, x_T, grid, model), theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [6, 10, 20])
@pytest.mark.parametrize("name,order,algorithm", [("dpmpp-2m", 2, "dpmsolver++"), ("dpmpp-3m", 3, "dpmsolver++"),
                                                  ("dpmpp-2m-sde", 2, "sde-dpmsolver++")])
def test_dpm_solver_parity(steps, name, order, algorithm):
    sched, grid = on_our_grid("DPMSolverMultistepScheduler", steps, solver_order=order, algorithm_type=algorithm,
                              solver_type="midpoint", final_sigmas_type="zero", lower_order_final=True)
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model = MIX.model(SCHED, "eps")
    sde = algorithm.startswith("sde")
    theirs = their_loop(sched, model, x_T, 0.0, ve=False, stochastic=sde, variance_noise=True)
    # diffusers converts some intermediates to float32: agreement to 1e-5, not to float64 round-off
    torch.testing.assert_close(ours(name, x_T, grid, model), theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("order,variant", [(1, "bh2"), (2, "bh1"), (2, "bh2"), (3, "bh1"), (3, "bh2")])
def test_unipc_parity(steps, order, variant):
    sched, grid = on_our_grid("UniPCMultistepScheduler", steps, solver_order=order, solver_type=variant,
                              predict_x0=True, lower_order_final=True, final_sigmas_type="zero")
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = MIX.model(SCHED, "eps")
    states = []
    theirs = their_loop(sched, model, x_T, 0.0, ve=False, states=states)
    seen = []
    den = Denoiser(model, SCHED, "eps")
    mine = SAMPLERS["unipc"](den, x_T.clone(), grid, noise=None, order=order, variant=variant,
                             callback=lambda i, t, x, x0: seen.append(x))
    # every predicted state x_1 .. x_{N-1} (each model input) agrees
    for a, b in zip(seen[1:], states[:-1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if variant == "bh1":
        # diffusers' B1(h) = h is -inf on the step into sigma = 0 and multiplies a zero correction:
        # NaN. The step is first order, x_0 = x0_hat, and ours returns exactly that.
        assert torch.isnan(theirs).all()
        assert torch.isfinite(mine).all()
    else:
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order,expected", [(1, 2.0), (2, 3.0)])
def test_unipc_corrector_raises_the_order(order, expected):
    """UniC-p lifts UniP-p's order p to p + 1 (Zhao et al. 2023, Theorem 3.1)."""
    steps = [16, 32, 64, 128]
    errs = []
    for n in steps:
        x_T = SeededNoise(range(8), (1, 6, 6), dtype=torch.float64)()
        abar_first, abar_last = SCHED.alphas_cumprod[-1], SCHED.alphas_cumprod[0]
        exact = GAUSS.denoise(GAUSS.ode_solution(x_T, abar_first, abar_last), abar_last)
        x = sample(GAUSS.model(SCHED), SCHED, sampler="unipc", order=order, variant="bh1", steps=n,
                   spacing="logsnr", init_noise=x_T, dtype=torch.float64)
        errs.append(((x - exact) ** 2).mean().sqrt().item())
    fitted = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(fitted - expected) < 0.3, (fitted, errs)


@pytest.mark.parametrize("steps", [4, 10, 20])
def test_ipndm_parity(steps):
    # diffusers' IPNDMScheduler builds its own (alpha, sigma) table from a sine; given ours on our
    # grid (and alpha = 1, sigma = 0 after it), its step is ours: DDIM with the Adams-Bashforth
    # combination of the last four eps. It reads a v prediction (ets = sigma x + alpha v = eps).
    sched = diffusers.IPNDMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(steps)
    grid = SCHED.grid(steps, "trailing")
    ab = SCHED.abar_at(np.asarray(grid, dtype=np.float64))
    sched.alphas = torch.tensor(np.append(np.sqrt(ab), 1.0))
    sched.betas = torch.tensor(np.append(np.sqrt(1 - ab), 0.0))
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    v_model = MIX.model(SCHED, "v")
    x = x_T.clone()
    for t_theirs, t in zip(sched.timesteps, grid):
        x = sched.step(v_model(x, torch.full((len(x),), float(t))), t_theirs, x).prev_sample
    den = Denoiser(v_model, SCHED, "v")
    torch.testing.assert_close(SAMPLERS["ipndm"](den, x_T.clone(), grid, noise=None), x, rtol=1e-10, atol=1e-10)


def test_ipndm_order_1_is_ddim_and_higher_orders_converge_faster():
    kw = dict(steps=12, shape=(4, 1, 4, 4), dtype=torch.float64, spacing="logsnr")
    torch.testing.assert_close(sample(MIX.model(SCHED), SCHED, sampler="ipndm", order=1, **kw),
                               sample(MIX.model(SCHED), SCHED, sampler="ddim", **kw), rtol=1e-12, atol=1e-12)
    e1 = errors_against_exact_flow("ddim", [10, 20])
    e4 = errors_against_exact_flow("ipndm", [10, 20])
    assert (e4 < 0.3 * e1).all(), (e1, e4)


@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # diffusers' last step takes log(0)
@pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")  # np.log on tensors
def test_deis_parity(steps, order):
    # diffusers' DEISMultistepScheduler ("logrho") on our grid and sigmas: every state it feeds the
    # model agrees with ours. Its last step into sigma = 0 is 0 * inf (NaN) where ours, first order
    # into clean data, returns x0_hat of the last state (as DPM-Solver++ does).
    sched, grid = on_our_grid("DEISMultistepScheduler", steps, solver_order=order, lower_order_final=True)
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    model = MIX.model(SCHED, "eps")
    states, seen = [], []
    their_loop(sched, model, x_T, 0.0, ve=False, states=states)
    den = Denoiser(model, SCHED, "eps")
    mine = SAMPLERS["deis"](den, x_T.clone(), grid, noise=None, order=order,
                            callback=lambda i, t, x, x0: seen.append((x, x0)))
    for (a, _), b in zip(seen[1:], states[:-1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mine, seen[-1][1], rtol=1e-12, atol=1e-12)


def test_deis_order_1_is_ddim_and_higher_orders_converge_faster():
    kw = dict(steps=12, shape=(4, 1, 4, 4), dtype=torch.float64, spacing="logsnr")
    torch.testing.assert_close(sample(MIX.model(SCHED), SCHED, sampler="deis", order=1, **kw),
                               sample(MIX.model(SCHED), SCHED, sampler="ddim", **kw), rtol=1e-12, atol=1e-12)
    e1, e3 = errors_against_exact_flow("ddim", [10, 20]), errors_against_exact_flow("deis", [10, 20])
    assert (e3 < 0.3 * e1).all(), (e1, e3)
