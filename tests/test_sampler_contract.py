"""One contract, checked for every registered sampler."""

import inspect
import math

import pytest
import torch

from ddpmkit import Denoiser, GaussianMixture, NoiseSchedule, SeededNoise, sample
from ddpmkit.ems import estimate_ems
from ddpmkit.samplers import SAMPLERS, min_steps, nfe_for, sampler_options, steps_for_nfe

SCHED = NoiseSchedule("cosine", 1000)
MIX = GaussianMixture(torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(0)), 0.2)
SHAPE = (2, 3, 3)
# what a model supplies to the samplers that need it (DPM-Solver-v3's statistics, estimated for MIX)
EMS = estimate_ems(MIX.model(SCHED, "v"), SCHED, shape=SHAPE, num=16, points=30, prediction="v", dtype=torch.float64)
EXTRAS = {"dpm-solver-v3": {"ems": EMS}}


class Counting:
    def __init__(self):
        self.calls, self.model = 0, MIX.model(SCHED, "v")

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_finite(name, dtype):
    x = sample(MIX.model(SCHED, "v"), SCHED, sampler=name, steps=7, prediction="v", shape=(3, *SHAPE), dtype=dtype,
               **EXTRAS.get(name, {}))
    assert x.shape == (3, *SHAPE) and x.dtype == dtype and torch.isfinite(x).all()


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("spacing", ["trailing", "karras"])
def test_seed_invariance(name, spacing):
    kw = dict(sampler=name, steps=6, spacing=spacing, prediction="v", dtype=torch.float64, **EXTRAS.get(name, {}))
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
            sample(model, SCHED, sampler=name, steps=steps, prediction="v", shape=(2, *SHAPE), **EXTRAS.get(name, {}))
        with pytest.raises(ValueError, match="needs at least"):
            nfe_for(name, steps)
        assert model.calls == 0
        return
    x, info = sample(model, SCHED, sampler=name, steps=steps, prediction="v", shape=(2, *SHAPE), return_info=True,
                     **EXTRAS.get(name, {}))
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
        sample(model, SCHED, sampler=name, nfe=budget, prediction="v", shape=(1, *SHAPE), **EXTRAS.get(name, {}))
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
    if name in ("euler", "heun", "euler-ancestral", "restart", "ipndm", "deis"):  # they step in (y, sigma)
        with pytest.raises(ValueError, match="finite sigma"):
            sample(gm.model(ZSNR, "v"), ZSNR, **kw)
        return
    if name == "dpm-solver-v3":  # its statistics live on a finite lambda grid, which cannot reach lambda = -inf
        with pytest.raises(ValueError, match="finite terminal SNR"):
            estimate_ems(gm.model(ZSNR, "v"), ZSNR, shape=(1, 4, 4), num=4, prediction="v")
        with pytest.raises(ValueError, match="finite terminal SNR"):
            sample(gm.model(ZSNR, "v"), ZSNR, **kw, ems=EMS)
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
    den = Denoiser(gm.model(ZSNR, "v"), ZSNR, "v")
    with pytest.raises(ValueError, match="undefined at abar = 0"):
        SAMPLERS["ddpm"](den, torch.zeros(1, 1, 4, 4), ZSNR.grid(8), noise=None, variance="optimal",
                         eps_moment=[0.5] * 1000)
    assert den.nfe == 0


# -- each sampler's check, against the sampler itself -------------------------------------------------
GAMMA = [0.5] * 1000  # any Gamma table lets ddpm take variance='optimal'
GRIDS = {  # (schedule, grid)
    "trailing": (SCHED, SCHED.grid(6, "trailing")),
    "karras": (SCHED, SCHED.grid(5, "karras")),
    "one step": (SCHED, SCHED.grid(1, "trailing")),
    "zero snr": (ZSNR, ZSNR.grid(6, "trailing")),
    "off the schedule": (SCHED, [1200.0, 3.0]),
}
BAD_OPTIONS = {
    "ddpm": [{"variance": "tiny"}, {"variance": "optimal"}, {"variance": "optimal", "eps_moment": GAMMA},
             {"variance": "optimal", "eps_moment": [0.5] * 10}, {"eps_moment": [float("nan")] * 1000},
             {"variance": "large"}],
    "ddim": [{"eta": 2.0}, {"eta": -0.1}, {"eta": True}, {"eta": float("nan")}, {"eta": 1.0}],
    "euler": [{"s_churn": -1.0}, {"s_churn": math.inf}, {"s_tmin": 2.0, "s_tmax": 1.0}, {"s_noise": -1.0},
              {"s_churn": 10.0, "s_tmin": 0.1, "s_tmax": 5.0}],
    "euler-ancestral": [{"eta": -1.0}, {"eta": 1.5}, {"s_noise": -1.0}, {"s_noise": float("nan")}, {"eta": 0.5}],
    "unipc": [{"order": 0}, {"order": 4}, {"order": 2.5}, {"variant": "bh3"}, {"order": 3, "corrector": False}],
    "restart": [{"restart_tmin": 0.0}, {"restart_tmin": 0.5, "restart_tmax": 0.4}, {"restart_tmax": math.inf},
                {"restart_k": 0}, {"restart_k": 1.5}, {"restart_steps": True}, {"restart_steps": 0},
                {"s_noise": -1.0}, {"restart_tmax": 1e6}, {"restart_k": 1, "restart_steps": 1}],
    "cm": [{"clip_denoised": False}],
    "dpm-solver-v3": [{"ems": EMS}, {"ems": EMS, "order": 4}, {"ems": EMS, "predictor": "taylor"},
                      {"ems": EMS, "corrector_order": "lower"}, {"ems": "stats"}],
}
# not descending, so only a direct call can ask for it, and only cm refuses it rather than divide by zero
CM_GRIDS = {"back to abar 0": (ZSNR, [500.0, 999.0])}
BAD_OPTIONS["heun"] = BAD_OPTIONS["euler"]


def outcome(fn, *args, **kwargs) -> str | None:
    """None where ``fn`` returns, else the message of the ValueError it raises."""
    try:
        fn(*args, **kwargs)
    except ValueError as e:
        return str(e)
    return None


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_check_raises_what_the_sampler_raises(name):
    """``check`` (the up-front check of a plan) refuses exactly what the sampler refuses, with the same
    message, and a refused setup costs no network evaluation."""
    from ddpmkit.samplers import check

    refused = 0
    for grid_name, (sched, grid) in (GRIDS | CM_GRIDS if name == "cm" else GRIDS).items():
        for options in [{}, *BAD_OPTIONS.get(name, [])]:
            model = Counting()
            model.model = MIX.model(sched, "v")
            den = Denoiser(model, sched, "v")
            noise = SeededNoise(range(2), SHAPE, dtype=torch.float64)
            ran = outcome(SAMPLERS[name], den, noise(), grid, noise=noise, **options)
            checked = outcome(check, name, sched, grid, **options)
            assert checked == ran, (grid_name, options)
            if ran is not None:
                refused += 1
                assert model.calls == 0, (grid_name, options)
    assert refused >= 1  # every sampler refuses something here (an off-schedule grid at least)


def test_check_names_unknown_samplers_and_options():
    from ddpmkit.samplers import check, model_options

    grid = SCHED.grid(4)
    with pytest.raises(ValueError, match="unknown sampler 'dpm'; valid: ddpm, ddim, "):
        check("dpm", SCHED, grid)
    with pytest.raises(ValueError, match=r"unknown option 'bogus' for sampler 'ddim'; valid: eta$"):
        check("ddim", SCHED, grid, bogus=1)
    with pytest.raises(ValueError, match=r"unknown option 'etta' for sampler 'ddpm'; valid: variance \(and from "
                                         r"the model: eps_moment\)"):
        check("ddpm", SCHED, grid, etta=1)
    with pytest.raises(ValueError, match="unknown option 'eps_moment' for sampler 'ddim'"):
        check("ddim", SCHED, grid, eps_moment=GAMMA)  # a model option only where the sampler takes it
    with pytest.raises(ValueError, match=r"for sampler 'dpmpp-2m'; valid: none$"):
        check("dpmpp-2m", SCHED, grid, eta=0.5)
    with pytest.raises(ValueError, match=r"needs the model's eps moments .* `ddpmkit moments"):
        check("ddpm", SCHED, grid, variance="optimal")
    assert check("ddpm", SCHED, grid, variance="optimal", eps_moment=GAMMA) is None
    assert model_options("ddpm") == ("eps_moment",) and model_options("ddim") == ()
    assert "eps_moment" not in sampler_options("ddpm")  # the command line grows no --eps-moment


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_check_takes_the_samplers_options(name):
    from ddpmkit.samplers import CHECKS

    def keywords(fn):
        params = inspect.signature(fn).parameters.values()
        return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in ("noise", "callback")}

    assert keywords(CHECKS[name]) == keywords(SAMPLERS[name])
    assert list(inspect.signature(CHECKS[name]).parameters)[:2] == ["schedule", "grid"]
