"""``ddpmkit train`` and ``ddpmkit distill``: a run folder, one flag per field of the run's config."""

from __future__ import annotations

import argparse
import dataclasses

from .common import add_device, add_quiet, check_folder, command_line, nonneg_int, positive_int

KINDS = {"count": nonneg_int, int: positive_int, float: float, None: None}


def add_run_args(p: argparse.ArgumentParser, config) -> None:
    """--out, --resume, --device, --quiet, and one flag per field of ``config`` (TrainConfig or
    DistillConfig), with the help text and value type its field declares."""
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    add_device(p)
    add_quiet(p)
    for f in dataclasses.fields(config):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        helptext = f.metadata["help"] + ("" if default is None else f" (default: {default})")
        # SUPPRESS: only options the user gives reach the trainer, so --resume can tell them apart
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=helptext)
            continue
        kind = KINDS[f.metadata.get("kind")] or {int: positive_int, float: float}.get(type(default), str)
        p.add_argument(flag, dest=f.name, type=kind, default=argparse.SUPPRESS, help=helptext)


def add_parser(sub) -> None:
    from ..train import TrainConfig

    p = sub.add_parser("train", help="train a DDPM noise predictor",
                       description="Train a U-Net noise predictor (Ho et al. 2020, Algorithm 1). The run folder gets "
                       "checkpoint.safetensors (for --resume), model.safetensors (EMA weights for sampling), log.jsonl "
                       "and samples/ (DDIM-50 grids).")
    add_run_args(p, TrainConfig)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..train import Trainer

    run_trainer(Trainer, args)


def run_trainer(kind, args) -> None:
    """Start or resume a run of ``kind`` (Trainer or Distiller) with the options the user gave."""
    check_folder("--out", args.out)
    names = {f.name for f in dataclasses.fields(kind.Config)}
    options = {k: v for k, v in vars(args).items() if k in names}
    trainer = kind(args.out, options, resume=args.resume, device=args.device, quiet=args.quiet,
                   command=command_line())
    if not args.quiet:
        from ..nets import count_parameters

        what = "resuming at step %d" % trainer.step if args.resume else "new run"
        print(f"{trainer.out}: {what}; {trainer.data.name} {len(trainer.data)} images {trainer.data.shape}, "
              f"U-Net {count_parameters(trainer.net) / 1e6:.2f}M parameters, {trainer.cfg.steps} steps")
    model = trainer.run()
    if trainer.main:  # under torchrun rank 0 writes and says so
        print(f"wrote {model} (step {trainer.step})")
