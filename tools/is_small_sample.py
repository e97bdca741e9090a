"""How far below its 10k value does IS read on a few hundred samples? Writes is-small-sample.json and .md.

    python tools/is_small_sample.py --out docs/bench-mnist docs/bench-mnist/first500/*.json

Each argument is a ``ddpmkit eval`` report whose samples are in the cache (``--cache``); nothing is
sampled here. For every report: IS as ``eval`` reports it (10 splits, Salimans et al. 2016), IS on
one split of all its samples with a bootstrap standard error, and the row's IS on 10k samples from
the shipped ``results.json`` where it has one. IS's marginal p(y) is estimated within a split, so
the split's size biases it: splits of 50 read far below splits of 1000, one split of 500 much less.
For rows without a 10k value the table gives the range that the measured rows' offsets predict,
± the row's own bootstrap error (the measured rows share seeds and make similar digits, so their
offsets agree more closely than a row with other digits need).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from ddpmkit.files import write_text
from ddpmkit.measure import load_reference, metrics
from ddpmkit.measure.report import table, write_json
from ddpmkit.models import SHIPPED_DIR
from fid_noise import cached_predictions  # this folder is on sys.path when the tool runs as a script
from ship_results import label


def one_split_is(probs: np.ndarray, resamples: int, seed: int = 0) -> tuple[float, float]:
    """IS on one split of all rows, and its bootstrap standard error (rows resampled with replacement)."""
    rng = np.random.default_rng(seed)
    n = len(probs)
    boot = [metrics.inception_score(probs[rng.integers(0, n, n)], splits=1)[0] for _ in range(resamples)]
    return metrics.inception_score(probs, splits=1)[0], float(np.std(boot, ddof=1))


def row_cells(r: dict, offsets: list[float]) -> list[str]:
    """A row of the table: IS both ways, and the 10k IS (measured, or predicted from the offsets)."""
    if r["is_10k"] is not None:
        ten_k, gap = f"{r['is_10k']:.2f}", f"{r['is_10k'] - r['is_one_split']:+.3f}"
    elif offsets:
        ten_k, gap = (f"predicted {r['is_one_split'] + min(offsets):.2f}–{r['is_one_split'] + max(offsets):.2f} "
                      f"(± {r['is_one_split_se']:.2f})"), ""
    else:
        ten_k, gap = "not measured", ""
    return [r["sampler"], f"{r['is_10_splits']:.2f}", f"{r['is_one_split']:.2f} ± {r['is_one_split_se']:.2f}", ten_k,
            gap]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reports", nargs="+", help="ddpmkit eval JSON reports with cached samples")
    p.add_argument("--out", required=True, help="folder for is-small-sample.json and is-small-sample.md")
    p.add_argument("--cache", default=".ddpmkit-cache")
    p.add_argument("--resamples", type=int, default=200)
    args = p.parse_args(argv)
    ref = load_reference("mnist")
    shipped = json.loads((SHIPPED_DIR / "results.json").read_text())
    rows = []
    for path in args.reports:
        report = json.loads(pathlib.Path(path).read_text())
        probs = cached_predictions(report, ref, pathlib.Path(args.cache))[1].numpy()
        name = label(report)
        entry = shipped.get(name, {})
        ten_k = entry["is"] if entry.get("num") == 10000 else None
        one, se = one_split_is(probs, args.resamples)
        rows.append({"sampler": name, "num": len(probs), "is_10_splits": metrics.inception_score(probs, 10)[0],
                     "is_one_split": one, "is_one_split_se": se, "is_10k": ten_k})
        print(f"{name}: IS {rows[-1]['is_10_splits']:.3f} (10 splits), {one:.3f} ± {se:.3f} (one split)", flush=True)
    offsets = [r["is_10k"] - r["is_one_split"] for r in rows if r["is_10k"] is not None]
    n = rows[0]["num"]
    lines = ["# IS on a few hundred samples against IS on 10k", "",
             f"`python tools/is_small_sample.py --out {args.out} {' '.join(args.reports)}` — IS by the shipped MNIST "
             f"feature network; ± is the bootstrap standard error over the samples ({args.resamples} resamples). "
             f"IS on 10k is the model card's (10 splits of 1000).", "",
             table(["sampler", f"IS, 10 splits of {n // 10}", f"IS, one split of {n}", "IS on 10k",
                    "10k minus one split"], [row_cells(r, offsets) for r in rows])]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "is-small-sample.md", "\n".join(lines) + "\n")
    write_json(out / "is-small-sample.json", {"rows": rows, "offsets": offsets})
    print(f"wrote {out}/is-small-sample.md and is-small-sample.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
