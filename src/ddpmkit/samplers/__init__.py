"""The sampler registry: a plain dict from name to function.

Every sampler has the signature ``sampler(denoiser, x_T, grid, *, noise, callback=None, **options)``
and returns x_0. ``denoiser(x, t)`` gives (eps_hat, x0_hat) and carries the schedule; ``grid`` is
a descending sequence of timesteps; ``noise()`` returns the next per-sample unit Gaussian draw;
``callback(i, t, x_t, x0_hat)`` is called at every step. A sampler's options are its keyword-only
parameters, so the valid options and their defaults are read off the function itself. Options in
``MODEL_OPTIONS`` (Analytic-DPM's ``eps_moment``, DPM-Solver-v3's ``ems``) come from the model, not the user: they are left
out of ``sampler_options`` and listed by ``model_options``.

Every sampler has a check, ``CHECKS[name](schedule, grid, **options)``, that raises exactly the
ValueErrors the sampler would raise for those options on that schedule and grid, without running
anything; the sampler calls it first. ``check(name, schedule, grid, **options)`` adds the unknown
sampler and unknown option errors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from ._common import MIN_STEPS, check_steps, min_steps
from .consistency import check_cm, cm
from .ddim import check_ddim, ddim
from .ddpm import check_ddpm, ddpm
from .deis import check_deis, deis
from .dpm_solver import check_dpmpp, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m
from .dpm_solver_v3 import check_dpm_solver_v3, dpm_solver_v3
from .edm import check_edm, check_euler_ancestral, check_restart, euler, euler_ancestral, heun, restart
from .pndm import check_ipndm, ipndm
from .unipc import check_unipc, unipc

SAMPLERS: dict[str, Callable] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "euler-ancestral": euler_ancestral,
    "dpmpp-2m": dpmpp_2m,
    "dpmpp-3m": dpmpp_3m,
    "dpmpp-2m-sde": dpmpp_2m_sde,
    "unipc": unipc,
    "dpm-solver-v3": dpm_solver_v3,
    "ipndm": ipndm,
    "deis": deis,
    "restart": restart,
    "cm": cm,
}

# each sampler's check: the sampler's own ValueErrors for (schedule, grid, **options), nothing run
CHECKS: dict[str, Callable[..., None]] = {
    "ddpm": check_ddpm,
    "ddim": check_ddim,
    "euler": check_edm,
    "heun": check_edm,
    "euler-ancestral": check_euler_ancestral,
    "dpmpp-2m": check_dpmpp,
    "dpmpp-3m": check_dpmpp,
    "dpmpp-2m-sde": check_dpmpp,
    "unipc": check_unipc,
    "dpm-solver-v3": check_dpm_solver_v3,
    "ipndm": check_ipndm,
    "deis": check_deis,
    "restart": check_restart,
    "cm": check_cm,
}

# options a sampler takes from the model rather than from the user (no command-line flag)
MODEL_OPTIONS = ("eps_moment", "ems")
# samplers that evaluate the network between their grid's timesteps (restart's re-noised intervals), so
# cannot take a plan's input timesteps, one per grid timestep; every other one evaluates only at them
OFF_GRID = ("restart",)

# network evaluations for a grid of n steps, where it is not n
_NFE: dict[str, Callable[..., int]] = {
    "heun": lambda n, **opts: 2 * n - 1,  # no correction on the last step into sigma = 0
    "restart": lambda n, restart_k=2, restart_steps=3, **opts: 2 * n - 1 + 2 * restart_k * restart_steps,
}

_PLUMBING = ("noise", "callback")


def get_sampler(name: str) -> Callable:
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}") from None


def _keyword_options(name: str) -> dict[str, object]:
    params = inspect.signature(get_sampler(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in _PLUMBING}


def sampler_options(name: str) -> dict[str, object]:
    """The user's options of a sampler and their defaults, in signature order (model options left out)."""
    return {k: v for k, v in _keyword_options(name).items() if k not in MODEL_OPTIONS}


def model_options(name: str) -> tuple[str, ...]:
    """The options of ``MODEL_OPTIONS`` that sampler ``name`` takes (the model supplies them)."""
    return tuple(k for k in _keyword_options(name) if k in MODEL_OPTIONS)


def check(name: str, schedule, grid, **options) -> None:
    """Raise the ValueError that sampler ``name`` would raise for ``options`` (its own and the model's)
    on ``schedule`` and ``grid``, without running it: an unknown sampler or option, then the sampler's
    own checks of option values and grid. Returns None where the sampler would run."""
    valid, from_model = sampler_options(name), model_options(name)
    unknown = sorted(set(options) - set(valid) - set(from_model))
    if unknown:
        names = ", ".join(valid) or "none"
        extra = f" (and from the model: {', '.join(from_model)})" if from_model else ""
        raise ValueError(f"unknown option {unknown[0]!r} for sampler {name!r}; valid: {names}{extra}")
    CHECKS[name](schedule, grid, **options)


def parse_bool(text: str) -> bool:
    """A boolean option's value as text (the command line, bench specs): true/yes/1 or false/no/0."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise ValueError(f"{text!r} is not true or false")
    return value


def nfe_for(name: str, steps: int, **options) -> int:
    """Network evaluations the sampler spends on a grid of ``steps`` timesteps."""
    get_sampler(name)
    check_steps(name, steps)
    return _NFE[name](steps, **options) if name in _NFE else steps


def steps_for_nfe(name: str, nfe: int, T: int, **options) -> int:
    """The most steps (<= T) whose NFE does not exceed ``nfe``; an error if even one step costs more."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe={nfe!r} is not valid; need an integer >= 1")
    best, least = None, min_steps(name)
    for steps in range(least, T + 1):  # NFE grows with steps; stop at the first that is too many
        if nfe_for(name, steps, **options) > nfe:
            break
        best = steps
    if best is None:
        fewest = "a single step" if least == 1 else f"its fewest steps ({least})"
        raise ValueError(f"sampler {name!r} needs more than {nfe} network evaluations for {fewest}")
    return best


def describe(name: str) -> str:
    """The first paragraph of a sampler's docstring."""
    doc = inspect.getdoc(get_sampler(name)) or ""
    return " ".join(doc.split("\n\n")[0].split())


__all__ = ["SAMPLERS", "CHECKS", "MODEL_OPTIONS", "OFF_GRID", "MIN_STEPS", "get_sampler", "sampler_options",
           "model_options", "check", "nfe_for", "check_steps", "min_steps", "steps_for_nfe", "describe"]
