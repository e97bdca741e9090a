"""DPM-Solver++ multistep samplers (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling
of Diffusion Probabilistic Models").

In VP variables x_t = alpha_t x0 + sigma_t eps (alpha_t^2 = abar_t, sigma_t^2 = 1 - abar_t) and
lambda_t = log(alpha_t / sigma_t), the probability-flow ODE has the exact solution (eq. 9)
    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0_hat(lambda) dlambda,
and DPM-Solver++ approximates x0_hat by a polynomial in lambda through the last k denoised values.
The step into clean data (sigma = 0, lambda = inf) is always first order, where it returns x0_hat;
with fewer than 15 steps the step before it is at most second order (diffusers' lower_order_final).
"""

from __future__ import annotations

import math

import torch

from ..vp import alpha_sigma_lambda


def check_dpmpp(schedule, grid) -> None:
    """The errors the DPM-Solver++ samplers raise on this schedule and grid (they take no options;
    zero terminal SNR is fine: lambda = -inf there, see ``vp.alpha_sigma_lambda``)."""
    schedule.transitions(grid)


def _order_at(i: int, n: int, order: int) -> int:
    """The order used at step i of n: warm-up from first order, lower order on the final steps."""
    if i == n - 1:
        return 1
    if i == n - 2 and n < 15:
        return min(order, i + 1, 2)
    return min(order, i + 1)


def _dpmpp(denoiser, x, grid, noise, callback, order: int, sde: bool):
    sched = denoiser.schedule
    check_dpmpp(sched, grid)
    steps = sched.transitions(grid)
    n = len(steps)
    history: list[tuple[torch.Tensor, float]] = []  # (x0_hat, lambda), newest first
    for i, (t, abar_s, abar_t) in enumerate(steps):
        _, x0 = denoiser(x, t)
        if callback is not None:
            callback(i, t, x, x0)
        _, sigma_s, lam_s = alpha_sigma_lambda(abar_s)
        alpha_t, sigma_t, lam_t = alpha_sigma_lambda(abar_t)
        history = [(x0, lam_s)] + history[: order - 1]
        k = _order_at(i, n, order)
        h = lam_t - lam_s
        m0 = x0
        if k >= 2:  # divided difference of x0_hat in lambda, scaled by h (r0 = h_prev / h)
            m1, lam_1 = history[1]
            r0 = (lam_s - lam_1) / h
            d1_0 = (m0 - m1) / r0
        if sde:
            # SDE-DPM-Solver++ (Lu et al. 2022, §5 / appendix; diffusers' sde-dpmsolver++, midpoint)
            e2h = math.exp(-2.0 * h)
            x = (sigma_t / sigma_s * math.exp(-h)) * x + (alpha_t * (1.0 - e2h)) * m0
            if k >= 2:
                x = x + (0.5 * alpha_t * (1.0 - e2h)) * d1_0
            if sigma_t > 0.0:
                x = x + (sigma_t * math.sqrt(1.0 - e2h)) * noise()
            continue
        phi = math.expm1(-h)  # e^{-h} - 1
        x = (sigma_t / sigma_s) * x - (alpha_t * phi) * m0
        if k == 2:  # DPM-Solver++(2M), Algorithm 2: D = m0 + (m0 - m1) / (2 r)
            x = x - (0.5 * alpha_t * phi) * d1_0
        elif k == 3:  # DPM-Solver++(3M): quadratic extrapolation through the last three
            m2, lam_2 = history[2]
            r1 = (lam_1 - lam_2) / h
            d1_1 = (m1 - m2) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + (alpha_t * (phi / h + 1.0)) * d1 - (alpha_t * ((phi + h) / h**2 - 0.5)) * d2
    return x


def dpmpp_2m(denoiser, x, grid, *, noise, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep in lambda with data
    prediction; first order on the first and last steps. N steps, N NFE."""
    return _dpmpp(denoiser, x, grid, noise, callback, 2, sde=False)


def dpmpp_3m(denoiser, x, grid, *, noise, callback=None):
    """DPM-Solver++(3M) (Lu et al. 2022, §4 / Appendix): third-order multistep with data prediction,
    warming up through orders 1 and 2; lower order on the final steps. N steps, N NFE."""
    return _dpmpp(denoiser, x, grid, noise, callback, 3, sde=False)


def dpmpp_2m_sde(denoiser, x, grid, *, noise, callback=None):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, §5): the second-order multistep solver of the reverse
    SDE in lambda, x_t = (sigma_t/sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) D + sigma_t sqrt(1 -
    e^{-2h}) z with D = m0 + (m0 - m1) / (2 r). Stochastic; N steps, N NFE."""
    return _dpmpp(denoiser, x, grid, noise, callback, 2, sde=True)
