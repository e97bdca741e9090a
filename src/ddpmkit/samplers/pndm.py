"""iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator", §4 /
Appendix: the improved pseudo numerical method of Liu et al. 2022 with a lower-order warm start).

In EDM's variables (y = x_t / sqrt(abar_t), sigma = sqrt((1 - abar_t) / abar_t)) the probability-flow
ODE is dy/dsigma = eps(y, sigma), the network's noise prediction, and DDIM is Euler's method on it.
iPNDM replaces Euler's slope by the Adams-Bashforth combination of the last k slopes with the
coefficients of equal steps, k = min(order, steps taken + 1):
  k = 1: d_0;  k = 2: (3 d_0 - d_1) / 2;  k = 3: (23 d_0 - 16 d_1 + 5 d_2) / 12;
  k = 4: (55 d_0 - 59 d_1 + 37 d_2 - 9 d_3) / 24,
and steps y_{i+1} = y_i + (sigma_{i+1} - sigma_i) d. The coefficients are those of equal steps on
any grid, as in the paper and diffusers' ``IPNDMScheduler``; one network evaluation per step.

The slope d_0 is the denoiser's eps_hat itself, and since y_i = x0_hat + sigma_i eps_hat the step
is computed as x0_hat + sigma_{i+1} d + sigma_i (eps_hat - d): the same step without y_i, which
from sigma = 2e4 would carry float32's round-off of a number 1e4 times the sample's size.
"""

from __future__ import annotations

from ..vp import x_from_y, y_from_x
from .edm import _sigmas

# Adams-Bashforth coefficients of the newest slope first, by order
AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def check_ipndm(schedule, grid, *, order: int = 4) -> None:
    """The errors ``ipndm`` raises: an order outside 1..4, or a grid point without a finite sigma."""
    if isinstance(order, bool) or order not in AB:
        raise ValueError(f"order={order!r} is not valid for ipndm; choose 1, 2, 3 or 4")
    _sigmas(schedule, grid)


def ipndm(denoiser, x, grid, *, noise, order: int = 4, callback=None):
    """iPNDM (Zhang & Chen 2023, improving Liu et al. 2022's PNDM): Adams-Bashforth of order up to
    ``order`` (1-4) on the noise prediction in (y, sigma), warming up from first order; order 1 is
    DDIM. Needs a finite sigma at every grid point. N steps, N NFE."""
    check_ipndm(denoiser.schedule, grid, order=order)
    ts, sigmas = _sigmas(denoiser.schedule, grid)
    y = y_from_x(x, sigmas[0])
    slopes = []  # the newest first
    for i, (s_cur, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x_t = x_from_y(y, s_cur)
        eps, x0 = denoiser(x_t, ts[i])
        if callback is not None:
            callback(i, ts[i], x_t, x0)
        slopes = [eps, *slopes][:order]
        d = sum(c * s for c, s in zip(AB[len(slopes)], slopes))
        y = x0 + s_next * d + s_cur * (eps - d)
    return y
