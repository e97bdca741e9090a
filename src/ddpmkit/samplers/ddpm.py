"""Ancestral sampling: DDPM (Ho et al. 2020, Algorithm 2), full or on a respaced sub-sequence."""

from __future__ import annotations

import math

import torch

from ._common import check_choice

VARIANCES = ("small", "large", "optimal")


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
            raise ValueError("variance='optimal' is undefined at abar = 0 (zero terminal SNR); use small or large")
        gap = math.sqrt((1.0 - abar_t) * abar_s / abar_t) - math.sqrt(max(1.0 - abar_s - small, 0.0))
        var = small + gap**2 * (1.0 - min(max(eps_moment, 0.0), 1.0))
    else:
        var = small
    sigma = 0.0 if abar_s == 1.0 else math.sqrt(var)  # Algorithm 2: no noise on the final step
    return (mean if z is None or sigma == 0.0 else mean + sigma * z), sigma


def ddpm(denoiser, x, grid, *, noise, variance: str = "small", callback=None):
    """DDPM ancestral sampler (Ho et al. 2020, Algorithm 2).

    On the full grid T-1..0 it is Algorithm 2; on a shorter grid it samples the respaced chain with
    beta recomputed from abar for every jump (Improved DDPM, Nichol & Dhariwal 2021, §4) — the
    stochastic skip-step sampler. The step after a grid point always goes to the next grid point
    (never t-1), and after the last one to clean data.

    variance: ``small`` (beta_tilde, the posterior variance), ``large`` (beta; best at the full
    1000 steps on CIFAR-10, DDIM paper Table 1) or ``optimal`` (Analytic-DPM, Bao et al. 2022: the
    KL-optimal variance from the model's eps moments, which the denoiser must carry; it removes the
    under-dispersion of ``small`` on short respaced chains).
    """
    check_choice("variance", variance, VARIANCES)
    if variance == "optimal" and getattr(denoiser, "eps_moment", None) is None:
        raise ValueError("variance='optimal' needs the model's eps moments (Analytic-DPM), which this model "
                         "lacks: store them with `ddpmkit moments --model MODEL --dataset DATA` (in Python: pass "
                         "eps_moment=, see ddpmkit.analytic.estimate_eps_moment)")
    for i, (t, abar_t, abar_s) in enumerate(denoiser.schedule.transitions(grid)):
        _, x0 = denoiser(x, t)
        if callback is not None:
            callback(i, t, x, x0)
        last = abar_s == 1.0
        gamma = denoiser.eps_moment_at(t) if variance == "optimal" else None
        x, _ = ddpm_step(x, x0, abar_t, abar_s, variance, None if last else noise(), gamma)
    return x
