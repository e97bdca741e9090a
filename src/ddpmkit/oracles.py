"""Data whose denoiser is known exactly: isotropic Gaussian mixtures.

For x0 ~ sum_k w_k N(m_k, s^2 I) and x_t = a x0 + b eps (a^2 = abar, b^2 = 1 - abar):
    p(x_t | k) = N(a m_k, (a^2 s^2 + b^2) I),
    E[x0 | x_t, k] = m_k + a s^2 / (a^2 s^2 + b^2) (x_t - a m_k),
and E[x0 | x_t] averages those with the posterior responsibilities r_k(x_t). This is the ideal
denoiser a network trained to convergence would learn, so samplers can be measured against the
truth without training. With s = 0 and the means set to a data set it is the empirical data
distribution (every sample lands exactly on a training image).
"""

from __future__ import annotations

import math

import torch

from .prediction import check_prediction
from .schedule import NoiseSchedule
from .vp import eps_from_x0, training_target


class GaussianMixture:
    """x0 ~ sum_k weights_k N(means_k, std^2 I). ``means``: (K, *shape)."""

    def __init__(self, means: torch.Tensor, std: float, weights: torch.Tensor | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim < 2:
            raise ValueError("means must have shape (K, ...) with at least one data dimension")
        if std < 0:
            raise ValueError(f"std={std} must be >= 0")
        k = means.shape[0]
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or torch.any(w < 0) or not math.isclose(float(w.sum()), 1.0, rel_tol=1e-9):
            raise ValueError("weights must be K non-negative numbers summing to 1")
        self.means, self.std, self.weights = means, float(std), w
        self.shape = tuple(means.shape[1:])
        self._flat = means.reshape(k, -1)
        self._sq = (self._flat**2).sum(1)

    @classmethod
    def gaussian(cls, mean: float, std: float, shape: tuple[int, ...]) -> GaussianMixture:
        """A single Gaussian N(mean, std^2 I) over tensors of ``shape``."""
        return cls(torch.full((1, *shape), float(mean), dtype=torch.float64), std)

    def responsibilities(self, x_t: torch.Tensor, abar) -> torch.Tensor:
        """r_k(x_t) = p(k | x_t), shape (N, K). ``abar``: a float or one value per sample."""
        a, var = self._coeffs(abar, x_t)
        x = x_t.reshape(x_t.shape[0], -1).to(torch.float64)
        # ||x - a m_k||^2 without forming the (N, K, D) difference
        d2 = (x**2).sum(1, keepdim=True) - 2 * a[:, None] * (x @ self._flat.T) + a[:, None] ** 2 * self._sq
        return torch.softmax(torch.log(self.weights) - d2.clamp_min(0) / (2 * var[:, None]), dim=1)

    def denoise(self, x_t: torch.Tensor, abar) -> torch.Tensor:
        """E[x0 | x_t] at noise level abar (float or one per sample), in x_t's dtype."""
        a, var = self._coeffs(abar, x_t)
        x = x_t.reshape(x_t.shape[0], -1).to(torch.float64)
        r = self.responsibilities(x_t, abar)
        gain = (a * self.std**2 / var)[:, None]  # a s^2 / (a^2 s^2 + b^2)
        mean_m = r @ self._flat  # sum_k r_k m_k
        x0 = mean_m + gain * (x - a[:, None] * mean_m)
        return x0.reshape(x_t.shape).to(x_t.dtype)

    def _coeffs(self, abar, x_t):
        abar = torch.as_tensor(abar, dtype=torch.float64, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        a = abar.sqrt()
        return a, abar * self.std**2 + (1.0 - abar)

    def model(self, schedule: NoiseSchedule, prediction: str = "eps"):
        """A ``model(x_t, t)`` that returns the exact network output for ``prediction``."""
        prediction = check_prediction(prediction)

        def exact_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            abar = torch.as_tensor(schedule.abar_at(t.detach().cpu().double().numpy()), dtype=torch.float64)
            x0 = self.denoise(x_t, abar).to(torch.float64)
            eps = None if prediction == "x0" else eps_from_x0(x_t.to(torch.float64), x0, abar)
            return training_target(x0, eps, abar, prediction).to(x_t.dtype)

        return exact_model

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n exact draws from the mixture (float64)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        return self.means[k] + self.std * z

    def ode_solution(self, x: torch.Tensor, abar_from: float, abar_to: float) -> torch.Tensor:
        """Exact probability-flow ODE map from abar_from to abar_to, for a single Gaussian (K = 1).

        In y = x / sqrt(abar) and sigma = sqrt(1/abar - 1) the ODE is dy/dsigma = (y - x0_hat)/sigma
        (Song et al. 2020, DDIM eq. 14); with x0_hat = m + s^2/(s^2 + sigma^2) (y - m) it solves to
        y(sigma) - m = (y(sigma_from) - m) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_from^2).
        """
        if self.means.shape[0] != 1:
            raise ValueError("the closed-form ODE solution is implemented for a single Gaussian only")
        m = self.means[0].to(x.device)
        s2 = self.std**2
        if abar_from == 0.0:  # from pure noise (zero terminal SNR): the limit of the formula below
            return (math.sqrt(abar_to) * m + math.sqrt(abar_to * s2 + 1 - abar_to) * x.to(torch.float64)).to(x.dtype)
        sig_from2, sig_to2 = 1 / abar_from - 1, 1 / abar_to - 1
        y = x.to(torch.float64) / math.sqrt(abar_from)
        y_to = m + (y - m) * math.sqrt((s2 + sig_to2) / (s2 + sig_from2))
        return (math.sqrt(abar_to) * y_to).to(x.dtype)
