"""``ddpmkit ems``: estimate DPM-Solver-v3's empirical model statistics once and store them in a model file."""

from __future__ import annotations

from .common import FMT, add_model, add_store_options, at_least, load_model_from_args, model_out, progress_bar


def add_parser(sub) -> None:
    p = sub.add_parser("ems", formatter_class=FMT, help="store DPM-Solver-v3's model statistics in a model file",
                       description="Estimate DPM-Solver-v3's empirical model statistics l, s, b (Zheng et al. 2023) "
                       "along --num of the model's own ODE trajectories at --points logSNR-spaced timesteps, and "
                       "store them in the model file (or in a copy of it with --out), so that `sample --sampler "
                       "dpm-solver-v3` works. Costs about 6 x --num x --points network evaluations, once; no data set.")
    add_model(p, required=True)
    p.add_argument("--num", type=at_least(2), default=1024, help="trajectories to average over")
    p.add_argument("--points", type=at_least(3), default=100, help="logSNR-spaced timesteps to estimate at")
    add_store_options(p, "trajectories", "first seed of the trajectories", run)


def run(args) -> None:
    from ..ems import estimate_ems
    from ..models import store_ems

    out = model_out(args)
    model = load_model_from_args(args)
    if model.conditional:
        raise ValueError(f"{model.path.name} is class-conditional: ddpmkit estimates DPM-Solver-v3's statistics "
                         "for unconditional models only")
    bar = progress_bar(args.num, "trajectory", f"EMS at {args.points} timesteps", args.quiet)
    ems = estimate_ems(model.net, model.schedule, shape=model.shape, num=args.num, seed=args.seed,
                       points=args.points, prediction=model.prediction, batch_size=args.batch_size,
                       device=model.device, progress=bar.update if bar else None)
    if bar:
        bar.close()
    file = store_ems(model.path, ems, out)
    print(f"stored DPM-Solver-v3's statistics ({args.num} trajectories x {args.points} timesteps) in {file}; "
          f"l ranges {ems.l.min():.3f}..{ems.l.max():.3f}")
