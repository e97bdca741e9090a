"""``ddpmkit demo``: the main job, the shipped MNIST models (or the exact digits denoiser) through
several samplers on the same seeds."""

from __future__ import annotations

import pathlib

from .common import FMT, add_device, add_quiet, check_writable, positive_int, progress_bar


def add_parser(sub) -> None:
    from ..measure.demo import ROWS

    runs = ", ".join(label for label, model, *_ in ROWS if model == "mnist")  # what the demo runs, as it runs it
    p = sub.add_parser("demo", formatter_class=FMT, help="the shipped MNIST models with several samplers, same seeds",
                       description=f"Sample the shipped MNIST DDPM ({runs}) and its consistency model on the "
                       "same seeds; write an image grid and a table of NFE, wall time and FID (now, on --num samples, "
                       "beside the data floor at that size; and on 10k samples, from the model card). With --exact: "
                       "the exact denoiser of the 8x8 digits instead, and the distance of each sample to the data.")
    p.add_argument("--out", default="out/demo.png", help="PNG grid to write; a .md table is written beside it")
    p.add_argument("--num", type=positive_int, default=200,
                   help="samples per sampler for the table (at most 2000: the floor's real images)")
    p.add_argument("--exact", action="store_true",
                   help="instead, the exact denoiser of the 8x8 digits (no network: every error is the sampler's)")
    add_device(p)
    add_quiet(p, "print only the table")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..files import write_text
    from ..machine import describe_machine

    out = pathlib.Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out} must name a .png file")
    check_writable(out, out.parent)
    if args.exact:
        from ..measure.exact import markdown_table, run_demo

        if args.device != "cpu":
            raise ValueError(f"--device {args.device}: --exact runs its float64 denoiser on the CPU; drop --device")
        what = f"the exact denoiser of the 8x8 digits, {args.num} samples per sampler"
    else:
        from ..measure.demo import markdown_table, run_demo

        if args.num > 2000:
            raise ValueError(f"--num {args.num} is more than the 2000 real images the data floor holds; "
                             "give at most 2000")
        what = f"the shipped MNIST models, {args.num} samples per sampler (same seeds in every row)"
    if not args.quiet:
        print(f"Sampling {what}:")
    out.parent.mkdir(parents=True, exist_ok=True)  # the checks are behind us; what follows writes
    if args.exact:
        results = run_demo(str(out), num=args.num, quiet=args.quiet)
    else:
        def steps_bar(label, total):
            return progress_bar(total, "step", f"  {label}", args.quiet, leave=False)

        results = run_demo(str(out), num=args.num, quiet=args.quiet, steps_bar=steps_bar, device=args.device)
    table = markdown_table(results, args.num)
    flags = " --exact" if args.exact else ""
    text = f"Made by `ddpmkit demo{flags} --out {out} --num {args.num}` on {describe_machine()}.\n\n{table}\n"
    write_text(out.with_suffix(".md"), text)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
