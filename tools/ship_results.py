"""Collect the 10k-sample measurements of the shipped models into assets/models/results.json.

    python tools/ship_results.py BENCH_OR_EVAL.json [...]

Each file is a ``ddpmkit bench`` bench.json or a ``ddpmkit eval`` JSON; every row becomes an entry
keyed like the demo's rows ("unipc 20", "cm 1"; "ddim:eta=0.5 20" with sampler options), so ``ddpmkit demo`` can print the shipped 10k
numbers beside what it measures now. Existing entries are kept unless a file measures them again.
"""

from __future__ import annotations

import json
import pathlib
import sys

from ddpmkit.files import write_text
from ddpmkit.models import SHIPPED_DIR

KEEP = ("fid", "fid_se", "is", "kid", "precision", "recall", "class_frequencies", "nfe", "num", "seconds_per_image")


def rows_of(path: pathlib.Path) -> list[dict]:
    data = json.loads(path.read_text())
    return data["rows"] if "rows" in data else [data]


def label(row: dict) -> str:
    """"ddim 20" for a sampler at its defaults, "ddim:eta=0.5 20" with options (a bench row carries
    them in its spec, an eval row in ``options``), so that no row overwrites another's entry."""
    head, _, opts = row["sampler"].partition(":")
    opts = opts or ",".join(f"{k}={v}" for k, v in sorted(row.get("options", {}).items()))
    return f"{head.split('@')[0]}{':' + opts if opts else ''} {row['nfe']}"


def main(paths: list[str]) -> int:
    out = SHIPPED_DIR / "results.json"
    results = json.loads(out.read_text()) if out.is_file() else {}
    for p in map(pathlib.Path, paths):
        for row in rows_of(p):
            results[label(row)] = {k: row[k] for k in KEEP if k in row} | {"source": p.name}
    write_text(out, json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}: {', '.join(sorted(results))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
