"""Choosing a few-step sampler's timesteps by measured sample quality.

With one to four steps, where the steps sit matters as much as the sampler. Song et al. 2023
("Consistency Models", §6) chose the intermediate timesteps of their multistep consistency
samplers by searching them against FID, one at a time with the others fixed. ``search_grid``
does that search as coordinate descent over a candidate set: each grid point in turn is replaced by
every candidate that keeps the grid strictly descending, the change is kept if it lowers the
objective, and passes repeat until none does. Every grid is measured once (memoised).

The first point is searched too: a one-step map is free to start below T, reading the starting
noise x_T ~ N(0, I) as x_t of a timestep where the signal is still small. At t = 775 of the
linear schedule sqrt(abar) = 0.047, so the starting distribution differs little from the model's
marginal there, while an eps network's x0 estimate amplifies its error by 1/sqrt(abar) = 21
instead of 157 at t = 999.

``ddpmkit tune`` runs the search with FID on samples from seeds disjoint from ``ddpmkit eval``'s
default ones (so the reported numbers are not the ones the choice was made on) and stores the
grids in the model file, where sample, eval, bench and the main job find them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .schedule import format_grid


def start_grid(candidates: Sequence[float], steps: int) -> list[float]:
    """``steps`` candidates spread evenly from the largest down (the trailing grid's shape)."""
    cands = sorted(set(float(c) for c in candidates), reverse=True)
    if steps > len(cands):
        raise ValueError(f"{steps} steps need at least {steps} distinct candidate timesteps, got {len(cands)}")
    idx = np.round(np.linspace(0, len(cands), steps, endpoint=False)).astype(int)
    return [cands[i] for i in idx]


def search_grid(objective: Callable[[tuple[float, ...]], float], candidates: Sequence[float], steps: int,
                start: Sequence[float] | None = None, max_passes: int = 3,
                log: Callable[[str], None] = lambda _: None) -> tuple[list[float], float, dict]:
    """Coordinate descent for the descending grid of ``steps`` candidates that minimises
    ``objective(grid)``. Returns (best grid, its value, every grid measured -> value)."""
    cands = sorted(set(float(c) for c in candidates), reverse=True)
    grid = list(start) if start is not None else start_grid(cands, steps)
    if len(grid) != steps or any(a <= b for a, b in zip(grid, grid[1:])):
        raise ValueError(f"start grid {grid} must hold {steps} strictly descending timesteps")
    seen: dict[tuple[float, ...], float] = {}

    def measure(g: list[float]) -> float:
        key = tuple(g)
        if key not in seen:
            seen[key] = float(objective(key))
            log(f"  {format_grid(key)}: {seen[key]:.3f}")
        return seen[key]

    best = measure(grid)
    for _ in range(max_passes):
        improved = False
        for i in range(steps):
            hi = grid[i - 1] if i > 0 else np.inf
            lo = grid[i + 1] if i + 1 < steps else -np.inf
            for c in cands:
                if lo < c < hi and c != grid[i]:
                    trial = grid[:i] + [c] + grid[i + 1:]
                    value = measure(trial)
                    if value < best:
                        grid, best, improved = trial, value, True
        if not improved:
            break
    return grid, best, seen
