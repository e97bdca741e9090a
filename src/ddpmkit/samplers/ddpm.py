"""Ancestral sampling: DDPM (Ho et al. 2020, Algorithm 2), full or on a respaced sub-sequence."""

from __future__ import annotations

import math

import numpy as np
import torch

from ._common import check_choice

VARIANCES = ("small", "large", "optimal")
_NO_MOMENT = ("variance='optimal' needs the model's eps moments (Analytic-DPM), which this model lacks: store them "
              "with `ddpmkit moments --model MODEL --dataset DATA` (in Python: pass eps_moment=, see "
              "ddpmkit.analytic.estimate_eps_moment)")
_ZERO_SNR = "variance='optimal' is undefined at abar = 0 (zero terminal SNR); use small or large"


def ddpm_step(x_t: torch.Tensor, x0: torch.Tensor, abar_t: float, abar_s: float, variance: str, z,
              eps_moment: float | None = None):
    """One jump t -> s of the reverse chain, x_s ~ p(x_s | x_t) = N(mean, sigma^2 I).

    The respaced forward chain jumps with beta = 1 - abar_t / abar_s (Nichol & Dhariwal 2021, §4),
    so the step is the posterior q(x_s | x_t, x0) of Ho et al. eq. (6)-(7) at x0 = x0_hat:
        mean = sqrt(abar_s) beta / (1 - abar_t) x0 + sqrt(1 - beta) (1 - abar_s) / (1 - abar_t) x_t,
        sigma^2 = beta ("large", the sigma_t^2 = beta_t of Algorithm 2),
                  lambda^2 = (1 - abar_s) / (1 - abar_t) beta ("small", beta_tilde_t), or
                  lambda^2 + (sqrt((1 - abar_t) abar_s / abar_t) - sqrt(1 - abar_s - lambda^2))^2 (1 - Gamma_t)
                  ("optimal": Analytic-DPM, Bao et al. 2022, Theorem 1 for the respaced chain),
    where Gamma_t = E||eps_hat(x_t)||^2 / d is the model's ``eps_moment`` at t (clipped to [0, 1],
    which keeps sigma^2 within Bao et al.'s bounds, Theorem 2).
    With x0_hat = (x_t - sqrt(1-abar_t) eps) / sqrt(abar_t) the mean is Algorithm 2's
    (x_t - beta / sqrt(1 - abar_t) eps) / sqrt(1 - beta). ``z`` is the unit noise, or None for none.
    Returns (x_s, sigma).
    """
    beta = 1.0 - abar_t / abar_s
    mean = (math.sqrt(abar_s) * beta / (1.0 - abar_t)) * x0 + (
        math.sqrt(1.0 - beta) * (1.0 - abar_s) / (1.0 - abar_t)
    ) * x_t
    small = (1.0 - abar_s) / (1.0 - abar_t) * beta
    if variance == "large":
        var = beta
    elif variance == "optimal":
        if eps_moment is None:
            raise ValueError("variance='optimal' needs the model's eps moment Gamma_t (Analytic-DPM)")
        if abar_t == 0.0:  # Theorem 1's inf * 0: the limit needs Var(x0), which Gamma cannot give
            raise ValueError(_ZERO_SNR)
        gap = math.sqrt((1.0 - abar_t) * abar_s / abar_t) - math.sqrt(max(1.0 - abar_s - small, 0.0))
        var = small + gap**2 * (1.0 - min(max(eps_moment, 0.0), 1.0))
    else:
        var = small
    sigma = 0.0 if abar_s == 1.0 else math.sqrt(var)  # Algorithm 2: no noise on the final step
    return (mean if z is None or sigma == 0.0 else mean + sigma * z), sigma


def eps_moment_table(schedule, eps_moment) -> np.ndarray | None:
    """Analytic-DPM's Gamma_t for t = 0..T-1 as a float64 array (None stays None); an error unless it
    holds T finite values."""
    if eps_moment is None:
        return None
    table = np.asarray(eps_moment, dtype=np.float64).ravel()
    if table.shape != (schedule.T,) or not np.all(np.isfinite(table)):
        raise ValueError(f"eps_moment must hold {schedule.T} finite values, one per timestep; got "
                         f"{table.size} values{'' if np.all(np.isfinite(table)) else ', not all finite'}")
    return table


def check_ddpm(schedule, grid, *, variance: str = "small", eps_moment=None) -> None:
    """The errors ``ddpm`` raises for these options on this schedule and grid: a known variance, a
    valid eps_moment table, and for ``optimal`` the table and a grid that never starts at abar = 0."""
    check_choice("variance", variance, VARIANCES)
    eps_moment_table(schedule, eps_moment)
    if variance == "optimal" and eps_moment is None:
        raise ValueError(_NO_MOMENT)
    steps = schedule.transitions(grid)
    if variance == "optimal" and any(abar_t == 0.0 for _, abar_t, _ in steps):
        raise ValueError(_ZERO_SNR)


def ddpm(denoiser, x, grid, *, noise, variance: str = "small", eps_moment=None, callback=None):
    """DDPM ancestral sampler (Ho et al. 2020, Algorithm 2).

    On the full grid T-1..0 it is Algorithm 2; on a shorter grid it samples the respaced chain with
    beta recomputed from abar for every jump (Improved DDPM, Nichol & Dhariwal 2021, §4) — the
    stochastic skip-step sampler. The step after a grid point always goes to the next grid point
    (never t-1), and after the last one to clean data.

    variance: ``small`` (beta_tilde, the posterior variance), ``large`` (beta; best at the full
    1000 steps on CIFAR-10, DDIM paper Table 1) or ``optimal`` (Analytic-DPM, Bao et al. 2022: the
    KL-optimal variance from the model's eps moments; it removes the under-dispersion of ``small``
    on short respaced chains). ``eps_moment``: that model's Gamma_t = E||eps_hat(x_t)||^2 / d for
    t = 0..T-1 (``ddpmkit.analytic``), linear in t between the table's entries; the model supplies
    it (``ddpmkit moments`` stores it), the user does not.
    """
    sched = denoiser.schedule
    check_ddpm(sched, grid, variance=variance, eps_moment=eps_moment)
    table = eps_moment_table(sched, eps_moment) if variance == "optimal" else None
    for i, (t, abar_t, abar_s) in enumerate(sched.transitions(grid)):
        _, x0 = denoiser(x, t)
        if callback is not None:
            callback(i, t, x, x0)
        last = abar_s == 1.0
        gamma = float(np.interp(t, np.arange(sched.T), table)) if table is not None else None
        x, _ = ddpm_step(x, x0, abar_t, abar_s, variance, None if last else noise(), gamma)
    return x
