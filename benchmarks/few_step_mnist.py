"""Few-step sampling of the shipped MNIST model: our samplers and diffusers' schedulers on the same
network, the same x_T and the same NFE, scored by FID against MNIST.

    .venv/bin/python benchmarks/few_step_mnist.py [--nfe 5] [--num 10000] [--rows ours,diffusers]
        [--ours SAMPLER@GRID,...] [--grid SAMPLER=MODEL_FILE ...]

Each row samples seeds 0..num-1 (x_T from ``ddpmkit.rng``, so every row starts from the same noise)
and scores them with the package's MNIST feature network (FID and IS, as ``ddpmkit eval`` does).
Our rows run through ``LoadedModel.sample``; diffusers' rows run its scheduler's own loop
(``ddpmkit.measure.exact.diffusers_sample``) on the same network, micro-batched the same way, on
the grids ``--diffusers-grids`` names (trailing by default; leading was their best at 5 NFE on the
exact-denoiser benchmark). ``--grid unipc=runs/m.safetensors``
adds a row for a grid that ``ddpmkit tune`` stored in another copy of the model (the sampler's tuned
grid at this NFE); ``--ems runs/m.safetensors`` names the copy that holds DPM-Solver-v3's statistics. Writes benchmarks/results/few_step_mnist.json and .md, after every row (a rerun
keeps the rows already there unless --fresh).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

from ddpmkit.images import to_levels
from ddpmkit.machine import describe_machine, keep_freed_memory
from ddpmkit.measure.exact import DIFFUSERS_GRIDS, diffusers_sample
from ddpmkit.measure.reference import load_reference
from ddpmkit.measure.report import table, write_result
from ddpmkit.measure.score import score
from ddpmkit.models import load_model
from ddpmkit.rng import SeededNoise
from ddpmkit.sampling import MICRO_BATCH, MicroBatched

ROOT = pathlib.Path(__file__).resolve().parents[1]
OURS = [  # (label, sampler, options, spacing): the rows of the README's sampler table, and unipc on trailing
    ("ddim", "ddim", {}, "trailing"),
    ("ddpm", "ddpm", {}, "trailing"),
    ("unipc", "unipc", {}, "trailing"),
    ("unipc", "unipc", {}, "logsnr"),
    ("dpmpp-2m", "dpmpp-2m", {}, "logsnr"),
    ("dpmpp-2m-sde", "dpmpp-2m-sde", {}, "logsnr"),
    ("dpm-solver-v3", "dpm-solver-v3", {}, "trailing"),  # these two run on --ems's copy of the model
    ("dpm-solver-v3", "dpm-solver-v3", {}, "logsnr"),
]
DIFFUSERS = [  # (label, scheduler class, keyword arguments)
    ("diffusers DDIM", "DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}),
    ("diffusers DPM++ 2M", "DPMSolverMultistepScheduler", {"solver_order": 2}),
    ("diffusers DPM++ 3M", "DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("diffusers UniPC", "UniPCMultistepScheduler", {}),
    ("diffusers DEIS", "DEISMultistepScheduler", {"solver_order": 3}),
]


def measure(x: torch.Tensor, ref, data_range) -> dict:
    s = score(to_levels(x, ref.levels, data_range), ref, precision_recall=False)
    return {"fid": s["fid"], "fid_se": s["fid_se"], "is": s["is"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nfe", type=int, default=5)
    p.add_argument("--num", type=int, default=10000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--rows", default="diffusers,ours")
    p.add_argument("--diffusers-grids", default="trailing", metavar="GRID,...",
                   help="diffusers' grids to run: trailing, and those of ddpmkit.measure.exact.DIFFUSERS_GRIDS")
    p.add_argument("--diffusers", default=None, metavar="LABEL,...", help="only these diffusers rows")
    p.add_argument("--ours", default=None, metavar="SAMPLER@GRID,...",
                   help="only these of our rows, e.g. ddim@trailing,unipc@logsnr (default: all)")
    p.add_argument("--grid", action="append", default=[], metavar="SAMPLER=MODEL_FILE")
    p.add_argument("--ems", default=None, metavar="MODEL_FILE",
                   help="the copy of the model that `ddpmkit ems` wrote, for the dpm-solver-v3 rows (skipped without)")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "few_step_mnist"))
    args = p.parse_args(argv)
    keep_freed_memory()
    out = pathlib.Path(args.out)
    before = {} if args.fresh or not out.with_suffix(".json").exists() else json.loads(
        out.with_suffix(".json").read_text())
    done = before.get("rows", [])
    command = ("python benchmarks/few_step_mnist.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    commands = [*before.get("commands", []), command]
    model, ref = load_model("mnist"), load_reference("mnist")
    batches = [range(lo, min(lo + args.batch, args.num)) for lo in range(0, args.num, args.batch)]
    rows = []
    if "diffusers" in args.rows:
        chosen = None if args.diffusers is None else set(args.diffusers.split(","))
        for grid in args.diffusers_grids.split(","):
            extra = {} if grid == "trailing" else DIFFUSERS_GRIDS[grid][0]
            rows += [(label, grid, "diffusers", (cls, {**kw, **extra})) for label, cls, kw in DIFFUSERS
                     if chosen is None or label in chosen]
    for spec in args.grid:
        name, path = spec.split("=", 1)
        rows.append((name, f"tuned ({pathlib.Path(path).name})", "tuned", (name, path)))
    if "ours" in args.rows:
        wanted = None if args.ours is None else set(args.ours.split(","))
        rows += [(label, spacing, "ours", (name, opts, spacing)) for label, name, opts, spacing in OURS
                 if (wanted is None or f"{label}@{spacing}" in wanted) and (name != "dpm-solver-v3" or args.ems)]
    with_ems = load_model(args.ems) if args.ems else None
    net = MicroBatched(model.net, MICRO_BATCH)
    for label, grid, kind, what in rows:
        if any(r["sampler"] == label and r["grid"] == grid and r["nfe"] == args.nfe and r["num"] == args.num
               for r in done):
            continue
        start = time.perf_counter()
        with torch.no_grad():
            if kind == "diffusers":
                cls, kw = what
                xs = [diffusers_sample(cls, kw, model.schedule, net, SeededNoise(b, model.shape)(), args.nfe)[0]
                      for b in batches]
                timesteps = None
            else:
                name, spec = what[0], what[1:]
                m = load_model(spec[0]) if kind == "tuned" else with_ems if name == "dpm-solver-v3" else model
                plan = m.plan(sampler=name, steps=args.nfe, **({} if kind == "tuned" else {"spacing": spec[1]}),
                              **(spec[0] if kind == "ours" else {}))
                xs = [m.sample(plan, seeds=b, batch_size=args.batch) for b in batches]
                timesteps = plan.timesteps
        x = torch.cat(xs).clamp(-1, 1)
        seconds = time.perf_counter() - start
        row = {"sampler": label, "grid": grid, "source": "diffusers" if kind == "diffusers" else "ddpmkit",
               "nfe": args.nfe, "num": args.num, "timesteps": timesteps, "seconds": seconds,
               **measure(x, ref, model.data_range)}
        done.append(row)
        print(f"  {label:<20} {grid:<24} FID {row['fid']:.2f} ± {row['fid_se']:.2f}  IS {row['is']:.2f}  "
              f"{seconds:.0f} s", flush=True)
        write(out, done, commands)
    return 0


def write(out: pathlib.Path, rows: list[dict], commands: list[str]) -> None:
    """The JSON and markdown of ``rows``, made by ``commands`` (each run adds its rows)."""
    result = {"commands": commands, "machine": describe_machine("cpu"), "rows": rows}
    lines = []
    for nfe in sorted({r["nfe"] for r in rows}):
        mine = sorted((r for r in rows if r["nfe"] == nfe), key=lambda r: r["fid"])
        best = {s: min((r["fid"] for r in mine if r["source"] == s), default=None) for s in ("ddpmkit", "diffusers")}
        ratio = (f"; ours / diffusers' best: {best['ddpmkit'] / best['diffusers']:.2f}"
                 if best["ddpmkit"] and best["diffusers"] else "")
        lines += [f"\n## {nfe} NFE, {mine[0]['num']} samples{ratio}\n",
                  table(["sampler", "grid", "FID", "IS", "timesteps", "s"],
                        [[r["sampler"], r["grid"], f"{r['fid']:.2f} ± {r['fid_se']:.2f}", f"{r['is']:.2f}",
                          ", ".join(f"{t:g}" for t in r["timesteps"]) if r["timesteps"] else "",
                          f"{r['seconds']:.0f}"] for r in mine])]
    made = "; ".join(f"`{c}`" for c in commands)
    write_result(out, result, f"# Few-step sampling of the shipped MNIST model\n\nMade by {made} "
               f"on {result['machine']}: the same network, seeds and x_T for every row; FID and IS by the "
               "package's MNIST feature network against the MNIST test set (± the bootstrap error); sorted by "
               "FID.\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
