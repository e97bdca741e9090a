"""``ddpmkit distill``: a consistency model from a DDPM (distillation) or from data (training)."""

from __future__ import annotations

from .train import add_run_args, run_trainer


def add_parser(sub) -> None:
    from ..distill import DistillConfig

    p = sub.add_parser("distill", help="distil a DDPM into a consistency model (or train one without a teacher)",
                       description="Consistency distillation (Song et al. 2023, Algorithm 2) of a trained DDPM, or "
                       "consistency training (Algorithm 3 with the improvements of Song & Dhariwal 2023), or Easy Consistency "
                       "Tuning (--method ect, Geng et al. 2024: consistency training started from the DDPM, its gap "
                       "shrinking). The run "
                       "folder gets checkpoint.safetensors (for --resume), model.safetensors (the EMA consistency "
                       "function; sample it with --sampler cm), log.jsonl and samples/ (cm with 1, 2 and 4 steps).")
    add_run_args(p, DistillConfig)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..distill import Distiller

    run_trainer(Distiller, args)
