"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1)."""

from __future__ import annotations

import math

from ..vp import sigma_from_abar

_ZERO_SNR = "cm cannot re-noise to abar = 0 (zero terminal SNR) after the first step"


def check_cm(schedule, grid, *, clip_denoised: bool = True) -> None:
    """The errors ``cm`` raises on this schedule and grid: no grid point after the first at abar = 0."""
    for i, t in enumerate(float(t) for t in grid):
        if schedule.abar_at(t) == 0.0 and i > 0:
            raise ValueError(_ZERO_SNR)


def cm(denoiser, x, grid, *, noise, clip_denoised: bool = True, callback=None):
    """Consistency-model sampling (Song et al. 2023, Algorithm 1): x0 = f(x_T, t_1); then for each
    later grid point t_k, re-noise y = x0 + sqrt(sigma_k^2 - sigma_min^2) z and denoise again,
    x0 = f(y, t_k). One grid point is one-step generation.

    f is the denoiser's x0_hat: a consistency model (``ddpmkit distill``) stores its consistency
    function as an x0 predictor. On an ordinary DDPM model this is "jump to x0_hat and re-noise",
    which is valid but poor. sigma_min is the schedule's sigma at t = 0, the boundary our
    distillation uses; y is EDM's variable x_t / sqrt(abar_t), so the network gets
    x_t = y / sqrt(1 + sigma_k^2). ``clip_denoised`` clamps every f to the data range, as the reference
    implementation does (openai/consistency_models, ``clip_denoised``): an estimate outside it is
    re-noised into the next step otherwise.
    """
    sched = denoiser.schedule
    check_cm(sched, grid, clip_denoised=clip_denoised)
    sigma_min = float(sched.sigmas[0])
    x0 = None
    for i, t in enumerate(float(t) for t in grid):
        abar = sched.abar_at(t)
        if i > 0:
            sigma = sigma_from_abar(abar)
            y = x0 + math.sqrt(max(sigma**2 - sigma_min**2, 0.0)) * noise()
            x = y * math.sqrt(abar)
        _, x0 = denoiser(x, t)
        if clip_denoised:
            x0 = x0.clamp(*denoiser.data_range)
        if callback is not None:
            callback(i, t, x, x0)
    return x0
