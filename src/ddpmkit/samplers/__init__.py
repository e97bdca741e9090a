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

from .ddim import ddim
from .ddpm import ddpm

SAMPLERS: dict[str, Callable] = {"ddpm": ddpm, "ddim": ddim}

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


def describe(name: str) -> str:
    """The first paragraph of a sampler's docstring."""
    doc = inspect.getdoc(get_sampler(name)) or ""
    return " ".join(doc.split("\n\n")[0].split())


__all__ = ["SAMPLERS", "get_sampler", "sampler_options", "describe", "ddpm", "ddim"]
