"""The timestep search (ddpmkit.tune) against brute force over every descending grid."""

import itertools

import numpy as np
import pytest

from ddpmkit.tune import search_grid, start_grid

CANDS = [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]


def all_grids(cands, k):
    return [list(g) for g in itertools.combinations(sorted(cands, reverse=True), k)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 2, 3])
def test_separable_unimodal_objective_reaches_the_brute_force_optimum(k, seed):
    """Per-position costs (t - target_i)^2 with descending targets: the optimum is known (and found
    by brute force); coordinate descent must reach it from the default start."""
    rng = np.random.default_rng(seed)
    targets = np.sort(rng.choice(np.arange(50, 1000, 100), size=k, replace=False))[::-1] + rng.uniform(-40, 40, k)

    def objective(grid):
        return float(sum((t - m) ** 2 for t, m in zip(grid, targets)))

    grid, value, seen = search_grid(objective, CANDS, k, max_passes=10)
    best = min(all_grids(CANDS, k), key=objective)
    assert grid == best and value == objective(best)
    assert all(v == objective(list(g)) for g, v in seen.items())


def test_result_is_a_coordinate_minimum_and_each_grid_is_measured_once():
    calls = []
    rng = np.random.default_rng(0)
    table = {tuple(g): rng.uniform() for g in all_grids(CANDS, 3)}

    def objective(grid):
        calls.append(tuple(grid))
        return table[tuple(grid)]

    grid, value, seen = search_grid(objective, CANDS, 3, max_passes=10)
    assert len(calls) == len(set(calls)) == len(seen)
    for i in range(3):  # no single-point change that keeps the grid descending does better
        for c in CANDS:
            trial = grid[:i] + [c] + grid[i + 1:]
            if all(a > b for a, b in zip(trial, trial[1:])):
                assert table[tuple(trial)] >= value
    assert all(a > b for a, b in zip(grid, grid[1:]))


def test_start_grid_and_errors():
    assert start_grid(CANDS, 1) == [999]
    assert start_grid(CANDS, 2) == [999, 499]
    assert start_grid([5, 3, 3, 1], 3) == [5, 3, 1]
    with pytest.raises(ValueError, match="4 steps need at least 4 distinct candidate timesteps, got 3"):
        start_grid([5, 3, 1], 4)
    with pytest.raises(ValueError, match="strictly descending"):
        search_grid(lambda g: 0.0, CANDS, 2, start=[299, 999])
