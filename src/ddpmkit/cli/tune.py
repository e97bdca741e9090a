"""``ddpmkit tune``: search a few-step sampler's timesteps (by FID, or by a fine-step teacher's
trajectories: ``ddpmkit.gits``) and store them in the model file."""

from __future__ import annotations

from .common import (FMT, OUT_MODEL_HELP, add_batch_size, add_device, add_measure, add_model, add_quiet, add_seed,
                     check_measure, load_model_from_args, model_out, nonneg_int, positive_int, positive_int_list,
                     progress_bar, timestep_list)


def add_parser(sub) -> None:
    from ..samplers import SAMPLERS

    p = sub.add_parser("tune", formatter_class=FMT, help="search a few-step sampler's timesteps; store them",
                       description="For each step count, a grid of candidate timesteps for the sampler, found --by "
                       "fid: coordinate descent (each point in turn replaced by every candidate while that lowers FID, "
                       "as Song et al. 2023 chose their multistep consistency grids) on --num samples; --by teacher: "
                       "the same descent from the best of diffusers' trailing, leading and linspace grids, priced by "
                       "the RMS distance of the "
                       "sampler's result from a fine-step teacher's (UniPC on 100 logSNR-spaced candidates) on --num "
                       "trajectories, no FID; --by gits: GITS (Chen et al. 2024), dynamic programming over the "
                       "teacher's trajectories pricing first-order jumps, the same grid for every sampler. Seeds are "
                       "disjoint from eval's default ones; the sampler's default options. The grids found are "
                       "stored in the model file (rewritten atomically), or in a copy of it with --out; sample, eval, "
                       "bench and demo then use them for that sampler and step count.")
    add_model(p, required=True)
    p.add_argument("--sampler", default="cm", help=f"one of: {', '.join(SAMPLERS)}")
    p.add_argument("--steps", default="1,2", help="comma-separated step counts to tune")
    p.add_argument("--by", choices=BY, default="fid",
                   help="what prices a grid: fid (needs a feature network), teacher or gits (any ODE model)")
    p.add_argument("--candidates", type=timestep_list, default=None,
                   help="timesteps the grid is built from (default: --by fid the trailing grid of 10 steps; --by "
                   "teacher or gits 100 logSNR-spaced timesteps and each step count's trailing, leading and linspace "
                   "grids, the teacher's "
                   "grid too)")
    p.add_argument("--decouple", type=nonneg_int, default=0, metavar="RUNS",
                   help="--by teacher: then refine each grid together with the timesteps the network is told at "
                   "its points (LD3's decoupled timesteps, Tong et al. 2025) by Nelder-Mead, with up to RUNS runs of "
                   "the sampler on 3/4 of the trajectories, kept only where it lands closer on the other 1/4 "
                   "(0, the default: no refinement)")
    p.add_argument("--num", type=positive_int, default=500,
                   help="samples per grid tried (--by fid), or teacher trajectories (--by teacher or gits)")
    add_seed(p, 1_000_000)
    add_batch_size(p, 250)
    add_device(p)
    add_measure(p)
    p.add_argument("--out", default=None, help=OUT_MODEL_HELP)
    add_quiet(p, "print only the grids found")
    p.set_defaults(func=run)


BY = ("fid", "teacher", "gits")


def run(args) -> None:
    from .. import measure
    from ..models import store_tuned_grids
    from ..samplers import sampler_options
    from ..tune import tune

    sampler_options(args.sampler)  # an unknown sampler is an error that lists the valid ones
    if args.decouple and args.by != "teacher":
        raise ValueError(f"--decouple {args.decouple} refines a teacher-searched grid; it needs --by teacher, "
                         f"not --by {args.by}")
    if args.by == "fid":
        check_measure(args, precision_recall=False)  # tune scores by FID alone
    out = model_out(args)
    steps_list = sorted(set(positive_int_list("--steps", args.steps)))
    model = load_model_from_args(args)
    if args.by != "fid":
        found = tune_by_teacher(model, args, steps_list)
        file = store_tuned_grids(model.path, args.sampler, found, out)
        print(f"stored the tuned grids in {file}; sample, eval, bench and demo use them for {args.sampler} unless "
              "--spacing or --timesteps says otherwise")
        return
    ref = measure.reference_for(model, args.feature_net)
    bar = progress_bar(None, "img", f"tune {args.sampler}", args.quiet)  # the search decides how many grids
    found = tune(model, args.sampler, steps_list, candidates=args.candidates, num=args.num, seed=args.seed, ref=ref,
                 cache_dir=args.cache, batch_size=args.batch_size, micro_batch=args.micro_batch, device=args.device,
                 log=(lambda *a: None) if args.quiet else (bar.write if bar is not None else print),
                 show=bar.write if bar is not None else print, progress=bar.update if bar is not None else None)
    if bar is not None:  # a bar without a total has no truth value
        bar.close()
    file = store_tuned_grids(model.path, args.sampler, found, out)
    print(f"stored the tuned grids in {file}; sample, eval, bench and demo use them unless --spacing or "
          f"--timesteps says otherwise")


def tune_by_teacher(model, args, steps_list: list[int]) -> dict[int, dict]:
    """--by teacher or gits: the grids that a fine-step teacher's trajectories choose (``ddpmkit.gits``)."""
    from ..gits import Teacher, gits_grids, start_timesteps, teacher_search
    from ..samplers import model_options
    from ..tune import found_line

    if model.config.get("net", {}).get("arch") == "consistency" or args.sampler == "cm":
        raise ValueError(f"--by {args.by} follows the probability-flow ODE of a DDPM; a consistency model (or "
                         "--sampler cm) is tuned --by fid")
    if model.conditional:
        raise ValueError(f"--by {args.by} runs the teacher without class labels; {model.path.name} is "
                         "class-conditional, so tune it --by fid")
    teacher = Teacher(model.net, model.schedule, shape=model.shape, num=args.num, seed=args.seed,
                      candidates=args.candidates if args.candidates is not None else 100,
                      extra=start_timesteps(model.schedule, steps_list), prediction=model.prediction,
                      batch_size=args.batch_size, device=args.device, micro_batch=args.micro_batch)
    log = (lambda *a: None) if args.quiet else print
    log(f"teacher: {teacher.describe()}")
    if args.by == "gits":
        found = gits_grids(teacher, steps_list)
    else:
        supplied = {k: model.extras[k] for k in model_options(args.sampler) if k in model.extras}
        found = teacher_search(teacher, args.sampler, steps_list, options=supplied, decouple=args.decouple, log=log)
    for k in steps_list:
        print(found_line(args.sampler, k, found[k]))
    return found
