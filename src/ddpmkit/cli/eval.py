"""``ddpmkit eval``: FID, IS, KID, precision/recall of one sampler plan on a model."""

from __future__ import annotations

import json
import pathlib

from .common import (FMT, add_measure, add_sampling, check_measure, check_writable, load_model_from_args,
                     plan_from_args, positive_int, progress_bar)


INCEPTION_INSTEAD = (", or --inception WEIGHTS (with --inception-data FOLDER of its real images where the model "
                     "names no data set) for the Inception FID and IS alone")


def add_parser(sub) -> None:
    from ..measure.inception import INCEPTION_REAL

    p = sub.add_parser("eval", formatter_class=FMT, help="FID, IS, KID, precision/recall of a sampler on a model",
                       description="Sample a model (seeds SEED .. SEED+NUM-1, cached in chunks so an interrupted run "
                       "resumes), quantise the samples to the data's grey levels, and measure them with the shipped "
                       "feature network against its reference set; the data floor is printed beside them. A model of "
                       "other images (no shipped feature network) is measured by the Inception FID and IS alone, "
                       "given --inception.")
    add_sampling(p, batch_size=250)
    p.add_argument("-n", "--num", type=positive_int, default=1000,
                   help="number of samples (1000 with the default sampler: 20,000 network evaluations, about 3 "
                   "minutes for MNIST at the 8.7 ms per image that benchmarks/results/unet_speed.md measures on 2 CPU "
                   "cores; the README's tables use 10000, whose FID is less biased and has a smaller error)")
    add_measure(p)
    p.add_argument("--out", default="eval.json", help="JSON file for the results")
    p.add_argument("--inception", default=None, metavar="WEIGHTS",
                   help="also (for a model without a shipped feature network: only) the usual Inception FID and IS, "
                   "with the FID Inception weights at this path "
                   "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or a safetensors copy; nothing is downloaded)")
    p.add_argument("--inception-data", default=None,
                   help="folder with the model's data set, whose real images the Inception FID compares against "
                   "(for a model that names no data set: a folder of its real image files)")
    p.add_argument("--inception-real", type=positive_int, default=None,
                   help=f"at most this many real images (default: {INCEPTION_REAL})")
    p.set_defaults(func=run)


def run(args) -> None:
    from .. import distributed, measure
    from ..files import write_text
    from ..measure import inception

    out = pathlib.Path(args.out)
    if out.suffix.lower() != ".json" or out.is_dir():
        raise ValueError(f"--out {out} must name a .json file")
    check_writable(out, out.parent)  # before any sampling is spent
    check_measure(args)
    if args.inception is None and (args.inception_data is not None or args.inception_real is not None):
        raise ValueError("--inception-data and --inception-real apply only with --inception WEIGHTS")
    model = load_model_from_args(args)
    plan = plan_from_args(args, model)
    # a model without a shipped feature network is measured by Inception alone, where given it
    ref = None if args.inception and not measure.feature_net_for(model, args.feature_net) else \
        measure.reference_for(model, args.feature_net, otherwise=INCEPTION_INSTEAD)
    setup = None
    if args.inception:  # the weights and real images are checked before sampling
        setup = inception.setup(args.inception, model, args.inception_data, args.inception_real, args.device)
    bar = progress_bar(args.num, "img", f"{plan.sampler} {plan.steps} steps", args.quiet)
    result = measure.evaluate(model, plan, num=args.num, seed=args.seed, ref=ref, cache_dir=args.cache,
                              batch_size=args.batch_size, micro_batch=args.micro_batch, device=args.device,
                              inception=setup,
                              progress=(lambda n: bar.update(n)) if bar else None)
    if bar:
        bar.close()
    if not distributed.is_main():  # under torchrun rank 0 writes and prints
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(result, indent=1) + "\n")
    print(measure.eval_table(result, ref))
    print(f"wrote {out}")
