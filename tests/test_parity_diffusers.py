"""Step-by-step parity with diffusers' DDPMScheduler and DDIMScheduler.

Both sides get the same model outputs, the same x_t and the same unit noise at every step; after
each step both continue from diffusers' result, so any difference is the step's own. diffusers
keeps its tables in float32 (abar_999 = 4e-5 carries a relative error near 1e-5 after the
cumprod, which eps -> x0 magnifies by 1/sqrt(abar)); to compare the algorithms rather than the
table precision, it is given our float64 tables and both run in float64.
"""

import numpy as np
import pytest
import torch

from ddpmkit.prediction import Denoiser
from ddpmkit.samplers.ddim import ddim_step
from ddpmkit.samplers.ddpm import ddpm_step
from ddpmkit.schedule import NoiseSchedule, make_grid

from conftest import diffusers  # the tests marked needs_diffusers skip without it (see conftest.py)

THEIR_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SHAPE = (3, 2, 4, 4)
TOL = 1e-5


class Replay:
    """A 'model' that returns a prescribed output, so both libraries see the same numbers."""

    def __init__(self):
        self.output = None

    def __call__(self, x, t):
        return self.output


def their_scheduler(cls, sched, prediction, spacing, **kw):
    ref = cls(
        num_train_timesteps=sched.T,
        trained_betas=sched.betas.tolist(),
        prediction_type=THEIR_PREDICTION[prediction],
        timestep_spacing=spacing,
        **kw,
    )
    ref.alphas_cumprod = torch.tensor(sched.alphas_cumprod, dtype=torch.float64)
    ref.one = ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return ref


def run_lockstep(ref, steps, spacing, ours_step, prediction, denoiser_kw=None, their_kw=None, skip_last=False):
    sched = NoiseSchedule("linear", 1000)
    ref.set_timesteps(steps)
    grid = make_grid(1000, steps, spacing)
    np.testing.assert_array_equal(grid, ref.timesteps.numpy())
    replay = Replay()
    den = Denoiser(replay, sched, prediction, **(denoiser_kw or {}))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    worst = 0.0
    for i, (t, abar_t, abar_s) in enumerate(sched.transitions(grid)):
        replay.output = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1000 + i), dtype=torch.float64)
        theirs = ours_step(ref, replay.output, int(t), x, i, z, their_kw or {})
        eps, x0 = den(x, t)
        mine = ours_step(None, (eps, x0), (abar_t, abar_s), x, i, z, {})
        if not (skip_last and i == len(grid) - 1):
            worst = max(worst, (mine - theirs).abs().max().item())
        x = theirs
    return worst


def ddpm_stepper(variance):
    def step(ref, out, t, x, i, z, kw):
        if ref is not None:
            # diffusers draws its noise with randn_tensor(generator=...): same stream as z
            return ref.step(out, t, x, generator=torch.Generator().manual_seed(1000 + i)).prev_sample
        (_, x0), (abar_t, abar_s) = out, t
        return ddpm_step(x, x0, abar_t, abar_s, variance, z)[0]

    return step


def ddim_stepper(eta):
    def step(ref, out, t, x, i, z, kw):
        if ref is not None:
            return ref.step(out, t, x, eta=eta, variance_noise=z, **kw).prev_sample
        (eps, x0), (abar_t, abar_s) = out, t
        return ddim_step(x, eps, x0, abar_t, abar_s, eta, z)[0]

    return step


@pytest.mark.needs_diffusers
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("steps,spacing", [(1000, "leading"), (50, "leading"), (37, "linspace"), (20, "trailing")])
def test_ddpm_step_parity(prediction, variance, steps, spacing):
    ref = their_scheduler(
        diffusers.DDPMScheduler,
        NoiseSchedule("linear", 1000),
        prediction,
        spacing,
        clip_sample=False,
        variance_type="fixed_" + variance,
    )
    # diffusers adds noise on the final step whenever its timestep is > 0, so with the large
    # variance a trailing grid (ending at t = 19) gets noise on its last jump into clean data.
    # Algorithm 2 adds none there; that step is checked separately below.
    skip_last = variance == "large" and spacing == "trailing"
    worst = run_lockstep(ref, steps, spacing, ddpm_stepper(variance), prediction, skip_last=skip_last)
    assert worst < TOL


def test_ddpm_final_step_is_noise_free():
    sched = NoiseSchedule("linear", 1000)
    x, x0 = torch.randn(SHAPE), torch.randn(SHAPE)
    for variance in ("small", "large"):
        out, sigma = ddpm_step(x, x0, sched.alphas_cumprod[19], 1.0, variance, torch.randn(SHAPE))
        assert sigma == 0.0
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-6)  # abar = 1: the mean is x0_hat


@pytest.mark.needs_diffusers
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps,spacing", [(50, "leading"), (7, "leading"), (10, "trailing"), (1000, "trailing")])
def test_ddim_step_parity(prediction, eta, steps, spacing):
    # diffusers' DDIM jumps to t - T // steps, which is the next grid entry for 'leading' and for
    # 'trailing' when steps divides T; for 'linspace' it is not, so those grids are not comparable.
    ref = their_scheduler(
        diffusers.DDIMScheduler, NoiseSchedule("linear", 1000), prediction, spacing, clip_sample=False, set_alpha_to_one=True
    )
    assert run_lockstep(ref, steps, spacing, ddim_stepper(eta), prediction) < TOL


@pytest.mark.needs_diffusers
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_clipping_and_thresholding_parity(prediction):
    sched = NoiseSchedule("linear", 1000)
    # clipping x0_hat: DDPM uses the clipped x0 directly; our DDIM recomputes eps from it,
    # which diffusers calls use_clipped_model_output
    ref = their_scheduler(diffusers.DDPMScheduler, sched, prediction, "leading", clip_sample=True)
    assert run_lockstep(ref, 50, "leading", ddpm_stepper("small"), prediction, denoiser_kw={"clip": True}) < TOL
    ref = their_scheduler(diffusers.DDIMScheduler, sched, prediction, "leading", clip_sample=True)
    worst = run_lockstep(
        ref, 50, "leading", ddim_stepper(0.5), prediction, {"clip": True}, {"use_clipped_model_output": True}
    )
    assert worst < TOL
    # Imagen's dynamic thresholding, diffusers' implementation with the same ratio and cap
    ref = their_scheduler(
        diffusers.DDPMScheduler, sched, prediction, "leading", clip_sample=False, thresholding=True,
        dynamic_thresholding_ratio=0.9, sample_max_value=3.0,
    )
    kw = {"threshold": 0.9, "threshold_max": 3.0}
    assert run_lockstep(ref, 50, "leading", ddpm_stepper("small"), prediction, denoiser_kw=kw) < TOL
