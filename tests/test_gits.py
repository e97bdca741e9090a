"""Step grids from a fine-step teacher's trajectories (ddpmkit.gits): GITS's dynamic programming
against brute force, its price table against closed forms, and the teacher search's grids against
the exact ODE solution of a Gaussian mixture."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ddpmkit import NoiseSchedule
from ddpmkit.gits import Teacher, best_paths, candidate_grid, gits_grids, jump_costs, start_grids, teacher_search
from ddpmkit.oracles import GaussianMixture
from ddpmkit.plan import make_plan
from ddpmkit.rng import SeededNoise
from ddpmkit.sampling import sample

pytestmark = pytest.mark.usefixtures("one_thread")

SCHED = NoiseSchedule("linear", 1000)


@pytest.mark.parametrize("seed", range(4))
def test_dynamic_programming_finds_the_cheapest_path_of_each_length(seed):
    rng = np.random.default_rng(seed)
    count = 7
    cost = torch.full((count, count + 1), math.inf, dtype=torch.float64)
    for i in range(count):
        cost[i, i + 1:] = torch.from_numpy(rng.uniform(0.1, 2.0, count - i))
    paths = best_paths(cost, 5)
    for k in range(1, 6):
        # every path 0 = n_0 < n_1 < ... < n_{k-1} < count of k jumps, by brute force
        options = [(0, *mid) for mid in itertools.combinations(range(1, count), k - 1)]
        price = {p: sum(float(cost[a, b]) for a, b in zip(p, (*p[1:], count))) for p in options}
        best = min(price, key=price.get)
        assert paths[k][0] == list(best) and paths[k][1] == pytest.approx(price[best], rel=1e-12)


def test_a_point_mass_makes_every_jump_free():
    """Data at a single point: x0_hat is that point at every t, so DDIM (the priced jump) solves the
    probability-flow ODE exactly and every price is zero to float64 rounding."""
    point = GaussianMixture(torch.full((1, 3), 0.3, dtype=torch.float64), 0.0)
    teacher = Teacher(point.model(SCHED), SCHED, shape=(3,), num=16, candidates=12, dtype=torch.float64)
    x, x0, end = teacher.states
    cost = jump_costs(SCHED, teacher.candidates, x, x0, end)
    finite = cost[torch.isfinite(cost)]
    assert len(finite) == 12 * 13 // 2 and finite.abs().max() < 1e-10
    assert torch.isinf(cost[3, :4]).all()  # no jump backwards or in place


def test_gits_prices_a_jump_as_the_distance_from_the_teacher():
    """A Gaussian N(0, s^2) in one dimension: the ODE solution is known, and the price of the one jump
    from t_0 to clean data is the mean |x0_hat(x(t_0)) - x(0)| over the trajectories."""
    gm = GaussianMixture.gaussian(0.0, 0.5, (1,))
    teacher = Teacher(gm.model(SCHED), SCHED, shape=(1,), num=64, candidates=60, dtype=torch.float64)
    x, x0, end = teacher.states
    t0 = teacher.candidates[0]
    exact_end = gm.ode_solution(x[0], SCHED.abar_at(t0), 1.0)
    torch.testing.assert_close(end, exact_end, rtol=0, atol=1e-3)  # the teacher is the ODE solution (2e-4)
    alone = Teacher(gm.model(SCHED), SCHED, shape=(1,), num=64, candidates=60, dtype=torch.float64).end
    torch.testing.assert_close(alone, end, rtol=0, atol=0)  # the end without the states: the same run
    cost = jump_costs(SCHED, teacher.candidates, x, x0, end)
    assert float(cost[0, -1]) == pytest.approx(float((x0[0] - end).abs().mean()), rel=1e-12)
    grids = gits_grids(teacher, [1, 3])
    assert grids[1]["timesteps"] == [t0]  # one step: the first candidate, then clean data
    grid = grids[3]["timesteps"]
    assert grid[0] == t0 and len(grid) == 3 and all(a > b for a, b in zip(grid, grid[1:]))
    assert set(grid) <= set(teacher.candidates) and grids[3]["cost"] < grids[1]["cost"]


def mixture():
    means = torch.tensor([[-1.0, -1.0], [1.0, -0.5], [0.2, 1.2], [-0.8, 0.9]], dtype=torch.float64)
    return GaussianMixture(means, 0.15)


def test_the_teacher_search_beats_the_trailing_grid_on_trajectories_it_never_saw():
    """UniPC at 4 steps on a 2-D Gaussian mixture: the grid searched against 128 teacher trajectories
    lands closer to the exact ODE solution than the trailing grid does, from 256 other x_T."""
    gm = mixture()
    model = gm.model(SCHED)
    teacher = Teacher(model, SCHED, shape=(2,), num=128, seed=10**6, candidates=40,
                      extra=[t for grid in start_grids(SCHED, 4).values() for t in grid])
    found = teacher_search(teacher, "unipc", [4])[4]
    assert found["distance"] < found["start_distance"] and found["start"] in ("trailing", "leading", "linspace")
    x_T = SeededNoise(range(256), (2,), dtype=torch.float64)()
    # the ODE solution: Heun on 500 Karras steps in float64 (second order; far below the errors compared)
    exact = sample(model, SCHED, make_plan(SCHED, "heun", steps=500, spacing="karras"), init_noise=x_T,
                   dtype=torch.float64)

    def error(plan):
        x = sample(model, SCHED, plan, init_noise=x_T, dtype=torch.float64)
        return float(((x - exact) ** 2).mean().sqrt())

    searched = error(make_plan(SCHED, "unipc", timesteps=found["timesteps"]))
    trailing = error(make_plan(SCHED, "unipc", steps=4, spacing="trailing"))
    assert searched < 0.8 * trailing, (searched, trailing)


def test_candidates_and_errors():
    assert start_grids(SCHED, 5)["leading"] == [831, 665, 499, 333, 167]  # diffusers' multistep schedulers'
    grid = candidate_grid(SCHED, 10)
    assert grid[0] == 999 and grid[-1] == 0 and len(grid) == 10
    with pytest.raises(ValueError, match="candidates=1 is not valid; need at least 2"):
        candidate_grid(SCHED, 1)
    teacher = Teacher(mixture().model(SCHED), SCHED, shape=(2,), num=4, candidates=5)
    with pytest.raises(ValueError, match="6 steps need at least as many candidate timesteps; got 5"):
        gits_grids(teacher, [6])
    with pytest.raises(ValueError, match="start grid 999, 500 holds timesteps that are not candidates: 500"):
        teacher_search(teacher, "ddim", [2], start={2: [999, 500]})


def test_decoupled_timesteps_land_closer_on_trajectories_they_never_saw():
    """LD3's decoupled timesteps (``gits.decoupled``) on UniPC at 3 steps on the 2-D mixture: the
    searched grid and the network's input timesteps, refined together on 96 of 128 teacher
    trajectories, land closer to the exact ODE solution from 256 other x_T than the searched grid
    alone (measured: 0.050 against 0.117 RMS)."""
    gm = mixture()
    model = gm.model(SCHED)
    teacher = Teacher(model, SCHED, shape=(2,), num=128, seed=10**6, candidates=40,
                      extra=[t for grid in start_grids(SCHED, 3).values() for t in grid])
    searched = teacher_search(teacher, "unipc", [3])[3]
    found = teacher_search(teacher, "unipc", [3], decouple=200)[3]
    report = found["decoupled"]
    assert report["kept"] and report["held_out_after"] < report["held_out_before"] and report["runs"] <= 200
    assert report["fitted_after"] < report["fitted_before"] and report["fit_trajectories"] == 96
    assert len(found["input_timesteps"]) == 3 and found["input_timesteps"] != found["timesteps"]
    x_T = SeededNoise(range(256), (2,), dtype=torch.float64)()
    exact = sample(model, SCHED, make_plan(SCHED, "heun", steps=500, spacing="karras"), init_noise=x_T,
                   dtype=torch.float64)

    def error(entry):
        plan = make_plan(SCHED, "unipc", timesteps=entry["timesteps"], input_timesteps=entry.get("input_timesteps"))
        return float(((sample(model, SCHED, plan, init_noise=x_T, dtype=torch.float64) - exact) ** 2).mean().sqrt())

    assert error(found) < 0.7 * error(searched), (error(found), error(searched))
