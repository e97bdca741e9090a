"""DDIM: denoising diffusion implicit models (Song, Meng & Ermon 2020)."""

from __future__ import annotations

import math
import numbers

import torch


def ddim_sigma(abar_t: float, abar_s: float, eta: float) -> float:
    """DDIM eq. (16): sigma = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s).
    eta = 1 gives the posterior (small) variance of the respaced DDPM chain."""
    return eta * math.sqrt((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s))


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, abar_t: float, abar_s: float, eta: float, z):
    """DDIM eq. (12) for a jump t -> s:
        x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z.
    ``z`` may be None when sigma = 0. Returns (x_s, sigma)."""
    sigma = ddim_sigma(abar_t, abar_s, eta)
    direction = math.sqrt(max(1.0 - abar_s - sigma**2, 0.0))
    x_s = math.sqrt(abar_s) * x0 + direction * eps
    return (x_s if sigma == 0.0 else x_s + sigma * z), sigma


def check_ddim(schedule, grid, *, eta: float = 0.0) -> None:
    """The errors ``ddim`` raises for these options on this schedule and grid: eta in [0, 1]."""
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta={eta!r} is outside [0, 1]")
    schedule.transitions(grid)


def ddim(denoiser, x, grid, *, noise, eta: float = 0.0, callback=None):
    """DDIM sampler (Song et al. 2020, eq. 12) on a descending grid; after the last grid point the
    sample goes to abar = 1.

    eta = 0 is deterministic (an Euler step of the probability-flow ODE in sigma = sqrt(1/abar - 1),
    first order); eta = 1 is ancestral sampling on the grid with the small variance, i.e. equal to
    ``ddpm(variance="small")`` on the same grid.
    """
    check_ddim(denoiser.schedule, grid, eta=eta)
    for i, (t, abar_t, abar_s) in enumerate(denoiser.schedule.transitions(grid)):
        eps, x0 = denoiser(x, t)
        if callback is not None:
            callback(i, t, x, x0)
        stochastic = eta > 0.0 and abar_s < 1.0  # sigma > 0 on every step but the one into clean data
        x, _ = ddim_step(x, eps, x0, abar_t, abar_s, eta, noise() if stochastic else None)
    return x
