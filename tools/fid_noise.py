"""How noisy is FID on the shipped MNIST feature network? Writes fid-noise.json and fid-noise.md.

    python tools/fid_noise.py --out docs/bench-mnist EVAL.json [EVAL.json ...] [--data-dir ../shared/data/mnist]

Each EVAL.json is a ``ddpmkit eval`` report whose samples are in the cache (``--cache``); nothing is
sampled here. For every report: its FID with the bootstrap standard error, and the FIDs of its
disjoint 2000-seed blocks with the bootstrap error at 2000. For every pair of reports: the FID
difference on the same seeds with its paired bootstrap error. With ``--data-dir``: the spread of the
FID of real training images in disjoint random subsets of 2000 and 10,000 (the data floor's noise).
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import sys

import numpy as np
import torch

from ddpmkit.data import load_dataset
from ddpmkit.files import write_text
from ddpmkit.measure import features_of, generate, load_reference, metrics, missing_chunks, report_plan
from ddpmkit.measure.report import table, write_json
from ddpmkit.models import load_model
from ship_results import label  # this folder is on sys.path when the tool runs as a script

BLOCK = 2000


def cached_features(report: dict, ref, cache: pathlib.Path) -> torch.Tensor:
    """The features of an eval report's samples, read from the cache (refused if any chunk is missing)."""
    return cached_predictions(report, ref, cache)[0]


def cached_predictions(report: dict, ref, cache: pathlib.Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The feature network's (features, class probabilities) of an eval report's cached samples."""
    model = load_model(report["model"])
    plan = report_plan(model, report)
    where = dict(num=report["num"], seed=report["seed"], levels=ref.levels, cache_dir=cache)
    missing = missing_chunks(model, plan, **where)
    if missing:
        raise SystemExit(f"{len(missing)} sample chunks of {report['sampler']} {report['steps']} are not in "
                         f"{missing[0].parent}; run its ddpmkit eval command first")
    levels, _ = generate(model, plan, **where)
    return features_of(levels, ref)


def fid(feats, ref) -> float:
    return metrics.frechet_distance(*metrics.feature_statistics(feats), ref.mu, ref.sigma)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reports", nargs="+", help="ddpmkit eval JSON reports with cached samples")
    p.add_argument("--out", required=True, help="folder for fid-noise.json and fid-noise.md")
    p.add_argument("--cache", default=".ddpmkit-cache")
    p.add_argument("--data-dir", help="MNIST idx folder, for the real-data spread")
    p.add_argument("--resamples", type=int, default=100)
    args = p.parse_args(argv)
    ref = load_reference("mnist")
    rows, feats = [], {}
    for path in args.reports:
        report = json.loads(pathlib.Path(path).read_text())
        f = cached_features(report, ref, pathlib.Path(args.cache))
        name = label(report)
        feats[name] = f
        blocks = [fid(f[b:b + BLOCK], ref) for b in range(0, len(f) - BLOCK + 1, BLOCK)]
        rows.append({"sampler": name, "num": len(f), "fid": fid(f, ref),
                     "fid_se": metrics.fid_standard_error(f, ref.mu, ref.sigma, args.resamples),
                     "block_fids": blocks,
                     "block_fid_se": metrics.fid_standard_error(f[:BLOCK], ref.mu, ref.sigma, args.resamples)})
        print(f"{name}: FID {rows[-1]['fid']:.2f} ± {rows[-1]['fid_se']:.2f}", flush=True)
    pairs = [{"a": a, "b": b, "difference": fid(feats[a], ref) - fid(feats[b], ref),
              "paired_se": metrics.fid_difference_standard_error(feats[a], feats[b], ref.mu, ref.sigma,
                                                                 args.resamples)}
             for a, b in itertools.combinations(feats, 2) if len(feats[a]) == len(feats[b])]
    real = None
    if args.data_dir:
        images = load_dataset("mnist", args.data_dir, split="train").images
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))[:30000]
        f = features_of(images[order].numpy(), ref)[0]
        real = {n: [fid(f[b:b + n], ref) for b in range(0, len(f), n)] for n in (BLOCK, 10000)}
    result = {"reference": ref.info["reference"], "resamples": args.resamples, "rows": rows, "pairs": pairs,
              "real_subsets": real, "floor": ref.info["floor"]["fid"]}
    out = pathlib.Path(args.out)
    write_json(out / "fid-noise.json", result)
    write_text(out / "fid-noise.md", markdown(result, " ".join(["python tools/fid_noise.py", *sys.argv[1:]])))
    print(f"wrote {out}/fid-noise.json and fid-noise.md")
    return 0


def markdown(result: dict, command: str) -> str:
    lines = ["# How noisy is FID here?", "", f"`{command}` — against the {result['reference']}, with the shipped "
             f"MNIST feature network; ± is the bootstrap standard error ({result['resamples']} resamples of the "
             "samples, the reference fixed).", "",
             table(["sampler", f"FID ({result['rows'][0]['num']})", f"FID of each disjoint {BLOCK}-seed block",
                    f"bootstrap error at {BLOCK}"],
                   [[r["sampler"], f"{r['fid']:.2f} ± {r['fid_se']:.2f}",
                     f"{', '.join(f'{b:.1f}' for b in r['block_fids'])} (spread {np.std(r['block_fids'], ddof=1):.1f})",
                     f"{r['block_fid_se']:.2f}"] for r in result["rows"]])]
    if result["pairs"]:
        lines += ["", "Differences on the same seeds, with the paired bootstrap error:", "",
                  table(["a", "b", "FID(a) - FID(b)", "paired error"],
                        [[p["a"], p["b"], f"{p['difference']:.2f}", f"{p['paired_se']:.2f}"] for p in result["pairs"]])]
    if result["real_subsets"]:
        lines += ["", f"Real MNIST training images in disjoint random subsets (the shipped 10k floor is "
                  f"{result['floor']:.2f}):", "",
                  table(["subset size", "subsets", "FID mean", "FID spread (sd)", "range"],
                        [[n, len(v), f"{np.mean(v):.2f}", f"{np.std(v, ddof=1):.2f}", f"{min(v):.2f}–{max(v):.2f}"]
                         for n, v in result["real_subsets"].items()])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
