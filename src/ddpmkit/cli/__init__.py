"""The ``ddpmkit`` command. Each subcommand is one small module here that parses its arguments
into calls of the library (a Plan, a LoadedModel, ``measure``); ``common`` holds what they share."""

from __future__ import annotations

import sys

from .. import __version__
from . import bench, demo, distill, eval, export, moments, sample, samplers, train, tune
from .common import FMT, Parser

COMMANDS = (train, distill, sample, eval, bench, tune, moments, export, samplers, demo)


def build_parser() -> Parser:
    p = Parser(prog="ddpmkit", description="Diffusion models built around sampling.", formatter_class=FMT)
    p.add_argument("--version", action="version", version=f"ddpmkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv=None) -> int:
    from ..machine import keep_freed_memory

    args = build_parser().parse_args(argv)
    keep_freed_memory()  # activations are reallocated at every network call: keep their pages mapped
    try:
        args.func(args)
    except (ValueError, OSError) as e:  # includes CheckpointError; an unwritable path: one line, no traceback
        print(f"ddpmkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddpmkit {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
