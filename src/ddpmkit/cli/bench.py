"""``ddpmkit bench``: every sampler spec at every NFE budget on one model, measured alike."""

from __future__ import annotations

import pathlib

from .common import (FMT, add_batch_size, add_device, add_measure, add_model, add_quiet, add_seed, check_folder,
                     check_measure, check_writable, command_line, load_model_from_args, positive_int, positive_int_list,
                     progress_bar)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", formatter_class=FMT, help="every sampler x NFE on one model: metrics, time, plots",
                       description="For every sampler and NFE: FID, IS, KID, precision, recall (with the data floor), "
                       "NFE, seconds per image, images/s and peak memory, as markdown, CSV and JSON; plots of FID "
                       "against NFE and wall time; a grid of the same seeds per sampler; with --trajectories, each "
                       "sampler's trajectory of one seed. "
                       "Sampler specs: NAME[@SPACING][:KEY=VALUE,...] with KEY a sampler option or the denoiser's clip, "
                       "threshold, guidance, guidance_rescale or guidance_interval=LO/HI, e.g. ddim:eta=0.5, "
                       "dpmpp-2m@logsnr, ddpm:clip=true or unipc:guidance=3 (a class-conditional model samples every "
                       "class in turn, and its table has the class accuracy).")
    add_model(p)
    p.add_argument("--samplers", default="ddim,dpmpp-2m-sde@logsnr,unipc@logsnr", help="comma-separated sampler specs")
    p.add_argument("--nfe", default="10,20", help="comma-separated NFE budgets (the defaults, at the default --num: "
                   "45,000 network evaluations, about 7 minutes for MNIST at 8.7 ms per image on 2 CPU cores)")
    p.add_argument("--preset", default=None, help="ddim-table: eta 0, 0.2, 0.5, 1 and the large variance at 10-1000 "
                   "steps (the DDIM paper's Table 1); replaces --samplers and --nfe")
    p.add_argument("-n", "--num", type=positive_int, default=500, help="samples per sampler and NFE")
    add_seed(p)
    add_batch_size(p, 250)
    add_measure(p)
    p.add_argument("--out", default="bench", help="folder for the results")
    p.add_argument("--trajectories", action="store_true",
                   help="also trajectories.png: x_t and x0_hat along the steps of one seed, for each sampler")
    add_device(p)
    add_quiet(p, "print only the final table")
    p.set_defaults(func=run)


def run(args) -> None:
    from .. import distributed, measure
    from ..machine import describe_machine
    from ..measure import bench

    out = pathlib.Path(args.out)
    check_folder("--out", args.out)
    check_writable(out, out)
    check_measure(args)
    preset = bench.PRESETS.get(args.preset) if args.preset is not None else None
    if args.preset is not None and preset is None:
        raise ValueError(f"unknown preset {args.preset!r}; valid: {', '.join(bench.PRESETS)}")
    specs = preset["samplers"] if preset else bench.split_specs(args.samplers)
    nfes = preset["nfe"] if preset else positive_int_list("--nfe", args.nfe)
    if not specs:
        raise ValueError(f"--samplers {args.samplers!r} lists no sampler")
    model = load_model_from_args(args)
    log = (lambda *a: None) if args.quiet else print
    rows = bench.plan_rows(model, specs, nfes, log)  # every row's plan is checked before any sampling
    ref = measure.reference_for(model, args.feature_net)
    bar = progress_bar(len(rows) * args.num, "img", f"{len(rows)} rows", args.quiet)
    results = bench.run(model, ref, rows, num=args.num, seed=args.seed, cache_dir=args.cache,
                        batch_size=args.batch_size, micro_batch=args.micro_batch, device=args.device,
                        log=bar.write if bar else log,
                        progress=bar.update if bar else None)
    if bar:
        bar.close()
    if not distributed.is_main():  # under torchrun rank 0 writes and prints
        return
    out.mkdir(parents=True, exist_ok=True)
    header = bench.header(command_line(), model, ref, args.num, args.seed, describe_machine(args.device))
    floor = measure.floor_for(ref, args.num)
    bench.write(out, results, floor, header)
    figures = bench.figures(model, rows, out, args.seed, args.trajectories)
    print(bench.markdown(results, floor, "").strip())
    print(f"wrote {out}/{', '.join(['bench.md', 'bench.csv', 'bench.json'] + (['fid.png'] if results else []) + figures)}")
