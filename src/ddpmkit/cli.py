"""The ``ddpmkit`` command: train, sample, samplers, demo."""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shlex
import sys

import torch

from . import __version__
from .machine import describe_machine, keep_freed_memory
from .samplers import SAMPLERS, describe, sampler_options, steps_for_nfe
from .samplers import parse_bool as parse_bool_text

FMT = argparse.ArgumentDefaultsHelpFormatter


class Parser(argparse.ArgumentParser):
    """argparse with our error style: one line naming the bad value, then exit status 2 (argparse
    itself prints the whole usage block above the message)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def parse_bool(text: str) -> bool:
    try:
        return parse_bool_text(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def device_arg(text: str) -> str:
    """A torch device that this machine has: cpu, or cuda[:N] / mps where torch can reach them."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    have = ["cpu"]
    if torch.cuda.is_available():
        have += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        have += ["mps", "mps:0"]
    if dev is None or (dev.type != "cpu" and str(dev) not in have):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device this machine has; valid here: {', '.join(have)}")
    return text


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0")
    return value


# -- ddpmkit samplers ------------------------------------------------------------------------------
def _cmd_samplers(args) -> None:
    for name in SAMPLERS:
        opts = ", ".join(f"{k}={v!r}" for k, v in sampler_options(name).items()) or "no options"
        print(f"{name:<16} {opts}\n{'':<17}{describe(name)}")


# -- ddpmkit demo ----------------------------------------------------------------------------------
def _cmd_demo(args) -> None:
    from .files import write_text

    out = pathlib.Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out} must name a .png file")
    _check_writable(out, out.parent)
    if args.exact:
        from .exact_demo import markdown_table, run_demo

        what = f"the exact denoiser of the 8x8 digits, {args.num} samples per sampler"
        num = args.num
    else:
        from .demo import markdown_table, run_demo

        if args.num > 2000:
            raise ValueError(f"--num {args.num} is more than the 2000 real images the data floor holds; give at most 2000")
        num = args.num
        what = f"the shipped MNIST models, {num} samples per sampler (same seeds in every row)"
    if not args.quiet:
        print(f"Sampling {what}:")
    out.parent.mkdir(parents=True, exist_ok=True)  # the samplers' checks are behind us; what follows writes
    results = run_demo(str(out), num=num, quiet=args.quiet)
    table = markdown_table(results, num)
    flags = " --exact" if args.exact else ""
    text = f"Made by `ddpmkit demo{flags} --out {out} --num {num}` on {describe_machine()}.\n\n{table}\n"
    write_text(out.with_suffix(".md"), text)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


# -- ddpmkit train ---------------------------------------------------------------------------------
TRAIN_HELP = {
    "dataset": "digits, mnist, fashion-mnist, cifar10 or folder:PATH",
    "data_dir": "folder with the dataset's files (default: data/DATASET)",
    "download": "download the dataset's official files into --data-dir if they are missing",
    "image_size": "resize every image to this square side (shorter side, then centre crop); needed for "
                  "folders of mixed sizes (default: the native size)",
    "net": "U-Net preset: auto (digits for 8x8 data, small otherwise), tiny, small, digits",
    "dropout": "dropout in the residual blocks",
    "schedule": "noise schedule: linear, scaled_linear, cosine, sigmoid",
    "T": "number of diffusion timesteps",
    "prediction": "what the network predicts: eps, x0 or v",
    "steps": "total optimisation steps (with --resume: the new total)",
    "batch_size": "images per step",
    "lr": "AdamW learning rate after warm-up",
    "warmup": "linear learning-rate warm-up steps",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "clip the gradient norm to this",
    "ema_decay": "EMA decay of the weights used for sampling",
    "min_snr_gamma": "min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5; off when not given",
    "init_from": "start from this model's EMA weights (same network; a warm start with a fresh optimiser)",
    "precision": "fp32, or bf16 (autocast of the network; for GPUs from Ampere on)",
    "seed": "seed of the data order, timesteps, noise, dropout and initial weights",
    "checkpoint_every": "write the checkpoint every this many steps",
    "sample_every": "write a sample grid every this many steps",
    "log_every": "append a line to log.jsonl every this many steps",
}


DISTILL_HELP = {
    "teacher": "the DDPM to distil: a shipped model name (mnist) or a model file / run folder",
    "method": "cd (consistency distillation, Algorithm 2) or ct (consistency training, Algorithm 3 with iCT)",
    "data_dir": TRAIN_HELP["data_dir"],
    "download": TRAIN_HELP["download"],
    "steps": TRAIN_HELP["steps"],
    "batch_size": TRAIN_HELP["batch_size"],
    "lr": TRAIN_HELP["lr"],
    "warmup": TRAIN_HELP["warmup"],
    "weight_decay": TRAIN_HELP["weight_decay"],
    "grad_clip": TRAIN_HELP["grad_clip"],
    "ema_decay": TRAIN_HELP["ema_decay"],
    "target_decay": "EMA rate mu of the target network theta- (default: 0.95 for cd, 0 for ct)",
    "num_scales": "N, the points of the Karras grid for cd",
    "ct_s0": "iCT curriculum: initial number of intervals for ct",
    "ct_s1": "iCT curriculum: final number of intervals for ct",
    "ct_total": "iCT curriculum: the steps K it spans (default: --steps of the run's start)",
    "solver": "the teacher's ODE step for cd: heun (2 NFE) or ddim (Euler, 1 NFE)",
    "loss": "huber (pseudo-Huber, iCT) or l2",
    "sigma_data": "sigma_data of the boundary parameterisation c_skip",
    "init": "ct only: start from the teacher's weights (teacher) or from fresh ones (scratch)",
    "precision": "fp32, or bf16 (autocast of the student, target and teacher)",
    "x0_head": "give the student a direct x0 output, blended in at high noise (better one-step samples from an "
               "eps teacher)",
    "init_from": "start the student from this consistency model's EMA weights (e.g. mnist-cm), to continue a "
                 "distillation whose checkpoint is gone",
    "seed": "seed of the data order, noise levels, noise and dropout",
    "checkpoint_every": TRAIN_HELP["checkpoint_every"],
    "sample_every": TRAIN_HELP["sample_every"],
    "log_every": TRAIN_HELP["log_every"],
}


def _add_train_options(p: argparse.ArgumentParser, config=None, helps=None) -> None:
    """One flag per field of the run's config dataclass (TrainConfig or DistillConfig)."""
    from .train import TrainConfig

    config, helps = config or TrainConfig, helps or TRAIN_HELP
    for f in dataclasses.fields(config):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        helptext = helps[f.name] + ("" if default is None else f" (default: {default})")
        # SUPPRESS: only options the user gives reach the trainer, so --resume can tell them apart
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=helptext)
        else:
            kind = {int: positive_int, float: float}.get(type(default), str)
            if f.name in ("warmup", "seed"):
                kind = nonneg_int
            elif f.name in ("min_snr_gamma", "target_decay"):
                kind = float
            elif f.name in ("image_size", "ct_total"):
                kind = positive_int
            p.add_argument(flag, dest=f.name, type=kind, default=argparse.SUPPRESS, help=helptext)


def _cmd_train(args) -> None:
    from .train import Trainer

    _run_trainer(Trainer, args)


def _cmd_distill(args) -> None:
    from .distill import Distiller

    _run_trainer(Distiller, args)


def _run_trainer(kind, args) -> None:
    _check_folder("--out", args.out)
    names = {f.name for f in dataclasses.fields(kind.Config)}
    options = {k: v for k, v in vars(args).items() if k in names}
    command = "ddpmkit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None
    trainer = kind(args.out, options, resume=args.resume, device=args.device, quiet=args.quiet, command=command)
    if not args.quiet:
        from .nets import count_parameters

        what = "resuming at step %d" % trainer.step if args.resume else "new run"
        print(f"{trainer.out}: {what}; {trainer.data.name} {len(trainer.data)} images {trainer.data.shape}, "
              f"U-Net {count_parameters(trainer.net) / 1e6:.2f}M parameters, {trainer.cfg.steps} steps")
    model = trainer.run()
    print(f"wrote {model} (step {trainer.step})")


# -- ddpmkit sample --------------------------------------------------------------------------------
def _all_sampler_options() -> dict[str, dict[str, object]]:
    """option name -> {sampler: default} over every registered sampler."""
    out: dict[str, dict[str, object]] = {}
    for name in SAMPLERS:
        for opt, default in sampler_options(name).items():
            out.setdefault(opt, {})[name] = default
    return out


SPACING_HELP = ("step grid: leading, trailing, linspace, karras, logsnr, or tuned (the grid `ddpmkit tune` stored in "
                "the model for this sampler and step count); default: tuned where the model has one, else trailing")


def _add_sampler_args(p: argparse.ArgumentParser, batch_size: int = 64) -> None:
    """The options that choose a model and how to sample it (shared by sample and eval)."""
    p.add_argument("--model", default="mnist",
                   help="a shipped model (mnist, mnist-cm), a checkpoint file, or a training run's folder")
    p.add_argument("--sampler", default="ddpm", help=f"one of: {', '.join(SAMPLERS)}")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="sampling steps (default: all T for ddpm, 1 for cm, 50 for the others)")
    p.add_argument("--timesteps", type=timestep_list, default=None,
                   help="an explicit descending grid instead of --steps, e.g. 999,500 (fractional allowed)")
    p.add_argument("--nfe", type=positive_int, default=None,
                   help="a budget of network evaluations instead of --steps: the most steps that fit it")
    p.add_argument("--spacing", default=None, help=SPACING_HELP)
    for opt, per_sampler in _all_sampler_options().items():
        kinds = {type(v) for v in per_sampler.values() if v is not None}
        kind = {frozenset({bool}): parse_bool, frozenset({int}): int, frozenset({float}): float,
                frozenset({int, float}): float}.get(frozenset(kinds), str)
        defaults = ", ".join(f"{s}: {v!r}" for s, v in per_sampler.items())
        p.add_argument("--" + opt.replace("_", "-"), dest=opt, type=kind, default=None,
                       help=f"sampler option ({defaults})")
    p.add_argument("--clip", action="store_true", help="clamp x0_hat to the data range at every step")
    p.add_argument("--threshold", type=float, default=None, help="dynamic thresholding quantile (Imagen), e.g. 0.995")
    p.add_argument("--seed", type=nonneg_int, default=0, help="sample i uses seed SEED + i")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help="samples per network call")
    p.add_argument("--device", type=device_arg, default="cpu", help="torch device: cpu, cuda, cuda:N or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def positive_int_list(option: str, text: str) -> list[int]:
    """A comma-separated list of integers >= 1 given to ``option`` (bench --nfe, tune --steps)."""
    try:
        values = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise ValueError(f"{option} {text!r} must list integers >= 1")
    return values


def timestep_list(text: str) -> list[float]:
    items = text.split(",")
    try:
        values = [float(v) for v in items]
    except ValueError:
        values = []
    if not values or len(values) != len(items):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of timesteps")
    return values


def _sampling_plan(args, model) -> tuple[dict, int]:
    """(sampler options given on the command line, steps) after checking them against the sampler;
    with --timesteps, steps is the grid's length and ``args.grid`` holds the checked grid."""
    options = {k: getattr(args, k) for k in _all_sampler_options() if getattr(args, k) is not None}
    valid = sampler_options(args.sampler)  # an unknown sampler is an error that lists the valid ones
    for k in options:
        if k not in valid:
            raise ValueError(f"--{k.replace('_', '-')} does not apply to sampler {args.sampler!r}; "
                             f"its options: {', '.join('--' + o for o in valid) or 'none'}")
    if sum(v is not None for v in (args.steps, args.nfe, args.timesteps)) > 1:
        raise ValueError("give only one of --steps, --nfe and --timesteps")
    if args.timesteps is not None and args.spacing is not None:
        raise ValueError(f"--spacing {args.spacing} and --timesteps both place the steps; give one of them")
    args.grid = None
    if args.timesteps is not None:
        from .schedule import check_grid

        args.grid = [float(t) for t in check_grid(args.timesteps, model.schedule.T)]
        args.spacing = "explicit"
        return options, len(args.grid)
    if args.nfe is not None:
        steps = steps_for_nfe(args.sampler, args.nfe, model.schedule.T, **options)
    elif args.steps is not None:
        steps = args.steps
    else:
        steps = {"ddpm": model.schedule.T, "cm": 1}.get(args.sampler, 50)
    args.spacing, args.grid = model.plan_grid(args.sampler, steps, args.spacing)
    return options, steps


def check_setup(model, sampler: str, steps: int, spacing: str, grid, options: dict) -> None:
    """Every check the sampler makes of its options and grid, made now on a stand-in network (one
    scalar sample, no network cost), so that a bad value stops the command before sampling starts."""
    from .sampling import dry_run

    dry_run(model.schedule, sampler=sampler, steps=None if grid else steps, timesteps=grid, spacing=spacing,
            prediction=model.prediction, data_range=model.data_range, eps_moment=model.eps_moment, **options)


def _denoising(args) -> dict:
    """--clip and --threshold, where given, as keyword arguments of ``sample`` (they change the
    samples, so eval keeps them with the sampler options: in its cache key and its report)."""
    given = {}
    if args.clip:
        given["clip"] = True
    if args.threshold is not None:
        given["threshold"] = args.threshold
    return given


def _nearest_existing(path: pathlib.Path) -> pathlib.Path:
    """``path`` itself or its nearest ancestor that exists: where a missing folder would be made."""
    return next((q for q in (path, *path.parents) if q.exists()), pathlib.Path("."))


def _check_folder(option: str, path: str) -> None:
    """A folder we will create or write into must not be a file, nor lie under one."""
    if str(path) == "":
        raise ValueError(f"{option} is empty; give a folder")
    q = _nearest_existing(pathlib.Path(path))
    if not q.is_dir():
        raise ValueError(f"{option} {path} cannot be a folder: {q} is a file")


def _check_measure_args(args) -> None:
    """eval, bench and tune: FID needs two samples at least, and the cache must be a folder."""
    if args.num < 2:
        raise ValueError(f"--num {args.num} is too few: FID needs a covariance, so give at least 2 samples")
    _check_folder("--cache", args.cache)


def _add_measure_args(p: argparse.ArgumentParser) -> None:
    """Where eval and bench take their feature network and keep their sample chunks."""
    p.add_argument("--feature-net", default=None, help="shipped feature network (default: the model's dataset)")
    p.add_argument("--cache", default=".ddpmkit-cache", help="folder for the cached sample chunks")


def _add_sample_options(p: argparse.ArgumentParser) -> None:
    _add_sampler_args(p)
    p.add_argument("--num", type=positive_int, default=None, help="number of samples (default: 16, or as many as --init-noise holds)")
    p.add_argument("--init-noise", default=None, help=".npy file of x_T, shape (N, C, H, W)")
    p.add_argument("--out", required=True, help="grid.png (an image grid), samples.npz (float32 in [-1, 1] and seeds) "
                   "or a folder (one PNG per sample, named by its seed)")


def _output_kind(out: pathlib.Path) -> str:
    """Decide what --out is and check it can be written, before any sampling is spent."""
    if str(out) in ("", "."):
        raise ValueError(f"--out {str(out)!r} names no new file or folder; give grid.png, samples.npz or a folder name")
    suffix = out.suffix.lower()
    kind = {".png": "grid", ".npz": "npz"}.get(suffix, "dir")
    if kind == "dir" and suffix:
        raise ValueError(f"--out {out}: use .png for a grid, .npz for arrays, or a folder name without an extension")
    if kind != "dir" and out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name")
    if kind == "dir" and out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a .png, a .npz or a folder")
    _check_writable(out, out if kind == "dir" else out.parent)
    return kind


def _check_writable(out: pathlib.Path, target_dir: pathlib.Path) -> None:
    """The folder that --out writes into exists and is writable, or can be made (with any missing
    parents, once there is something to write) in the nearest existing folder, which is writable."""
    probe = _nearest_existing(target_dir)
    if not probe.is_dir():
        raise ValueError(f"--out {out} cannot be written: {probe} is a file")
    if not os.access(probe, os.W_OK):
        raise ValueError(f"--out {out} cannot be written: {probe} is not a writable folder")


def _model_out(args) -> pathlib.Path | None:
    """tune and moments: the model file to write, None for --model's own file. A shipped model is
    never rewritten in place (the installed file stays as its card describes): it needs --out."""
    from .models import is_shipped_name

    if args.out is None:
        if is_shipped_name(args.model):
            raise ValueError(f"--model {args.model} is a shipped model, which is not rewritten; give --out FILE "
                             f"for a copy that holds the result (e.g. --out {args.model}-mine.safetensors)")
        return None
    out = pathlib.Path(args.out)
    if out.suffix.lower() != ".safetensors" or out.is_dir():
        raise ValueError(f"--out {args.out}: give a model file name ending in .safetensors")
    _check_writable(out, out.parent)
    return out


def _read_init_noise(path: str, shape: tuple[int, ...]) -> torch.Tensor:
    import numpy as np

    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"--init-noise {path} is not a readable .npy array: {e}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise ValueError(f"--init-noise {path} is an .npz archive; give one .npy array of shape (N, {', '.join(map(str, shape))})")
    if arr.ndim != 4 or tuple(arr.shape[1:]) != shape or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"--init-noise {path} holds {arr.dtype} {arr.shape}; expected float (N, {', '.join(map(str, shape))})")
    if not np.isfinite(arr).all():
        raise ValueError(f"--init-noise {path} holds {np.size(arr) - np.isfinite(arr).sum()} NaN or infinite values")
    return torch.from_numpy(arr.astype(np.float32))


def _cmd_sample(args) -> None:
    from .models import load_model
    from .schedule import format_grid

    out = pathlib.Path(args.out)
    kind = _output_kind(out)
    model = load_model(args.model, device=args.device)
    options, steps = _sampling_plan(args, model)
    check_setup(model, args.sampler, steps, args.spacing, args.grid, options | _denoising(args))
    init = _read_init_noise(args.init_noise, model.shape) if args.init_noise else None
    num = args.num or (len(init) if init is not None else 16)
    if init is not None and len(init) != num:
        raise ValueError(f"--num {num} disagrees with --init-noise, which holds {len(init)} samples")
    seeds = list(range(args.seed, args.seed + num))
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        batches = -(-num // args.batch_size)
        bar = tqdm(total=batches * steps, unit="step", desc=f"{args.sampler} {steps} steps", dynamic_ncols=True)
    from .sampling import sample

    x, info = sample(model.net, model.schedule, sampler=args.sampler, steps=None if args.grid else steps,
               timesteps=args.grid, spacing=args.spacing,
               prediction=model.prediction, shape=(num, *model.shape), seeds=seeds, init_noise=init,
               batch_size=args.batch_size, data_range=model.data_range, device=args.device,
               callback=(lambda *a: bar.update(1)) if bar else None,
               eps_moment=model.eps_moment, return_info=True, **_denoising(args), **options)
    if bar:
        bar.close()
    _write_samples(x, seeds, out, kind, model.data_range)
    grid = f" at timesteps {format_grid(args.grid)}" if args.grid else ""
    print(f"wrote {num} samples to {out} ({args.sampler}, {steps} steps{grid}, {info['nfe']} NFE per sample)")


def _write_samples(x: torch.Tensor, seeds, out: pathlib.Path, kind: str, data_range) -> None:
    import math

    import numpy as np
    from PIL import Image

    from .files import atomic_path
    from .images import grid_scale, labelled_grid, save_image, to_uint8

    (out if kind == "dir" else out.parent).mkdir(parents=True, exist_ok=True)
    if kind == "npz":
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, samples=x.float().clamp(*data_range).cpu().numpy(), seeds=np.array(seeds, dtype=np.int64))
    elif kind == "grid":
        side = math.ceil(math.sqrt(len(x)))
        rows = [x[i : i + side] for i in range(0, len(x), side)]
        if len(rows[-1]) < side:  # pad the last row with blank (lowest value) tiles
            pad = torch.full((side - len(rows[-1]), *x.shape[1:]), data_range[0])
            rows[-1] = torch.cat([rows[-1], pad])
        scale = grid_scale(x.shape[2])
        save_image(labelled_grid(rows, [""] * len(rows), scale=scale, data_range=data_range), out)
    else:
        for img, seed in zip(to_uint8(x, data_range), seeds):
            pic = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            with atomic_path(out / f"{seed:06d}.png") as tmp:
                pic.save(tmp, format="PNG")


# -- ddpmkit eval ----------------------------------------------------------------------------------
def _cmd_eval(args) -> None:
    import json

    from .evaluate import floor_for, generate, reference_for, score
    from .files import write_text
    from .models import load_model

    out = pathlib.Path(args.out)
    if out.suffix.lower() != ".json" or out.is_dir():
        raise ValueError(f"--out {out} must name a .json file")
    _check_writable(out, out.parent)  # before any sampling is spent
    _check_measure_args(args)
    if args.inception is None and (args.inception_data is not None or args.inception_real is not None):
        raise ValueError("--inception-data and --inception-real apply only with --inception WEIGHTS")
    model = load_model(args.model, device=args.device)
    options, steps = _sampling_plan(args, model)
    options |= _denoising(args)
    check_setup(model, args.sampler, steps, args.spacing, args.grid, options)
    ref = reference_for(model, args.feature_net)
    inception = _inception_setup(args, model) if args.inception else None  # checked before sampling
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=args.num, unit="img", desc=f"{args.sampler} {steps} steps", dynamic_ncols=True)
    levels, info = generate(model, sampler=args.sampler, steps=steps, spacing=args.spacing, options=options,
                            timesteps=args.grid,
                            num=args.num, seed=args.seed, levels=ref.levels, cache_dir=args.cache,
                            batch_size=args.batch_size, device=args.device,
                            progress=(lambda n: bar.update(n)) if bar else None)
    if bar:
        bar.close()
    result = {"model": str(model.path), "step": model.config.get("step"), "sampler": args.sampler, "steps": steps,
              "spacing": args.spacing, "timesteps": args.grid, "options": options, "nfe": info["nfe"],
              "num": args.num, "seed": args.seed,
              "seconds_per_image": info["seconds"] / args.num, **score(levels, ref),
              "floor": floor_for(ref, args.num), "reference": ref.info["reference"], "cached_samples": info["cached"]}
    if inception is not None:
        result["inception"] = _inception_scores(inception, levels, ref.levels, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(result, indent=1) + "\n")
    fl = result["floor"]
    print("| sampler | NFE | samples | FID | IS | KID | precision | recall | s/image |\n|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.sampler} | {info['nfe']} | {args.num} | {result['fid']:.3f} ± {result['fid_se']:.2f} | "
          f"{result['is']:.2f} | {result['kid']:.4f} | {result['precision']:.3f} | {result['recall']:.3f} | "
          f"{result['seconds_per_image']:.4f} |")
    print(f"| data floor ({ref.info['reference']}) | | {fl['n']} | {fl['fid']:.3f} | {fl['is']:.2f} | "
          f"{fl['kid']:.4f} | {fl['precision']:.3f} | {fl['recall']:.3f} | |")
    freq = " ".join(f"{100 * f:.1f}" for f in result["class_frequencies"])
    print("FID ± its bootstrap standard error over the samples")
    print(f"class frequencies (%, by the feature network): {freq}")
    if inception is not None:
        inc = result["inception"]
        print(f"Inception FID {inc['fid']:.3f}, IS {inc['is']:.2f} against {inc['reference']}")
    print(f"wrote {out}")


INCEPTION_REAL = 10000  # real images the Inception FID compares against, at most


def _inception_setup(args, model) -> tuple:
    """The FID Inception network and the real images it compares against: the model's data set,
    its test split where it has one, at most --inception-real images."""
    from .data import load_dataset
    from .inception import load_fid_inception

    try:
        net = load_fid_inception(args.inception).to(args.device)
    except FileNotFoundError as e:
        raise ValueError(f"--inception: {e}") from None
    dataset = model.config["data"]["dataset"]
    split = "train" if dataset == "digits" or dataset.startswith("folder:") else "test"
    real = load_dataset(dataset, args.inception_data, split=split)
    n = min(len(real), args.inception_real or INCEPTION_REAL)
    return net, real.to_float()[:n], f"{dataset} {split}, {n} images"


def _inception_scores(inception, levels, num_levels: int, args) -> dict:
    """The usual Inception FID and IS of the quantised samples (``ddpmkit.inception``)."""
    from .images import from_levels
    from .inception import inception_features
    from .metrics import feature_statistics, frechet_distance, inception_score

    net, real, reference = inception
    fake = from_levels(levels, num_levels)
    f_real, _ = inception_features(net, real)
    f_fake, p_fake = inception_features(net, fake)
    is_mean, is_std = inception_score(p_fake, splits=min(10, len(fake)))
    return {"fid": frechet_distance(*feature_statistics(f_fake), *feature_statistics(f_real)), "is": is_mean,
            "is_std": is_std, "weights": str(args.inception), "reference": reference}


# -- ddpmkit bench ---------------------------------------------------------------------------------
def split_specs(text: str) -> list[str]:
    """'ddim:eta=0.5,unipc:order=3,variant=bh1,ddpm' -> ['ddim:eta=0.5', 'unipc:order=3,variant=bh1', 'ddpm']:
    a KEY=VALUE item continues the sampler spec before it."""
    specs: list[str] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        if "=" in item and ":" not in item and specs:
            specs[-1] += "," + item
        else:
            specs.append(item)
    return specs


def _cmd_bench(args) -> None:
    from . import bench
    from .evaluate import floor_for, reference_for
    from .models import load_model

    out = pathlib.Path(args.out)
    _check_folder("--out", args.out)
    _check_writable(out, out)
    _check_measure_args(args)
    preset = bench.PRESETS.get(args.preset) if args.preset else None
    if args.preset and preset is None:
        raise ValueError(f"unknown preset {args.preset!r}; valid: {', '.join(bench.PRESETS)}")
    specs = preset["samplers"] if preset else split_specs(args.samplers)
    nfes = preset["nfe"] if preset else positive_int_list("--nfe", args.nfe)
    if not specs:
        raise ValueError(f"--samplers {args.samplers!r} lists no sampler")
    model = load_model(args.model, device=args.device)
    for row in bench.plan(model, specs, nfes):  # every row is checked before any sampling is spent
        try:
            check_setup(model, row.name, row.steps, row.spacing, row.grid, row.options)
        except ValueError as e:
            raise ValueError(f"sampler spec {row.label!r} at {row.budget} NFE: {e}") from None
    ref = reference_for(model, args.feature_net)
    log = (lambda *a: None) if args.quiet else print
    rows = bench.run(model, ref, specs, nfes, num=args.num, seed=args.seed, cache_dir=args.cache,
                     batch_size=args.batch_size, device=args.device, log=log)
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine(args.device)
    command = "ddpmkit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    header = (f"# Sampler benchmark\n\n`{command}` — model {model.path} (step {model.config.get('step')}), "
              f"{args.num} samples per row from seeds {args.seed}.., metrics with the shipped "
              f"'{ref.info['card'].get('data', '')}' feature network against {ref.info['reference']}; {machine}. "
              f"FID ± its bootstrap standard error over the samples (the reference held fixed); FID − best: "
              f"the row's FID minus the lowest, ± the paired bootstrap error (every row samples the same seeds).")
    floor = floor_for(ref, args.num)
    bench.write_tables(rows, floor, out, header)
    if rows:
        bench.plot(rows, floor, out)
        bench.sample_grids(model, rows, out, args.seed)
    bench.trajectories(model, out, args.seed)
    print(bench.markdown(rows, floor, "").strip())
    print(f"wrote {out}/bench.md, bench.csv, bench.json, fid.png, samples.png, trajectories.png")


# -- ddpmkit tune ----------------------------------------------------------------------------------
def _cmd_tune(args) -> None:
    from .evaluate import generate, reference_for, score
    from .models import load_model, store_tuned_grids
    from .schedule import check_grid, format_grid
    from .tune import search_grid

    sampler_options(args.sampler)  # an unknown sampler is an error that lists the valid ones
    _check_measure_args(args)
    out = _model_out(args)
    steps_list = sorted(set(positive_int_list("--steps", args.steps)))
    model = load_model(args.model, device=args.device)
    T = model.schedule.T
    cands = args.candidates if args.candidates is not None else model.schedule.grid(min(10, T), "trailing")
    try:
        cands = [float(t) for t in check_grid(sorted(set(cands), reverse=True), T)]
    except ValueError as e:
        raise ValueError(f"--candidates: {e}") from None
    if max(steps_list) > len(cands):
        raise ValueError(f"--steps {max(steps_list)} needs at least as many --candidates; got {len(cands)}")
    ref = reference_for(model, args.feature_net)
    log = (lambda *a: None) if args.quiet else print

    def fid(grid):
        levels, _ = generate(model, sampler=args.sampler, steps=len(grid), spacing="explicit", options={},
                             timesteps=list(grid), num=args.num, seed=args.seed, levels=ref.levels,
                             cache_dir=args.cache, batch_size=args.batch_size, device=args.device)
        return score(levels, ref, precision_recall=False, standard_error=False)["fid"]

    found = {}
    for k in steps_list:
        log(f"{args.sampler}, {k} steps: FID on {args.num} samples (seeds {args.seed}..) of each grid tried")
        grid, best, seen = search_grid(fid, cands, k, log=log)
        found[k] = {"timesteps": grid, "fid": best, "num": args.num, "seed": args.seed,
                    "feature_net": ref.info["card"].get("data", ""), "candidates": cands, "grids_measured": len(seen)}
        print(f"{args.sampler}, {k} steps: timesteps {format_grid(grid)} "
              f"(FID {best:.2f} on {args.num} samples; {len(seen)} grids measured)")
    file = store_tuned_grids(model.path, args.sampler, found, out)
    print(f"stored the tuned grids in {file}; sample, eval, bench and demo use them unless --spacing or "
          f"--timesteps says otherwise")


# -- ddpmkit moments -------------------------------------------------------------------------------
def _cmd_moments(args) -> None:
    from .analytic import estimate_eps_moment
    from .data import load_dataset
    from .models import load_model, store_eps_moment

    out = _model_out(args)
    model = load_model(args.model, device=args.device)
    if args.timesteps > model.schedule.T:
        raise ValueError(f"--timesteps {args.timesteps} exceeds the model's {model.schedule.T} timesteps; "
                         f"give at most {model.schedule.T}")
    data = load_dataset(args.dataset, args.data_dir)
    if tuple(data.shape) != tuple(model.shape):
        raise ValueError(f"--dataset {args.dataset} has images of shape {data.shape}; the model makes {model.shape}")
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[: args.num]
    x0 = data.batch(idx).to(args.device)
    moment = estimate_eps_moment(model.net, model.schedule, x0, prediction=model.prediction,
                                 num_timesteps=args.timesteps, batch_size=args.batch_size,
                                 seed=args.seed)
    info = {"dataset": data.name, "images": len(x0), "timesteps": args.timesteps, "seed": args.seed}
    file = store_eps_moment(model.path, moment, info, out)
    print(f"stored Analytic-DPM's eps moments ({len(x0)} images x {args.timesteps} timesteps) in {file}; "
          f"Gamma ranges {moment.min():.4f}..{moment.max():.4f}")


# -- the parser ------------------------------------------------------------------------------------
def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--device", type=device_arg, default="cpu", help="torch device: cpu, cuda, cuda:N or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


OUT_MODEL_HELP = ("model file (.safetensors) to write: a copy of --model with the result added (default: rewrite "
                  "--model's own file; a shipped model needs --out)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ddpmkit", description="Diffusion models built around sampling.", formatter_class=FMT)
    p.add_argument("--version", action="version", version=f"ddpmkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a DDPM noise predictor",
                       description="Train a U-Net noise predictor (Ho et al. 2020, Algorithm 1). The run folder gets "
                       "checkpoint.safetensors (for --resume), model.safetensors (EMA weights for sampling), log.jsonl "
                       "and samples/ (DDIM-50 grids).")
    _add_run_args(t)
    _add_train_options(t)
    t.set_defaults(func=_cmd_train)

    from .distill import DistillConfig

    dt = sub.add_parser("distill", help="distil a DDPM into a consistency model (or train one without a teacher)",
                        description="Consistency distillation (Song et al. 2023, Algorithm 2) of a trained DDPM, or "
                        "consistency training (Algorithm 3 with the improvements of Song & Dhariwal 2023). The run "
                        "folder gets checkpoint.safetensors (for --resume), model.safetensors (the EMA consistency "
                        "function; sample it with --sampler cm), log.jsonl and samples/ (cm with 1, 2 and 4 steps).")
    _add_run_args(dt)
    _add_train_options(dt, DistillConfig, DISTILL_HELP)
    dt.set_defaults(func=_cmd_distill)

    s = sub.add_parser("sample", formatter_class=FMT, help="draw samples from a trained model",
                       description="Draw samples from a trained model with any registered sampler; sample i uses "
                       "seed SEED + i and does not depend on the batch size.")
    _add_sample_options(s)
    s.set_defaults(func=_cmd_sample)

    e = sub.add_parser("eval", formatter_class=FMT, help="FID, IS, KID, precision/recall of a sampler on a model",
                       description="Sample a model (seeds SEED .. SEED+NUM-1, cached in chunks so an interrupted run "
                       "resumes), quantise the samples to the data's grey levels, and measure them with the shipped "
                       "feature network against its reference set; the data floor is printed beside them.")
    _add_sampler_args(e, batch_size=250)
    e.add_argument("--num", type=positive_int, default=10000, help="number of samples")
    _add_measure_args(e)
    e.add_argument("--out", default="eval.json", help="JSON file for the results")
    e.add_argument("--inception", default=None, metavar="WEIGHTS",
                   help="also the usual Inception FID and IS, with the FID Inception weights at this path "
                   "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or a safetensors copy; nothing is downloaded)")
    e.add_argument("--inception-data", default=None,
                   help="folder with the model's data set, whose real images the Inception FID compares against")
    e.add_argument("--inception-real", type=positive_int, default=None, help="at most this many real images "
                   f"(default: {INCEPTION_REAL})")
    e.set_defaults(func=_cmd_eval)

    b = sub.add_parser("bench", formatter_class=FMT, help="every sampler x NFE on one model: metrics, time, plots",
                       description="For every sampler and NFE: FID, IS, KID, precision, recall (with the data floor), "
                       "NFE, seconds per image, images/s and peak memory, as markdown, CSV and JSON; plots of FID "
                       "against NFE and wall time; a grid of the same seeds per sampler; DDPM vs DDIM trajectories. "
                       "Sampler specs: NAME[@SPACING][:KEY=VALUE,...] with KEY a sampler option or the denoiser's clip or "
                       "threshold, e.g. ddim:eta=0.5, dpmpp-2m@logsnr or ddpm:clip=true.")
    b.add_argument("--model", default="mnist", help="a shipped model (mnist, mnist-cm), a checkpoint file, or a training run's folder")
    b.add_argument("--samplers", default="ddpm,ddim,dpmpp-2m@logsnr,unipc@logsnr", help="comma-separated sampler specs")
    b.add_argument("--nfe", default="5,10,20,50,100,1000", help="comma-separated NFE budgets")
    b.add_argument("--preset", default=None, help="ddim-table: eta 0, 0.2, 0.5, 1 and the large variance at 10-1000 "
                   "steps (the DDIM paper's Table 1); replaces --samplers and --nfe")
    b.add_argument("--num", type=positive_int, default=2000, help="samples per sampler and NFE")
    b.add_argument("--seed", type=nonneg_int, default=0, help="sample i uses seed SEED + i")
    b.add_argument("--batch-size", type=positive_int, default=250, help="samples per network call")
    _add_measure_args(b)
    b.add_argument("--out", default="bench", help="folder for the results")
    b.add_argument("--device", type=device_arg, default="cpu", help="torch device: cpu, cuda, cuda:N or mps")
    b.add_argument("--quiet", action="store_true", help="print only the final table")
    b.set_defaults(func=_cmd_bench)

    t = sub.add_parser("tune", formatter_class=FMT, help="search a few-step sampler's timesteps by FID; store them",
                       description="For each step count, coordinate descent over descending grids of candidate "
                       "timesteps (each point in turn replaced by every candidate while that lowers FID, as Song et "
                       "al. 2023 chose their multistep consistency grids), measured on --num samples from seeds "
                       "disjoint from eval's default ones, with the sampler's default options. The grids found are stored in "
                       "the model file (rewritten atomically), or in a copy of it with --out; sample, eval, bench and "
                       "demo then use them for that sampler and step count.")
    t.add_argument("--model", required=True, help="a model file, a training run's folder, or a shipped model's name")
    t.add_argument("--sampler", default="cm", help=f"one of: {', '.join(SAMPLERS)}")
    t.add_argument("--steps", default="1,2", help="comma-separated step counts to tune")
    t.add_argument("--candidates", type=timestep_list, default=None,
                   help="timesteps the grid is built from (default: the trailing grid of 10 steps)")
    t.add_argument("--num", type=positive_int, default=500, help="samples per grid tried")
    t.add_argument("--seed", type=nonneg_int, default=1_000_000, help="sample i uses seed SEED + i")
    t.add_argument("--batch-size", type=positive_int, default=250, help="samples per network call")
    t.add_argument("--device", type=device_arg, default="cpu", help="torch device: cpu, cuda, cuda:N or mps")
    _add_measure_args(t)
    t.add_argument("--out", default=None, help=OUT_MODEL_HELP)
    t.add_argument("--quiet", action="store_true", help="print only the grids found")
    t.set_defaults(func=_cmd_tune)

    m = sub.add_parser("moments", formatter_class=FMT, help="store Analytic-DPM's eps moments in a model file",
                       description="Estimate Gamma_t = E||eps_hat(x_t)||^2 / d (Bao et al. 2022) over training "
                       "images and store it in the model file (or in a copy of it with --out), so that `sample "
                       "--sampler ddpm --variance optimal` works. Costs --num x --timesteps network evaluations, once.")
    m.add_argument("--model", required=True, help="a model file, a training run's folder, or a shipped model's name")
    m.add_argument("--dataset", default="digits", help="the data the model was trained on")
    m.add_argument("--data-dir", default=None, help="folder with the dataset's files (default: data/DATASET)")
    m.add_argument("--num", type=positive_int, default=1000, help="training images to average over")
    m.add_argument("--timesteps", type=positive_int, default=100, help="timesteps to estimate at (interpolated between)")
    m.add_argument("--batch-size", type=positive_int, default=256, help="images per network call")
    m.add_argument("--seed", type=nonneg_int, default=0, help="seed of the image choice and the noise")
    m.add_argument("--device", type=device_arg, default="cpu", help="torch device: cpu, cuda, cuda:N or mps")
    m.add_argument("--out", default=None, help=OUT_MODEL_HELP)
    m.set_defaults(func=_cmd_moments)

    sub.add_parser("samplers", formatter_class=FMT, help="list the samplers with their options and defaults").set_defaults(
        func=_cmd_samplers)

    d = sub.add_parser("demo", formatter_class=FMT, help="the shipped MNIST models with several samplers, same seeds",
                       description="Sample the shipped MNIST DDPM (DDIM, UniPC, DDPM) and its consistency model on the "
                       "same seeds; write an image grid and a table of NFE, wall time and FID (now, on --num samples, "
                       "beside the data floor at that size; and on 10k samples, from the model card). With --exact: "
                       "the exact denoiser of the 8x8 digits instead, and the distance of each sample to the data.")
    d.add_argument("--out", default="out/demo.png", help="PNG grid to write; a .md table is written beside it")
    d.add_argument("--num", type=positive_int, default=200,
                   help="samples per sampler for the table (at most 2000: the floor's real images)")
    d.add_argument("--exact", action="store_true",
                   help="instead, the exact denoiser of the 8x8 digits (no network: every error is the sampler's)")
    d.add_argument("--quiet", action="store_true", help="print only the table")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # activations are reallocated at every network call: keep their pages mapped
    try:
        args.func(args)
    except (ValueError, OSError) as e:  # includes CheckpointError; an unwritable path: one line, no traceback
        print(f"ddpmkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddpmkit {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
