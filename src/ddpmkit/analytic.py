"""Analytic-DPM's moment (Bao et al. 2022, "Analytic-DPM: an Analytic Estimate of the Optimal
Reverse Variance in Diffusion Probabilistic Models").

The KL-optimal reverse variance of a step t -> s depends on the model only through
Gamma_t = E_{x_t} ||eps_hat(x_t, t)||^2 / d (Theorem 1), a scalar per timestep. It is estimated
once by Monte Carlo over training data and stored with the model (``ddpmkit moments``); sampling
then costs nothing extra: the model hands the table to the sampler, ``ddpm(..., variance="optimal",
eps_moment=table)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .prediction import Denoiser
from .schedule import NoiseSchedule


def estimate_eps_moment(model: Callable, schedule: NoiseSchedule, data: torch.Tensor, *, prediction: str = "eps",
                        num_timesteps: int = 100, batch_size: int = 256, seed: int = 0, progress=None) -> np.ndarray:
    """Gamma_t for t = 0..T-1: at ``num_timesteps`` evenly spaced timesteps (always including 0
    and T-1) the mean of ||eps_hat||^2 / d over every image of ``data`` (each noised with its own
    draw), linearly interpolated in between (Gamma_t is smooth in t). Cost: num_timesteps x
    len(data) network evaluations. ``progress(1)`` after each timestep."""
    if data.ndim < 2 or len(data) < 1:
        raise ValueError("data must be a batch of at least one sample")
    if not 2 <= num_timesteps <= schedule.T:
        raise ValueError(f"num_timesteps={num_timesteps} must be in [2, {schedule.T}]")
    den = Denoiser(model, schedule, prediction)
    ts = np.unique(np.round(np.linspace(0, schedule.T - 1, num_timesteps)).astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    values = []
    with torch.no_grad():
        for t in ts:
            abar = schedule.abar_at(int(t))
            total, count = 0.0, 0
            for lo in range(0, len(data), batch_size):
                x0 = data[lo : lo + batch_size]
                eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device)
                x_t = abar**0.5 * x0 + (1 - abar) ** 0.5 * eps
                eps_hat, _ = den(x_t, int(t))
                total += eps_hat.double().pow(2).flatten(1).mean(1).sum().item()
                count += len(x0)
            values.append(total / count)
            if progress is not None:
                progress(1)
    return np.interp(np.arange(schedule.T), ts, values)


def eps_moment_of_model(model, dataset: str, data_dir=None, *, num: int = 1000, timesteps: int = 100,
                        batch_size: int = 256, seed: int = 0, progress=None) -> tuple[np.ndarray, dict]:
    """(Gamma_t table, info) of a loaded model (``models.load_model``: its ``net``, ``schedule``,
    ``prediction``, ``shape``, ``device``) over ``num`` images of ``dataset`` chosen by ``seed``, estimated at
    ``timesteps`` timesteps (``estimate_eps_moment``); info records the dataset, images, timesteps
    and seed, as ``ddpmkit moments`` stores them with the table."""
    from .data import load_dataset

    if getattr(model, "conditional", False):  # Gamma_t would differ per class; one table holds one
        raise ValueError(f"{model.path.name} is class-conditional: ddpmkit estimates Analytic-DPM's eps moments "
                         "for unconditional models only")
    T = model.schedule.T
    if timesteps > T:
        raise ValueError(f"--timesteps {timesteps} exceeds the model's {T} timesteps; give at most {T}")
    data = load_dataset(dataset, data_dir)
    if tuple(data.shape) != tuple(model.shape):
        raise ValueError(f"--dataset {dataset} has images of shape {data.shape}; the model makes {model.shape}")
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:num]
    x0 = data.batch(idx).to(model.device)
    moment = estimate_eps_moment(model.net, model.schedule, x0, prediction=model.prediction,
                                 num_timesteps=timesteps, batch_size=batch_size, seed=seed, progress=progress)
    return moment, {"dataset": data.name, "images": len(x0), "timesteps": timesteps, "seed": seed}


def gaussian_eps_moment(schedule: NoiseSchedule, std: float) -> np.ndarray:
    """Gamma_t in closed form for data x0 ~ N(m, std^2 I): Cov(eps | x_t) = abar std^2 /
    (abar std^2 + 1 - abar) I, so Gamma_t = 1 - abar std^2 / (abar std^2 + 1 - abar)."""
    ab = schedule.alphas_cumprod
    return 1.0 - ab * std**2 / (ab * std**2 + 1.0 - ab)
