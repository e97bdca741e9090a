"""The exact-denoiser benchmark: every sampler against the truth, with no network in the way.

Data: a Gaussian mixture in image space, components centred on real images with a small shared
std; its denoiser is closed-form (``GaussianMixture``), so a sampler's error is the sampler's own.
- Deterministic samplers: RMS error of x_0 against a high-accuracy solution of the same
  probability-flow ODE from the same x_T (Heun, 2000 Karras steps, float64).
- Every sampler: the Frechet distance between the samples and the mixture's exact moments in the
  subspace of the top principal directions of the component means, and the fraction of samples
  that land on a component (squared distance to the nearest mean within chi-square bounds of
  d std^2). The same numbers for exact draws from the mixture give the sampling floor.
- Deterministic samplers also: the fraction of samples whose nearest component is the one the
  reference reaches from the same x_T.
diffusers' schedulers run in the same loop, on the same denoiser, x_T and NFE. ``markdown`` writes
the report of ``benchmarks/exact.py``.

And ``ddpmkit demo --exact`` (``run_demo``, ``markdown_table``): the exact denoiser of the empirical
distribution of scikit-learn's 1797 8x8 digits (``GaussianMixture`` with std 0), sampled with several
samplers. A perfect sampler returns training digits exactly; how far a sampler's outputs land from
the nearest training digit measures its own error, with no network in the way.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..data import load_digits
from ..ems import estimate_ems
from ..images import labelled_grid, save_image
from ..oracles import GaussianMixture
from ..plan import make_plan
from ..rng import SeededNoise
from ..samplers import steps_for_nfe
from ..sampling import sample
from ..schedule import NoiseSchedule
from . import report
from .metrics import frechet_distance

# (label, sampler, options, spacing, deterministic)
# every deterministic sampler on the trailing grid diffusers uses here, and on the grid its paper uses
OURS = [
    ("ddim", "ddim", {}, "trailing", True),
    ("euler", "euler", {}, "karras", True),
    ("heun", "heun", {}, "trailing", True),
    ("heun", "heun", {}, "karras", True),
    ("dpmpp-2m", "dpmpp-2m", {}, "trailing", True),
    ("dpmpp-2m", "dpmpp-2m", {}, "logsnr", True),
    ("dpmpp-3m", "dpmpp-3m", {}, "trailing", True),
    ("dpmpp-3m", "dpmpp-3m", {}, "logsnr", True),
    ("unipc-2 bh2", "unipc", {"order": 2, "variant": "bh2"}, "trailing", True),
    ("unipc-2 bh2", "unipc", {"order": 2, "variant": "bh2"}, "logsnr", True),
    ("unipc-3 bh1", "unipc", {"order": 3, "variant": "bh1"}, "trailing", True),
    ("unipc-3 bh1", "unipc", {"order": 3, "variant": "bh1"}, "logsnr", True),
    ("ipndm", "ipndm", {}, "trailing", True),
    ("ipndm", "ipndm", {}, "logsnr", True),
    ("deis-3", "deis", {}, "trailing", True),
    ("deis-3", "deis", {}, "logsnr", True),
    ("dpm-solver-v3", "dpm-solver-v3", {}, "trailing", True),
    ("dpm-solver-v3", "dpm-solver-v3", {}, "logsnr", True),
    ("restart", "restart", {}, "karras", False),
    ("ddpm small", "ddpm", {"variance": "small"}, "trailing", False),
    ("ddpm optimal", "ddpm", {"variance": "optimal"}, "trailing", False),
    ("ddim eta=1", "ddim", {"eta": 1.0}, "trailing", False),
    ("euler-ancestral", "euler-ancestral", {}, "karras", False),
    ("dpmpp-2m-sde", "dpmpp-2m-sde", {}, "logsnr", False),
]
# our deterministic samplers that run on grids searched for them (``ddpmkit.gits``), at SEARCHED_NFES
SEARCHED = [(label, name, opts) for label, name, opts, spacing, det in OURS
            if det and spacing == "trailing" and name not in ("heun",)]
SEARCHED_NFES = (5, 10)
# those whose searched grid is then refined with decoupled input timesteps (``gits.decoupled``) at
# DECOUPLE_NFES, on DECOUPLE_NUM teacher trajectories with up to DECOUPLE_RUNS runs each (the errors are
# heavy-tailed: a prototype fitted to 2000 trajectories reached 0.112 on the measured x_T with
# dpmpp-2m's 5 NFE, fitted to 8000, 0.106; the two refinements here, 961 runs of 8000 and the teacher,
# took 1106 s at one thread beside another job)
DECOUPLED, DECOUPLE_NFES = ("unipc-2 bh2", "dpmpp-2m"), (5,)
DECOUPLE_NUM, DECOUPLE_RUNS = 8000, 500
# diffusers' schedulers, trailing spacing, with the keyword arguments that select the algorithm
DIFFUSERS = [
    ("diffusers DDIM", "DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}, True),
    ("diffusers Euler", "EulerDiscreteScheduler", {}, True),
    ("diffusers Heun", "HeunDiscreteScheduler", {}, True),
    ("diffusers DPM++ 2M", "DPMSolverMultistepScheduler", {"solver_order": 2}, True),
    ("diffusers DPM++ 3M", "DPMSolverMultistepScheduler", {"solver_order": 3}, True),
    ("diffusers UniPC", "UniPCMultistepScheduler", {}, True),
    ("diffusers DEIS", "DEISMultistepScheduler", {"solver_order": 3}, True),
    ("diffusers Euler a", "EulerAncestralDiscreteScheduler", {}, False),
]


# diffusers' other grids (at SEARCHED_NFES): the keyword arguments that select each; which schedulers take it
DIFFUSERS_GRIDS = {
    "leading": ({"timestep_spacing": "leading", "steps_offset": 1}, None),
    "linspace": ({"timestep_spacing": "linspace"}, None),
    "karras": ({"use_karras_sigmas": True}, ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
                                             "DEISMultistepScheduler")),
    "exponential": ({"use_exponential_sigmas": True}, ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
                                                       "DEISMultistepScheduler")),
    "lu": ({"use_lu_lambdas": True}, ("DPMSolverMultistepScheduler",)),
}


def image_mixture(images: torch.Tensor, k: int, std: float, seed: int = 0) -> GaussianMixture:
    """k components centred on k images drawn (without replacement, seeded) from ``images``."""
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:k]
    return GaussianMixture(images[idx].double(), std)


def principal_directions(gm: GaussianMixture, k: int) -> torch.Tensor:
    """(k, d): the top principal directions of the component means."""
    means = gm.means.reshape(len(gm.means), -1)
    _, _, vh = torch.linalg.svd(means - means.mean(0), full_matrices=False)
    return vh[:k]


def mixture_moments(gm: GaussianMixture, proj: torch.Tensor):
    """Exact mean and covariance of the mixture, projected: mean = P sum w m, cov = P (C_m + s^2 I) P^T."""
    means = gm.means.reshape(len(gm.means), -1) @ proj.T
    w = gm.weights
    mu = w @ means
    centred = means - mu
    cov = (centred.T * w) @ centred + gm.std**2 * torch.eye(len(proj), dtype=torch.float64)
    return mu, cov


def nearest_component(x: torch.Tensor, gm: GaussianMixture) -> torch.Tensor:
    return torch.cdist(x.reshape(len(x), -1).double(), gm.means.reshape(len(gm.means), -1)).argmin(1)


def distribution_errors(x: torch.Tensor, gm: GaussianMixture, proj: torch.Tensor) -> dict:
    flat = x.reshape(len(x), -1).double()
    z = flat @ proj.T
    mu, cov = z.mean(0), torch.cov(z.T)
    mu_true, cov_true = mixture_moments(gm, proj)
    d = flat.shape[1]
    dist2 = torch.cdist(flat, gm.means.reshape(len(gm.means), -1)).min(1).values ** 2 / (d * gm.std**2)
    half_width = 4 * math.sqrt(2.0 / d)  # chi^2_d / d has std sqrt(2/d)
    on = ((dist2 > 1 - half_width) & (dist2 < 1 + half_width)).double().mean().item()
    return {"fd": frechet_distance(mu, cov, mu_true, cov_true), "on_component": on}


def diffusers_scheduler(cls_name: str, kwargs: dict, schedule: NoiseSchedule):
    """diffusers' scheduler ``cls_name`` on our schedule's betas (its own float32 tables), trailing
    spacing unless ``kwargs`` say otherwise."""
    import diffusers

    return getattr(diffusers, cls_name)(num_train_timesteps=schedule.T, trained_betas=schedule.betas.tolist(),
                                        **{"timestep_spacing": "trailing", **kwargs})


def diffusers_sample(cls_name: str, kwargs: dict, schedule: NoiseSchedule, model, x_T: torch.Tensor, nfe: int,
                     seed: int = 0):
    """Run a diffusers scheduler the way its users do (trailing spacing unless ``kwargs`` say
    otherwise, its own float32 tables from our betas) for the most steps that fit ``nfe``; returns
    (x_0, steps, nfe used)."""
    sched = diffusers_scheduler(cls_name, kwargs, schedule)
    steps = (nfe + 1) // 2 if cls_name == "HeunDiscreteScheduler" else nfe
    sched.set_timesteps(steps)
    y = x_T * sched.init_noise_sigma
    g = torch.Generator().manual_seed(seed)
    calls = 0
    with torch.no_grad():
        for t in sched.timesteps:
            inp = sched.scale_model_input(y, t)
            out = model(inp, torch.full((len(y),), float(t)))
            calls += 1
            kw = {"generator": g} if cls_name == "EulerAncestralDiscreteScheduler" else {}
            y = sched.step(out, t, y, **kw).prev_sample
    return y, steps, calls


def fit_order(nfes, errors) -> float | None:
    """Slope of log error against log NFE over the points with error above 1e-6."""
    pts = [(n, e) for n, e in zip(nfes, errors) if e is not None and e > 1e-6]
    if len(pts) < 3:
        return None
    n, e = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(-np.polyfit(n, e, 1)[0])


def searched_grids(model, schedule: NoiseSchedule, shape, nfes, *, num: int = 512, seed: int = 10**6,
                    candidates: int = 40, supplied=lambda name, opts: {}, decouple_num: int = DECOUPLE_NUM,
                    decouple_runs: int = DECOUPLE_RUNS, log=print) -> tuple[dict, str]:
    """({(label, nfe, how): grid}, what the teacher was) for each sampler of ``SEARCHED`` at each NFE
    of ``nfes``: its teacher-searched grid (``gits.teacher_search``, how = "teacher"), and the GITS
    grid shared by all (how = "gits"), from ``num`` teacher trajectories of seeds disjoint from the
    measured ones; for those of ``DECOUPLED`` (how = "decoupled") the teacher-searched grid refined
    with input timesteps by ``gits.decoupled`` on ``decouple_num`` trajectories (what it returns:
    timesteps, input_timesteps, whether it kept them). ``supplied(name, opts)``: what the model
    supplies to that sampler (DPM-Solver-v3's statistics)."""
    from ..gits import Teacher, decoupled, gits_grids, start_timesteps, teacher_search

    start = time.perf_counter()
    teacher = Teacher(model, schedule, shape=shape, num=num, seed=seed, candidates=candidates,
                      extra=start_timesteps(schedule, nfes))
    out = {}
    for n, entry in gits_grids(teacher, nfes).items():
        for label, _, _ in SEARCHED:
            out[label, n, "gits"] = entry["timesteps"]
    for label, name, opts in SEARCHED:
        for n, entry in teacher_search(teacher, name, nfes, options={**opts, **supplied(name, opts)}).items():
            out[label, n, "teacher"] = entry["timesteps"]
    log(f"searched grids: {teacher.describe()}, {time.perf_counter() - start:.0f} s")
    refine = [(label, name, opts, n) for label, name, opts in SEARCHED if label in DECOUPLED
              for n in nfes if n in DECOUPLE_NFES]
    if decouple_runs and refine:
        start = time.perf_counter()
        # the clean ends alone of more trajectories (the same seeds and more): the refinement fits 2k+ numbers
        wide = Teacher(model, schedule, shape=shape, num=decouple_num, seed=seed, candidates=teacher.candidates)
        for label, name, opts, n in refine:
            found = decoupled(wide, name, out[label, n, "teacher"], options={**opts, **supplied(name, opts)},
                              max_runs=decouple_runs, log=log)
            out[label, n, "decoupled"] = {**found, "runs_allowed": decouple_runs, "trajectories": decouple_num}
        log(f"decoupled grids: {wide.describe()}, {time.perf_counter() - start:.0f} s")
    return out, teacher.describe()


def run(gm: GaussianMixture, schedule: NoiseSchedule, *, nfes=(5, 10, 20, 50, 100), num: int = 256,
        eps_moment=None, reference_steps: int = 2000, include_diffusers: bool = True, log=print,
        searched_nfes=SEARCHED_NFES, search: dict | None = None, ems_num: int = 1024) -> dict:
    """Every sampler of ``OURS`` (and ``DIFFUSERS``) at every NFE, and at ``searched_nfes`` those of
    ``SEARCHED`` on their searched grids and diffusers' on their other grids; returns rows plus the
    floor. ``search``: keyword arguments of ``searched_grids`` (num, seed, candidates); ``ems_num``:
    the trajectories of DPM-Solver-v3's statistics."""
    model = gm.model(schedule, "eps")
    start = time.perf_counter()
    # DPM-Solver-v3's statistics, from trajectories apart from the measured and the grid search's
    ems = estimate_ems(model, schedule, shape=gm.shape, num=ems_num, seed=2 * 10**6, dtype=torch.float64)
    log(f"DPM-Solver-v3 statistics: {ems_num} trajectories, {time.perf_counter() - start:.0f} s")

    def supplied(name, opts):  # what the model supplies to a sampler
        if name == "dpm-solver-v3":
            return {"ems": ems}
        return {"eps_moment": eps_moment} if opts.get("variance") == "optimal" else {}

    searched_nfes = [n for n in searched_nfes if n in nfes]
    grids, teacher = (searched_grids(model, schedule, gm.shape, searched_nfes, supplied=supplied, log=log,
                                     **(search or {})) if searched_nfes else ({}, None))
    x_T = SeededNoise(range(num), gm.shape, dtype=torch.float64)()
    start = time.perf_counter()
    reference = sample(model, schedule, make_plan(schedule, "heun", steps=reference_steps, spacing="karras"),
                       init_noise=x_T, dtype=torch.float64)
    half = sample(model, schedule, make_plan(schedule, "heun", steps=reference_steps // 2, spacing="karras"),
                  init_noise=x_T, dtype=torch.float64)
    # Heun is second order: the reference's own error is about a third of its distance to the half-step run
    reference_check = ((half - reference) ** 2).mean().sqrt().item()
    log(f"reference: Heun, {reference_steps} Karras steps, float64 ({time.perf_counter() - start:.0f} s); "
        f"RMS distance to {reference_steps // 2} steps: {reference_check:.1e}")
    proj = principal_directions(gm, 16)
    floor = distribution_errors(gm.sample(num, torch.Generator().manual_seed(12345)), gm, proj)
    ref_dist = distribution_errors(reference, gm, proj)
    ref_component = nearest_component(reference, gm)
    rows = []

    def record(label, source, spacing, deterministic, budget, x, steps, used, seconds):
        row = {"sampler": label, "source": source, "spacing": spacing, "nfe_budget": budget, "steps": steps,
               "nfe": used, "seconds": seconds, **distribution_errors(x, gm, proj)}
        row["rms_error"] = ((x.double() - reference) ** 2).mean().sqrt().item() if deterministic else None
        # where a few samples flip to another component the RMS error is theirs; count them apart
        same = (nearest_component(x, gm) == ref_component).double().mean().item() if deterministic else None
        row["same_component"] = same
        rows.append(row)
        err = f"rms {row['rms_error']:.2e}" if deterministic else "stochastic"
        log(f"  {label:<20} NFE {used:>3}  {err:<14} FD {row['fd']:.4f}  on-component {row['on_component']:.2f}")

    for budget in nfes:
        for label, name, opts, spacing, deterministic in OURS:
            if name == "ddpm" and opts.get("variance") == "optimal" and eps_moment is None:
                continue
            try:
                steps = steps_for_nfe(name, budget, schedule.T, **opts)
            except ValueError:
                continue  # cannot fit even one step into this budget (restart needs 2 + its restarts)
            t0 = time.perf_counter()
            plan = make_plan(schedule, name, steps=steps, spacing=spacing, model_options=supplied(name, opts), **opts)
            x, info = sample(model, schedule, plan, init_noise=x_T, seeds=range(num), dtype=torch.float32,
                             return_info=True)
            record(label, "ddpmkit", spacing, deterministic, budget, x, steps, info["nfe"], time.perf_counter() - t0)
            assert info["nfe"] == plan.nfe
        for how in ("teacher", "gits", "decoupled"):
            for label, name, opts in SEARCHED if budget in searched_nfes else ():
                if (label, budget, how) not in grids:
                    continue
                t0 = time.perf_counter()
                grid = grids[label, budget, how]
                placed = ({"timesteps": grid["timesteps"], "input_timesteps": grid["input_timesteps"]}
                          if how == "decoupled" else {"timesteps": grid})
                plan = make_plan(schedule, name, **placed, model_options=supplied(name, opts), **opts)
                x, info = sample(model, schedule, plan, init_noise=x_T, seeds=range(num), return_info=True)
                record(label, "ddpmkit", how, True, budget, x, plan.steps, info["nfe"], time.perf_counter() - t0)
        if include_diffusers:
            for label, cls_name, kw, deterministic in DIFFUSERS:
                t0 = time.perf_counter()
                x, steps, used = diffusers_sample(cls_name, kw, schedule, model, x_T.float(), budget)
                record(label, "diffusers", "trailing", deterministic, budget, x, steps, used, time.perf_counter() - t0)
            for grid, (extra, takers) in DIFFUSERS_GRIDS.items() if budget in searched_nfes else ():
                for label, cls_name, kw, deterministic in DIFFUSERS:
                    if deterministic and (takers is None or cls_name in takers) and cls_name != "HeunDiscreteScheduler":
                        t0 = time.perf_counter()
                        x, steps, used = diffusers_sample(cls_name, {**kw, **extra}, schedule, model, x_T.float(),
                                                          budget)
                        record(label, "diffusers", grid, True, budget, x, steps, used, time.perf_counter() - t0)
    orders = {}
    for key in dict.fromkeys(f"{r['sampler']} / {r['spacing']}" for r in rows):
        mine = [r for r in rows if f"{r['sampler']} / {r['spacing']}" == key and r["rms_error"] is not None]
        if mine:
            orders[key] = fit_order([r["nfe"] for r in mine], [r["rms_error"] for r in mine])
    searched = {f"{label} / {n} / {how}": grid for (label, n, how), grid in grids.items()}
    return {"rows": rows, "floor": floor, "reference": ref_dist, "reference_check": reference_check, "orders": orders,
            "searched_grids": searched, "teacher": teacher, "ems": ems.info,
            "mixture": {"components": len(gm.means), "std": gm.std, "shape": list(gm.shape)}, "num": num,
            "nfes": list(nfes), "schedule": schedule.to_config()}


def best_against_diffusers(rows: list[dict]) -> list[dict]:
    """At each NFE: our deterministic row with the lowest RMS error against the ODE, diffusers' (any
    scheduler, any grid), and the ratio of the two errors."""
    out = []
    for nfe in dict.fromkeys(r["nfe_budget"] for r in rows):
        best = {}
        for source in ("ddpmkit", "diffusers"):
            mine = [r for r in rows if r["source"] == source and r["nfe_budget"] == nfe and r["rms_error"] is not None]
            best[source] = min(mine, key=lambda r: r["rms_error"]) if mine else None
        if best["ddpmkit"] and best["diffusers"]:
            out.append({"nfe": nfe, "ours": best["ddpmkit"], "diffusers": best["diffusers"],
                        "ratio": best["ddpmkit"]["rms_error"] / best["diffusers"]["rms_error"]})
    return out


def searched_note(result: dict) -> str:
    """What the report says of the searched grids and of DPM-Solver-v3's statistics, where the run had them."""
    note = ""
    if result.get("teacher"):
        note += (" Grid `teacher`: the grid searched for that sampler against a fine-step teacher's trajectories "
                 "from other x_T (`ddpmkit tune --by teacher`, from the best of diffusers' trailing, leading and "
                 f"linspace grids; {result['teacher']}); `gits`: GITS's grid from the same trajectories (`--by "
                 "gits`), one for every sampler.")
    refined = {k: v for k, v in result.get("searched_grids", {}).items() if k.endswith("/ decoupled")}
    if refined:
        first = next(iter(refined.values()))
        note += (" Grid `decoupled`: the teacher-searched grid and the timesteps the network is told at its points, "
                 f"refined together (`--decouple {first['runs_allowed']}`, LD3's decoupled timesteps) on "
                 f"{first['fit_trajectories']} of {first['trajectories']} teacher trajectories, kept only where "
                 "they land closer on the rest: " + "; ".join(
                     f"{k.rsplit(' / ', 1)[0]} NFE: {v['held_out_before']:.3f} -> {v['held_out_after']:.3f} held out, "
                     f"{'kept' if v['kept'] else 'not kept'}" for k, v in refined.items()) + ".")
    if result.get("ems"):
        ems = result["ems"]
        note += (f" dpm-solver-v3's statistics: {ems['num']} trajectories from seed {ems['seed']}, {ems['points']} "
                 "points (`ddpmkit ems`).")
    return note


def markdown(result: dict, command: str) -> str:
    """The report of a ``run`` (with ``seconds``, ``machine``, ``data`` and ``reference_steps``
    added): RMS error, Frechet distance, same-component and on-component tables by NFE."""
    nfes, rows = result["nfes"], result["rows"]
    labels = list(dict.fromkeys((r["sampler"], r["spacing"]) for r in rows))

    def first(label):
        return next(r for r in rows if (r["sampler"], r["spacing"]) == label)

    def cell(label, nfe, key, fmt):
        r = next((r for r in rows if (r["sampler"], r["spacing"]) == label and r["nfe_budget"] == nfe), None)
        if r is None or r[key] is None:
            return "—"
        return fmt(r[key]) + ("" if r["nfe"] == nfe else f" ({r['nfe']})")

    def by_nfe(key, fmt, only=None, extra=None):
        chosen = [lb for lb in labels if only is None or first(lb)[only] is not None]
        return report.table(["sampler", "grid", *(f"NFE {n}" for n in nfes), *([extra[0]] if extra else [])],
                            [[*lb, *(cell(lb, n, key, fmt) for n in nfes), *([extra[1](lb)] if extra else [])]
                             for lb in chosen])

    def order(label):
        value = result["orders"].get(f"{label[0]} / {label[1]}")
        return f"{value:.2f}" if value is not None else "—"

    out = [f"# Exact-denoiser benchmark\n\nMade by `{command}` on {result['machine']}, "
           f"{result['seconds']:.0f} s. Data: a mixture of {result['mixture']['components']} Gaussians "
           f"centred on {result['data']} images, std {result['mixture']['std']}, shape "
           f"{tuple(result['mixture']['shape'])}; {result['num']} samples from the same x_T for every "
           f"sampler. Schedule: {result['schedule']['name']}, T = {result['schedule']['T']}, eps prediction. "
           "A number in brackets is the NFE actually used where the budget could not be met exactly.\n",
           "## Ours against diffusers: the lowest RMS error at each NFE\n",
           "Against the exact probability-flow ODE solution (below). diffusers' best is over every scheduler "
           "and every grid it offers here: trailing, leading, linspace, Karras, exponential and (DPM-Solver++) "
           "uniform-logSNR sigmas.\n",
           report.table(["NFE", "ours", "RMS error", "diffusers' best", "RMS error", "ours / diffusers"],
                        [[b["nfe"], f"{b['ours']['sampler']} ({b['ours']['spacing']})", f"{b['ours']['rms_error']:.3e}",
                          f"{b['diffusers']['sampler']} ({b['diffusers']['spacing']})",
                          f"{b['diffusers']['rms_error']:.3e}", f"{b['ratio']:.2f}"]
                         for b in best_against_diffusers(rows)]), "",
           "## RMS error of x_0 against the exact probability-flow ODE solution (deterministic samplers)\n",
           f"Reference: Heun with {result['reference_steps']} Karras steps in float64; its RMS distance to the "
           f"run with half the steps is {result['reference_check']:.1e}.\n",
           by_nfe("rms_error", lambda v: f"{v:.2e}", only="rms_error", extra=("fitted order", order)), ""]
    out += ["Orders are fitted over all five NFE; on this mixture (std 0.1) DDIM and Euler are still "
            "pre-asymptotic at 100 NFE. On the single-Gaussian oracle the test suite measures 1.0 (DDIM, "
            "Euler), 2.0 (Heun, DPM-Solver++(2M)), 2-2.7 (3M, first-order start) and 3.0 (UniPC-2 with "
            "its corrector). Trailing grids end at t = T/N - 1 and jump from there to clean data with "
            "x0_hat, which shrinks samples towards their component's mean: low ODE error, yet off the "
            "components (last table); Karras and logSNR grids end at t = 0." + searched_note(result),
            "\n## Frechet distance to the mixture's exact moments (top-16 principal subspace)\n",
            f"Sampling floor (exact draws, same number): {result['floor']['fd']:.4f}; the ODE reference: "
            f"{result['reference']['fd']:.4f}.\n", by_nfe("fd", lambda v: f"{v:.4f}"),
            "\n## Fraction of samples that reach the reference's component (deterministic samplers)\n",
            by_nfe("same_component", lambda v: f"{v:.3f}", only="same_component"),
            "\n## Fraction of samples on a mixture component\n",
            f"Exact draws: {result['floor']['on_component']:.2f}; the ODE reference: "
            f"{result['reference']['on_component']:.2f}.\n", by_nfe("on_component", lambda v: f"{v:.2f}")]
    return "\n".join(out) + "\n"


# -- ddpmkit demo --exact --------------------------------------------------------------------------
# (label, sampler, steps, options, spacing): the DDIM paper's comparison in miniature, and two fast
# samplers at 10 network evaluations
DEMO_ROWS = [
    ("ddpm 1000 large", "ddpm", 1000, {"variance": "large"}, "trailing"),
    ("ddpm 1000 small", "ddpm", 1000, {"variance": "small"}, "trailing"),
    ("ddpm 50 small", "ddpm", 50, {"variance": "small"}, "trailing"),
    ("ddim 100", "ddim", 100, {"eta": 0.0}, "trailing"),
    ("ddim 50", "ddim", 50, {"eta": 0.0}, "trailing"),
    ("ddim 20", "ddim", 20, {"eta": 0.0}, "trailing"),
    ("ddim 10", "ddim", 10, {"eta": 0.0}, "trailing"),
    ("ddim 10 eta=1", "ddim", 10, {"eta": 1.0}, "trailing"),
    ("dpmpp-2m 10 logsnr", "dpmpp-2m", 10, {}, "logsnr"),
    ("unipc 10 logsnr", "unipc", 10, {}, "logsnr"),
]
ON_DATA_RMS = 0.05  # below half a grey level (2/16): the sample is a training digit


def nearest_digit(x: torch.Tensor, images: torch.Tensor):
    """RMS distance of each sample to its nearest training image, and that image's index."""
    d = torch.cdist(x.reshape(len(x), -1).double(), images.reshape(len(images), -1).double())
    dist, idx = d.min(1)
    return dist / x[0].numel() ** 0.5, idx


def run_demo(out_png: str, num: int = 200, show: int = 12, quiet: bool = False) -> list[dict]:
    """Every row of ``DEMO_ROWS`` on seeds 0..num-1 with the exact denoiser: NFE, seconds, RMS to the
    nearest training digit, the fraction on a digit and the classes reached; the first ``show``
    samples of each row go to the grid ``out_png``."""
    images, labels = load_digits()
    sched = NoiseSchedule("linear", 1000)
    model = GaussianMixture(images.double(), std=0.0).model(sched, "eps")
    rows, results = [], []
    for label, name, steps, opts, spacing in DEMO_ROWS:
        calls = []
        counted = lambda x, t: calls.append(1) or model(x, t)  # noqa: E731
        start = time.perf_counter()
        plan = make_plan(sched, name, steps=steps, spacing=spacing, **opts)
        x = sample(counted, sched, plan, shape=(num, 1, 8, 8), seeds=range(num))
        seconds = time.perf_counter() - start
        dist, idx = nearest_digit(x, images)
        results.append({
            "sampler": label, "nfe": len(calls), "seconds": seconds,
            "rms_to_nearest_digit": dist.mean().item(),
            "on_data": (dist < ON_DATA_RMS).double().mean().item(),
            "classes": len(set(labels[idx].tolist())),
        })
        rows.append(x[:show])
        if not quiet:
            r = results[-1]
            print(f"  {label:<20} {r['nfe']:>4} NFE  {seconds:6.2f} s", flush=True)
    save_image(labelled_grid(rows, [r[0] for r in DEMO_ROWS]), out_png)
    return results


def markdown_table(results: list[dict], num: int) -> str:
    """The exact demo's table: NFE, wall time, distance to the data and the classes reached."""
    return report.table(
        ["sampler", "NFE", f"wall time (s, {num} samples)", "RMS to nearest digit", "on a digit", "classes"],
        [[r["sampler"], r["nfe"], f"{r['seconds']:.2f}", f"{r['rms_to_nearest_digit']:.3f}",
          f"{100 * r['on_data']:.0f}%", r["classes"]] for r in results])
