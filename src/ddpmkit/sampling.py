"""``sample()``: the one call that turns a model and a schedule into samples."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .prediction import Denoiser
from .rng import SeededNoise, check_seeds
from .samplers import get_sampler, sampler_options, steps_for_nfe
from .schedule import NoiseSchedule, check_grid

DENOISER_OPTIONS = {"clip": False, "threshold": None, "threshold_max": None, "eps_moment": None}


def _model_device(model) -> torch.device | None:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return None


def sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    *,
    sampler: str = "ddim",
    steps: int | None = None,
    nfe: int | None = None,
    spacing: str = "trailing",
    timesteps: Iterable[float] | None = None,
    prediction: str = "eps",
    shape: tuple[int, ...] | None = None,
    seeds: Iterable[int] | None = None,
    init_noise: torch.Tensor | None = None,
    batch_size: int | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    device=None,
    dtype: torch.dtype = torch.float32,
    callback: Callable | None = None,
    return_info: bool = False,
    **options,
):
    """Draw samples from a diffusion model.

    model: ``model(x_t, t)`` returns the network output for a batch; t is a 1-D tensor of timesteps.
    sampler: a name from ``ddpmkit.samplers.SAMPLERS``; its options (``eta``, ``variance``, ...) and
        the denoiser's (``clip``, ``threshold``, ``threshold_max``) are keyword arguments.
    steps / spacing: the step grid (``NoiseSchedule.grid``: leading, trailing, linspace, karras,
        logsnr); or ``nfe``, a budget of network evaluations from which the steps are chosen
        (``steps_for_nfe``); or ``timesteps``, an explicit descending grid. Default: all T timesteps.
    shape: (N, C, H, W) or any (N, ...); seeds: one integer per sample (default 0..N-1). Sample i
        depends only on seeds[i] — not on batch size, position or N.
    init_noise: x_T to start from instead of drawing it (shape (N, ...)); later noise still comes
        from the seeds, so passing the x_T that seed s would draw reproduces seed s's sample.
    batch_size: samples per model call (default: all at once).
    Returns a tensor of shape (N, ...) in ``dtype`` on the model's device; with ``return_info`` a
    pair (samples, info) where info holds ``nfe`` (network evaluations per sample) and ``grid``.
    """
    fn = get_sampler(sampler)
    valid = sampler_options(sampler)
    unknown = sorted(set(options) - set(valid) - set(DENOISER_OPTIONS))
    if unknown:
        names = ", ".join([*valid, *DENOISER_OPTIONS]) or "none"
        raise ValueError(f"unknown option {unknown[0]!r} for sampler {sampler!r}; valid: {names}")
    sampler_opts = {k: v for k, v in options.items() if k in valid}
    denoiser_opts = {k: v for k, v in options.items() if k in DENOISER_OPTIONS}

    if sum(v is not None for v in (steps, nfe, timesteps)) > 1:
        raise ValueError("give only one of steps, nfe and timesteps")
    if timesteps is not None:
        grid = check_grid(timesteps, schedule.T)
    else:
        if nfe is not None:
            steps = steps_for_nfe(sampler, nfe, schedule.T, **sampler_opts)
        grid = schedule.grid(schedule.T if steps is None else steps, spacing)
    denoiser = Denoiser(model, schedule, prediction, data_range=data_range, **denoiser_opts)
    if denoiser.prediction == "eps" and schedule.abar_at(grid[0]) == 0.0:
        raise ValueError("prediction 'eps' cannot start at abar = 0 (zero terminal SNR); use 'v' or 'x0'")

    if init_noise is not None:
        init_noise = torch.as_tensor(init_noise)
        if shape is not None and tuple(shape) != tuple(init_noise.shape):
            raise ValueError(f"shape {tuple(shape)} disagrees with init_noise of shape {tuple(init_noise.shape)}")
        shape = tuple(init_noise.shape)
    if shape is None or len(shape) < 2 or any(int(d) < 1 for d in shape):
        raise ValueError(f"shape={shape!r} is not valid; need (N, C, H, W) or (N, ...) with positive sizes")
    n = int(shape[0])
    seeds = check_seeds(range(n) if seeds is None else seeds)
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} samples; give one seed per sample")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r} is not valid; need a positive integer")
    device = torch.device(device) if device is not None else (_model_device(model) or torch.device("cpu"))

    out, calls = [], []
    chunk = n if batch_size is None else int(batch_size)
    with torch.no_grad():
        for lo in range(0, n, chunk):
            noise = SeededNoise(seeds[lo : lo + chunk], tuple(shape[1:]), device=device, dtype=dtype)
            x = noise()  # drawn even when init_noise is given, so later draws line up with the seed
            if init_noise is not None:
                x = init_noise[lo : lo + chunk].to(device=device, dtype=dtype)
            start = denoiser.nfe
            out.append(fn(denoiser, x, grid, noise=noise, callback=callback, **sampler_opts))
            calls.append(denoiser.nfe - start)
    samples = torch.cat(out)
    if return_info:
        return samples, {"nfe": calls[0], "grid": [float(t) for t in grid]}
    return samples



def _zero_network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


def dry_run(schedule: NoiseSchedule, *, sampler: str, steps: int | None = None, timesteps=None,
            spacing: str = "trailing", prediction: str = "eps", data_range=(-1.0, 1.0), **options) -> int:
    """Run ``sampler`` through its whole grid on one scalar sample with a network that outputs
    zeros: every check of options, grid and schedule that ``sample`` and the sampler make, at no
    network cost, so that a command can refuse a bad setup before it spends any sampling.
    Returns the NFE per sample the setup would cost."""
    _, info = sample(_zero_network, schedule, sampler=sampler, steps=steps, timesteps=timesteps, spacing=spacing,
                     prediction=prediction, shape=(1, 1), data_range=data_range, device="cpu",
                     return_info=True, **options)
    return info["nfe"]
