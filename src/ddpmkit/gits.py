"""Step grids by trajectory regularity, without FID: GITS (Chen et al. 2024, "On the Trajectory
Regularity of ODE-based Diffusion Sampling", ICML, §4 and Algorithm 1).

The probability-flow ODE's trajectories are regular: nearly the same shape from every starting
noise, so a grid that follows a few hundred of them follows all. GITS

1. runs a fine-step teacher from a few hundred x_T and keeps its state x(t_i) at every candidate
   timestep t_0 > t_1 > ... > t_{C-1}, and its clean end x(0) (here: UniPC on the candidates, which
   form a logSNR grid by default: 9e-5 RMS from the exact ODE at 100 steps on the exact-denoiser
   benchmark);
2. prices every jump t_i -> t_j (i < j, or from t_i to clean data) as the mean L2 distance between
   the teacher's x(t_j) and one first-order step (DDIM, the Euler step of the ODE in
   x / sqrt(abar) against sigma) from the teacher's x(t_i), with the network output that the
   teacher already computed at t_i: the price table costs no network evaluation beyond the
   teacher's (eq. 9, the "local truncation error" of each jump);
3. finds by dynamic programming, for each number of steps K, the K jumps from t_0 to clean data with
   the least total price; the grid is the K timesteps the jumps start from (eq. 10).

The grid is made for first-order steps; the paper finds that it serves higher-order multistep
solvers too (iPNDM on GITS grids: FID 8.38 at 5 NFE on CIFAR-10 against 13.59 on its default
grid). ``benchmarks/exact.py`` measures it for every sampler on the exact denoiser.

``teacher_search`` uses the same teacher for a sampler-specific grid: coordinate descent
(``tune.search_grid``) over the candidates from the best of diffusers' three spacings, priced by
the distance of the sampler's own K-step result from the teacher's clean end on the same few
hundred trajectories: the global error of the very solver that will run, where GITS prices
first-order jumps. Neither needs a feature network or FID.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .plan import make_plan
from .sampling import sample
from .schedule import NoiseSchedule, format_grid

TEACHER = "unipc"  # its defaults (order 2, bh2, with the corrector) on the candidate grid
# the teacher search moves a point by up to WINDOW candidates per try, for up to MAX_PASSES passes:
# on the exact MNIST mixture it found grids as good as full sweeps of all candidates with a fraction of
# the grids measured
WINDOW, MAX_PASSES = 8, 20
# the decoupled refinement fits on this share of the teacher's trajectories and checks on the rest;
# grid points stay at least MIN_GAP timesteps apart
FIT_SHARE, MIN_GAP = 0.75, 0.5


def candidate_grid(schedule: NoiseSchedule, count: int = 100, spacing: str = "logsnr") -> list[float]:
    """The timesteps a GITS grid is chosen from: ``count`` of ``schedule.grid``'s ``spacing``, which
    is also the teacher's grid (a logSNR grid runs from T - 1 down to 0)."""
    if count < 2:
        raise ValueError(f"candidates={count} is not valid; need at least 2")
    return [float(t) for t in schedule.grid(count, spacing)]


def teacher_states(model, schedule: NoiseSchedule, candidates: list[float], *, shape: tuple[int, ...],
                   seeds, prediction: str = "eps", batch_size: int | None = None, device=None, dtype=torch.float32,
                   **sample_kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's trajectories: (x at each candidate, (C, N, ...); x0_hat there, (C, N, ...); the
    clean end, (N, ...)), from the seeds' x_T, by ``TEACHER`` on the candidate grid."""
    seeds = list(seeds)
    plan = make_plan(schedule, TEACHER, timesteps=candidates, prediction=prediction)
    xs, x0s = [], []  # batch by batch (sample's batches), step by step within each

    def keep(i, t, x_t, x0_hat):  # x_t before UniPC's corrector: the state that x0_hat is the output at
        xs.append(x_t.detach().to("cpu", torch.float64))
        x0s.append(x0_hat.detach().to("cpu", torch.float64))

    end = sample(model, schedule, plan, shape=(len(seeds), *shape), seeds=seeds, prediction=prediction,
                 batch_size=batch_size, device=device, dtype=dtype, callback=keep, **sample_kw)
    steps = len(plan.grid)

    def by_step(per_call):  # (steps, N, ...): each batch's steps stacked, the batches side by side
        return torch.cat([torch.stack(per_call[lo:lo + steps]) for lo in range(0, len(per_call), steps)], dim=1)

    return by_step(xs), by_step(x0s), end.to("cpu", torch.float64)


def jump_costs(schedule: NoiseSchedule, candidates: list[float], x: torch.Tensor, x0: torch.Tensor,
               end: torch.Tensor) -> torch.Tensor:
    """The price table (C, C + 1): entry (i, j) for j > i is the mean over samples of
    ||x(t_j) - DDIM(x(t_i), t_i -> t_j)||_2, entry (i, C) that of the jump to clean data (the step
    to abar = 1 is x0_hat itself); inf where j <= i."""
    count = len(candidates)
    abar = torch.tensor([schedule.abar_at(t) for t in candidates], dtype=torch.float64)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    shape = (-1,) + (1,) * (x.ndim - 1)  # over (later candidates, samples, *sample shape)
    cost = torch.full((count, count + 1), math.inf, dtype=torch.float64)
    for i in range(count):
        if i + 1 < count:
            eps = (x[i] - a[i] * x0[i]) / s[i]  # the teacher's eps_hat at t_i, consistent with its x0_hat
            later = a[i + 1:].view(shape) * x0[i] + s[i + 1:].view(shape) * eps  # DDIM to every later candidate
            cost[i, i + 1:count] = (later - x[i + 1:]).flatten(2).norm(dim=2).mean(1)
        cost[i, count] = (x0[i] - end).flatten(1).norm(dim=1).mean()
    return cost


def best_paths(cost: torch.Tensor, max_steps: int) -> dict[int, tuple[list[int], float]]:
    """For K = 1..max_steps: the K jumps from node 0 to the clean end (node C) of least total price,
    as (the K start nodes, the price). Dynamic programming over (jumps made, node): O(K C^2)."""
    count = cost.shape[0]
    max_steps = min(max_steps, count)
    total = torch.full((max_steps + 1, count + 1), math.inf, dtype=torch.float64)
    came = torch.full((max_steps + 1, count + 1), -1, dtype=torch.int64)
    total[0, 0] = 0.0
    for k in range(1, max_steps + 1):
        # best[k, j] = min over i < j of best[k - 1, i] + cost[i, j]
        through = total[k - 1, :count, None] + cost  # (C, C + 1)
        total[k], came[k] = through.min(dim=0)
    out = {}
    for k in range(1, max_steps + 1):
        if not math.isfinite(total[k, count]):
            continue
        nodes, j = [], count
        for step in range(k, 0, -1):
            j = int(came[step, j])
            nodes.append(j)
        out[k] = (nodes[::-1], float(total[k, count]))
    return out


class Teacher:
    """The fine-step teacher's trajectories of seeds seed .. seed+num-1 on the candidate grid (run
    once, on first use), shared by ``gits_grids`` and ``teacher_search``. ``candidates``: a count of
    logSNR-spaced timesteps, or the timesteps themselves; ``extra`` timesteps join them (a default
    grid the search starts from must be made of candidates)."""

    def __init__(self, model, schedule: NoiseSchedule, *, shape: tuple[int, ...], num: int = 256, seed: int = 0,
                 candidates: int | list[float] = 100, extra=(), prediction: str = "eps",
                 batch_size: int | None = None, device=None, **sample_kw):
        base = candidate_grid(schedule, candidates) if isinstance(candidates, int) else [float(t) for t in candidates]
        self.candidates = sorted(set(base) | {float(t) for t in extra}, reverse=True)
        self.model, self.schedule, self.shape, self.num, self.seed = model, schedule, tuple(shape), num, seed
        self.prediction, self.batch_size, self.device, self.sample_kw = prediction, batch_size, device, sample_kw
        self._states = self._end = None

    @property
    def seeds(self) -> range:
        return range(self.seed, self.seed + self.num)

    @property
    def states(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._states is None:
            self._states = teacher_states(self.model, self.schedule, self.candidates, shape=self.shape,
                                          seeds=self.seeds, prediction=self.prediction, batch_size=self.batch_size,
                                          device=self.device, **self.sample_kw)
        return self._states

    @property
    def end(self) -> torch.Tensor:
        """The teacher's clean end alone (N, ...), without keeping the states (a fraction of their
        memory: ``decoupled`` needs no more)."""
        if self._states is not None:
            return self._states[2]
        if self._end is None:
            plan = make_plan(self.schedule, TEACHER, timesteps=self.candidates, prediction=self.prediction)
            self._end = sample(self.model, self.schedule, plan, shape=(self.num, *self.shape), seeds=self.seeds,
                               prediction=self.prediction, batch_size=self.batch_size, device=self.device,
                               **self.sample_kw).to("cpu", torch.float64)
        return self._end

    def describe(self) -> str:
        return f"{TEACHER} on {len(self.candidates)} candidate timesteps, {self.num} trajectories from seed {self.seed}"

    def distance(self, plan, part: slice = slice(None)) -> float:
        """RMS distance of ``plan``'s samples of the teacher's seeds (those in ``part``) from the
        teacher's clean end."""
        end, seeds = self.end[part], self.seeds[part]
        x = sample(self.model, self.schedule, plan, shape=(len(seeds), *self.shape), seeds=seeds,
                   prediction=self.prediction, batch_size=self.batch_size, device=self.device, **self.sample_kw)
        return float(((x.to("cpu", torch.float64) - end) ** 2).mean().sqrt())


def gits_grids(teacher: Teacher, steps_list, log=lambda _: None) -> dict[int, dict]:
    """GITS grids for each step count in ``steps_list``: {steps: {"timesteps", "cost" (the path's
    total price), "method": "gits", "num", "seed", "teacher"}}, what ``ddpmkit tune --by gits``
    stores. The grid does not depend on the sampler."""
    steps_list = sorted(set(int(k) for k in steps_list))
    cands = teacher.candidates
    if max(steps_list) > len(cands):
        raise ValueError(f"{max(steps_list)} steps need at least as many candidate timesteps; got {len(cands)}")
    x, x0, end = teacher.states
    paths = best_paths(jump_costs(teacher.schedule, cands, x, x0, end), max(steps_list))
    out = {k: {"timesteps": [cands[i] for i in paths[k][0]], "cost": paths[k][1], "method": "gits",
               "num": teacher.num, "seed": teacher.seed, "teacher": teacher.describe()} for k in steps_list}
    for k in steps_list:
        log(f"gits, {k} steps: {format_grid(out[k]['timesteps'])} (total jump price {out[k]['cost']:.4g})")
    return out


def start_timesteps(schedule: NoiseSchedule, steps_list) -> list[float]:
    """Every timestep of ``start_grids`` for each step count: what a teacher's candidates must hold."""
    return [t for k in steps_list for grid in start_grids(schedule, k).values() for t in grid]


def start_grids(schedule: NoiseSchedule, steps: int) -> dict[str, list[float]]:
    """The grids a teacher search may start from: diffusers' three spacings, with the leading one as
    its multistep schedulers place it (steps + 1 intervals, ``steps_offset`` 1: 831, 665, 499, 333,
    167 for 5 steps of T = 1000), which is their best 5-step grid on the exact-denoiser benchmark."""
    T = schedule.T
    ratio = T // (steps + 1)
    leading = [float(i * ratio + 1) for i in range(steps, 0, -1)]
    return {"trailing": [float(t) for t in schedule.grid(steps, "trailing")], "leading": leading,
            "linspace": [float(t) for t in schedule.grid(steps, "linspace")]}


def teacher_search(teacher: Teacher, sampler: str, steps_list, *, options: dict | None = None,
                   start: dict[int, list[float]] | None = None, decouple: int = 0,
                   log=lambda _: None) -> dict[int, dict]:
    """For each step count: the grid of candidates whose ``sampler`` run lands closest (RMS) to the
    teacher's clean end, by ``tune.search_grid``, the first timestep free too (the sampler may read
    x_T as the state of a later timestep, as diffusers' leading grids do), from ``start[steps]``
    (default: whichever of ``start_grids`` lands closest). {steps: {"timesteps", "distance", "start",
    "start_distance", "method": "teacher", "num", "seed", "teacher", "grids_measured"}}, what
    ``ddpmkit tune --by teacher`` stores. With ``decouple`` > 0, ``decoupled`` then refines each grid
    with up to that many runs of the sampler, and the entry holds its "input_timesteps" where it
    kept them, and its account under "decoupled"."""
    from .tune import search_grid

    options, start, out = dict(options or {}), dict(start or {}), {}

    for k in sorted(set(int(k) for k in steps_list)):
        measured: dict[tuple[float, ...], float] = {}  # each grid's distance, once: the starts, then the search

        def objective(grid):
            grid = tuple(grid)
            if grid not in measured:
                measured[grid] = teacher.distance(make_plan(teacher.schedule, sampler, timesteps=list(grid),
                                                            prediction=teacher.prediction, **options))
            return measured[grid]

        starts = {"given": [float(t) for t in start[k]]} if k in start else start_grids(teacher.schedule, k)
        for grid in starts.values():
            missing = [t for t in grid if t not in teacher.candidates]
            if missing:
                raise ValueError(f"start grid {format_grid(grid)} holds timesteps that are not candidates: "
                                 f"{format_grid(missing)}")
        priced = {name: objective(tuple(grid)) for name, grid in starts.items()}
        name = min(priced, key=priced.get)
        grid, best, _ = search_grid(objective, teacher.candidates, k, start=starts[name], log=log,
                                    window=WINDOW, max_passes=MAX_PASSES)
        out[k] = {"timesteps": grid, "distance": best, "start": name, "start_distance": priced[name],
                  "method": "teacher", "num": teacher.num, "seed": teacher.seed, "teacher": teacher.describe(),
                  "grids_measured": len(measured)}
        if decouple:
            found = decoupled(teacher, sampler, grid, options=options, max_runs=decouple, log=log)
            if found["kept"]:
                out[k].update(timesteps=found.pop("timesteps"), input_timesteps=found.pop("input_timesteps"),
                              distance=found["distance"])
            out[k]["decoupled"] = {key: v for key, v in found.items() if key not in ("timesteps", "input_timesteps")}
    return out


def decoupled(teacher: Teacher, sampler: str, grid: list[float], *, options: dict | None = None,
              max_runs: int = 500, log=lambda _: None) -> dict:
    """LD3's decoupled timesteps (Tong et al. 2025, "Learning to Discretize Denoising Diffusion ODEs",
    whose code gives the network timesteps of its own, apart from the solver's): ``grid`` and the
    timesteps the network is told at each of its points (``Plan.input_timesteps``), moved together
    to bring ``sampler``'s result closer to the teacher's clean end. LD3 descends the gradient
    through the solver; here Nelder-Mead (no gradient, so any sampler and network) takes up to
    ``max_runs`` runs of the sampler on the first ``FIT_SHARE`` of the teacher's trajectories,
    from inputs = grid. The result is kept only where it also lands closer on the other
    trajectories, which it never fitted. Returns {"timesteps", "input_timesteps", "kept", "distance"
    (all trajectories, of what is kept), "fitted_before", "fitted_after", "held_out_before",
    "held_out_after", "runs"}."""
    from scipy.optimize import minimize

    options, k, last = dict(options or {}), len(grid), teacher.schedule.T - 1
    cut = max(1, min(teacher.num - 1, round(FIT_SHARE * teacher.num)))
    fit, held_out = slice(0, cut), slice(cut, None)

    def plan_of(v):  # None where the points have crossed: a grid descends
        g = np.clip(v[:k], 0, last)
        if np.any(np.diff(g) >= -MIN_GAP):
            return None
        return make_plan(teacher.schedule, sampler, timesteps=list(g), input_timesteps=list(np.clip(g + v[k:], 0, last)),
                         prediction=teacher.prediction, **options)

    def objective(v):
        plan = plan_of(v)
        return math.inf if plan is None else teacher.distance(plan, fit)

    start = np.array([*grid, *[0.0] * k])
    # the first simplex: each point moved by 5% of its timestep (at least one), each input by 1.5% of T
    moves = [0.05 * t + 1 for t in grid] + [0.015 * teacher.schedule.T] * k
    simplex = np.vstack([start] + [start + np.eye(2 * k)[i] * moves[i] for i in range(2 * k)])
    found = minimize(objective, start, method="Nelder-Mead",
                     options={"maxfev": max_runs, "initial_simplex": simplex, "xatol": 0.5, "fatol": 1e-6})
    before, after = plan_of(start), plan_of(found.x)
    report = {"fitted_before": objective(start), "fitted_after": float(found.fun),
              "held_out_before": teacher.distance(before, held_out), "held_out_after": teacher.distance(after, held_out),
              "runs": int(found.nfev), "fit_trajectories": cut}
    report["kept"] = report["held_out_after"] < report["held_out_before"]
    chosen = after if report["kept"] else before
    report.update(timesteps=list(chosen.grid), input_timesteps=list(chosen.input_timesteps),
                  distance=teacher.distance(chosen))
    log(f"decoupled: timesteps {format_grid(after.grid)}, the network told {format_grid(after.input_timesteps)}: "
        f"RMS distance {report['fitted_before']:.4f} -> {report['fitted_after']:.4f} on {cut} fitted trajectories, "
        f"{report['held_out_before']:.4f} -> {report['held_out_after']:.4f} on {teacher.num - cut} held out "
        f"({'kept' if report['kept'] else 'not kept'}; {report['runs']} runs)")
    return report


__all__ = ["Teacher", "candidate_grid", "teacher_states", "jump_costs", "best_paths", "gits_grids",
           "start_grids", "start_timesteps", "teacher_search", "decoupled"]
