"""The sampler registry: a plain dict from name to function.

Every sampler has the signature ``sampler(denoiser, x_T, grid, *, noise, callback=None, **options)``
and returns x_0. ``denoiser(x, t)`` gives (eps_hat, x0_hat) and carries the schedule; ``grid`` is
a descending sequence of timesteps; ``noise()`` returns the next per-sample unit Gaussian draw;
``callback(i, t, x_t, x0_hat)`` is called at every step. A sampler's options are its keyword-only
parameters, so the valid options and their defaults are read off the function itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from ._common import MIN_STEPS, check_steps, min_steps
from .consistency import cm
from .ddim import ddim
from .ddpm import ddpm
from .dpm_solver import dpmpp_2m, dpmpp_2m_sde, dpmpp_3m
from .edm import euler, euler_ancestral, heun, restart
from .unipc import unipc

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
    "restart": restart,
    "cm": cm,
}

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


def sampler_options(name: str) -> dict[str, object]:
    """The options of a sampler and their defaults, in signature order."""
    params = inspect.signature(get_sampler(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in _PLUMBING}


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


__all__ = ["SAMPLERS", "MIN_STEPS", "get_sampler", "sampler_options", "nfe_for", "check_steps", "min_steps",
           "steps_for_nfe", "describe"]
