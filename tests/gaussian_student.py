"""A consistency function on N(mu, s^2 I) that starts as the exact denoiser, and its distance to the
probability-flow ODE's endpoint: the oracle of the consistency-model tests (test_distill, test_ect)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ddpmkit.consistency import abar_tensor
from ddpmkit.nets.unet import timestep_embedding
from ddpmkit.schedule import NoiseSchedule

SCHED = NoiseSchedule("linear", 1000)


class ExactPlusCorrection(nn.Module):
    """x0 = the exact Gaussian denoiser + a learnt affine correction that starts at zero: a student
    initialised from an exact teacher."""

    def __init__(self, oracle):
        super().__init__()
        self.oracle = oracle
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.SiLU(), nn.Linear(64, 2))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, x, t):
        a, b = self.mlp(timestep_embedding(t, 32)).unsqueeze(-1).unbind(1)
        return self.oracle.denoise(x.double(), abar_tensor(SCHED, t)).float() + a * x + b


def one_step_errors(f, oracle, x_T: torch.Tensor):
    """(RMS of the exact denoiser's one-step output from the ODE endpoint, RMS of f's, f's outputs),
    the endpoint in closed form from x_T at t = 999 to t = 0, in EDM's variable y."""
    exact = oracle.ode_solution(x_T.double(), SCHED.abar_at(999), SCHED.abar_at(0)) / math.sqrt(SCHED.abar_at(0))
    with torch.no_grad():
        one_step = f(x_T, torch.full((len(x_T),), 999, dtype=torch.int64)).double()
    before = (oracle.denoise(x_T.double(), SCHED.abar_at(999)) - exact).pow(2).mean().sqrt()
    return before, (one_step - exact).pow(2).mean().sqrt(), one_step
