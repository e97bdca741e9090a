"""``ddpmkit samplers``: every registered sampler with its options, their defaults and its paper."""

from __future__ import annotations

from .common import FMT


def add_parser(sub) -> None:
    sub.add_parser("samplers", formatter_class=FMT,
                   help="list the samplers with their options and defaults").set_defaults(func=run)


def run(args) -> None:
    from ..samplers import SAMPLERS, describe, sampler_options

    for name in SAMPLERS:
        opts = ", ".join(f"{k}={v!r}" for k, v in sampler_options(name).items()) or "no options"
        print(f"{name:<16} {opts}\n{'':<17}{describe(name)}")
