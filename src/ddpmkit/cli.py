"""The ``ddpmkit`` command."""

from __future__ import annotations

import argparse
import pathlib
import platform
import sys

import torch

from . import __version__
from .samplers import SAMPLERS, describe, sampler_options


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def _cmd_samplers(args) -> None:
    for name in SAMPLERS:
        opts = ", ".join(f"{k}={v!r}" for k, v in sampler_options(name).items()) or "no options"
        print(f"{name:<8} {opts}\n         {describe(name)}")


def _cmd_demo(args) -> None:
    from .demo import markdown_table, run_demo
    from .files import write_text

    out = pathlib.Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out} must name a .png file")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.quiet:
        print(f"Sampling the exact denoiser of the 8x8 digits, {args.num} samples per sampler:")
    results = run_demo(str(out), num=args.num, quiet=args.quiet)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    table = markdown_table(results, args.num)
    text = (f"Made by `ddpmkit demo --out {out} --num {args.num}` (ddpmkit {__version__}; {machine}).\n\n"
            f"{table}\n")
    write_text(out.with_suffix(".md"), text)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="ddpmkit", description="Diffusion models built around sampling.", formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"ddpmkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", formatter_class=fmt, help="sample the exact digits denoiser with several samplers",
                       description="Sample the exact (closed-form) denoiser of the 8x8 digits with DDPM and DDIM on "
                       "the same seeds; write an image grid and a table of NFE, wall time and distance to the data.")
    d.add_argument("--out", default="out/demo.png", help="PNG grid to write; a .md table is written beside it")
    d.add_argument("--num", type=positive_int, default=200, help="samples per sampler for the table")
    d.add_argument("--quiet", action="store_true", help="print only the table")
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser("samplers", formatter_class=fmt, help="list the samplers with their options and defaults")
    s.set_defaults(func=_cmd_samplers)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as e:
        print(f"ddpmkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddpmkit {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
