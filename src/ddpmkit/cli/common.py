"""What the commands share: the parser's error style, value types, flags declared once, and the
checks of paths that must hold before any work is spent."""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import sys

import torch

from ..models.loaded import COMPILE_MODES
from ..prediction import PRECISIONS
from ..sampling import MICRO_BATCH
from ..samplers import SAMPLERS, parse_bool as parse_bool_text, sampler_options

class FMT(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default, where it has one the help text does not already state."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with our error style: one line naming the bad value, then exit status 2 (argparse
    itself prints the whole usage block above the message)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- value types -----------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0")
    return value


def at_least(low: int):
    """An integer type of values >= ``low``."""
    def at_least_int(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {low}")
        return value
    return at_least_int


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


def timestep_list(text: str) -> list[float]:
    items = text.split(",")
    try:
        values = [float(v) for v in items]
    except ValueError:
        values = []
    if not values or len(values) != len(items):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of timesteps")
    return values


def class_list(text: str) -> list[int] | None:
    """--class: one class label, a comma-separated list of them (integers >= 0), or ``all`` (None:
    every class in turn, the model's default)."""
    if text.strip().lower() == "all":
        return None
    items = text.split(",")
    try:
        values = [int(v) for v in items]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a class label, a comma-separated list of labels >= 0 "
                                         "or 'all'")
    return values


def interval_arg(text: str) -> tuple[float, float]:
    """--guidance-interval: two noise levels LO,HI (sigma)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not two noise levels LO,HI, e.g. 0.28,5.42") from None
    return lo, hi


def scheduler_config_arg(text: str) -> dict:
    """--scheduler-config: a scheduler_config.json file, or diffusers' keys as key=value pairs
    (``beta_schedule=linear,prediction_type=epsilon``; values read as JSON where they parse)."""
    import json

    path = pathlib.Path(text)
    if path.suffix.lower() == ".json" or path.is_file():
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise argparse.ArgumentTypeError(f"{text!r} is not a readable JSON file: {e}") from None
        if not isinstance(config, dict):
            raise argparse.ArgumentTypeError(f"{text!r} holds a JSON {type(config).__name__}, not an object")
        return config
    config = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise argparse.ArgumentTypeError(f"{item!r} is not key=value; give a scheduler_config.json or pairs "
                                             "such as beta_schedule=linear,prediction_type=epsilon")
        try:
            config[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            config[key.strip()] = value
    return config


def positive_int_list(option: str, text: str) -> list[int]:
    """A comma-separated list of integers >= 1 given to ``option`` (bench --nfe, tune --steps)."""
    try:
        values = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise ValueError(f"{option} {text!r} must list integers >= 1")
    return values


# -- flags declared once ---------------------------------------------------------------------------
MODEL_HELP = ("a shipped model (mnist, mnist-cond, mnist-cm), a checkpoint file, a training run's folder, or a diffusers "
              "folder (a DDPMPipeline's, or a UNet2DModel's with its scheduler_config.json)")


def add_model(p: argparse.ArgumentParser, required: bool = False) -> None:
    """--model, and --scheduler-config for a diffusers folder that lacks its own."""
    p.add_argument("--model", required=required, default=None if required else "mnist", help=MODEL_HELP)
    p.add_argument("--scheduler-config", type=scheduler_config_arg, default=None, metavar="JSON_OR_PAIRS",
                   help="for a diffusers folder: a scheduler_config.json, or key=value pairs of diffusers' "
                   "scheduler keys, used instead of the folder's (needed where it has none)")


def load_model_from_args(args):
    """The model --model names, on --device, with --scheduler-config where given."""
    from ..models import load_model

    model = load_model(args.model, device=args.device, scheduler_config=args.scheduler_config)
    return model.compiled(args.compile) if getattr(args, "compile", None) else model


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_arg, default="cpu", help="torch device: cpu, cuda, cuda:N or mps")


def add_quiet(p: argparse.ArgumentParser, what: str = "no progress bar") -> None:
    p.add_argument("--quiet", action="store_true", help=what)


def add_seed(p: argparse.ArgumentParser, default: int = 0) -> None:
    p.add_argument("--seed", type=nonneg_int, default=default, help="sample i uses seed SEED + i")


def micro_batch_arg(text: str) -> int | str | None:
    if text in ("auto", "off"):
        return None if text == "off" else text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; give auto, off or a positive integer") from None


def add_batch_size(p: argparse.ArgumentParser, default: int) -> None:
    """--batch-size, and --micro-batch: how many samples move together, and how many the network sees."""
    p.add_argument("--batch-size", type=positive_int, default=default,
                   help="samples advanced together (memory grows with it); under torchrun each process's batches")
    p.add_argument("--micro-batch", type=micro_batch_arg, default="auto", metavar="N",
                   help=f"samples per network call: auto ({MICRO_BATCH} on the CPU, where it makes sample i bitwise "
                   "the same for any --batch-size and any number of processes; the whole batch on a GPU), off (the "
                   "whole batch), or a number; the last call of a batch is padded to N")


def add_measure(p: argparse.ArgumentParser) -> None:
    """Where eval, bench and tune take their feature network and keep their sample chunks."""
    p.add_argument("--feature-net", default=None, help="shipped feature network (default: the model's dataset)")
    p.add_argument("--cache", default=".ddpmkit-cache", help="folder for the cached sample chunks")


def all_sampler_options() -> dict[str, dict[str, object]]:
    """option name -> {sampler: default} over every registered sampler."""
    out: dict[str, dict[str, object]] = {}
    for name in SAMPLERS:
        for opt, default in sampler_options(name).items():
            out.setdefault(opt, {})[name] = default
    return out


SPACING_HELP = ("step grid: leading, trailing, linspace, karras, logsnr, or tuned (the grid `ddpmkit tune` stored in "
                "the model for this sampler and step count); default: tuned where the model has one, else trailing")


def add_sampling(p: argparse.ArgumentParser, batch_size: int) -> None:
    """The options that choose a model and how to sample it (sample and eval): they become a Plan."""
    add_model(p)
    p.add_argument("--sampler", default=None,
                   help=f"one of: {', '.join(SAMPLERS)} (default: the model's recommended one: cm for a consistency "
                   "model, else dpmpp-2m-sde at 20 steps on a logSNR grid, the best 20-NFE sampler of the shipped "
                   "mnist model; 20 network evaluations per sample, about 0.2 s per MNIST sample on 2 CPU cores)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="sampling steps (default: 20 for the recommended sampler; for one you name, all T for ddpm, "
                   "1 for cm, 50 for the others)")
    p.add_argument("--timesteps", type=timestep_list, default=None,
                   help="an explicit descending grid instead of --steps, e.g. 999,500 (fractional allowed)")
    p.add_argument("--input-timesteps", type=timestep_list, default=None,
                   help="with --timesteps: the timestep the network is told at each of them, its output read as the "
                   "prediction there (LD3's decoupled timesteps; `ddpmkit tune --by teacher --decouple` finds them "
                   "and stores them with the grid); default: the grid's own")
    p.add_argument("--nfe", type=positive_int, default=None,
                   help="a budget of network evaluations instead of --steps: the most steps that fit it")
    p.add_argument("--spacing", default=None, help=SPACING_HELP)
    for opt, per_sampler in all_sampler_options().items():
        kinds = {type(v) for v in per_sampler.values() if v is not None}
        kind = {frozenset({bool}): parse_bool, frozenset({int}): int, frozenset({float}): float,
                frozenset({int, float}): float}.get(frozenset(kinds), str)
        defaults = ", ".join(f"{s}: {v!r}" for s, v in per_sampler.items())
        p.add_argument("--" + opt.replace("_", "-"), dest=opt, type=kind, default=None,
                       help=f"sampler option ({defaults})")
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help="clamp x0_hat to the data range at every step (default: as the model's scheduler config "
                   "says, else off)")
    p.add_argument("--threshold", type=float, default=None, help="dynamic thresholding quantile (Imagen), e.g. 0.995")
    p.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES, metavar="MODE",
                   help="run the network under torch.compile (MODE: default, reduce-overhead, which on a GPU also "
                   "captures it in CUDA graphs, or max-autotune); the first calls compile, minutes on a CPU")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default=None,
                   help="the network's precision: bf16 or fp16 run it under autocast (for GPUs; the solver stays "
                   "in float32); default fp32")
    p.add_argument("--class", dest="classes", type=class_list, default=None, metavar="LABELS",
                   help="a class-conditional model's class label, or labels taken in turn by seed (seed s gets "
                   "LABELS[s %% len]); default (or 'all'): every class in turn")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="classifier-free guidance scale, diffusers' convention: uncond + W (cond - uncond); 1 (the "
                   "default) is no guidance, 0 the unconditional model. Each guided step evaluates the network on "
                   "both halves in one batch: two network evaluations per sample")
    p.add_argument("--guidance-interval", type=interval_arg, default=None, metavar="LO,HI",
                   help="guide only at noise levels sigma = sqrt((1 - abar) / abar) in (LO, HI] (Kynkaanniemi et al. "
                   "2024), the conditional model elsewhere; default: at every step")
    p.add_argument("--guidance-rescale", type=float, default=None, metavar="PHI",
                   help="rescale the guided output's std towards the conditional one's by PHI in [0, 1] (Lin et al. "
                   "2023; for v-prediction and zero-SNR models); default 0")
    add_seed(p)
    add_batch_size(p, batch_size)
    add_device(p)
    add_quiet(p)


def plan_from_args(args, model):
    """The Plan that --sampler, --steps / --nfe / --timesteps, --spacing, the sampler options,
    --clip and --threshold describe, checked against the model: every error is raised here,
    before any sampling."""
    options = {k: getattr(args, k) for k in all_sampler_options() if getattr(args, k) is not None}
    sampler, steps, spacing = args.sampler, args.steps, args.spacing
    if sampler is None:  # the model's recommended plan, where the user's flags leave room
        recommended = model.recommended()
        sampler = recommended["sampler"]
        if args.steps is None and args.nfe is None and args.timesteps is None:
            steps = recommended.get("steps")
        if spacing is None and args.timesteps is None:
            spacing = recommended.get("spacing")
    valid = sampler_options(sampler)  # an unknown sampler is an error that lists the valid ones
    for k in options:
        if k not in valid:
            raise ValueError(f"--{k.replace('_', '-')} does not apply to sampler {sampler!r}; "
                             f"its options: {', '.join('--' + o for o in valid) or 'none'}")
    if sum(v is not None for v in (args.steps, args.nfe, args.timesteps)) > 1:
        raise ValueError("give only one of --steps, --nfe and --timesteps")
    if args.timesteps is not None and args.spacing is not None:
        raise ValueError(f"--spacing {args.spacing} and --timesteps both place the steps; give one of them")
    if args.input_timesteps is not None and args.timesteps is None:
        raise ValueError("--input-timesteps go with --timesteps, one for each of them")
    return model.plan(sampler=sampler, steps=steps, nfe=args.nfe, timesteps=args.timesteps, spacing=spacing,
                      input_timesteps=args.input_timesteps,
                      clip=args.clip, threshold=args.threshold, precision=args.precision, classes=args.classes,
                      guidance=args.guidance,
                      guidance_interval=args.guidance_interval, guidance_rescale=args.guidance_rescale, **options)


def command_line() -> str:
    """The command as the user typed it, for the records a run writes."""
    return "ddpmkit " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# -- paths, checked before any work ----------------------------------------------------------------
def nearest_existing(path: pathlib.Path) -> pathlib.Path:
    """``path`` itself or its nearest ancestor that exists: where a missing folder would be made."""
    return next((q for q in (path, *path.parents) if q.exists()), pathlib.Path("."))


def check_folder(option: str, path: str) -> None:
    """A folder we will create or write into must not be a file, nor lie under one."""
    if str(path) == "":
        raise ValueError(f"{option} is empty; give a folder")
    q = nearest_existing(pathlib.Path(path))
    if not q.is_dir():
        raise ValueError(f"{option} {path} cannot be a folder: {q} is a file")


def check_writable(out: pathlib.Path, target_dir: pathlib.Path) -> None:
    """The folder that --out writes into exists and is writable, or can be made (with any missing
    parents, once there is something to write) in the nearest existing folder, which is writable."""
    probe = nearest_existing(target_dir)
    if not probe.is_dir():
        raise ValueError(f"--out {out} cannot be written: {probe} is a file")
    if not writable_folder(probe):
        raise ValueError(f"--out {out} cannot be written: {probe} is not a writable folder")


def writable_folder(folder: pathlib.Path) -> bool:
    """Whether a file can be created in ``folder``, found by creating one and removing it (a
    permission test alone says yes to root, and to read-only or virtual file systems)."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".ddpmkit-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def check_measure(args, precision_recall: bool = True) -> None:
    """eval, bench and tune, before any sampling: enough samples for the metrics (FID needs a
    covariance; precision and recall each sample's k = 3 nearest others), and the cache a folder."""
    need = 4 if precision_recall else 2
    if args.num < need:
        why = "precision and recall need each sample's 3 nearest neighbours" if precision_recall else \
            "FID needs a covariance"
        raise ValueError(f"--num {args.num} is too few: {why}, so give at least {need} samples")
    check_folder("--cache", args.cache)


OUT_MODEL_HELP = ("model file (.safetensors) to write: a copy of --model with the result added (default: rewrite "
                  "--model's own file; a shipped model needs --out; for a diffusers folder the result goes to its "
                  "ddpmkit.safetensors)")


def model_out(args) -> pathlib.Path | None:
    """tune, moments and ems: the model file to write, None for --model's own file. A shipped model is
    never rewritten in place (the installed file stays as its card describes): it needs --out."""
    from ..models import SIDECAR, is_diffusers_model, is_shipped_name, resolve

    if is_diffusers_model(args.model):
        if args.out is not None:
            raise ValueError(f"--out {args.out}: --model {args.model} is a diffusers folder, whose files are not "
                             f"rewritten; the result goes to {pathlib.Path(args.model) / SIDECAR} beside them "
                             "(drop --out)")
        if not writable_folder(pathlib.Path(args.model)):
            raise ValueError(f"--model {args.model} is not a writable folder, so {SIDECAR} cannot be written there; "
                             "copy the folder somewhere writable")
        return None
    if args.out is None:
        if is_shipped_name(args.model):
            raise ValueError(f"--model {args.model} is a shipped model, which is not rewritten; give --out FILE "
                             f"for a copy that holds the result (e.g. --out {args.model}-mine.safetensors)")
        own = resolve(args.model)
        if not writable_folder(own.parent):
            raise ValueError(f"--model {args.model}: {own.parent} is not writable, so {own.name} cannot be rewritten "
                             "in place; give --out FILE for a copy that holds the result")
        return None
    out = pathlib.Path(args.out)
    if out.suffix.lower() != ".safetensors" or out.is_dir():
        raise ValueError(f"--out {args.out}: give a model file name ending in .safetensors")
    check_writable(out, out.parent)
    return out


def add_store_options(p: argparse.ArgumentParser, unit: str, seed_help: str, run) -> None:
    """The flags that end the commands which estimate something once and store it in a model file
    (moments, ems): --batch-size (``unit`` per network call), --seed, --device, --out, --quiet."""
    p.add_argument("--batch-size", type=positive_int, default=256, help=f"{unit} per network call")
    p.add_argument("--seed", type=nonneg_int, default=0, help=seed_help)
    add_device(p)
    p.add_argument("--out", default=None, help=OUT_MODEL_HELP)
    add_quiet(p)
    p.set_defaults(func=run)


def progress_bar(total: int, unit: str, desc: str, quiet: bool, leave: bool = True):
    """A tqdm bar (rate and ETA) on stderr, or None with --quiet or where stderr is not a terminal
    (a log file gets no bar lines). ``leave=False`` clears it when done."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, leave=leave)
