"""``ddpmkit tune``: search a few-step sampler's timesteps by FID and store them in the model file."""

from __future__ import annotations

from .common import (FMT, OUT_MODEL_HELP, add_batch_size, add_device, add_measure, add_model, add_quiet, add_seed,
                     check_measure, load_model_from_args, model_out, positive_int, positive_int_list, progress_bar,
                     timestep_list)


def add_parser(sub) -> None:
    from ..samplers import SAMPLERS

    p = sub.add_parser("tune", formatter_class=FMT, help="search a few-step sampler's timesteps by FID; store them",
                       description="For each step count, coordinate descent over descending grids of candidate "
                       "timesteps (each point in turn replaced by every candidate while that lowers FID, as Song et "
                       "al. 2023 chose their multistep consistency grids), measured on --num samples from seeds "
                       "disjoint from eval's default ones, with the sampler's default options. The grids found are "
                       "stored in the model file (rewritten atomically), or in a copy of it with --out; sample, eval, "
                       "bench and demo then use them for that sampler and step count.")
    add_model(p, required=True)
    p.add_argument("--sampler", default="cm", help=f"one of: {', '.join(SAMPLERS)}")
    p.add_argument("--steps", default="1,2", help="comma-separated step counts to tune")
    p.add_argument("--candidates", type=timestep_list, default=None,
                   help="timesteps the grid is built from (default: the trailing grid of 10 steps)")
    p.add_argument("--num", type=positive_int, default=500, help="samples per grid tried")
    add_seed(p, 1_000_000)
    add_batch_size(p, 250)
    add_device(p)
    add_measure(p)
    p.add_argument("--out", default=None, help=OUT_MODEL_HELP)
    add_quiet(p, "print only the grids found")
    p.set_defaults(func=run)


def run(args) -> None:
    from .. import measure
    from ..models import store_tuned_grids
    from ..samplers import sampler_options
    from ..tune import tune

    sampler_options(args.sampler)  # an unknown sampler is an error that lists the valid ones
    check_measure(args, precision_recall=False)  # tune scores by FID alone
    out = model_out(args)
    steps_list = sorted(set(positive_int_list("--steps", args.steps)))
    model = load_model_from_args(args)
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
