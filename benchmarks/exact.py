"""Exact-denoiser benchmark: error vs NFE for ddpmkit's samplers and diffusers' schedulers.

    .venv/bin/python benchmarks/exact.py [--data-dir ../shared/data/mnist] [--num 256]

Writes benchmarks/results/exact.json and exact.md. See ddpmkit.exact_benchmark for the method.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

from ddpmkit import NoiseSchedule
from ddpmkit.analytic import estimate_eps_moment
from ddpmkit.data import load_dataset
from ddpmkit.exact_benchmark import image_mixture, run
from ddpmkit.files import write_text
from ddpmkit.machine import describe_machine

ROOT = pathlib.Path(__file__).resolve().parents[1]


def markdown(result: dict, command: str) -> str:
    nfes, rows = result["nfes"], result["rows"]
    labels = list(dict.fromkeys((r["sampler"], r["spacing"]) for r in rows))

    def cell(label, nfe, key, fmt):
        r = next((r for r in rows if (r["sampler"], r["spacing"]) == label and r["nfe_budget"] == nfe), None)
        if r is None or r[key] is None:
            return "—"
        return fmt(r[key]) + ("" if r["nfe"] == nfe else f" ({r['nfe']})")

    head = "| sampler | grid | " + " | ".join(f"NFE {n}" for n in nfes)
    out = [f"# Exact-denoiser benchmark\n\nMade by `{command}` on {result['machine']}, "
           f"{result['seconds']:.0f} s. Data: a mixture of {result['mixture']['components']} Gaussians "
           f"centred on {result['data']} images, std {result['mixture']['std']}, shape "
           f"{tuple(result['mixture']['shape'])}; {result['num']} samples from the same x_T for every "
           f"sampler. Schedule: {result['schedule']['name']}, T = {result['schedule']['T']}, eps prediction. "
           "A number in brackets is the NFE actually used where the budget could not be met exactly.\n",
           "## RMS error of x_0 against the exact probability-flow ODE solution (deterministic samplers)\n",
           f"Reference: Heun with {result['reference_steps']} Karras steps in float64; its RMS distance to the "
           f"run with half the steps is {result['reference_check']:.1e}.\n",
           head + " | fitted order |", "|---|---|" + "---|" * len(nfes) + "---|"]
    for label in labels:
        first = next(r for r in rows if (r["sampler"], r["spacing"]) == label)
        if first["rms_error"] is None:
            continue
        order = result["orders"].get(f"{label[0]} / {label[1]}")
        order_text = f"{order:.2f}" if order is not None else "—"
        out.append(f"| {label[0]} | {label[1]} | "
                   + " | ".join(cell(label, n, "rms_error", lambda v: f"{v:.2e}") for n in nfes) + f" | {order_text} |")
    out.append("")
    out += ["Orders are fitted over all five NFE; on this mixture (std 0.1) DDIM and Euler are still "
            "pre-asymptotic at 100 NFE. On the single-Gaussian oracle the test suite measures 1.0 (DDIM, "
            "Euler), 2.0 (Heun, DPM-Solver++(2M)), 2-2.7 (3M, first-order start) and 3.0 (UniPC-2 with "
            "its corrector). Trailing grids end at t = T/N - 1 and jump from there to clean data with "
            "x0_hat, which shrinks samples towards their component's mean: low ODE error, yet off the "
            "components (last table); Karras and logSNR grids end at t = 0.",
            "\n## Frechet distance to the mixture's exact moments (top-16 principal subspace)\n",
            f"Sampling floor (exact draws, same number): {result['floor']['fd']:.4f}; the ODE reference: "
            f"{result['reference']['fd']:.4f}.\n", head + " |", "|---|---|" + "---|" * len(nfes)]
    for label in labels:
        out.append(f"| {label[0]} | {label[1]} | "
                   + " | ".join(cell(label, n, "fd", lambda v: f"{v:.4f}") for n in nfes) + " |")
    out += ["\n## Fraction of samples that reach the reference's component (deterministic samplers)\n",
            head + " |", "|---|---|" + "---|" * len(nfes)]
    for label in labels:
        if next(r for r in rows if (r["sampler"], r["spacing"]) == label)["same_component"] is None:
            continue
        out.append(f"| {label[0]} | {label[1]} | "
                   + " | ".join(cell(label, n, "same_component", lambda v: f"{v:.3f}") for n in nfes) + " |")
    out += ["\n## Fraction of samples on a mixture component\n",
            f"Exact draws: {result['floor']['on_component']:.2f}; the ODE reference: "
            f"{result['reference']['on_component']:.2f}.\n", head + " |", "|---|---|" + "---|" * len(nfes)]
    for label in labels:
        out.append(f"| {label[0]} | {label[1]} | "
                   + " | ".join(cell(label, n, "on_component", lambda v: f"{v:.2f}") for n in nfes) + " |")
    return "\n".join(out) + "\n"


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
    result.update(seconds=time.perf_counter() - start, machine=describe_machine(), data=name, reference_steps=args.reference_steps)
    command = "python benchmarks/exact.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out.with_suffix(".json"), json.dumps(result, indent=1))
    write_text(out.with_suffix(".md"), markdown(result, command.strip()))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
