"""ddpmkit's samplers on a diffusers-format model reproduce diffusers' own loops on the same network.

A tiny randomly initialised ``UNet2DModel`` is saved with several scheduler configs
(``diffusers_folders.CONFIGS``: epsilon, v and x0 prediction; linear, cosine and a beta table;
clipping on and off; fixed_small and fixed_large; trailing and leading grids, with and without
steps_offset) in the layouts ``load_model`` reads. ``load_model(folder).sample(...)`` — with the
model's own defaults from the scheduler config — runs against diffusers reading the same folder and
running its scheduler the way its pipelines do: its float32 tables, latents = x_T *
init_noise_sigma, scale_model_input, the UNet, scheduler.step. Both start from the same x_T
(ddpmkit's seeded draw, passed to ours as init_noise; diffusers' randn_tensor with one generator
per sample draws the same numbers), on the same grid (asserted before any sample is compared), and
ddpm gets the same per-step noise (the same generators handed to DDPMScheduler.step).

Error: ||ours - theirs||_2 / ||theirs||_2 over the whole batch, in float64; TOL = 1e-4.

Where ddpmkit differs from diffusers on purpose, or diffusers' float32 arithmetic is the
difference, a test shows the difference is exactly that: DDIM with set_alpha_to_one=False stops
at abar_0 (our state one step before clean data); DDPM fixed_large on a grid ending above t = 0
adds one more noise draw on its last step; DDIMPipeline without use_clipped_model_output; the
clip_sample key, which only diffusers' DDIM, DDPM and Heun read; DPM-Solver's and UniPC's own
leading grids; Euler's and Heun's init_noise_sigma on trailing grids; and Euler and Heun from the
cosine schedule's sigma_max = 2e4, where diffusers' float32 steps round off and ours do not.
"""

import inspect
import math

import numpy as np
import pytest
import torch

from ddpmkit import load_model
from ddpmkit.rng import SeededNoise
from ddpmkit.sampling import sample

import diffusers_folders as F
from conftest import diffusers  # without diffusers, a stand-in that skips the test touching it

pytestmark = [
    pytest.mark.needs_diffusers,
    # a 177k-parameter net on 8x8 images: two threads cost far more than they save (measured 15 ms
    # against 680 ms a call on a busy two-core machine)
    pytest.mark.usefixtures("one_thread"),
    # diffusers' k-diffusion schedulers call np.log on tensors, which NumPy 2 deprecates
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

TOL = 1e-4

# diffusers' scheduler for each of our samplers, with the solver options that are ours
# (ddpmkit: dpmpp-2m/3m are DPM-Solver++ multistep, midpoint, lower order on the final steps, last
# step first order into sigma = 0; unipc is order 2, bh2, predict x0, corrector on every step)
THEIRS = {
    "ddim": ("DDIMScheduler", {}, {"eta": 0.0, "use_clipped_model_output": True}),
    "dpmpp-2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                 "solver_type": "midpoint", "lower_order_final": True,
                                                 "final_sigmas_type": "zero"}, {}),
    "dpmpp-3m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3,
                                                 "solver_type": "midpoint", "lower_order_final": True,
                                                 "final_sigmas_type": "zero"}, {}),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2", "predict_x0": True,
                                          "lower_order_final": True, "disable_corrector": [],
                                          "final_sigmas_type": "zero"}, {}),
    "euler": ("EulerDiscreteScheduler", {"final_sigmas_type": "zero"}, {}),
    "heun": ("HeunDiscreteScheduler", {}, {}),
}
# 3m at 20 steps reaches third order without the lower-order second-to-last step (< 15 steps)
STEPS = {"ddim": 20, "dpmpp-2m": 10, "dpmpp-3m": 20, "unipc": 10, "euler": 20, "heun": 10}
# diffusers' schedulers that read clip_sample; the others ignore the key
CLIPS = ("ddim", "heun", "ddpm")
# DPM-Solver and UniPC build leading grids their own way (test_leading_and_linspace_grids_of_each_scheduler)
OWN_LEADING = ("dpmpp-2m", "dpmpp-3m", "unipc")
MATRIX_CONFIGS = ("eps-linear", "v-cosine", "eps-linear-clip", "x0-cosine-clip")


def rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours.double() - theirs.double()).norm() / theirs.double().norm()).item()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers-exact")
    return {name: F.write_folder(root, name) for name in F.CONFIGS}


@pytest.fixture(scope="module")
def models(folders):
    return {name: load_model(folder) for name, folder in folders.items()}


@pytest.fixture(scope="module")
def unets(folders):
    return {name: F.their_unet(folder) for name, folder in folders.items()}


@pytest.fixture(scope="module")
def x_T():
    return SeededNoise(F.SEEDS, F.SHAPE)()


# -- what both sides read ---------------------------------------------------------------------------
EXPECTED = {
    "eps-linear": ("eps", "linear", {"spacing": "trailing", "variance": "small"}),
    "v-cosine": ("v", "cosine", {"spacing": "trailing", "variance": "large"}),
    "eps-linear-clip": ("eps", "linear", {"spacing": "leading", "clip": True, "variance": "small"}),
    "x0-cosine-clip": ("x0", "cosine", {"spacing": "leading", "offset": 1, "clip": True, "clip_range": 0.8}),
    "eps-betas-T100": ("eps", "betas", {"spacing": "linspace", "variance": "large"}),
}


def test_each_folder_is_read_as_its_scheduler_config_says(folders, models, unets):
    probe = torch.randn((2, *F.SHAPE), generator=torch.Generator().manual_seed(7))
    for name, (prediction, schedule, defaults) in EXPECTED.items():
        m = models[name]
        assert (m.prediction, m.schedule.name, m.defaults, m.shape) == (prediction, schedule, defaults, F.SHAPE), name
        theirs = F.their_scheduler(folders[name], "DDPMScheduler")
        assert m.schedule.T == theirs.config.num_train_timesteps
        # diffusers' float32 table is ours (float64) to float32 round-off, amplified by the cumprod
        np.testing.assert_allclose(theirs.alphas_cumprod.double().numpy(), m.schedule.alphas_cumprod, rtol=2e-5)
        with torch.no_grad():  # one network: both loads compute the same outputs, bit for bit
            for t in (0, m.schedule.T // 2, m.schedule.T - 1):
                tt = torch.full((2,), t)
                assert torch.equal(m.net(probe, tt), unets[name](probe, tt).sample), (name, t)


def test_seeded_noise_is_diffusers_randn_tensor_with_one_generator_per_sample():
    ours, gens = SeededNoise(F.SEEDS, F.SHAPE), F.generators(F.SEEDS)
    for _ in range(4):  # x_T and the next three per-step draws
        assert torch.equal(ours(), F.draw(gens))


# -- the headline: deterministic samplers against diffusers' scheduler loops --------------------------
def run_pair(model, unet, folder, x_T, sampler, **ours_options):
    """(ours, theirs, grid) for ``sampler`` with the model's own defaults, on one grid. Where the
    diffusers scheduler builds that spacing its own way (DPM-Solver's and UniPC's leading), ours is
    given diffusers' grid as explicit timesteps; everywhere else the grids are asserted equal."""
    cls, kwargs, step_kwargs = THEIRS[sampler]
    scheduler = F.their_scheduler(folder, cls, **kwargs)
    steps = STEPS[sampler]
    scheduler.set_timesteps(steps)
    grid = F.their_grid(scheduler)
    plan = model.plan(sampler=sampler, steps=steps, **ours_options)
    if sampler in OWN_LEADING and model.defaults["spacing"] == "leading":
        assert list(plan.grid) != grid
        plan = model.plan(sampler=sampler, timesteps=grid, **ours_options)
    assert list(plan.grid) == grid, (list(plan.grid), grid)
    ours = model.sample(plan, seeds=F.SEEDS, init_noise=x_T)
    theirs = F.diffusers_loop(unet, scheduler, x_T, steps=steps, **step_kwargs)
    return ours, theirs, grid


# Euler and Heun on v-cosine's trailing grid have their own test (test_euler_and_heun_from_sigma_2e4_...):
# there diffusers' float32 arithmetic, not ours, is the difference.
SIGMA_2E4 = ("v-cosine", ("euler", "heun"))
CASES = [(c, s) for c in MATRIX_CONFIGS for s in THEIRS if not (c == SIGMA_2E4[0] and s in SIGMA_2E4[1])]


@pytest.mark.parametrize("config, sampler", CASES, ids=[f"{c}-{s}" for c, s in CASES])
def test_deterministic_samplers_reproduce_diffusers(config, sampler, folders, models, unets, x_T):
    # clip_sample is read by diffusers' DDIM and Heun only: the others sample such a model
    # unclipped, so ours is asked for that too (test_clip_sample_is_read_by_ddim_ddpm_and_heun_only)
    options = {"clip": False} if models[config].defaults.get("clip") and sampler not in CLIPS else {}
    ours, theirs, _ = run_pair(models[config], unets[config], folders[config], x_T, sampler, **options)
    err = rel(ours, theirs)
    print(f"\n{config} {sampler}: relative error {err:.2e}")
    assert err <= TOL


# -- ddpm with the same per-step noise ---------------------------------------------------------------
DDPM_CASES = [  # (config, steps or an explicit grid); the variance is the config's
    ("eps-linear-clip", 50),  # google/ddpm-*'s config: fixed_small, clipping, leading
    ("eps-linear", 20),  # fixed_small on a trailing grid: diffusers' last-step noise has variance 0
    ("x0-cosine-clip", 25),  # a DDIM config read by DDPMScheduler: fixed_small, leading + steps_offset
    ("v-cosine", "leading"),  # fixed_large on a grid ending at t = 0
    ("eps-betas-T100", 100),  # fixed_large, the full chain T-1..0 of a beta table
]


@pytest.mark.parametrize("config, steps", DDPM_CASES, ids=[f"{c}-{s}" for c, s in DDPM_CASES])
def test_ddpm_reproduces_ddpm_scheduler_given_the_same_noise(config, steps, folders, models, unets):
    model, gens = models[config], F.generators(F.SEEDS)
    x_T = F.draw(gens)  # draw 0 of each sample's generator, as SeededNoise draws it
    scheduler = F.their_scheduler(folders[config], "DDPMScheduler")
    if steps == "leading":  # both given the same explicit grid
        grid = [float(t) for t in model.schedule.grid(20, "leading")]
        ours = model.sample(sampler="ddpm", timesteps=grid, seeds=F.SEEDS, init_noise=x_T)
        theirs = F.diffusers_loop(unets[config], scheduler, x_T, timesteps=grid, generator=gens)
    else:
        ours, info = model.sample(sampler="ddpm", steps=steps, seeds=F.SEEDS, init_noise=x_T, return_info=True)
        theirs = F.diffusers_loop(unets[config], scheduler, x_T, steps=steps, generator=gens)
        grid = F.their_grid(scheduler)
        assert info["grid"] == grid
    err = rel(ours, theirs)
    print(f"\n{config} ddpm ({model.defaults.get('variance', 'small')}, {len(grid)} steps, last t = {grid[-1]:g}): "
          f"relative error {err:.2e}")
    assert err <= TOL


def test_ddpm_fixed_large_differs_only_by_diffusers_last_noise(folders, models, unets):
    # A trailing grid ends at t = 19 ... 49, above 0. diffusers adds noise on every step with t > 0,
    # its last one too, with variance beta = 1 - abar_t (the jump is into abar = 1); Algorithm 2
    # adds none on the step into clean data, and neither do we. That draw is the next one of each
    # sample's generator: draw 0 was x_T, draws 1..N-1 the noise of steps 0..N-2.
    model, gens = models["v-cosine"], F.generators(F.SEEDS)
    x_T = F.draw(gens)
    ours, info = model.sample(sampler="ddpm", steps=20, seeds=F.SEEDS, init_noise=x_T, return_info=True)
    scheduler = F.their_scheduler(folders["v-cosine"], "DDPMScheduler")
    theirs = F.diffusers_loop(unets["v-cosine"], scheduler, x_T, steps=20, generator=gens)
    assert info["grid"] == F.their_grid(scheduler) and info["grid"][-1] == 49.0
    noise = SeededNoise(F.SEEDS, F.SHAPE)
    z = [noise() for _ in range(21)][-1]
    beta = 1.0 - model.schedule.alphas_cumprod[49]
    assert rel(ours, theirs) > 100 * TOL
    err = rel(ours + math.sqrt(beta) * z, theirs)
    print(f"\nddpm fixed_large trailing: {rel(ours, theirs):.2e} apart; with diffusers' last noise added: {err:.2e}")
    assert err <= TOL


# -- on purpose: where diffusers' DDIM ends, and its pipeline's default -------------------------------
def test_ddim_set_alpha_to_one_false_stops_at_our_last_grid_state(folders, models, unets, x_T):
    # diffusers' DDIM steps from the last grid point (t = 0 on a leading grid) to abar_0 when
    # set_alpha_to_one=False: with eps recomputed from the clipped x0 that step is the identity, so
    # its result is our state at t = 0, one step before we go on to clean data (abar = 1).
    model = models["eps-linear-clip"]
    states = []
    ours = model.sample(sampler="ddim", steps=20, seeds=F.SEEDS, init_noise=x_T,
                        callback=lambda i, t, x, x0: states.append((t, x.clone())))
    t_last, x_last = states[-1]
    assert t_last == 0.0
    step = THEIRS["ddim"][2]
    at_zero = F.diffusers_loop(unets["eps-linear-clip"],
                               F.their_scheduler(folders["eps-linear-clip"], "DDIMScheduler", set_alpha_to_one=False),
                               x_T, steps=20, **step)
    to_one = F.diffusers_loop(unets["eps-linear-clip"],
                              F.their_scheduler(folders["eps-linear-clip"], "DDIMScheduler", set_alpha_to_one=True),
                              x_T, steps=20, **step)
    assert rel(ours, at_zero) > 100 * TOL  # the last step matters...
    print(f"\nddim set_alpha_to_one=False against our t = 0 state {rel(x_last, at_zero):.2e}; "
          f"True against ours {rel(ours, to_one):.2e}")
    assert rel(x_last, at_zero) <= TOL  # ...and it is all of the difference
    assert rel(ours, to_one) <= TOL


def test_pipelines_as_users_run_them(folders, models, x_T):
    # DDPMPipeline and DDIMPipeline themselves, on the folders, with a generator per sample;
    # their output is (x / 2 + 0.5).clamp(0, 1). DDIMPipeline's default use_clipped_model_output
    # is False; ddpmkit always recomputes eps from the clipped x0 (docs/diffusers.md), which is
    # diffusers' use_clipped_model_output=True.
    # Both models clip x0 to [-1, 1] or less, so that clamp loses nothing of the final x0_hat.
    def shown(x):
        return (x / 2 + 0.5).clamp(0, 1)

    # the old google/ddpm-* layout as diffusers reads it: the UNet and the scheduler from one folder
    folder = folders["eps-linear-clip"]
    ddpm_pipe = diffusers.DDPMPipeline(unet=F.their_unet(folder),
                                       scheduler=diffusers.DDPMScheduler.from_pretrained(folder))
    ddpm_pipe.set_progress_bar_config(disable=True)
    theirs = ddpm_pipe(batch_size=2, generator=F.generators(F.SEEDS), num_inference_steps=50, output_type="pt").images
    ours = models["eps-linear-clip"].sample(sampler="ddpm", steps=50, seeds=F.SEEDS)
    assert ours.abs().max() <= 1 + 1e-6 and (ours.abs() < 0.99).float().mean() > 0.5
    err_ddpm = rel(shown(ours), theirs)

    ddim_pipe = diffusers.DDIMPipeline.from_pretrained(folders["x0-cosine-clip"])
    ddim_pipe.set_progress_bar_config(disable=True)
    ours = models["x0-cosine-clip"].sample(sampler="ddim", steps=20, seeds=F.SEEDS)
    assert ours.abs().max() <= 0.8 + 1e-6 and (ours.abs() < 0.79).float().mean() > 0.5
    recomputed = ddim_pipe(batch_size=2, generator=F.generators(F.SEEDS), num_inference_steps=20,
                           use_clipped_model_output=True, output_type="pt").images
    default = ddim_pipe(batch_size=2, generator=F.generators(F.SEEDS), num_inference_steps=20, output_type="pt").images
    print(f"\npipelines: DDPMPipeline {err_ddpm:.2e}, DDIMPipeline with use_clipped_model_output "
          f"{rel(shown(ours), recomputed):.2e}, with its default {rel(shown(ours), default):.2e}")
    assert err_ddpm <= TOL
    assert rel(shown(ours), recomputed) <= TOL
    assert rel(shown(ours), default) > 10 * TOL


# -- keys and grids diffusers' schedulers read differently --------------------------------------------
def test_clip_sample_is_read_by_ddim_ddpm_and_heun_only(folders, models, unets, x_T):
    # DPMSolverMultistep, UniPC and Euler have no clip_sample: from a clipping model's config they
    # sample unclipped. ddpmkit applies the model's clipping with every sampler (docs/diffusers.md),
    # so on such a model ours matches them with clip=False (the matrix above) and not by default.
    def reads_clip_sample(sampler):
        return "clip_sample" in inspect.signature(getattr(diffusers, THEIRS[sampler][0]).__init__).parameters

    assert [s for s in THEIRS if reads_clip_sample(s)] == [s for s in THEIRS if s in CLIPS]
    ours, theirs, _ = run_pair(models["eps-linear-clip"], unets["eps-linear-clip"], folders["eps-linear-clip"],
                               x_T, "dpmpp-2m")
    print(f"\ndpmpp-2m with the model's clipping against diffusers' unclipped DPM-Solver: {rel(ours, theirs):.2e}")
    assert rel(ours, theirs) > 100 * TOL


def test_leading_and_linspace_grids_of_each_scheduler(folders, models):
    # ddpmkit's leading grid is DDPM's/DDIM's (and Euler's, Heun's): (T // n) * [n-1, ..., 0] + offset.
    # diffusers' DPMSolverMultistep and UniPC build theirs as (T // (n+1)) * [n, ..., 1], so a model
    # with timestep_spacing="leading" gets another grid from them; given that grid, ours agrees
    # (the matrix above runs them so).
    for name in ("eps-linear-clip", "x0-cosine-clip"):
        offset = models[name].defaults.get("offset", 0)
        for sampler in OWN_LEADING:
            scheduler = F.their_scheduler(folders[name], THEIRS[sampler][0], **THEIRS[sampler][1])
            scheduler.set_timesteps(10)
            theirs = F.their_grid(scheduler)
            ours = list(models[name].plan(sampler=sampler, steps=10).grid)
            assert ours == [float(t) for t in np.arange(9, -1, -1) * 100 + offset]
            assert theirs == [float(t) for t in np.arange(10, 0, -1) * (1000 // 11) + offset]
        for cls in ("DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler"):
            scheduler = F.their_scheduler(folders[name], cls)
            scheduler.set_timesteps(10)
            assert F.their_grid(scheduler) == list(models[name].plan(sampler="ddim", steps=10).grid), (name, cls)
    # linspace, likewise: ours and DDPM's are round(linspace(0, T-1, n)); DPM-Solver's and UniPC's
    # round(linspace(0, T-1, n+1)) without its 0; Euler's and Heun's linspace(0, T-1, n) unrounded (not
    # run here: diffusers interpolates sigma linearly between timesteps, ddpmkit logSNR)
    name, T = "eps-betas-T100", 100
    ours = list(models[name].plan(sampler="dpmpp-2m", steps=10).grid)
    assert ours == [float(t) for t in np.round(np.linspace(0, T - 1, 10))[::-1]]
    expected = {"DDPMScheduler": ours, "DPMSolverMultistepScheduler": np.round(np.linspace(0, T - 1, 11))[::-1][:-1],
                "UniPCMultistepScheduler": np.round(np.linspace(0, T - 1, 11))[::-1][:-1],
                "EulerDiscreteScheduler": np.linspace(0, T - 1, 10, dtype=np.float32)[::-1],
                "HeunDiscreteScheduler": np.linspace(0, T - 1, 10, dtype=np.float32)[::-1]}
    for cls, grid in expected.items():
        scheduler = F.their_scheduler(folders[name], cls)
        scheduler.set_timesteps(10)
        assert F.their_grid(scheduler) == [float(t) for t in grid], cls


def test_euler_and_heun_start_trailing_grids_at_sigma_max(folders, models, unets, x_T):
    # On linspace and trailing grids diffusers' Euler and Heun scale x_T by sigma_max, not by
    # sqrt(sigma_max^2 + 1): at the linear schedule's t = 999 (sigma_max = 157.4) that starts them
    # 2e-5 (relative) inside our x_T. With the exact start they agree with ours ten times closer.
    name = "eps-linear"
    for sampler in ("euler", "heun"):
        ours, as_run, _ = run_pair(models[name], unets[name], folders[name], x_T, sampler)
        cls, kwargs, _ = THEIRS[sampler]
        scheduler = F.their_scheduler(folders[name], cls, **kwargs)
        scheduler.set_timesteps(STEPS[sampler])
        sigma_max = scheduler.sigmas.max().item()
        assert scheduler.init_noise_sigma == pytest.approx(sigma_max, rel=1e-7)
        exact = F.diffusers_loop(unets[name], scheduler, x_T, steps=STEPS[sampler],
                                 latents=x_T * math.sqrt(sigma_max**2 + 1))
        print(f"\n{sampler} trailing: as diffusers runs it {rel(ours, as_run):.2e}, "
              f"from our x_T {rel(ours, exact):.2e}")
        assert rel(ours, exact) <= 0.1 * rel(ours, as_run)


def their_float64_loop(folder, cls_name, grid, sigmas, x_T, steps, **kwargs):
    """diffusers' loop in float64 on the exact sigmas of ``grid`` (its float32 table is 7e-6 off
    at the cosine schedule's t = 999); Heun's scheduler lists each sigma but the first twice."""
    unet = F.their_unet(folder).double()
    scheduler = F.their_scheduler(folder, cls_name, **kwargs)
    scheduler.set_timesteps(steps)
    doubled = cls_name == "HeunDiscreteScheduler"
    table = [sigmas[0], *(s for s in sigmas[1:] for _ in range(1 + doubled)), 0.0]
    scheduler.sigmas = torch.tensor(table, dtype=torch.float64)
    y = x_T.double() * math.sqrt(sigmas[0] ** 2 + 1)
    with torch.no_grad():
        for t in scheduler.timesteps:
            y = scheduler.step(unet(scheduler.scale_model_input(y, t), t).sample, t, y).prev_sample
    return y


@pytest.mark.parametrize("sampler", SIGMA_2E4[1])
def test_euler_and_heun_from_sigma_2e4_are_exact_in_float32_where_diffusers_rounds_off(sampler, folders, models,
                                                                                      unets, x_T):
    # The cosine schedule's t = 999 has sigma = 2.0e4, where y = x sqrt(1 + sigma^2) is 1e4 times
    # larger than a sample. diffusers' Euler step y + (sigma' - sigma) (y - x0) / sigma keeps
    # float32's round-off of y at that size, and Heun's correction (h / 2 = -1e4 times the end
    # slope) amplifies it. ddpmkit takes the same step as (sigma' / sigma) y + (1 - sigma' / sigma) x0.
    # Measured (float32 against the float64 run): ours 2.4e-7 (euler) and 4.7e-6 (heun); diffusers'
    # 8.2e-5 and 3.9e-3. In float64, given the exact sigmas, the two agree to 1e-11 (Heun) and to
    # float32's 1e-7 (Euler: diffusers' EulerDiscreteScheduler.step casts the sample to float32).
    name, model, folder = SIGMA_2E4[0], models[SIGMA_2E4[0]], folders[SIGMA_2E4[0]]
    ours, theirs, grid = run_pair(model, unets[name], folder, x_T, sampler)
    plan = model.plan(sampler=sampler, steps=STEPS[sampler])
    ours64 = sample(load_model(folder).net.double(), model.schedule, plan, seeds=F.SEEDS, init_noise=x_T.double(),
                    prediction=model.prediction, dtype=torch.float64)
    ab = model.schedule.alphas_cumprod
    sigmas = [math.sqrt((1 - ab[int(t)]) / ab[int(t)]) for t in grid]
    cls, kwargs, _ = THEIRS[sampler]
    theirs64 = their_float64_loop(folder, cls, grid, sigmas, x_T, STEPS[sampler], **kwargs)
    print(f"\n{sampler} from sigma {sigmas[0]:.3g}, against the float64 run: ours {rel(ours, ours64):.2e}, "
          f"diffusers' {rel(theirs, ours64):.2e}; the two float64 runs {rel(ours64, theirs64):.1e} apart")
    assert rel(ours64, theirs64) <= (1e-6 if sampler == "euler" else 1e-9)  # one algorithm
    assert rel(ours, ours64) <= 0.1 * TOL  # ours holds float32 exactness from sigma = 2e4
    assert rel(theirs, ours64) > 10 * rel(ours, ours64)  # and the difference is diffusers' round-off


def test_heun_on_the_cosine_leading_grid_reproduces_diffusers(folders, models, unets, x_T):
    # from the leading grid's first sigma (6.4, t = 900) diffusers' float32 Heun agrees with ours to
    # TOL, given the exact start (test_euler_and_heun_start_trailing_grids_at_sigma_max)
    name, model = "v-cosine", models["v-cosine"]
    leading = [float(t) for t in model.schedule.grid(10, "leading")]
    ours = model.sample(sampler="heun", timesteps=leading, seeds=F.SEEDS, init_noise=x_T)
    scheduler = F.their_scheduler(folders[name], "HeunDiscreteScheduler")
    scheduler.set_timesteps(timesteps=leading)
    sigma_0 = scheduler.sigmas[0].item()
    theirs = F.diffusers_loop(unets[name], scheduler, x_T, timesteps=leading, latents=x_T * math.sqrt(sigma_0**2 + 1))
    print(f"\nheun v-cosine leading grid: relative error {rel(ours, theirs):.2e}")
    assert rel(ours, theirs) <= TOL
