"""Classifier-free guidance (Ho & Salimans 2022), as the Denoiser applies it to every sampler.

One network trained with label dropout is both the conditional model (a label y) and the
unconditional one (the null label). Guidance with scale W extrapolates from the unconditional
prediction towards the conditional one, out = uncond + W (cond - uncond) — diffusers' convention,
in which W = 1 is the conditional model unguided and W = 0 the unconditional model. (Ho & Salimans
write (1 + w) cond - w uncond, so their w is W - 1.) The combination has weights that sum to one,
so it is the same whether made of eps, x0 or v predictions: each is affine in the network output
at fixed x_t.

Two refinements:
- a guidance interval (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves
  sample and distribution quality"): guide only at noise levels sigma in (lo, hi], and sample the
  conditional model elsewhere; sigma = sqrt((1 - abar_t) / abar_t), EDM's;
- guidance rescale (Lin et al. 2023, "Common diffusion noise schedules and sample steps are flawed",
  §3.4): out' = phi out std(cond) / std(out) + (1 - phi) out, per sample, which undoes the
  over-exposure that large W causes on v-prediction and zero-SNR models.
"""

from __future__ import annotations

import math

import torch

GUIDANCE_OPTIONS = {"guidance": 1.0, "guidance_interval": None, "guidance_rescale": 0.0}


def check_guidance(guidance: float = 1.0, guidance_interval=None, guidance_rescale: float = 0.0):
    """The guidance options as (W, (lo, hi) or None, phi), or a ValueError naming the bad one."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not (
            math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"guidance={guidance!r} is not valid; need a finite number >= 0 (1: no guidance, "
                         "0: the unconditional model)")
    if guidance_interval is not None:
        try:
            lo, hi = (float(v) for v in guidance_interval)
        except (TypeError, ValueError):
            raise ValueError(f"guidance_interval={guidance_interval!r} is not valid; need two noise levels "
                             "(lo, hi) with 0 <= lo < hi") from None
        if not (0 <= lo < hi):  # NaN fails too
            raise ValueError(f"guidance_interval=({lo:g}, {hi:g}) is not valid; need 0 <= lo < hi (sigma)")
        guidance_interval = (lo, hi)
    if not (isinstance(guidance_rescale, (int, float)) and 0.0 <= guidance_rescale <= 1.0):
        raise ValueError(f"guidance_rescale={guidance_rescale!r} is not valid; need a number in [0, 1]")
    return float(guidance), guidance_interval, float(guidance_rescale)


def in_interval(sigma: float, interval) -> bool:
    """Whether guidance applies at noise level ``sigma``: everywhere without an interval, else
    for sigma in (lo, hi]."""
    return interval is None or interval[0] < sigma <= interval[1]


def combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float, rescale: float = 0.0) -> torch.Tensor:
    """uncond + scale (cond - uncond), then Lin et al.'s rescale by ``rescale`` (phi): the guided
    output's per-sample std brought back to the conditional output's, mixed in with weight phi."""
    out = uncond + scale * (cond - uncond)
    if rescale > 0.0:
        dims = tuple(range(1, out.ndim))
        ratio = cond.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True)
        out = rescale * (out * ratio) + (1.0 - rescale) * out
    return out
