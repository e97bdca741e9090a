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
grids in the model file, where sample, eval, bench and the main job find them; ``tune`` is that
command's work, its arguments parsed.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from .schedule import check_grid, format_grid


def start_grid(candidates: Sequence[float], steps: int) -> list[float]:
    """``steps`` candidates spread evenly from the largest down (the trailing grid's shape)."""
    cands = sorted(set(float(c) for c in candidates), reverse=True)
    if steps > len(cands):
        raise ValueError(f"{steps} steps need at least {steps} distinct candidate timesteps, got {len(cands)}")
    idx = np.round(np.linspace(0, len(cands), steps, endpoint=False)).astype(int)
    return [cands[i] for i in idx]


def search_grid(objective: Callable[[tuple[float, ...]], float], candidates: Sequence[float], steps: int,
                start: Sequence[float] | None = None, max_passes: int = 3,
                log: Callable[[str], None] = lambda _: None,
                window: int | None = None) -> tuple[list[float], float, dict]:
    """Coordinate descent for the descending grid of ``steps`` candidates that minimises
    ``objective(grid)``; with ``window`` a point moves at most that many candidates
    either way per try (a local search for long candidate lists: fewer grids per pass, more passes).
    Returns (best grid, its value, every grid measured -> value)."""
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
            here = cands.index(grid[i]) if grid[i] in cands else None
            near = cands if window is None or here is None else cands[max(here - window, 0): here + window + 1]
            for c in near:
                if lo < c < hi and c != grid[i]:
                    trial = grid[:i] + [c] + grid[i + 1:]
                    value = measure(trial)
                    if value < best:
                        grid, best, improved = trial, value, True
        if not improved:
            break
    return grid, best, seen


def tune(model, sampler: str, steps_list: Sequence[int], *, candidates: Sequence[float] | None = None, num: int,
         seed: int, ref, cache_dir: str | os.PathLike, batch_size: int = 250,
         micro_batch: int | str | None = "auto", device="cpu",
         log: Callable[[str], None] = print, show: Callable[[str], None] | None = None,
         progress=None) -> dict[int, dict]:
    """``ddpmkit tune``: for each step count, ``search_grid`` over grids of ``candidates`` (default:
    the trailing grid of 10 steps) with the FID of ``num`` samples from seeds seed.. as the objective
    (sampled through the cache with each grid as explicit timesteps, scored against ``ref``).
    ``log`` gets the search's progress; ``show``, where given, the line ``found_line`` makes
    for each step count as soon as it is found (``ddpmkit tune`` prints it even when quiet). Returns {steps:
    {"timesteps", "fid", "num", "seed", "feature_net", "candidates", "grids_measured"}}, what
    ``models.store_tuned_grids`` stores. ``progress(count)`` as samples are made or read."""
    from . import samplers
    from .measure import generate, score

    samplers.sampler_options(sampler)  # an unknown sampler is an error that lists the valid ones
    steps_list = sorted(set(steps_list))
    T = model.schedule.T
    cands = candidates if candidates is not None else model.schedule.grid(min(10, T), "trailing")
    try:
        cands = [float(t) for t in check_grid(sorted(set(cands), reverse=True), T)]
    except ValueError as e:
        raise ValueError(f"--candidates: {e}") from None
    if max(steps_list) > len(cands):
        raise ValueError(f"--steps {max(steps_list)} needs at least as many --candidates; got {len(cands)}")

    def fid(grid):
        plan = model.plan(sampler=sampler, timesteps=list(grid))
        levels, _ = generate(model, plan, num=num, seed=seed, levels=ref.levels, cache_dir=cache_dir,
                             batch_size=batch_size, micro_batch=micro_batch, device=device, progress=progress)
        return score(levels, ref, precision_recall=False, standard_error=False)["fid"]

    found = {}
    for k in steps_list:
        log(f"{sampler}, {k} steps: FID on {num} samples (seeds {seed}..) of each grid tried")
        grid, best, seen = search_grid(fid, cands, k, log=log)
        found[k] = {"timesteps": grid, "fid": best, "num": num, "seed": seed,
                    "feature_net": ref.info["card"].get("data", ""), "candidates": cands, "grids_measured": len(seen)}
        if show is not None:
            show(found_line(sampler, k, found[k]))
    return found


def found_line(sampler: str, steps: int, entry: dict) -> str:
    """For people: "cm, 2 steps: timesteps 775, 450 (FID 118.00 on 500 samples; 21 grids measured)", or
    what a grid found without FID was priced by (``ddpmkit.gits``)."""
    method = entry.get("method", "fid")
    if method == "gits":
        how = f"GITS: total jump price {entry['cost']:.4g} on {entry['num']} teacher trajectories"
    elif method == "teacher":
        how = (f"RMS distance to the teacher {entry['distance']:.4f}, from {entry['start_distance']:.4f} on the "
               f"{entry.get('start', 'trailing')} grid, {entry['num']} trajectories; {entry['grids_measured']} grids "
               "measured")
    else:
        how = f"FID {entry['fid']:.2f} on {entry['num']} samples; {entry['grids_measured']} grids measured"
    told = f", the network told {format_grid(entry['input_timesteps'])}" if "input_timesteps" in entry else ""
    return f"{sampler}, {steps} steps: timesteps {format_grid(entry['timesteps'])}{told} ({how})"
