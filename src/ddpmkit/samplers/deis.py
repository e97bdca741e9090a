"""DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"): the
multistep tAB-DEIS in diffusers' "logrho" form (its ``DEISMultistepScheduler``).

In EDM's variables (y = x_t / sqrt(abar_t), rho = sigma = sqrt((1 - abar_t) / abar_t)) the
probability-flow ODE is dy/drho = eps(rho), so a step integrates the noise prediction exactly:
    y(rho_t) = y(rho_0) + int_{rho_0}^{rho_t} eps(rho) drho.
tAB-DEIS of order k replaces eps by its Lagrange polynomial in log rho through the last k
predictions (rho_0 the newest), and integrates each basis polynomial in closed form:
    c_j = int_{rho_0}^{rho_t} prod_{m != j} (log rho - log rho_m) / (log rho_j - log rho_m) drho,
using int u^n e^u du = e^u sum_k (-1)^k n! / (n-k)! u^(n-k) with u = log rho (zero at rho = 0).
Order 1 is DDIM. Orders warm up from 1, and fall on the final steps as in DPM-Solver++; the step
into clean data is first order and returns x0_hat.
"""

from __future__ import annotations

import math

import numpy as np

from ..vp import x_from_y, y_from_x
from .dpm_solver import _order_at
from .edm import _sigmas


def check_deis(schedule, grid, *, order: int = 3) -> None:
    """The errors ``deis`` raises: an order outside 1..3, or a grid point without a finite sigma."""
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order={order!r} is not valid for deis; choose 1, 2 or 3")
    _sigmas(schedule, grid)


def _integral_of_power(n: int, rho: float) -> float:
    """int u^n drho at rho (u = log rho): e^u sum_k (-1)^k n!/(n-k)! u^(n-k); 0 at rho = 0."""
    if rho == 0.0:
        return 0.0
    u = math.log(rho)
    return rho * sum((-1) ** k * math.factorial(n) / math.factorial(n - k) * u ** (n - k) for k in range(n + 1))


def deis_coefficients(rhos: list[float], rho_next: float) -> list[float]:
    """c_j = int_{rhos[0]}^{rho_next} L_j(log rho) drho for the Lagrange basis L_j in log rho
    through ``rhos`` (the newest first); they sum to rho_next - rhos[0]."""
    us = [math.log(r) for r in rhos]
    coefficients = []
    for j, uj in enumerate(us):
        others = [um for m, um in enumerate(us) if m != j]
        basis = np.poly1d(others, r=True) / math.prod(uj - um for um in others)  # prod (u - u_m) / (u_j - u_m)
        powers = basis.coeffs[::-1]  # the coefficient of u^n at n
        coefficients.append(sum(a * (_integral_of_power(n, rho_next) - _integral_of_power(n, rhos[0]))
                                for n, a in enumerate(powers)))
    return coefficients


def deis(denoiser, x, grid, *, noise, order: int = 3, callback=None):
    """DEIS (Zhang & Chen 2023; the tAB multistep method in log rho, diffusers' DEISMultistep):
    the last ``order`` (1-3) noise predictions extrapolated as a polynomial in log sigma and
    integrated exactly in (y, sigma); lower order on the final steps as in Lu et al. 2022's
    DPM-Solver++. Needs a finite sigma at every grid point. N steps, N NFE."""
    check_deis(denoiser.schedule, grid, order=order)
    ts, sigmas = _sigmas(denoiser.schedule, grid)
    n = len(ts)
    y = y_from_x(x, sigmas[0])
    history = []  # (sigma, eps), the newest first
    for i in range(n):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        x_t = x_from_y(y, s_cur)
        eps, x0 = denoiser(x_t, ts[i])
        if callback is not None:
            callback(i, ts[i], x_t, x0)
        history = [(s_cur, eps), *history][:order]
        k = _order_at(i, n, order)
        c = deis_coefficients([s for s, _ in history[:k]], s_next)
        # y_i = x0_hat + sigma_i eps_i and the c_j sum to sigma_{i+1} - sigma_i, so the step is
        # x0_hat + sigma_{i+1} eps_i + sum_{j>0} c_j (eps_j - eps_i): the same, without y_i
        y = x0 + s_next * eps
        for cj, (_, ej) in zip(c[1:], history[1:k]):
            y = y + cj * (ej - eps)
    return y
