"""DPM-Solver-v3 (Zheng et al. 2023, "DPM-Solver-v3: Improved Diffusion ODE Solver with Empirical
Model Statistics"), multistep, with its predictor-corrector.

With the model's empirical statistics l, s, b (``ddpmkit.ems``) and their integrals from lambda_s,
L(r) = int_s^r l, S(r) = int_s^r s, B(r) = int_s^r e^{-S} b, the ODE's solution from s to t is
exactly
    x_t = alpha_t e^{-L(t)} [ x_s / alpha_s - int_s^t e^{L + S} (g(r) + B(r)) dr ],
    g(r) = e^{-S(r)} f(r) - B(r),   f = (sigma eps_hat - l x) / alpha.
The solver takes g as the Taylor polynomial through the last few values (order k uses k of them),
so the step needs the integrals int_s^t e^{L + S} (r - lambda_s)^n / n! dr, which are
computed once per grid on the statistics' lambda grid (merged with the step grid and refined) by
an exponential trapezoid rule, exact where the exponent and the polynomial are linear between
points. The corrector re-does the step just taken once the model has been evaluated at its
end (UniPC's idea), at no extra evaluation. Degenerate statistics (l = 1, s = b = 0) give
DPM-Solver++ (Appendix A.2).

As in DPM-Solver++, the last step goes from the last grid point into clean data with x0_hat there.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..ems import check_ems_matches
from ..vp import alpha_sigma_lambda
from ._common import check_choice
from .dpm_solver import _order_at

PREDICTORS = ("exact", "pseudo")
CORRECTOR_ORDERS = ("higher", "same")


def check_dpm_solver_v3(schedule, grid, *, order: int = 3, predictor: str = "exact", corrector: bool = True,
                        corrector_order: str = "higher", ems=None) -> None:
    """The errors ``dpm_solver_v3`` raises for these options on this schedule and grid: order 1 to
    3, known predictor and corrector kinds, statistics that cover the schedule and that this grid can
    integrate."""
    _prepared(schedule, grid, order, predictor, corrector_order, ems)


def _prepared(schedule, grid, order, predictor, corrector_order, ems):
    """The checks of ``check_dpm_solver_v3``, and what they build that the sampler runs on: (the
    grid's transitions, their lambdas, the integrals)."""
    if order not in (1, 2, 3):
        raise ValueError(f"order={order!r} is not valid; choose 1, 2 or 3")
    check_choice("predictor", predictor, PREDICTORS)
    check_choice("corrector_order", corrector_order, CORRECTOR_ORDERS)
    check_ems_matches(ems, schedule, None)
    steps = schedule.transitions(grid)
    lams = [alpha_sigma_lambda(a)[2] for _, a, _ in steps]
    integ = _Integrals(ems, lams)
    _check_conditioning(integ, lams, order)
    return steps, lams, integ


# the most that int s dlambda may change across the points one step uses (its own and the history's):
# its coefficients hold e^{+-S}, and at e^30 float64 keeps no digit of what they cancel to. Statistics
# from the shipped MNIST model (1024 trajectories) change it by at most 7.6 on 5- to 20-step grids;
# statistics of 8 trajectories, or of an untrained network, by 70 to 700.
MAX_S_SPAN = 30.0


def _check_conditioning(integ, lams: list[float], order: int) -> None:
    """An error where the statistics' s changes so fast that a step's coefficients lose all precision."""
    where = [integ.index(lam) for lam in lams]
    for i in range(len(where) - 1):
        seg = integ.S[where[max(0, i - order)]: where[i + 1] + 1]
        span = float((seg.max(0) - seg.min(0)).max())
        if span > MAX_S_SPAN:
            raise ValueError(
                f"DPM-Solver-v3's statistics change too fast for this grid: int s dlambda moves by {span:.0f} "
                f"between lambda {lams[max(0, i - order)]:.2f} and {lams[i + 1]:.2f} (beyond {MAX_S_SPAN:g} its "
                "coefficients keep no digit in float64); noisy statistics do this: estimate them from more "
                "trajectories (ddpmkit ems --num), or sample with another solver")


def _cumtrapz(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """int_{x_0}^{x_i} y along axis 0, trapezoid rule (exact for piecewise-linear y), 0 at i = 0."""
    dx = np.diff(x).reshape((-1,) + (1,) * (y.ndim - 1))
    steps = 0.5 * dx * (y[1:] + y[:-1])
    return np.concatenate([np.zeros_like(y[:1]), np.cumsum(steps, axis=0)])


def _exp_cumint(E: np.ndarray, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """int_{x_0}^{x_i} e^E q along axis 0, exact where E and q are linear on each interval (the
    exponential trapezoid rule: plain trapezoid would err by (dx)^2 / 12 relative on e^lambda, a
    floor on the solver's accuracy), 0 at i = 0."""
    dx = np.diff(x).reshape((-1,) + (1,) * (E.ndim - 1))
    d = E[1:] - E[:-1]
    small = np.abs(d) < 1e-4
    safe = np.where(small, 1.0, d)
    phi1 = np.where(small, 1 + d / 2 + d * d / 6, np.expm1(safe) / safe)  # int_0^1 e^{u d} du
    phi2 = np.where(small, 0.5 + d / 3 + d * d / 8, (safe * np.exp(safe) - np.expm1(safe)) / safe**2)  # u e^{u d}
    q = np.broadcast_to(q, E.shape)
    steps = dx * np.exp(E[:-1]) * (q[:-1] * phi1 + (q[1:] - q[:-1]) * phi2)
    return np.concatenate([np.zeros_like(E[:1]), np.cumsum(steps, axis=0)])


# the integrals run on the statistics' grid merged with the steps' lambdas, each interval cut to at most
# this width in lambda (l, s, b linear between the statistics' points)
FINE = 0.02


class _Integrals:
    """l, s, b on a fine lambda grid (the statistics' grid merged with the steps' lambdas, refined),
    and the integrals a step from one of its points to another needs, relative to where it starts."""

    def __init__(self, ems, step_lambdas: list[float]):
        merged = np.union1d(ems.lambdas, np.clip(step_lambdas, ems.lambdas[0], ems.lambdas[-1]))
        pieces = np.maximum(1, np.ceil(np.diff(merged) / FINE).astype(int))
        lam = np.concatenate([np.linspace(a, b, k, endpoint=False) for a, b, k in zip(merged[:-1], merged[1:], pieces)]
                             + [merged[-1:]])
        idx = np.clip(np.searchsorted(ems.lambdas, lam, side="right") - 1, 0, len(ems.lambdas) - 2)
        w = ((lam - ems.lambdas[idx]) / (ems.lambdas[idx + 1] - ems.lambdas[idx])).reshape(-1, *[1] * len(ems.shape))

        def at(v):  # linear interpolation of each dimension
            return v[idx] * (1 - w) + v[idx + 1] * w

        self.lam, self.l, self.s, self.b = lam, at(ems.l), at(ems.s), at(ems.b)
        self.L, self.S = _cumtrapz(self.l, lam), _cumtrapz(self.s, lam)
        self._steps = {}  # the predictor and the corrector take the same step s -> t

    def index(self, lam: float) -> int:
        return int(np.argmin(np.abs(self.lam - lam)))

    def b_integral(self, i_s: int, i: int) -> np.ndarray:
        """B(lambda_i) = int_s^i e^{-(S - S_s)} b (negative direction where i < s)."""
        lo, hi = min(i_s, i), max(i_s, i)
        total = _exp_cumint(-(self.S[lo:hi + 1] - self.S[i_s]), self.b[lo:hi + 1], self.lam[lo:hi + 1])[-1]
        return total if i >= i_s else -total

    def step(self, i_s: int, i_t: int, order: int) -> dict[str, np.ndarray]:
        """For a step s -> t (t > s in lambda): e^{-(L_t - L_s)}, the Taylor integrals
        int_s^t e^{(L+S) - (L+S)_s} (r - lambda_s)^n / n! dr for n < order, and the B-term
        int_s^t e^{(L+S) - (L+S)_s} B(r) dr."""
        if (i_s, i_t, order) in self._steps:
            return self._steps[i_s, i_t, order]
        sl = slice(i_s, i_t + 1)
        lam = self.lam[sl]
        E = (self.L[sl] - self.L[i_s]) + (self.S[sl] - self.S[i_s])
        B = _exp_cumint(-(self.S[sl] - self.S[i_s]), self.b[sl], lam)
        shape = (-1,) + (1,) * (E.ndim - 1)
        taylor = [_exp_cumint(E, (((lam - lam[0]) ** n) / math.factorial(n)).reshape(shape), lam)[-1]
                  for n in range(order)]
        out = {"decay": np.exp(-(self.L[i_t] - self.L[i_s])), "taylor": taylor, "b_term": _exp_cumint(E, B, lam)[-1]}
        self._steps[i_s, i_t, order] = out
        return out


def _derivatives(lams: list[float], gs: list[torch.Tensor], pseudo: bool) -> list[torch.Tensor]:
    """g^(1) .. g^(n) at lams[0] from n + 1 values: the interpolating polynomial's derivatives
    (``pseudo``: divided differences times n!, the paper's cheaper pseudo-order estimate)."""
    n = len(gs) - 1
    if pseudo:
        table = [list(gs)]
        for i in range(1, n + 1):
            prev = table[-1]
            table.append([(prev[j] - prev[j + 1]) / (lams[j] - lams[i + j]) for j in range(n - i + 1)])
        return [table[i][0] * math.factorial(i) for i in range(1, n + 1)]
    R = np.array([[(lk - lams[0]) ** i for i in range(1, n + 1)] for lk in lams[1:]])
    inv = np.linalg.inv(R)
    diffs = [g - gs[0] for g in gs[1:]]
    return [math.factorial(i + 1) * sum(float(inv[i, k]) * diffs[k] for k in range(n)) for i in range(n)]


def _v3_step(x_s, alpha_s, alpha_t, i_s, i_t, points, integ: _Integrals, pseudo: bool, as_tensor):
    """One DPM-Solver-v3 step from the state x_s at merged index i_s to i_t, with g taken through
    ``points`` = [(merged index, f)], the first at s."""
    order = len(points)
    c = integ.step(i_s, i_t, order)
    gs, lams = [], []
    for i, f in points:  # g relative to s
        gs.append(as_tensor(np.exp(-(integ.S[i] - integ.S[i_s]))) * f - as_tensor(integ.b_integral(i_s, i)))
        lams.append(float(integ.lam[i]))
    decay, taylor = as_tensor(c["decay"]), [as_tensor(v) for v in c["taylor"]]
    x_t = alpha_t * decay * (x_s / alpha_s - taylor[0] * gs[0] - as_tensor(c["b_term"]))
    if order > 1:
        for k, d in enumerate(_derivatives(lams, gs, pseudo), start=1):
            x_t = x_t - alpha_t * decay * taylor[k] * d
    return x_t


def dpm_solver_v3(denoiser, x, grid, *, noise, order: int = 3, predictor: str = "exact", corrector: bool = True,
                  corrector_order: str = "higher", ems=None, callback=None):
    """DPM-Solver-v3 (Zheng et al. 2023), multistep, with its predictor-corrector: ``order`` 1 to 3 (warm-up from 1; at most 2 on the step before last below 15 steps, as
    DPM-Solver++); ``predictor`` exact or pseudo (divided-difference) derivatives; ``corrector`` on
    or off, of ``corrector_order`` higher (order + 1, pseudo derivatives: the paper's default) or
    same (the predictor's order, exact derivatives). ``ems``: the model's statistics (``ddpmkit
    ems``). N steps, N NFE."""
    sched = denoiser.schedule
    steps, lams, integ = _prepared(sched, grid, order, predictor, corrector_order, ems)
    check_ems_matches(ems, sched, x.shape[1:])
    n = len(steps)
    where = [integ.index(lam) for lam in lams]
    shape = x.shape[1:]

    def as_tensor(v):  # a per-dimension coefficient, on the sample's device and dtype
        return torch.as_tensor(np.broadcast_to(v, shape).copy(), dtype=x.dtype, device=x.device)

    l_at = [as_tensor(integ.l[i]) for i in where]
    history: list[tuple[int, torch.Tensor]] = []  # (merged index, f), newest first
    last = None  # (x before the predictor, alpha, merged index, order) of the previous step
    for i, (t, abar_s, abar_t) in enumerate(steps):
        eps, _ = denoiser(x, t)
        alpha_s, sigma_s, _ = alpha_sigma_lambda(abar_s)
        n_s = sigma_s * eps - l_at[i] * x  # N = sigma eps - l x: unchanged by the corrector
        f = n_s / alpha_s
        if corrector and last is not None:
            x_prev, alpha_prev, i_prev, p_prev = last
            k = p_prev + 1 if corrector_order == "higher" else p_prev
            if k > 1:  # re-do the step into here with the new value at its end
                points = [history[0], (where[i], f)] + history[1:k - 1]
                x = _v3_step(x_prev, alpha_prev, alpha_s, i_prev, where[i], points, integ,
                             corrector_order == "higher", as_tensor)
        x0 = ((1 - l_at[i]) * x - n_s) / alpha_s  # x0_hat of the (corrected) state, N held
        if callback is not None:
            callback(i, t, x, x0)
        history = [(where[i], f)] + history[: order - 1]
        if abar_t >= 1.0:  # into clean data
            x = x0
            break
        p = _order_at(i, n, order)
        alpha_t = alpha_sigma_lambda(abar_t)[0]
        last = (x, alpha_s, where[i], p)
        x = _v3_step(x, alpha_s, alpha_t, where[i], where[i + 1], history[:p], integ, predictor == "pseudo", as_tensor)
    return x
