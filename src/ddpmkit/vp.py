"""The variance-preserving (VP) conversions, in one place.

A VP diffusion state is x_t = alpha x0 + sigma_vp eps with alpha^2 = abar and sigma_vp^2 = 1 - abar
(Ho et al. 2020, eq. 4). The same noise level has three common names:

  - ``abar``: the signal fraction (alphas_cumprod), 1 for clean data and 0 for pure noise;
  - ``sigma`` = sqrt((1 - abar) / abar): EDM's noise level of the unscaled state y = x_t / alpha =
    x0 + sigma eps (Karras et al. 2022, eq. 4 with s = 1 / sqrt(1 + sigma^2); the VE view of Song et
    al. 2021); inf for pure noise, 0 for clean data;
  - ``log_snr`` = log(abar / (1 - abar)) = -2 log sigma (Kingma et al. 2021, "Variational Diffusion
    Models": log SNR), -inf for pure noise, +inf for clean data. DPM-Solver's lambda = log(alpha /
    sigma_vp) (Lu et al. 2022, "DPM-Solver", §3.1) is half of it; ``alpha_sigma_lambda`` gives it.

And a network's output at that level may be eps, x0, or v = alpha eps - sigma_vp x0 (Salimans &
Ho 2022, "Progressive Distillation", §4); ``to_eps_x0``, ``x0_from_output`` and ``training_target``
convert between them.

Forms: a function takes a Python float (math, with the edge cases spelled out), a NumPy array or
scalar (float64, no warnings at the edges) or a torch tensor, and returns the same kind. A tensor
of noise levels given next to a batch x holds one value per sample, shape (N,), or is already
broadcastable against x.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

PREDICTIONS = ("eps", "x0", "v")


def _is_scalar(value) -> bool:
    """A Python number (the math form); NumPy scalars and arrays take the NumPy form."""
    return isinstance(value, numbers.Real) and not isinstance(value, (np.ndarray, np.generic))


def _per_sample(level: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One noise level per sample, shape (N,), viewed as (N, 1, ...) against x; anything else as given."""
    return level.view(-1, *([1] * (x.ndim - 1))) if level.ndim == 1 and x.ndim > 1 else level


# -- abar <-> sigma <-> log SNR ------------------------------------------------------------------
def sigma_from_abar(abar):
    """EDM's sigma = sqrt((1 - abar) / abar) (Karras et al. 2022, §2 / Table 1, "VP"): inf at abar = 0
    (zero terminal SNR), 0 at abar = 1."""
    if isinstance(abar, torch.Tensor):
        return ((1.0 - abar) / abar).sqrt()
    if _is_scalar(abar):
        return math.sqrt((1.0 - abar) / abar) if abar > 0.0 else math.inf
    abar = np.asarray(abar, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - abar) / abar)


def abar_from_sigma(sigma):
    """abar = 1 / (1 + sigma^2), the inverse of ``sigma_from_abar``: 0 at sigma = inf, 1 at sigma = 0."""
    if isinstance(sigma, torch.Tensor) or _is_scalar(sigma):
        return 1.0 / (1.0 + sigma**2)
    return 1.0 / (1.0 + np.asarray(sigma, dtype=np.float64) ** 2)


def log_snr_from_abar(abar):
    """log SNR = log(abar / (1 - abar)) (Kingma et al. 2021, eq. 2 with SNR = alpha^2 / sigma_vp^2),
    computed as log(abar) - log1p(-abar): -inf at abar = 0, +inf at abar = 1."""
    if _is_scalar(abar):
        if abar == 0.0:
            return -math.inf
        return math.inf if abar == 1.0 else math.log(abar) - math.log1p(-abar)
    abar = np.asarray(abar, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(abar) - np.log1p(-abar)


def abar_from_log_snr(log_snr):
    """abar = sigmoid(log SNR) = 1 / (1 + e^(-log SNR)), the inverse of ``log_snr_from_abar``. The
    tensor form is ``torch.sigmoid`` (within 1e-13 of the NumPy form, rounded its own way)."""
    if isinstance(log_snr, torch.Tensor):
        return torch.sigmoid(log_snr)
    if _is_scalar(log_snr):
        if log_snr < 0.0:  # e / (1 + e) with e = e^(log SNR), which cannot overflow
            e = math.exp(log_snr)
            return e / (1.0 + e)
        return 1.0 / (1.0 + math.exp(-log_snr))
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(log_snr, dtype=np.float64)))


def log_snr_from_sigma(sigma):
    """log SNR = -2 log sigma (EDM's sigma is the inverse square root of the SNR)."""
    if _is_scalar(sigma):
        return -2.0 * math.log(sigma) if sigma > 0.0 else math.inf
    with np.errstate(divide="ignore"):
        return -2.0 * np.log(np.asarray(sigma, dtype=np.float64))


def sigma_from_log_snr(log_snr):
    """sigma = e^(-log SNR / 2), the inverse of ``log_snr_from_sigma``."""
    if _is_scalar(log_snr):
        try:
            return math.exp(-log_snr / 2)
        except OverflowError:  # beyond the largest float: pure noise
            return math.inf
    with np.errstate(over="ignore"):
        return np.exp(-np.asarray(log_snr, dtype=np.float64) / 2)


def alpha_sigma_lambda(abar: float) -> tuple[float, float, float]:
    """(alpha, sigma_vp, lambda) at noise level abar: alpha = sqrt(abar), sigma_vp = sqrt(1 - abar) and
    DPM-Solver's lambda = log(alpha / sigma_vp) = log SNR / 2 (Lu et al. 2022, §3.1). lambda = inf for
    clean data and -inf for pure noise (zero terminal SNR), where the first-order step is exact and
    higher-order differences against that point vanish (r = inf), so the solvers drop an order there."""
    alpha, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
    if sigma == 0.0:
        return alpha, sigma, math.inf
    if alpha == 0.0:
        return alpha, sigma, -math.inf
    return alpha, sigma, math.log(alpha) - math.log(sigma)


# -- the VP state x_t <-> EDM's y ------------------------------------------------------------------
def y_from_x(x_t: torch.Tensor, sigma) -> torch.Tensor:
    """EDM's unscaled state y = x_t sqrt(1 + sigma^2) = x_t / sqrt(abar) at noise level sigma (a float,
    or a tensor with one per sample)."""
    if isinstance(sigma, torch.Tensor):
        return x_t * _per_sample((1 + sigma**2).sqrt(), x_t)
    return x_t * math.sqrt(1.0 + sigma**2)


def x_from_y(y: torch.Tensor, sigma) -> torch.Tensor:
    """The VP state x_t = y / sqrt(1 + sigma^2) = sqrt(abar) y of EDM's y at noise level sigma (a float,
    or a tensor with one per sample): what a VP network is fed."""
    if isinstance(sigma, torch.Tensor):
        return y / _per_sample((1 + sigma**2).sqrt(), y)
    return y / math.sqrt(1.0 + sigma**2)


# -- eps <-> x0 <-> v ------------------------------------------------------------------------------
def _prediction_error(prediction) -> ValueError:
    return ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def to_eps_x0(output: torch.Tensor, x_t: torch.Tensor, abar: float, prediction: str):
    """A network output at noise level abar (a float) as (eps_hat, x0_hat), from x_t = a x0 + b eps
    (a = sqrt(abar), b = sqrt(1 - abar)) and v = a eps - b x0 (Salimans & Ho 2022, §4 and Appendix D):
    eps -> x0 = (x_t - b eps) / a; x0 -> eps = (x_t - a x0) / b; v -> eps = b x_t + a v, x0 = a x_t - b v.
    An eps output cannot give x0 at abar = 0 (zero terminal SNR)."""
    a, b = math.sqrt(abar), math.sqrt(1.0 - abar)
    if prediction == "eps":
        if a == 0.0:
            raise ValueError("prediction 'eps' cannot give x0 where abar = 0 (zero terminal SNR); use 'v' or 'x0'")
        return output, (x_t - b * output) / a
    if prediction == "x0":
        return (x_t - a * output) / b, output
    if prediction == "v":
        return b * x_t + a * output, a * x_t - b * output
    raise _prediction_error(prediction)


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar) -> torch.Tensor:
    """eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar): the noise that x0 leaves in x_t (Ho et al. eq. 4
    solved for eps). ``abar``: a float, or a tensor with one per sample (or broadcastable against x_t)."""
    if isinstance(abar, torch.Tensor):
        abar = _per_sample(abar, x_t)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
    return (x_t - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)


def x0_from_output(output: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor, prediction: str) -> torch.Tensor:
    """A network's x0 estimate from its output (eps, x0 or v) with one abar per sample (a tensor, shape
    (N,)), the coefficients cast to x_t's dtype: as ``to_eps_x0``'s x0_hat, without its abar = 0 check."""
    a = abar.sqrt().view(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
    b = (1.0 - abar).sqrt().view_as(a).to(x_t.dtype)
    if prediction == "eps":
        return (x_t - b * output) / a
    if prediction == "x0":
        return output
    if prediction == "v":
        return a * x_t - b * output
    raise _prediction_error(prediction)


def training_target(x0: torch.Tensor, eps: torch.Tensor, abar, prediction: str) -> torch.Tensor:
    """What a network of the given parameterisation outputs for (x0, eps) at noise level abar: the
    regression target eps, x0 or v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, §4).
    ``abar``: a float, or a tensor with one per sample (or broadcastable against x0)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        if isinstance(abar, torch.Tensor):
            abar = _per_sample(abar, x0)
            return abar.sqrt() * eps - (1.0 - abar).sqrt() * x0
        return abar**0.5 * eps - (1.0 - abar) ** 0.5 * x0
    raise _prediction_error(prediction)
