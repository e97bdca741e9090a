"""Micro-batching: what a fixed network batch costs, and what it makes bitwise.

    .venv/bin/python benchmarks/micro_batch.py [--model mnist] [--num 64] [--repeat 3]

On the CPU ``ddpmkit.sample`` runs the network on micro-batches of ``MICRO_BATCH`` samples, so that
sample i does not depend on the batch size. In one process this benchmark

- samples seeds 0..num-1 (dpmpp-2m, 10 steps) at batch sizes 1, 3, 7 and num, with the fixed
  micro-batch and with the whole batch per network call, and reports the largest difference of
  each from the same run at batch size num (0 means bitwise equal), at 1 and 2 torch threads, and
  between the thread counts;
- times sampling num samples at batch size num both ways (best of --repeat), at 1 and 2 threads.

Writes benchmarks/results/micro_batch.json and micro_batch.md.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

from ddpmkit.machine import describe_machine, keep_freed_memory
from ddpmkit.measure.report import table, write_result
from ddpmkit.models import load_model
from ddpmkit.sampling import MICRO_BATCH

ROOT = pathlib.Path(__file__).resolve().parents[1]
PLAN = {"sampler": "dpmpp-2m", "steps": 10}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    keep_freed_memory()  # as the ddpmkit command runs
    model = load_model(args.model)
    plan = model.plan(**PLAN)
    seeds = range(args.num)
    ways = {f"micro-batch {MICRO_BATCH}": MICRO_BATCH, "whole batch": None}
    start, rows, timing, by_threads = time.perf_counter(), [], [], {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for way, micro in ways.items():
            full = model.sample(plan, seeds=seeds, batch_size=args.num, micro_batch=micro)
            by_threads[threads, way] = full
            for batch in (1, 3, 7):
                x = model.sample(plan, seeds=seeds, batch_size=batch, micro_batch=micro)
                rows.append({"network batch": way, "threads": threads, "batch_size": batch,
                             "max_abs_difference": float((x - full).abs().max())})
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                model.sample(plan, seeds=seeds, batch_size=args.num, micro_batch=micro)
                times.append(time.perf_counter() - t0)
            timing.append({"network batch": way, "threads": threads, "seconds": min(times),
                           "ms_per_sample": 1000 * min(times) / args.num})
    threads_diff = {way: float((by_threads[1, way] - by_threads[2, way]).abs().max()) for way in ways}
    for threads in (1, 2):
        base = next(r for r in timing if r["threads"] == threads and r["network batch"] == "whole batch")
        for r in timing:
            if r["threads"] == threads:
                r["relative"] = r["seconds"] / base["seconds"]
    command = ("python benchmarks/micro_batch.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    result = {"command": command, "machine": describe_machine("cpu"), "model": str(model.path), "plan": plan.describe(),
              "num": args.num, "micro_batch": MICRO_BATCH, "seconds": time.perf_counter() - start,
              "batch_size_rows": rows, "timing_rows": timing, "one_vs_two_threads": threads_diff}
    md = [f"# Micro-batching: cost and bitwise reproducibility\n\nMade by `{command}` on {result['machine']}: "
          f"the `{args.model}` model, {plan.describe()}, seeds 0..{args.num - 1}.\n",
          f"## Largest difference from the same samples drawn at batch size {args.num}\n",
          table(["network batch", "threads", "batch size", "max abs difference"],
                [[r["network batch"], r["threads"], r["batch_size"], f"{r['max_abs_difference']:.2e}"] for r in rows]),
          "\n1 thread against 2, at batch size {}: {}.\n".format(
              args.num, "; ".join(f"{way} {d:.2e}" for way, d in threads_diff.items())),
          f"## Time to sample {args.num} at batch size {args.num} (best of {args.repeat})\n",
          table(["network batch", "threads", "seconds", "ms per sample", "relative"],
                [[r["network batch"], r["threads"], f"{r['seconds']:.2f}", f"{r['ms_per_sample']:.1f}",
                  f"{r['relative']:.2f}"] for r in timing])]
    write_result(pathlib.Path(args.out) / "micro_batch", result, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
