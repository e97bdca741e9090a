"""The consistency function of a consistency model (Song, Dhariwal, Chen & Sutskever 2023,
"Consistency Models", §3 and Appendix C), built on one of our DDPM noise-prediction networks.

The probability-flow ODE of a VP model is easiest to state in EDM's variable y = x_t / sqrt(abar_t)
= x0 + sigma_t eps, sigma_t = sqrt(1/abar_t - 1). A consistency function maps any point (y, sigma)
of an ODE trajectory to its end at sigma_min. It is parameterised so that the boundary condition
f(y, sigma_min) = y holds exactly, whatever the weights (the paper's eq. 5):

    f(y, sigma) = c_skip(sigma) y + c_out(sigma) D_theta(x_t, t),
    c_skip(sigma) = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),  c_out = 1 - c_skip,

where D_theta is the network's own x0 estimate (its eps, x0 or v output converted at t). The
paper's c_skip; c_out = 1 - c_skip (as in latent consistency models, Luo et al. 2023) makes f equal
to the network's denoiser wherever sigma >> sigma_data, so a student initialised from a DDPM teacher
starts as the teacher's one-step x0 prediction. sigma_min is the noise level of the grid's smallest
timestep (t = 0 on our grids: sigma ~ 0.01 for the linear schedule).

With ``x0_head`` the network has a second set of output channels, read as a direct x0 prediction
r, and the denoiser is EDM's blend of the two parameterisations (Karras et al. 2022, Table 1's
c_skip): D = w D_eps + (1 - w) r, w = sigma_data^2 / (sigma^2 + sigma_data^2). An eps network's x0
estimate D_eps = y - sigma eps_hat amplifies its error by sigma (157 at t = 999 of the linear
schedule), so at high noise a one-step student is better served by r, which starts at zero (the
mid-grey image) and is learnt by distillation, while D_eps keeps the teacher's good low-noise
behaviour.

``ConsistencyFunction(x_t, t)`` takes the VP state and timestep like any of our networks and returns
f, an x0 estimate: a model file stores it with prediction "x0", so every sampler can run it and
``cm`` (multistep consistency sampling, Algorithm 1) is the one it is made for.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import torch
from torch import nn

from .prediction import check_prediction
from .schedule import NoiseSchedule
from .vp import abar_from_log_snr, sigma_from_abar, x0_from_output


@functools.lru_cache(maxsize=8)
def _tables(config: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    schedule = NoiseSchedule.from_config(json.loads(config))
    abar = torch.tensor(np.array(schedule.alphas_cumprod), dtype=torch.float64, device=device)
    return abar, torch.tensor(np.array(schedule.log_snr), dtype=torch.float64, device=device)


def abar_tensor(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """abar at a batch of (integer or fractional) timesteps in [0, T-1], float64 on t's device and
    computed there (no round trip to the host per network call): the table's value at whole
    timesteps, logSNR interpolated linearly between them, as ``NoiseSchedule.abar_at``."""
    abar, lam = _tables(json.dumps(schedule.to_config(), sort_keys=True), str(t.device))
    tt = t.detach().to(torch.float64).reshape(-1)
    lo = tt.floor().long().clamp(0, schedule.T - 1)
    hi = (lo + 1).clamp(max=schedule.T - 1)
    w = tt - lo
    interpolated = abar_from_log_snr(lam[lo] * (1 - w) + lam[hi] * w)
    between = torch.where(abar[hi] > 0, interpolated, abar[lo] * (1 - w) + abar[hi] * w)  # a segment to abar = 0
    return torch.where(w == 0, abar[lo], between)


def c_skip(sigma: torch.Tensor, sigma_min: float, sigma_data: float) -> torch.Tensor:
    """Consistency Models eq. (5)'s c_skip: 1 exactly at sigma = sigma_min."""
    return sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)


class ConsistencyFunction(nn.Module):
    """f(x_t, t) = c_skip y + (1 - c_skip) D_theta(x_t, t), y = x_t / sqrt(abar_t) (see the module
    docstring). ``net`` is a DDPM network with output parameterisation ``prediction``."""

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, *, prediction: str = "eps", t_min: float = 0.0,
                 sigma_data: float = 0.5, x0_head: bool = False):
        super().__init__()
        self.net, self.schedule = net, schedule
        self.prediction = check_prediction(prediction)
        if not 0.0 <= t_min <= schedule.T - 1:
            raise ValueError(f"t_min={t_min} is outside [0, {schedule.T - 1}]")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data={sigma_data} must be > 0")
        self.t_min, self.sigma_data, self.x0_head = float(t_min), float(sigma_data), bool(x0_head)
        # through the same arithmetic as forward(), so that sigma - sigma_min is exactly 0 at t_min
        self.sigma_min = sigma_from_abar(abar_tensor(schedule, torch.tensor([self.t_min]))).item()

    def config(self) -> dict:
        return {"unet": {"arch": "unet", **self.net.config()}, "prediction": self.prediction, "t_min": self.t_min,
                "sigma_data": self.sigma_data, "x0_head": self.x0_head}

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        abar = abar_tensor(self.schedule, t)
        sigma = sigma_from_abar(abar)
        shape = (-1, *([1] * (x_t.ndim - 1)))
        skip = c_skip(sigma, self.sigma_min, self.sigma_data).view(shape)
        y_state = x_t.double() / abar.sqrt().view(shape)
        out = self.net(x_t, t) if y is None else self.net(x_t, t, y)
        if self.x0_head:  # (parameterisation output, direct x0), blended as EDM's preconditioning
            out, r = out.chunk(2, dim=1)
            w = (self.sigma_data**2 / (sigma**2 + self.sigma_data**2)).view(shape)
            d = w * x0_from_output(out, x_t, abar, self.prediction).double() + (1.0 - w) * r.double()
        else:
            d = x0_from_output(out, x_t, abar, self.prediction).double()
        return (skip * y_state + (1.0 - skip) * d).to(x_t.dtype)
