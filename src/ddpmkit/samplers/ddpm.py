"""Ancestral sampling: DDPM (Ho et al. 2020, Algorithm 2), full or on a respaced sub-sequence."""

from __future__ import annotations

import math

import torch

from ._common import check_choice

VARIANCES = ("small", "large")


def ddpm_step(x_t: torch.Tensor, x0: torch.Tensor, abar_t: float, abar_s: float, variance: str, z):
    """One jump t -> s of the reverse chain, x_s ~ p(x_s | x_t) = N(mean, sigma^2 I).

    The respaced forward chain jumps with beta = 1 - abar_t / abar_s (Nichol & Dhariwal 2021, §4),
    so the step is the posterior q(x_s | x_t, x0) of Ho et al. eq. (6)-(7) at x0 = x0_hat:
        mean = sqrt(abar_s) beta / (1 - abar_t) x0 + sqrt(1 - beta) (1 - abar_s) / (1 - abar_t) x_t,
        sigma^2 = beta ("large", the sigma_t^2 = beta_t of Algorithm 2) or
                  (1 - abar_s) / (1 - abar_t) beta ("small", beta_tilde_t).
    With x0_hat = (x_t - sqrt(1-abar_t) eps) / sqrt(abar_t) the mean is Algorithm 2's
    (x_t - beta / sqrt(1 - abar_t) eps) / sqrt(1 - beta). ``z`` is the unit noise, or None for none.
    Returns (x_s, sigma).
    """
    beta = 1.0 - abar_t / abar_s
    mean = (math.sqrt(abar_s) * beta / (1.0 - abar_t)) * x0 + (
        math.sqrt(1.0 - beta) * (1.0 - abar_s) / (1.0 - abar_t)
    ) * x_t
    sigma = math.sqrt(beta if variance == "large" else (1.0 - abar_s) / (1.0 - abar_t) * beta)
    if abar_s == 1.0:  # Algorithm 2: no noise on the final step into clean data
        sigma = 0.0
    return (mean if z is None or sigma == 0.0 else mean + sigma * z), sigma


def ddpm(denoiser, x, grid, *, noise, variance: str = "small", callback=None):
    """DDPM ancestral sampler (Ho et al. 2020, Algorithm 2).

    On the full grid T-1..0 it is Algorithm 2; on a shorter grid it samples the respaced chain with
    beta recomputed from abar for every jump (Improved DDPM, Nichol & Dhariwal 2021, §4) — the
    stochastic skip-step sampler. The step after a grid point always goes to the next grid point
    (never t-1), and after the last one to clean data.

    variance: ``small`` (beta_tilde, the posterior variance; best with few steps) or ``large``
    (beta; best at the full 1000 steps on CIFAR-10, DDIM paper Table 1).
    """
    check_choice("variance", variance, VARIANCES)
    for i, (t, abar_t, abar_s) in enumerate(denoiser.schedule.transitions(grid)):
        _, x0 = denoiser(x, t)
        if callback is not None:
            callback(i, t, x, x0)
        last = abar_s == 1.0
        x, _ = ddpm_step(x, x0, abar_t, abar_s, variance, None if last else noise())
    return x
