"""``sample()``: run a sampling plan on a network, seed by seed, batch by batch.

Sample i depends on seeds[i] alone: its noise comes from its own generator (``rng``), and on the
CPU a network (a ``torch.nn.Module``) runs on micro-batches of one fixed size (``MICRO_BATCH``, the last one padded with
copies of its last sample). A convolution's kernel, and with it the float rounding, is chosen by
the shape of the batch it is given: on a 2-core Xeon the shipped MNIST U-Net's output for one
sample differs by up to 2.6e-6 between batches of 1-5 and of 6 or more. With every call the same
shape, a sample's bits do not depend on the batch size, its position in the batch, or how the
seeds are split between processes (``benchmarks/micro_batch.py`` measures this and the cost).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .plan import Plan, make_plan
from .prediction import Denoiser
from .rng import SeededNoise, check_seeds
from .samplers import get_sampler
from .schedule import NoiseSchedule

# samples per network call on the CPU: sampling 64 MNIST digits at batch 64 takes 1% (1 thread) to 11%
# (2 threads) longer than whole-batch calls (benchmarks/micro_batch.py), and the default 16-sample
# `ddpmkit sample` needs no padding; 32 cost nothing at batch 128 but would double that default's work
MICRO_BATCH = 16


class MicroBatched:
    """``model(x, t, *labels)`` evaluated on micro-batches of exactly ``size`` samples, the last one
    padded with copies of the batch's last sample (finite, in range), whose outputs are dropped."""

    def __init__(self, model: Callable, size: int):
        self.model, self.size = model, size

    def __getattr__(self, name):  # null_label and the like: the wrapped model's
        return getattr(self.model, name)

    def __call__(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        n, m = x.shape[0], self.size
        pad = -n % m
        inputs = [torch.cat([a, a[-1:].expand(pad, *a.shape[1:])]) if pad else a for a in (x, *args)]
        out = [self.model(*(a[lo : lo + m] for a in inputs)) for lo in range(0, n + pad, m)]
        return torch.cat(out)[:n]


def micro_batch_for(device: torch.device, micro_batch, model=None):
    """The micro-batch size: ``"auto"`` is ``MICRO_BATCH`` for a network (a ``torch.nn.Module``) on
    the CPU, and none (the whole batch per call) for any other callable, such as an analytic
    denoiser, or on other devices; None is none; else a positive integer."""
    if isinstance(micro_batch, str) and micro_batch == "auto":
        network = model is None or isinstance(model, torch.nn.Module)
        return MICRO_BATCH if device.type == "cpu" and network else None
    if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(micro_batch, int)
                                    or micro_batch < 1):
        raise ValueError(f"micro_batch={micro_batch!r} is not valid; need a positive integer, None (the whole "
                         "batch per network call) or 'auto'")
    return micro_batch


def _model_device(model) -> torch.device | None:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return None


def sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    plan: Plan | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    seeds: Iterable[int] | None = None,
    init_noise: torch.Tensor | None = None,
    batch_size: int | None = None,
    micro_batch: int | str | None = "auto",
    prediction: str = "eps",
    data_range: tuple[float, float] = (-1.0, 1.0),
    device=None,
    dtype: torch.dtype = torch.float32,
    callback: Callable | None = None,
    return_info: bool = False,
    **options,
):
    """Draw samples from a diffusion model.

    model: ``model(x_t, t)`` returns the network output for a batch; t is a 1-D tensor of timesteps.
        For a plan with class labels (``plan.classes``) it is called ``model(x_t, t, labels)``.
    plan: a ``Plan`` (``ddpmkit.make_plan``); or, instead, its options as keywords: ``sampler``
        (a name of ``ddpmkit.samplers.SAMPLERS``, default ddim), ``steps`` / ``nfe`` / ``timesteps``,
        ``spacing``, the sampler's options (``eta``, ``variance``, ...) and the denoiser's (``clip``,
        ``threshold``, ``threshold_max``, ``guidance``, ``guidance_interval``, ``guidance_rescale``,
        ``precision``: fp32, or bf16 / fp16 autocast of the network alone).
        Without steps: ``plan.default_steps``.
    shape: (N, C, H, W) or any (N, ...); seeds: one integer per sample (default 0..N-1). Sample i
        depends only on seeds[i] — not on batch size, position or N.
    init_noise: x_T to start from instead of drawing it (shape (N, ...)); later noise still comes
        from the seeds, so passing the x_T that seed s would draw reproduces seed s's sample.
    batch_size: samples the sampler advances together (default: all at once).
    micro_batch: samples per network call: ``"auto"`` (the default) is ``MICRO_BATCH`` for a
        ``torch.nn.Module`` on the CPU, where it makes sample i bitwise the same for any batch size,
        and the whole batch elsewhere (another callable, another device);
        None runs the whole batch in one call; an integer fixes the size on any device.
    Returns a tensor of shape (N, ...) in ``dtype`` on the model's device; with ``return_info`` a
    pair (samples, info) where info holds ``nfe`` (model calls per sample, the solver's cost),
    ``evaluations`` (network evaluations per sample: two for each call that classifier-free
    guidance doubles), ``grid`` and ``plan``.
    """
    if plan is None:
        plan = make_plan(schedule, prediction=prediction, **options)
    elif options:
        raise ValueError(f"give a plan or sampling options, not both (got {', '.join(sorted(options))})")

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

    micro = micro_batch_for(device, micro_batch, model)
    net = model if micro is None else MicroBatched(model, micro)

    fn = get_sampler(plan.sampler)
    denoiser = Denoiser(net, schedule, prediction, data_range=data_range, **plan.denoising)
    if plan.input_timesteps is not None:
        denoiser.inputs = dict(zip(plan.grid, plan.input_timesteps))
    out, calls, evaluations = [], [], []
    chunk = n if batch_size is None else int(batch_size)
    # inference mode: no autograd bookkeeping (version counters, views) on any tensor of the loop; the
    # samples are concatenated outside it, so what is returned is an ordinary tensor (a callback's
    # tensors are inference tensors: it may read and copy them, not change them in place later)
    with torch.inference_mode():
        for lo in range(0, n, chunk):
            noise = SeededNoise(seeds[lo : lo + chunk], tuple(shape[1:]), device=device, dtype=dtype)
            x = noise()  # drawn even when init_noise is given, so later draws line up with the seed
            if init_noise is not None:
                x = init_noise[lo : lo + chunk].to(device=device, dtype=dtype)
            start, evals = denoiser.nfe, denoiser.evaluations
            labels = plan.labels(seeds[lo : lo + chunk])
            denoiser.labels = None if labels is None else torch.tensor(labels, dtype=torch.int64, device=device)
            out.append(fn(denoiser, x, plan.grid, noise=noise, callback=callback, **plan.options,
                          **plan.model_options))
            calls.append(denoiser.nfe - start)
            evaluations.append(denoiser.evaluations - evals)
    samples = torch.cat(out)
    if return_info:
        return samples, {"nfe": calls[0], "evaluations": evaluations[0], "grid": list(plan.grid), "plan": plan}
    return samples
