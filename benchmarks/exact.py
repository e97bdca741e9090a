"""Exact-denoiser benchmark: error vs NFE for ddpmkit's samplers and diffusers' schedulers.

    .venv/bin/python benchmarks/exact.py [--data-dir ../shared/data/mnist] [--num 256]

Writes benchmarks/results/exact.json and exact.md. See ddpmkit.measure.exact for the method.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

from ddpmkit import NoiseSchedule
from ddpmkit.analytic import estimate_eps_moment
from ddpmkit.data import load_dataset
from ddpmkit.machine import describe_machine
from ddpmkit.measure.exact import image_mixture, markdown, run
from ddpmkit.measure.report import write_result

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"),
                   help="MNIST idx files; without them the 8x8 digits are used")
    p.add_argument("--components", type=int, default=200)
    p.add_argument("--std", type=float, default=0.1)
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--nfe", default="5,10,20,50,100")
    p.add_argument("--reference-steps", type=int, default=2000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "exact"))
    args = p.parse_args(argv)
    try:
        data, name = load_dataset("mnist", args.data_dir), "MNIST training"
    except ValueError:
        data, name = load_dataset("digits"), "8x8 digits"
    schedule = NoiseSchedule("linear", 1000)
    gm = image_mixture(data.to_float(), args.components, args.std)
    start = time.perf_counter()
    moment = estimate_eps_moment(gm.model(schedule), schedule, gm.sample(256, torch.Generator().manual_seed(7)).float(),
                                 num_timesteps=50)
    result = run(gm, schedule, nfes=[int(n) for n in args.nfe.split(",")], num=args.num, eps_moment=moment,
                 reference_steps=args.reference_steps)
    result.update(seconds=time.perf_counter() - start, machine=describe_machine(), data=name,
                  reference_steps=args.reference_steps)
    command = "python benchmarks/exact.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_result(args.out, result, markdown(result, command.strip()))
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
