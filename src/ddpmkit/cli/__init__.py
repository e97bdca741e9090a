"""The ``ddpmkit`` command. Each subcommand is one small module here that parses its arguments
into calls of the library (a Plan, a LoadedModel, ``measure``); ``common`` holds what they share."""

from __future__ import annotations

import os
import signal
import sys

from .. import __version__
from . import bench, demo, distill, ems, eval, export, moments, sample, samplers, train, tune
from .common import FMT, Parser

COMMANDS = (train, distill, sample, eval, bench, tune, moments, ems, export, samplers, demo)


DEBUG_ENV = "DDPMKIT_DEBUG"  # set (to anything but 0 or empty), like --debug: tracebacks instead of one line


def build_parser() -> Parser:
    p = Parser(prog="ddpmkit", description="Diffusion models built around sampling.", formatter_class=FMT)
    p.add_argument("--version", action="version", version=f"ddpmkit {__version__}")
    p.add_argument("--debug", action="store_true",
                   help=f"show the traceback of an error instead of one line (or set {DEBUG_ENV}=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


# the commands that split their work between torchrun's processes (``ddpmkit.distributed``)
DISTRIBUTED = ("train", "sample", "eval", "bench")


def join_processes(args) -> None:
    """Under torchrun (WORLD_SIZE > 1): join the process group, take this process's device, and
    leave the progress bars to rank 0. The other commands run in one process and refuse, since
    each of the processes would run the whole command into the same files."""
    from .. import distributed

    if not distributed.launched():
        return
    if args.command not in DISTRIBUTED:
        world = os.environ.get("WORLD_SIZE")
        raise ValueError(f"WORLD_SIZE={world}: `ddpmkit {args.command}` runs in one process (under torchrun only "
                         f"{', '.join(DISTRIBUTED)} split their work); run it without torchrun")
    args.device = distributed.init(args.device)
    if not distributed.is_main():
        args.quiet = True


def main(argv=None) -> int:
    """Run one command. Every failure is one line on stderr and a non-zero exit: 2 for bad input or
    an unusable file (ValueError, OSError, CheckpointError), 1 for anything unforeseen, 130 on
    Ctrl-C, 143 on SIGTERM; a closed pipe (``ddpmkit samplers | head``) ends quietly. --debug re-raises."""
    from ..machine import Terminated, keep_freed_memory, raise_terminated

    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "0") not in ("", "0")
    keep_freed_memory()  # activations are reallocated at every network call: keep their pages mapped
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        join_processes(args)
        args.func(args)
    except BrokenPipeError:
        # the reader went away: nothing more to say, and nothing for the interpreter to flush at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        print(f"ddpmkit {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except (ValueError, OSError) as e:  # includes CheckpointError; an unwritable path: one line, no traceback
        if debug:
            raise
        print(f"ddpmkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if debug:
            raise
        what = str(e).splitlines()[0] if str(e) else ""
        print(f"ddpmkit {args.command}: error: {type(e).__name__}: {what} (an unforeseen failure: --debug shows "
              "where; please report it)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        from .. import distributed

        distributed.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
