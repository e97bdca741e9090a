"""Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models", EDM)
samplers, run on the model's own schedule.

They work in the variance-exploding view of the same process: y = x_t / sqrt(abar_t) has noise
level sigma_t = sqrt((1 - abar_t) / abar_t), and the probability-flow ODE is
dy/dsigma = (y - D(y; sigma)) / sigma (EDM eq. 3 with s(t) = 1, sigma(t) = t), where D is the
denoiser's x0_hat. A grid's timesteps give sigma_0 > ... > sigma_{N-1}, and sigma_N = 0 (clean data).
Off-grid noise levels (after churn) are fed to the network as fractional timesteps.
"""

from __future__ import annotations

import math

import torch

from ..vp import sigma_from_abar, x_from_y, y_from_x
from ._common import check_steps


def heun_step(y: torch.Tensor, x0: torch.Tensor, s_cur, s_next, denoise_next=None) -> torch.Tensor:
    """One step of the probability-flow ODE dy/dsigma = (y - D(y; sigma)) / sigma from s_cur down to
    s_next (Karras et al. 2022, EDM Algorithm 1, and Algorithm 2 after its churn): the Euler step
    along d = (y - x0) / s_cur, where x0 = D(y; s_cur); with ``denoise_next`` (y -> D(y; s_next),
    which needs s_next > 0) Heun's correction, y + (s_next - s_cur) (d + d') / 2 with d' the slope
    at the Euler point. The noise levels are floats, or tensors broadcastable against y (one per
    sample). The Heun samplers here and consistency distillation's teacher all take this step.

    The Euler point is computed as (s_next / s_cur) y + (1 - s_next / s_cur) x0, the same step
    written without y - x0: from sigma = 2e4 (the cosine schedule's t = 999) y is 1e4 times larger
    than the result, and y + h d would keep float32's round-off of y at that size."""
    ratio = s_next / s_cur
    y_next = ratio * y + (1 - ratio) * x0
    if denoise_next is None:
        return y_next
    h, d = s_next - s_cur, (y - x0) / s_cur
    d_next = (y_next - denoise_next(y_next)) / s_next
    return y + h * 0.5 * (d + d_next)


def _denoise(denoiser, y: torch.Tensor, sigma: float, t: float) -> torch.Tensor:
    """D(y; sigma): the x0_hat of the VP state x_t = y / sqrt(1 + sigma^2)."""
    return denoiser(x_from_y(y, sigma), t)[1]


def _denoise_at(denoiser, sigma: float, t: float):
    """y -> D(y; sigma) at timestep t: the correction point of a Heun step."""
    return lambda y: _denoise(denoiser, y, sigma, t)


def _sigmas(schedule, grid) -> tuple[list[float], list[float]]:
    """(timesteps, sigmas) of the grid, with sigma = 0 appended for clean data."""
    ts = [float(t) for t in grid]
    sigmas = [sigma_from_abar(schedule.abar_at(t)) for t in ts]
    if not all(math.isfinite(s) for s in sigmas):
        raise ValueError("EDM samplers need a finite sigma at every grid point (no zero terminal SNR)")
    return ts, sigmas + [0.0]


def _check_s_noise(s_noise) -> None:
    if not (s_noise >= 0 and math.isfinite(s_noise)):
        raise ValueError(f"s_noise={s_noise} must be a finite number >= 0")


def check_edm(schedule, grid, *, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
              s_noise: float = 1.0) -> None:
    """The errors ``euler`` and ``heun`` raise for these options on this schedule and grid: the churn
    parameters, then a finite sigma at every grid point."""
    # written as "not valid" so that NaN fails too
    if not (s_churn >= 0 and s_tmin >= 0 and s_tmax >= s_tmin and s_noise >= 0
            and math.isfinite(s_churn) and math.isfinite(s_tmin) and math.isfinite(s_noise)):
        raise ValueError(f"need finite s_churn >= 0, 0 <= s_tmin <= s_tmax (s_tmax may be inf), finite s_noise >= 0; "
                         f"got s_churn={s_churn}, "
                         f"s_tmin={s_tmin}, s_tmax={s_tmax}, s_noise={s_noise}")
    _sigmas(schedule, grid)


def _edm(denoiser, x, grid, noise, callback, second_order, s_churn, s_tmin, s_tmax, s_noise):
    """EDM Algorithm 2 (second_order) or its Euler version (Algorithm 1 with churn).

    At step i, gamma = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax else 0;
    sigma_hat = sigma_i (1 + gamma), capped at the schedule's largest sigma; y_hat = y +
    sqrt(sigma_hat^2 - sigma_i^2) S_noise z; Euler from sigma_hat to sigma_{i+1} with
    d = (y_hat - D(y_hat; sigma_hat)) / sigma_hat; Heun's correction where sigma_{i+1} > 0.
    """
    sched = denoiser.schedule
    ts, sigmas = _sigmas(sched, grid)
    sigma_max = sched.sigma_max  # churn never asks for more noise than the network was trained on
    n = len(ts)
    y = y_from_x(x, sigmas[0])
    for i in range(n):
        s_cur, s_next, t = sigmas[i], sigmas[i + 1], ts[i]
        gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_tmin <= s_cur <= s_tmax else 0.0
        s_hat = min(s_cur * (1.0 + gamma), sigma_max)
        if s_hat > s_cur:
            y = y + math.sqrt(s_hat**2 - s_cur**2) * s_noise * noise()
            t = sched.t_at_sigma(s_hat)
        x0 = _denoise(denoiser, y, s_hat, t)
        if callback is not None:
            callback(i, t, x_from_y(y, s_hat), x0)
        correct = _denoise_at(denoiser, s_next, ts[i + 1]) if second_order and s_next > 0.0 else None
        y = heun_step(y, x0, s_hat, s_next, correct)
    return y


def euler(denoiser, x, grid, *, noise, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
          s_noise: float = 1.0, callback=None):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, EDM Algorithm 1), with
    Algorithm 2's stochastic churn when s_churn > 0. Deterministic (s_churn = 0) it takes exactly
    DDIM's (eta = 0) steps: DDIM is Euler in (y, sigma) (Song et al. 2020, §4.3). N steps, N NFE."""
    check_edm(denoiser.schedule, grid, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    return _edm(denoiser, x, grid, noise, callback, False, s_churn, s_tmin, s_tmax, s_noise)


def heun(denoiser, x, grid, *, noise, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
         s_noise: float = 1.0, callback=None):
    """Heun's second-order method (Karras et al. 2022, EDM Algorithm 2): an Euler step corrected
    by the average slope at both ends, except on the last step into sigma = 0. Stochastic churn
    when s_churn > 0. N steps, 2N - 1 NFE."""
    check_edm(denoiser.schedule, grid, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    return _edm(denoiser, x, grid, noise, callback, True, s_churn, s_tmin, s_tmax, s_noise)


def check_euler_ancestral(schedule, grid, *, eta: float = 1.0, s_noise: float = 1.0) -> None:
    """The errors ``euler_ancestral`` raises for these options on this schedule and grid."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta={eta!r} is outside [0, 1]")
    _check_s_noise(s_noise)
    _sigmas(schedule, grid)


def euler_ancestral(denoiser, x, grid, *, noise, eta: float = 1.0, s_noise: float = 1.0, callback=None):
    """Ancestral Euler (Crowson's k-diffusion sample_euler_ancestral; diffusers' EulerAncestralDiscrete):
    split each jump sigma_i -> sigma_{i+1} into a deterministic Euler step to sigma_down and fresh
    noise of std sigma_up, sigma_up = min(sigma_{i+1}, eta sqrt(sigma_{i+1}^2 (sigma_i^2 -
    sigma_{i+1}^2) / sigma_i^2)), sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2). N steps, N NFE."""
    check_euler_ancestral(denoiser.schedule, grid, eta=eta, s_noise=s_noise)
    ts, sigmas = _sigmas(denoiser.schedule, grid)
    y = y_from_x(x, sigmas[0])
    for i, t in enumerate(ts):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        x0 = _denoise(denoiser, y, s_cur, t)
        if callback is not None:
            callback(i, t, x_from_y(y, s_cur), x0)
        s_up = min(s_next, eta * math.sqrt(s_next**2 * (s_cur**2 - s_next**2) / s_cur**2))
        s_down = math.sqrt(s_next**2 - s_up**2)
        y = (s_down / s_cur) * y + (1 - s_down / s_cur) * x0  # the Euler step to s_down, as in heun_step
        if s_up > 0.0:
            y = y + s_up * s_noise * noise()
    return y


def _heun_path(denoiser, y, sigmas, ts, callback=None, first_index=0):
    """Heun steps along ``sigmas`` with timesteps ``ts`` (EDM Algorithm 2 without churn); the last
    step is Euler when it ends at sigma = 0. Calls ``callback`` at every step."""
    for i in range(len(sigmas) - 1):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        x0 = _denoise(denoiser, y, s_cur, ts[i])
        if callback is not None:
            callback(first_index + i, ts[i], x_from_y(y, s_cur), x0)
        y = heun_step(y, x0, s_cur, s_next, _denoise_at(denoiser, s_next, ts[i + 1]) if s_next > 0.0 else None)
    return y


def check_restart(schedule, grid, *, restart_tmin: float = 0.06, restart_tmax: float = 0.30, restart_k: int = 2,
                  restart_steps: int = 3, s_noise: float = 1.0) -> None:
    """The errors ``restart`` raises for these options on this schedule and grid: the restart
    interval (inside the schedule's sigma range), k and steps, s_noise, a finite sigma at every grid
    point and at least two steps."""
    if not 0.0 < restart_tmin < restart_tmax < math.inf:
        raise ValueError(f"need 0 < restart_tmin < restart_tmax; got {restart_tmin}, {restart_tmax}")
    for name, value in (("restart_k", restart_k), ("restart_steps", restart_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
    _check_s_noise(s_noise)
    if restart_tmax > schedule.sigma_max:
        raise ValueError(f"restart_tmax={restart_tmax} exceeds the schedule's largest sigma {schedule.sigma_max:.4g}")
    ts, _ = _sigmas(schedule, grid)
    check_steps("restart", len(ts))


def restart(denoiser, x, grid, *, noise, restart_tmin: float = 0.06, restart_tmax: float = 0.30, restart_k: int = 2,
            restart_steps: int = 3, s_noise: float = 1.0, callback=None):
    """Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes",
    Algorithm 1): Heun's method on the probability-flow ODE along the grid; at the grid point whose
    sigma is nearest ``restart_tmin`` (in log sigma), ``restart_k`` times: add noise back up to
    sigma = ``restart_tmax`` (y += sqrt(t_max^2 - t_min^2) z, the forward process's own jump) and
    solve the ODE down again with ``restart_steps`` Heun steps on a Karras sub-grid (rho = 7). The
    restarts contract the errors accumulated so far, the ODE keeps each pass cheap. If the grid is so
    coarse that that point lies above ``restart_tmax``, the restart goes back up to the previous grid
    point instead. Needs N >= 2 steps (a point below the first to restart from); 2N - 1 + 2 k
    restart_steps NFE."""
    sched = denoiser.schedule
    check_restart(sched, grid, restart_tmin=restart_tmin, restart_tmax=restart_tmax, restart_k=restart_k,
                  restart_steps=restart_steps, s_noise=s_noise)
    ts, sigmas = _sigmas(sched, grid)
    n = len(ts)
    y = y_from_x(x, sigmas[0])
    j = min(range(1, n), key=lambda i: abs(math.log(sigmas[i]) - math.log(restart_tmin)))
    y = _heun_path(denoiser, y, sigmas[: j + 1], ts[: j + 1], callback)  # the main ODE down to point j
    top = restart_tmax if restart_tmax > sigmas[j] else sigmas[j - 1]
    sub = [(top ** (1 / 7) + r / restart_steps * (sigmas[j] ** (1 / 7) - top ** (1 / 7))) ** 7
           for r in range(restart_steps + 1)]
    sub[-1] = sigmas[j]
    sub_ts = [sched.t_at_sigma(s) for s in sub[:-1]] + [ts[j]]
    for _ in range(restart_k):  # forward jump back up to `top`, then the ODE down again
        y = y + math.sqrt(top**2 - sigmas[j] ** 2) * s_noise * noise()
        y = _heun_path(denoiser, y, sub, sub_ts)
    return _heun_path(denoiser, y, sigmas[j:], ts[j:] + [None], callback, first_index=j)
