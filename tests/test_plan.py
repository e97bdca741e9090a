"""Sampling plans (``make_plan``) and the model that samples itself (``LoadedModel``)."""

import re

import numpy as np
import pytest
import torch

import ddpmkit
from ddpmkit import GaussianMixture, NoiseSchedule, make_plan, sample
from ddpmkit.samplers import OFF_GRID, SAMPLERS, steps_for_nfe

from conftest import model_extras

SCHED = NoiseSchedule("linear", 1000)
GM = GaussianMixture(torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)), 0.2)


def counted(model):
    calls = []

    def net(x, t):
        calls.append(len(x))
        return model(x, t)

    return net, calls


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_plan_costs_what_its_run_costs(name):
    """plan.nfe is the number of network calls a sample of it makes, for every sampler."""
    plan = make_plan(SCHED, name, nfe=20, spacing="karras", **model_extras(name, SCHED, (1, 4, 4)))
    net, calls = counted(GM.model(SCHED, "eps"))
    sample(net, SCHED, plan, shape=(2, 1, 4, 4))
    assert len(calls) == plan.nfe <= 20
    assert plan.steps == steps_for_nfe(name, 20, SCHED.T) and plan.grid == tuple(SCHED.grid(plan.steps, "karras"))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_only_the_samplers_named_off_grid_evaluate_between_grid_timesteps(name):
    """samplers.OFF_GRID is exactly the samplers that cannot take input timesteps: every other one
    runs with inputs equal to its grid, and asks the network for its grid's timesteps only."""
    plan = make_plan(SCHED, name, nfe=20, spacing="karras", **model_extras(name, SCHED, (1, 4, 4)))
    asked = []

    def net(x, t):
        asked.append(float(t[0]))
        return GM.model(SCHED)(x, t)

    sample(net, SCHED, plan, shape=(2, 1, 4, 4))
    assert (not set(asked) <= set(plan.grid)) == (name in OFF_GRID)
    if name not in OFF_GRID:
        inputs = make_plan(SCHED, name, timesteps=plan.grid, input_timesteps=plan.grid,
                           **model_extras(name, SCHED, (1, 4, 4)))
        sample(GM.model(SCHED), SCHED, inputs, shape=(2, 1, 4, 4))


def test_the_grid_comes_from_one_source():
    assert make_plan(SCHED, "ddim", steps=10).grid == tuple(float(t) for t in SCHED.grid(10, "trailing"))
    assert make_plan(SCHED, "ddim", steps=7, spacing="logsnr").grid == tuple(SCHED.grid(7, "logsnr"))
    explicit = make_plan(SCHED, "ddim", timesteps=[999, 500.5, 10])
    assert explicit.grid == (999.0, 500.5, 10.0) and explicit.spacing is None and explicit.nfe == 3
    # without steps: all T for ddpm, one for cm, 50 for the others
    assert [make_plan(SCHED, s).steps for s in ("ddpm", "cm", "unipc")] == [1000, 1, 50]
    assert make_plan(SCHED, "heun", steps=4).nfe == 7


def test_a_tuned_grid_is_taken_where_the_model_has_one():
    tuned = {2: [800.0, 300.0]}
    assert make_plan(SCHED, "cm", steps=2, tuned=tuned).grid == (800.0, 300.0)
    assert make_plan(SCHED, "cm", steps=2, tuned=tuned).spacing == "tuned"
    assert make_plan(SCHED, "cm", steps=2, spacing="trailing", tuned=tuned).grid == (999.0, 499.0)
    assert make_plan(SCHED, "cm", steps=3, tuned=tuned).spacing == "trailing"
    with pytest.raises(ValueError, match=re.escape("m.safetensors has no tuned grid for cm with 3 steps (it has one "
                                                   "for steps: 2;")):
        make_plan(SCHED, "cm", steps=3, spacing="tuned", tuned=tuned, model_name="m.safetensors")


@pytest.mark.parametrize("kwargs,message", [
    (dict(sampler="plms"), "unknown sampler 'plms'; valid: ddpm, ddim"),
    (dict(sampler="ddim", beta=1), "unknown option 'beta' for sampler 'ddim'; valid: eta, clip"),
    (dict(sampler="ddim", eta=2.0), "eta=2.0 is outside [0, 1]"),
    (dict(sampler="ddim", steps=3, nfe=3), "give only one of steps, nfe and timesteps"),
    (dict(sampler="ddim", timesteps=[9, 5], spacing="karras"), "spacing 'karras' and timesteps both place"),
    (dict(sampler="ddim", spacing="cosine"), "unknown spacing 'cosine'"),
    (dict(sampler="ddim", timesteps=[5, 9]), "strictly descending"),
    (dict(sampler="ddim", clip=True, threshold=0.9), "give clip or threshold, not both"),
    (dict(sampler="heun", nfe=0), "nfe=0 is not valid"),
    (dict(sampler="restart", steps=1), "restart needs at least 2 steps"),
    (dict(sampler="ddpm", variance="optimal", steps=5), "needs the model's eps moments"),
])
def test_a_bad_plan_is_refused_before_any_network_runs(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_plan(SCHED, **kwargs)


def test_eps_cannot_start_at_zero_terminal_snr():
    zsnr = NoiseSchedule("linear", 1000, zero_terminal_snr=True)
    with pytest.raises(ValueError, match="prediction 'eps' cannot start at abar = 0"):
        make_plan(zsnr, "ddim", steps=5, prediction="eps")
    assert make_plan(zsnr, "ddim", steps=5, prediction="v").nfe == 5


def test_the_plan_key_holds_what_decides_the_samples():
    base = make_plan(SCHED, "ddpm", steps=10).key()
    assert base == {"sampler": "ddpm", "steps": 10, "options": {}, "spacing": "trailing"}
    assert make_plan(SCHED, "ddpm", steps=10, variance="small").key() == base  # a default is no option
    assert make_plan(SCHED, "ddpm", steps=10, variance="large", clip=True).key()["options"] == {
        "variance": "large", "clip": True}
    assert make_plan(SCHED, "ddim", timesteps=[999, 10]).key() == {
        "sampler": "ddim", "steps": 2, "options": {}, "timesteps": [999.0, 10.0]}


def test_sample_takes_a_plan_or_its_options_not_both():
    plan = make_plan(SCHED, "ddim", steps=5)
    model = GM.model(SCHED, "eps")
    by_plan = sample(model, SCHED, plan, shape=(3, 1, 4, 4), seeds=[4, 5, 6])
    by_options = sample(model, SCHED, sampler="ddim", steps=5, shape=(3, 1, 4, 4), seeds=[4, 5, 6])
    torch.testing.assert_close(by_plan, by_options, rtol=0, atol=0)
    with pytest.raises(ValueError, match="give a plan or sampling options, not both"):
        sample(model, SCHED, plan, steps=5, shape=(3, 1, 4, 4))


@pytest.fixture(scope="module")
def mnist():
    return ddpmkit.load_model("mnist")


def test_the_readme_example_samples_the_shipped_model(mnist):
    x = mnist.sample(sampler="unipc", steps=10, seeds=range(8))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and torch.isfinite(x).all()
    plan = mnist.plan(sampler="dpmpp-2m", nfe=20, spacing="logsnr")
    assert plan.nfe == 20 and plan.grid[0] == 999.0 and plan.grid[-1] == 0.0


def test_a_loaded_model_samples_as_its_parts_do(mnist):
    """model.sample is sample() on the model's own network, schedule, parameterisation and range,
    with its Analytic-DPM moments given to the ddpm sampler (the shipped mnist model has them)."""
    plan = mnist.plan(sampler="ddpm", steps=4, variance="optimal")
    assert np.array_equal(plan.model_options["eps_moment"], mnist.extras["eps_moment"])
    by_model = mnist.sample(plan, seeds=[3, 9], batch_size=1)
    by_parts = sample(mnist.net, mnist.schedule, sampler="ddpm", steps=4, variance="optimal",
                      eps_moment=mnist.extras["eps_moment"], prediction=mnist.prediction, data_range=mnist.data_range,
                      shape=(2, *mnist.shape), seeds=[3, 9], batch_size=1)
    torch.testing.assert_close(by_model, by_parts, rtol=0, atol=0)
    assert mnist.sample(sampler="ddim", steps=2, num=3).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="num=2 disagrees with the 3 seeds"):
        mnist.sample(sampler="ddim", steps=2, seeds=[0, 1, 2], num=2)


def test_a_consistency_model_samples_on_its_tuned_grid():
    cm = ddpmkit.load_model("mnist-cm")
    plan = cm.plan(sampler="cm", steps=2)
    assert plan.spacing == "tuned" and plan.grid == tuple(cm.tuned_grids("cm")[2])
    assert cm.plan(sampler="cm", steps=2, spacing="trailing").grid == (999.0, 499.0)


def test_a_plan_spells_out_only_the_grids_no_spacing_makes_again():
    assert make_plan(SCHED, "ddim", steps=4, spacing="karras").timesteps is None
    assert make_plan(SCHED, "ddim", timesteps=[999, 10]).timesteps == [999.0, 10.0]
    assert make_plan(SCHED, "cm", steps=1, tuned={1: [775.0]}).timesteps == [775.0]


@pytest.mark.parametrize("name", ["ddim", "dpmpp-2m", "unipc", "heun"])
def test_input_timesteps_are_what_the_network_is_told(name):
    """LD3's decoupled timesteps: at grid timestep t_i the network gets s_i, and the run is the plain
    plan's on a network that maps each t_i to s_i itself; s = t is the plain run, bit for bit."""
    grid, told = [900.0, 600.0, 250.0, 40.0], [880.0, 615.5, 230.0, 47.0]
    model, seen = GM.model(SCHED), []

    def recording(x, t):
        seen.append(float(t[0]))
        return model(x, t)

    def mapping(x, t):  # the decoupling written by hand
        return model(x, torch.full_like(t, told[grid.index(float(t[0]))], dtype=torch.float64))

    plan = make_plan(SCHED, name, timesteps=grid, input_timesteps=told)
    x = sample(recording, SCHED, plan, shape=(5, 1, 4, 4), dtype=torch.float64)
    assert set(seen) == set(told) and len(seen) == plan.nfe
    by_hand = sample(mapping, SCHED, make_plan(SCHED, name, timesteps=grid), shape=(5, 1, 4, 4), dtype=torch.float64)
    torch.testing.assert_close(x, by_hand, rtol=0, atol=0)
    same = sample(model, SCHED, make_plan(SCHED, name, timesteps=grid, input_timesteps=grid), shape=(5, 1, 4, 4))
    torch.testing.assert_close(same, sample(model, SCHED, make_plan(SCHED, name, timesteps=grid), shape=(5, 1, 4, 4)),
                               rtol=0, atol=0)
    assert plan.key()["input_timesteps"] == told and "input_timesteps" not in make_plan(SCHED, name, timesteps=grid).key()
    assert "(the network told 880, 615.5, 230, 47)" in plan.describe()


def test_input_timesteps_come_with_a_tuned_grid_and_errors_name_the_bad_value():
    entry = {"timesteps": [800.0, 300.0], "input_timesteps": [790.0, 320.0]}
    plan = make_plan(SCHED, "ddim", steps=2, tuned={2: entry})
    assert plan.spacing == "tuned" and plan.grid == (800.0, 300.0) and plan.input_timesteps == (790.0, 320.0)
    assert make_plan(SCHED, "ddim", steps=2, spacing="trailing", tuned={2: entry}).input_timesteps is None
    assert make_plan(SCHED, "ddim", steps=2, tuned={2: [800.0, 300.0]}).input_timesteps is None
    for kw, message in [
        ({"steps": 2, "input_timesteps": [900, 100]}, "input_timesteps go with explicit timesteps"),
        ({"timesteps": [900, 100], "input_timesteps": [900]}, "got 1 input timesteps for a grid of 2"),
        ({"timesteps": [900, 100], "input_timesteps": [1000, 100]}, r"input timesteps must lie in \[0, 999\]; got 1000, 100"),
        ({"timesteps": [900, 100], "input_timesteps": [float("nan"), 100]}, r"must lie in \[0, 999\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_plan(SCHED, "ddim", **kw)
    with pytest.raises(ValueError, match="sampler 'restart' evaluates the network between its grid's timesteps"):
        make_plan(SCHED, "restart", timesteps=[900, 500, 100], input_timesteps=[900, 500, 100])
