"""Reports: the one markdown table writer every table goes through, CSV and JSON files, and the
plot of FID against cost.

``table`` renders cells the caller has formatted; a caller decides what a number looks like, the
writer decides what a table looks like (one header row, a ``|---|`` rule, ``| a | b |`` rows, an
empty cell as ``| |``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
from collections.abc import Iterable, Sequence

from ..files import atomic_path, write_text


def _row(cells: Sequence[object]) -> str:
    return "|" + "|".join(" " if c is None or c == "" else f" {c} " for c in cells) + "|"


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table: ``header`` (column titles), then one line per row of cells (each turned into
    text with ``str``; None or "" is an empty cell). No trailing newline. A row with another number
    of cells than the header is an error."""
    header = list(header)
    lines = [_row(header), "|" + "---|" * len(header)]
    for i, cells in enumerate(rows):
        cells = list(cells)
        if len(cells) != len(header):
            raise ValueError(f"table row {i} has {len(cells)} cells for {len(header)} columns: {cells}")
        lines.append(_row(cells))
    return "\n".join(lines)


def write_json(path: str | os.PathLike, data) -> None:
    """``data`` as indented JSON (one space), with a final newline, written atomically."""
    write_text(path, json.dumps(data, indent=1) + "\n")


def write_result(stem: str | os.PathLike, data, markdown: str) -> None:
    """A benchmark's results: ``data`` as STEM.json and ``markdown`` as STEM.md (a final newline
    added), the folder made where missing, each file written atomically."""
    stem = pathlib.Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_name(stem.name + ".json"), data)
    write_text(stem.with_name(stem.name + ".md"), markdown.rstrip("\n") + "\n")


def write_csv(path: str | os.PathLike, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """``rows`` (dicts) as CSV with ``columns`` (other keys are left out), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def plot_fid(rows: list[dict], floor: dict, path: str | os.PathLike) -> None:
    """FID (± its standard error) against NFE and against seconds per image, one line per
    ``sampler`` label of ``rows``, both axes logarithmic, the data floor dashed; a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label in dict.fromkeys(r["sampler"] for r in rows):
        mine = [r for r in rows if r["sampler"] == label]
        fid, se = [r["fid"] for r in mine], [r["fid_se"] for r in mine]
        axes[0].errorbar([r["nfe"] for r in mine], fid, yerr=se, fmt="o-", capsize=2, label=label)
        axes[1].errorbar([r["seconds_per_image"] for r in mine], fid, yerr=se, fmt="o-", capsize=2, label=label)
    for ax, xlabel in zip(axes, ("network evaluations (NFE)", "seconds per image")):
        ax.axhline(floor["fid"], color="grey", ls="--", lw=1, label="data floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FID (shipped feature network)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(pathlib.Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
