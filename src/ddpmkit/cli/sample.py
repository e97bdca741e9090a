"""``ddpmkit sample``: draw samples from a model with any registered sampler."""

from __future__ import annotations

import pathlib

import numpy as np
import torch

from .. import distributed
from .common import (FMT, add_sampling, check_writable, load_model_from_args, plan_from_args, positive_int, progress_bar)


def add_parser(sub) -> None:
    p = sub.add_parser("sample", formatter_class=FMT, help="draw samples from a trained model",
                       description="Draw samples from a trained model with any registered sampler; sample i uses "
                       "seed SEED + i and does not depend on the batch size.")
    add_sampling(p, batch_size=64)
    p.add_argument("-n", "--num", type=positive_int, default=None,
                   help="number of samples (default: 16, rounded up to whole rows of a class-conditional grid: 20 "
                   "for --class all of 10 classes; or as many as --init-noise holds)")
    p.add_argument("--init-noise", default=None, help=".npy file of x_T, shape (N, C, H, W)")
    p.add_argument("--out", required=True, help="grid.png (an image grid; a class-conditional model's has a row per "
                   "class), samples.npz (float32 in [-1, 1], seeds, and labels where there are classes) or a folder "
                   "(one PNG per sample, named by its seed)")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..images import output_kind, write_samples

    out = pathlib.Path(args.out)
    kind = output_kind(out)
    check_writable(out, out if kind == "dir" else out.parent)
    model = load_model_from_args(args)
    plan = plan_from_args(args, model)
    init = read_init_noise(args.init_noise, model.shape) if args.init_noise else None
    num = args.num or (len(init) if init is not None else default_num(plan))
    if init is not None and len(init) != num:
        raise ValueError(f"--num {num} disagrees with --init-noise, which holds {len(init)} samples")
    seeds = list(range(args.seed, args.seed + num))
    x = sample_shared(model, plan, seeds, args, init)
    if distributed.is_main():
        # a class-conditional grid: a row per class
        write_samples(x, seeds, out, kind, model.data_range, plan.labels(seeds))
        print(f"wrote {num} samples to {out} ({plan.describe()})")


def sample_shared(model, plan, seeds: list[int], args, init=None) -> torch.Tensor:
    """The samples of ``seeds``, on every process: under torchrun each process draws its batches
    (``distributed.shard_batches``) and they are gathered; in one process, all of them batch by batch."""
    mine = [b for b in distributed.shard_batches(seeds, args.batch_size) if b]
    bar = progress_bar(len(mine) * plan.steps, "step", f"{plan.sampler} {plan.steps} steps", args.quiet)

    def draw(b):
        return model.sample(plan, seeds=b, batch_size=args.batch_size, micro_batch=args.micro_batch,
                            init_noise=None if init is None else init[b[0] - seeds[0] : b[-1] - seeds[0] + 1],
                            device=args.device, callback=(lambda *a: bar.update(1)) if bar else None)

    x = distributed.sample_shared(draw, seeds, args.batch_size, torch.empty((0, *model.shape), device=args.device))
    if bar:
        bar.close()
    return x


def default_num(plan, least: int = 16) -> int:
    """At least ``least`` samples, as whole rows of a class grid (a multiple of the classes asked for)."""
    k = len(plan.classes) if plan.classes else 1
    return -(-least // k) * k


def read_init_noise(path: str, shape: tuple[int, ...]) -> torch.Tensor:
    """--init-noise: one .npy array of finite floats, shape (N, *shape)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"--init-noise {path} is not a readable .npy array: {e}") from None
    want = f"(N, {', '.join(map(str, shape))})"
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise ValueError(f"--init-noise {path} is an .npz archive; give one .npy array of shape {want}")
    if arr.ndim != 4 or tuple(arr.shape[1:]) != shape or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"--init-noise {path} holds {arr.dtype} {arr.shape}; expected float {want}")
    if not np.isfinite(arr).all():
        raise ValueError(f"--init-noise {path} holds {np.size(arr) - np.isfinite(arr).sum()} NaN or infinite values")
    return torch.from_numpy(arr.astype(np.float32))
