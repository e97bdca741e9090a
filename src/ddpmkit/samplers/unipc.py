"""UniPC: a unified predictor-corrector framework (Zhao et al. 2023, "UniPC: A Unified
Predictor-Corrector Framework for Fast Sampling of Diffusion Models"), data-prediction form.

In lambda = log(alpha / sigma) with h = lambda_t - lambda_s, both steps have the form (eq. 7-8)
    x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) m_s - alpha_t B(h) sum_k a_k D_k,
with D_k = (m_k - m_s) / r_k the scaled differences of earlier x0_hat values m_k at lambda_s +
r_k h. UniP-p (the predictor) uses p - 1 earlier values; UniC-p (the corrector) re-does the step
just taken once the model has been evaluated at its end, adding that value too, which raises the
order by one at no extra network evaluation. The coefficients a solve R a = b with
R_ik = r_k^(i-1), b_i = h phi_{i+1}(h) i! / B(h) (Theorem 3.1); B1(h) = h, B2(h) = e^h - 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..vp import alpha_sigma_lambda
from ._common import check_choice

VARIANTS = ("bh1", "bh2")


def _bh_system(h: float, rks: list[float], order: int, variant: str):
    """(h phi_1(h), B(h), R, b) for the data-prediction form (hh = -h), as in Zhao et al. eq. 8."""
    hh = -h
    h_phi_1 = math.expm1(hh)  # e^{-h} - 1
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rows, b, factorial = [], [], 1
    for i in range(1, order + 1):
        rows.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, np.array(rows, dtype=np.float64), np.array(b, dtype=np.float64)


def _uni_step(x, sigma_s, sigma_t, alpha_t, h, history, order, variant, m_new=None):
    """UniP-order (m_new None) or UniC-order (m_new = x0_hat at the step's end) from s to t.
    history: [(x0_hat, lambda)] newest first, history[0] at s."""
    m0, lam0 = history[0]
    if not math.isfinite(h):  # from pure noise (zero terminal SNR): the exact first-order step, uncorrected
        return (sigma_t / sigma_s) * x + alpha_t * m0
    rks, diffs = [], []
    for mk, lamk in history[1:order]:
        if not math.isfinite(lamk):  # a pure-noise point carries no slope information
            order -= 1
            continue
        rk = (lamk - lam0) / h
        rks.append(rk)
        diffs.append((mk - m0) / rk)
    rks.append(1.0)
    h_phi_1, b_h, R, b = _bh_system(h, rks, order, variant)
    x_t = (sigma_t / sigma_s) * x - (alpha_t * h_phi_1) * m0
    if m_new is None:
        if not diffs:
            return x_t
        rhos = [0.5] if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        res = sum(rho * d for rho, d in zip(rhos, diffs))
    else:
        rhos = [0.5] if order == 1 else np.linalg.solve(R, b).tolist()
        res = sum((rho * d for rho, d in zip(rhos[:-1], diffs)), torch.zeros_like(x)) + rhos[-1] * (m_new - m0)
    return x_t - (alpha_t * b_h) * res


def check_unipc(schedule, grid, *, order: int = 2, variant: str = "bh2", corrector: bool = True) -> None:
    """The errors ``unipc`` raises for these options on this schedule and grid: order 1, 2 or 3 and
    a known variant."""
    if order not in (1, 2, 3):
        raise ValueError(f"order={order!r} is not valid; choose 1, 2 or 3")
    check_choice("variant", variant, VARIANTS)
    schedule.transitions(grid)


def unipc(denoiser, x, grid, *, noise, order: int = 2, variant: str = "bh2", corrector: bool = True,
          callback=None):
    """UniPC (Zhao et al. 2023, Algorithm 1-2 / UniPC-p with B1(h) or B2(h)): multistep UniP-p
    predictor, and after each evaluation the UniC corrector of the step just taken, free of extra
    NFE. Orders warm up from 1 and fall on the last steps (diffusers' lower_order_final); the step
    into clean data is first order and not corrected. ``variant``: bh1 (the paper's choice for
    unconditional sampling) or bh2 (diffusers' default, for guided). N steps, N NFE."""
    check_unipc(denoiser.schedule, grid, order=order, variant=variant, corrector=corrector)
    steps = denoiser.schedule.transitions(grid)
    n = len(steps)
    history: list[tuple[torch.Tensor, float]] = []
    last = None  # (x before the predictor, sigma, lambda, order) of the previous step
    for i, (t, abar_s, abar_t) in enumerate(steps):
        _, m = denoiser(x, t)
        if callback is not None:
            callback(i, t, x, m)
        alpha_s, sigma_s, lam_s = alpha_sigma_lambda(abar_s)
        if corrector and last is not None:
            x_prev, sigma_prev, lam_prev, p_prev = last
            x = _uni_step(x_prev, sigma_prev, sigma_s, alpha_s, lam_s - lam_prev, history, p_prev, variant, m_new=m)
        history = [(m, lam_s)] + history[: order - 1]
        p = min(order, n - i, i + 1)
        alpha_t, sigma_t, lam_t = alpha_sigma_lambda(abar_t)
        last = (x, sigma_s, lam_s, p)
        x = _uni_step(x, sigma_s, sigma_t, alpha_t, lam_t - lam_s, history, p, variant)
    return x
