"""Empirical model statistics (EMS) for DPM-Solver-v3 (Zheng et al. 2023, "DPM-Solver-v3: Improved
Diffusion ODE Solver with Empirical Model Statistics"; the estimate follows its Appendix C.1.1).

With lambda = log(alpha / sigma) the probability-flow ODE reads d(x / alpha)/dlambda = -sigma eps / alpha.
DPM-Solver-v3 splits the model's output three ways, with per-dimension coefficients l, s, b that
depend on lambda only:

- l (linear part): N = sigma eps_hat(x) - l x should depend on x as little as possible, so
  l* = E[diag(d(sigma eps_hat)/dx)] (the least E||grad_x N||_F^2 for a diagonal l). Then
  f = N / alpha is the nonlinear part and d(x / alpha)/dlambda = -l x / alpha - f.
- s, b (how f moves along a trajectory): the least-squares fit f' ~ s f + b of f' = df/dlambda
  along the ODE, so that g = e^{-int s} f - int e^{-int s} b is as constant as possible; a
  solver that treats g as a low-order polynomial then errs less.

The expectations are over the model's own ODE trajectories x_lambda: a fine-step teacher
(``gits.teacher_states``, UniPC on a logSNR grid) runs from ``num`` seeds, and at each grid point
the derivatives come from second-order differences of the model (where the paper differentiates the
network itself; a difference quotient needs no autograd through the network and is exact for a
linear model):

- diag(d(sigma eps)/dx) ~ r * (sigma eps(x + d r) - sigma eps(x - d r)) / (2 d) with a
  Rademacher r and d = ``X_STEP`` (Hutchinson's diagonal estimator, exact where the Jacobian is diagonal);
- a' = d(sigma eps / alpha)/dlambda along the ODE = -x0_hat' - a, with x0_hat' from x0_hat at
  x +- h dx/dlambda and lambda +- h, dx/dlambda = sigma^2 x - sigma eps, h = ``LAMBDA_STEP`` (the
  curvature of the path moves both points alike, so the central difference stays second order).

With a = sigma eps / alpha and c = x / alpha (so c' = -a), f = a - l c and f' = a' + l a - l' c, so
first and second moments of (a, c, a') per dimension are all that is kept: the estimate costs five
network evaluations per sample and grid point beyond the teacher's one, and memory independent of
``num``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .prediction import Denoiser
from .schedule import NoiseSchedule
from .vp import alpha_sigma_lambda

# steps of the finite differences. In lambda, 0.1: at high noise one timestep of a 1000-step schedule
# moves lambda by about 0.01, and a network's output is not smooth on that scale (steps of 0.01 made
# s and b on the shipped MNIST model noisy enough for the solver to diverge on a logSNR grid). In x,
# 0.01 (data scaled to about [-1, 1]): the Hutchinson differences probe the Jacobian near x.
LAMBDA_STEP = 0.1
X_STEP = 1e-2
# the Rademacher directions of trajectory s come from seed RADEMACHER_SEED + s, apart from its noise's
RADEMACHER_SEED = 1 << 40


@dataclasses.dataclass(frozen=True)
class EMS:
    """DPM-Solver-v3's coefficients on an ascending grid of lambda = log(alpha / sigma): ``l``,
    ``s``, ``b`` have shape (points, *sample shape); ``info`` says how they were estimated."""

    lambdas: np.ndarray
    l: np.ndarray  # noqa: E741 (the paper's name)
    s: np.ndarray
    b: np.ndarray
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        lam = np.asarray(self.lambdas, dtype=np.float64)
        if lam.ndim != 1 or len(lam) < 2 or not np.all(np.diff(lam) > 0) or not np.all(np.isfinite(lam)):
            raise ValueError("EMS lambdas must be an ascending, finite grid of at least 2 points")
        for name in ("l", "s", "b"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape[:1] != lam.shape or not np.all(np.isfinite(value)):
                raise ValueError(f"EMS {name} must be finite with one row per lambda ({len(lam)}); "
                                 f"got shape {value.shape}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "lambdas", lam)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.l.shape[1:])

    @classmethod
    def degenerate(cls, lambdas, shape) -> EMS:
        """l = 1, s = b = 0: DPM-Solver-v3 is then DPM-Solver++ (the paper's Appendix A.2)."""
        lam = np.asarray(lambdas, dtype=np.float64)
        ones = np.ones((len(lam), *shape))
        return cls(lam, ones, np.zeros_like(ones), np.zeros_like(ones), {"degenerate": True})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"ems.{k}": torch.as_tensor(getattr(self, k)) for k in ("lambdas", "l", "s", "b")}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], info: dict) -> EMS:
        """From a model file's tensors under ``ems.`` (the prefix stripped) and its config entry."""
        return cls(*(tensors[k].double().numpy() for k in ("lambdas", "l", "s", "b")), info=info)


class _Moments:
    """Running per-dimension sums of a, c, a' and their products, at one grid point."""

    KEYS = ("a", "c", "da", "aa", "cc", "ac", "ada", "cda", "diag")

    def __init__(self):
        self.n, self.sums = 0, {}

    def add(self, **values: torch.Tensor) -> None:
        a, c, da = (values[k].double() for k in ("a", "c", "da"))
        terms = {"a": a, "c": c, "da": da, "aa": a * a, "cc": c * c, "ac": a * c, "ada": a * da, "cda": c * da,
                 "diag": values["diag"].double()}
        for k, v in terms.items():
            total = v.sum(0).cpu()
            self.sums[k] = self.sums[k] + total if k in self.sums else total
        self.n += len(a)

    def mean(self, key: str) -> np.ndarray:
        return (self.sums[key] / self.n).numpy()


def derivative(y: np.ndarray, x: np.ndarray, width: int = 5) -> np.ndarray:
    """dy/dx along axis 0 at every x: the derivative of the polynomial through the ``width`` nearest
    points (fourth order for 5; l' multiplies x / alpha in f', so a plain second-order difference
    would leave errors of several per cent in b where the noise is high)."""
    n = len(x)
    width = min(width, n)
    out = np.empty_like(y)
    for i in range(n):
        lo = min(max(i - width // 2, 0), n - width)
        pts = x[lo:lo + width]
        weights = np.zeros(width)
        for j in range(width):  # d/dx of Lagrange basis polynomial j at x_i
            for k in range(width):
                if k != j:
                    term = 1.0 / (pts[j] - pts[k])
                    for m in range(width):
                        if m not in (j, k):
                            term *= (x[i] - pts[m]) / (pts[j] - pts[m])
                    weights[j] += term
        out[i] = np.tensordot(weights, y[lo:lo + width], axes=1)
    return out


def fit_ems(lambdas: np.ndarray, moments: list[_Moments]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(l, s, b) from the moments at each grid point: l = E[diag], then the per-dimension least-squares
    fit of f' = a' + l a - l' c on f = a - l c (s = Cov(f', f) / Var(f), b = E f' - s E f), with l'
    by ``derivative`` over the grid. Where f does not vary across samples, s = 0 and b = E f'."""
    E = {k: np.stack([m.mean(k) for m in moments]) for k in _Moments.KEYS}
    l = E["diag"]  # noqa: E741
    dl = derivative(l, lambdas)
    ef = E["a"] - l * E["c"]
    edf = E["da"] + l * E["a"] - dl * E["c"]
    eff = E["aa"] - 2 * l * E["ac"] + l * l * E["cc"]
    # E[f f'] with f = a - l c, f' = a' + l a - l' c
    efdf = E["ada"] + l * E["aa"] - dl * E["ac"] - l * E["cda"] - l * l * E["ac"] + l * dl * E["cc"]
    var = eff - ef * ef
    cov = efdf - ef * edf
    # f the same in every sample (up to the round-off of the cancelling terms): nothing to fit s to
    steady = var <= 1e-10 * (E["aa"] + l * l * E["cc"] + 1e-300)
    s = np.where(steady, 0.0, cov / np.where(steady, 1.0, var))
    b = edf - s * ef
    return l, s, b


def ems_grid(schedule: NoiseSchedule, points: int) -> list[float]:
    """The timesteps EMS are estimated at: ``points`` uniform in logSNR from t = T-1 to t = 0."""
    if points < 3:
        raise ValueError(f"points={points} is not valid; need at least 3 grid points for the EMS")
    if not np.isfinite(schedule.log_snr[-1]):
        raise ValueError("DPM-Solver-v3 needs a finite terminal SNR (its statistics live on a finite logSNR grid); "
                         "this schedule has zero terminal SNR")
    return [float(t) for t in schedule.grid(points, "logsnr")]


def estimate_ems(model, schedule: NoiseSchedule, *, shape: tuple[int, ...], num: int = 1024, seed: int = 0,
                 points: int = 100, prediction: str = "eps", batch_size: int = 256, device=None,
                 dtype=torch.float32, labels=None, progress=None) -> EMS:
    """DPM-Solver-v3's EMS of ``model`` from ``num`` ODE trajectories (seeds seed .. seed+num-1) at
    ``points`` logSNR-spaced timesteps. Costs (points x num) teacher evaluations and 5 more per
    sample and point (the output and its differences). ``progress(k)`` after each batch of k trajectories."""
    from .gits import teacher_states

    if num < 2:
        raise ValueError(f"num={num} is not valid; the statistics need at least 2 trajectories")
    ts = ems_grid(schedule, points)
    den = Denoiser(model, schedule, prediction)
    moments = [_Moments() for _ in ts]
    for lo in range(seed, seed + num, batch_size):
        seeds = range(lo, min(lo + batch_size, seed + num))
        xs, _, _ = teacher_states(model, schedule, ts, shape=shape, seeds=seeds, prediction=prediction,
                                  batch_size=batch_size, device=device, dtype=dtype)
        # each trajectory's Rademacher directions from its own seed, so the batch size changes nothing
        rs = torch.stack([_rademacher(s, (len(ts), *shape)) for s in seeds], dim=1)
        with torch.no_grad():
            for i, t in enumerate(ts):
                x = xs[i].to(device=device, dtype=dtype)
                moments[i].add(**_point(den, schedule, x, t, rs[i].to(x)))
        if progress is not None:
            progress(len(seeds))
    lambdas = np.array([alpha_sigma_lambda(schedule.abar_at(t))[2] for t in ts])  # ascending: t descends
    l, s, b = fit_ems(lambdas, moments)
    info = {"num": num, "seed": seed, "points": points, "lambda_step": LAMBDA_STEP, "x_step": X_STEP,
            "method": "DPM-Solver-v3 EMS (Zheng et al. 2023), finite differences along unipc trajectories"}
    return EMS(lambdas, l, s, b, info)


def _rademacher(seed: int, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(RADEMACHER_SEED + seed)
    return torch.randint(0, 2, shape, generator=g, dtype=torch.float64) * 2 - 1


def _point(den: Denoiser, schedule: NoiseSchedule, x: torch.Tensor, t: float, r: torch.Tensor) -> dict:
    """a, c, a' and the diagonal estimate (along the Rademacher directions r) at one grid point, for a
    batch of trajectory states."""
    alpha, sigma, lam = alpha_sigma_lambda(schedule.abar_at(t))
    eps, x0 = den(x, t)
    a = sigma * eps / alpha
    velocity = sigma**2 * x - sigma * eps  # dx/dlambda

    h = LAMBDA_STEP

    def x0_at(k: int) -> torch.Tensor:  # x0_hat at lambda + k h, x moved along the ODE's tangent
        t_new = float(schedule.t_at_log_snr(2 * (lam + k * h)))
        return den(x + (k * h) * velocity, t_new)[1]

    # a' = (a - c)' + c' = -x0_hat' - a: differences of x0_hat, of order 1, rather than of a, which is as
    # large as x / alpha; second order, central inside the schedule's lambda range, one-sided at its ends
    lam_min, lam_max = schedule.log_snr[-1] / 2, schedule.log_snr[0] / 2
    if lam - h < lam_min:
        dx0 = (-3 * x0 + 4 * x0_at(1) - x0_at(2)) / (2 * h)
    elif lam + h > lam_max:
        dx0 = (3 * x0 - 4 * x0_at(-1) + x0_at(-2)) / (2 * h)
    else:
        dx0 = (x0_at(1) - x0_at(-1)) / (2 * h)
    da = -dx0 - a
    e_plus, _ = den(x + X_STEP * r, t)
    e_minus, _ = den(x - X_STEP * r, t)
    diag = r * sigma * (e_plus - e_minus) / (2 * X_STEP)
    return {"a": a, "c": x / alpha, "da": da, "diag": diag}


def check_ems_matches(ems, schedule: NoiseSchedule, shape) -> None:
    """An error unless ``ems`` is an ``EMS`` for samples of ``shape`` whose lambda grid covers the
    schedule's finite range."""
    if not isinstance(ems, EMS):
        raise ValueError("dpm-solver-v3 needs the model's empirical model statistics; estimate them once with "
                         "`ddpmkit ems --model MODEL` (in Python: ddpmkit.ems.estimate_ems)")
    if shape is not None and tuple(shape) != ems.shape:
        raise ValueError(f"the EMS are for samples of shape {list(ems.shape)}; these have {list(shape)}")
    lam_min, lam_max = schedule.log_snr[-1] / 2, schedule.log_snr[0] / 2
    if not math.isfinite(lam_min):
        raise ValueError("DPM-Solver-v3 needs a finite terminal SNR (its statistics live on a finite logSNR grid); "
                         "this schedule has zero terminal SNR")
    slack = 1e-6 * max(1.0, abs(lam_min), abs(lam_max))
    if not (ems.lambdas[0] <= lam_min + slack and ems.lambdas[-1] >= lam_max - slack):
        raise ValueError(f"the EMS cover lambda {ems.lambdas[0]:.4g}..{ems.lambdas[-1]:.4g}, not the schedule's "
                         f"{lam_min:.4g}..{lam_max:.4g}: they were estimated for another schedule")
