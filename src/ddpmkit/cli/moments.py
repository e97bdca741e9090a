"""``ddpmkit moments``: estimate Analytic-DPM's eps moments once and store them in a model file."""

from __future__ import annotations

from .common import FMT, add_model, add_store_options, load_model_from_args, model_out, positive_int, progress_bar


def add_parser(sub) -> None:
    p = sub.add_parser("moments", formatter_class=FMT, help="store Analytic-DPM's eps moments in a model file",
                       description="Estimate Gamma_t = E||eps_hat(x_t)||^2 / d (Bao et al. 2022) over training "
                       "images and store it in the model file (or in a copy of it with --out), so that `sample "
                       "--sampler ddpm --variance optimal` works. Costs --num x --timesteps network evaluations, once.")
    add_model(p, required=True)
    p.add_argument("--dataset", default="digits", help="the data the model was trained on")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's files (default: data/DATASET)")
    p.add_argument("--num", type=positive_int, default=1000, help="training images to average over")
    p.add_argument("--timesteps", type=positive_int, default=100,
                   help="timesteps to estimate at (interpolated between)")
    add_store_options(p, "images", "seed of the image choice and the noise", run)


def run(args) -> None:
    from ..analytic import eps_moment_of_model
    from ..models import store_eps_moment

    out = model_out(args)
    model = load_model_from_args(args)
    bar = progress_bar(args.timesteps, "timestep", f"eps moments over {args.num} images", args.quiet)
    moment, info = eps_moment_of_model(model, args.dataset, args.data_dir, num=args.num, timesteps=args.timesteps,
                                       batch_size=args.batch_size, seed=args.seed,
                                       progress=bar.update if bar else None)
    if bar:
        bar.close()
    file = store_eps_moment(model.path, moment, info, out)
    print(f"stored Analytic-DPM's eps moments ({info['images']} images x {args.timesteps} timesteps) in {file}; "
          f"Gamma ranges {moment.min():.4f}..{moment.max():.4f}")
