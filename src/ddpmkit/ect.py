"""Easy Consistency Tuning (Geng, Pokle, Luo, Lin & Kolter 2024, "Consistency Models Made Easy",
arXiv 2406.14548), adapted to our discrete-time VP models.

Consistency training compares f at two noise levels t > r of one noising path of the same data. At
r = 0 its target is the data itself and its loss is the denoising loss of diffusion training: a
trained diffusion model is a consistency model at the gap dt = t - r = t. ECT starts from one (the
consistency function wraps the DDPM's network and starts as its denoiser, ``ddpmkit.consistency``) and tunes
it with the consistency-training loss while shrinking the gap, no teacher ODE solve per step:

    y_t = x0 + t z,  y_r = x0 + r z                   t, r: noise levels (EDM's sigma), one z
    t ~ LogNormal(P_mean, P_std)                      EDM's training distribution
    r = t (1 - q^-(stage + 1) n(t)),  n(t) = 1 + k sigmoid(-b t)      the "sigmoid" mapping function
    loss = d(f_theta(y_t, t), sg f_theta(y_r, r)) / (t - r)
    d(a, b) = sqrt(||a - b||^2 + c^2) - c             pseudo-Huber; c = 0: the L2 norm

with the same dropout mask in both calls, f_theta(y_r, r) without gradient (theta- = theta), and the
gap shrinking by q each stage (stage = (k - 1) // double_every for step k; one stage throughout when
double_every = 0). ECT's CIFAR-10 "1 hour" recipe (run_ecm_1hour.sh of locuslab/ect): q = 256 and a
single stage, k = 8, b = 1, c = 0, P_mean = -1.1, P_std = 2, RAdam at lr 1e-4, batch 128, dropout 0.2,
EMA 0.9993; the loss and mapping follow its ``training/loss.py``.

Our adaptation: a VP schedule has noise levels in [sigma_min, sigma_max] only (0.01 to 157 for the
linear schedule with T = 1000), so t is drawn from the log-normal truncated to [2 sigma_min,
sigma_max] (by its inverse CDF), and r stops at sigma_min, where the consistency function is the
identity (its boundary condition): the counterpart of ECT's r = 0, whose target is the data. t and
r become fractional timesteps by the schedule's own logSNR interpolation (``t_at_sigma``).
"""

from __future__ import annotations

import math

import torch

LOWEST = 2.0  # t >= LOWEST * sigma_min, so that t - r stays a real gap where r stops at sigma_min


def stage_at(step: int, double_every: int) -> int:
    """The stage of 1-based ``step``: the gap shrinks by q at each (0 throughout for double_every 0)."""
    return (step - 1) // double_every if double_every else 0


def r_from_t(t: torch.Tensor, stage: int, q: float, k: float, b: float) -> torch.Tensor:
    """ECT's sigmoid mapping function: r = t (1 - q^-(stage + 1) (1 + k sigmoid(-b t))), at least 0."""
    ratio = 1.0 - q ** -(stage + 1) * (1.0 + k * torch.sigmoid(-b * t))
    return (t * ratio).clamp(min=0.0)


def truncated_lognormal(n: int, low: float, high: float, p_mean: float, p_std: float,
                        g: torch.Generator) -> torch.Tensor:
    """n draws (float64, on the CPU) of exp(P_mean + P_std N(0, 1)) conditioned on [low, high], by the
    inverse CDF of the normal restricted to [(log low - P_mean) / P_std, (log high - P_mean) / P_std]."""
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    lo, hi = (normal.cdf(torch.tensor((math.log(v) - p_mean) / p_std, dtype=torch.float64)) for v in (low, high))
    u = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    return (p_mean + p_std * torch.special.ndtri(u)).exp().clamp(low, high)


def ect_levels(n: int, sigma_min: float, sigma_max: float, stage: int, *, q: float, k: float, b: float,
               p_mean: float, p_std: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r) noise levels of a batch of n pairs (float64, CPU): t from the truncated log-normal, r from
    the mapping function, r stopped at sigma_min."""
    t = truncated_lognormal(n, LOWEST * sigma_min, sigma_max, p_mean, p_std, g)
    return t, r_from_t(t, stage, q, k, b).clamp(min=sigma_min)


def shared_dropout(net, seed: int, devices: list):
    """``net`` as the target of the pair: called with the dropout mask that the student's call makes
    when it is the first draw after ``torch.manual_seed(seed)`` (the RNG is restored afterwards)."""

    def target(x_t, t):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return net(x_t, t)

    return target
