"""The main job: the shipped MNIST models sampled with several samplers on the same seeds.

Every row draws the same seeds, so a column of the grid is one starting noise seen through each
sampler. The table gives the network evaluations (NFE), the wall time measured now on this machine,
and FID measured now on the ``num`` samples beside the data floor at the same sample size (FID is
biased upwards at small sizes, so only the difference to the floor means anything), and the FID
and IS of 10,000 samples measured when the model shipped (its card, ``assets/models/README.md``).
"""

from __future__ import annotations

import json
import time

from ..checkpoint import CheckpointError
from ..images import labelled_grid, save_image, to_levels
from ..models import SHIPPED_DIR, load_model
from ..schedule import format_grid
from . import report
from .reference import floor_at, load_reference
from .score import score

# (label, model, sampler, steps, options, spacing); spacing None takes the model's tuned grid
BATCH = 200  # samples advanced together: the default 200 in one batch (13 micro-batches, 8 of padding)

ROWS = [
    ("ddim 10", "mnist", "ddim", 10, {}, "trailing"),
    ("unipc 10", "mnist", "unipc", 10, {}, "logsnr"),
    ("unipc 20", "mnist", "unipc", 20, {}, "logsnr"),
    ("dpmpp-2m-sde 20", "mnist", "dpmpp-2m-sde", 20, {}, "logsnr"),
    ("ddpm 20", "mnist", "ddpm", 20, {}, "trailing"),
    ("cm 1", "mnist-cm", "cm", 1, {}, None),
    ("cm 2", "mnist-cm", "cm", 2, {}, None),
]


def shipped_results() -> dict:
    """The 10k-sample measurements that shipped with the models, by row label."""
    path = SHIPPED_DIR / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def run_demo(out_png: str, num: int = 200, show: int = 12, quiet: bool = False, steps_bar=None,
             device="cpu") -> list[dict]:
    """Every row of ``ROWS`` on seeds 0..num-1, on ``device``: NFE, seconds, FID against the shipped
    MNIST reference; the first ``show`` samples of each row go to the grid ``out_png``. ``steps_bar(label,
    total)``, where given, returns a bar for the row's sampler steps (``update(1)``, ``close()``)."""
    ref = load_reference("mnist")
    models, rows, results = {}, [], []
    shipped = shipped_results()
    for label, name, sampler, steps, opts, spacing in ROWS:
        if name not in models:
            try:
                models[name] = load_model(name, device=device)
            except CheckpointError as e:  # a shipped model missing from this installation
                models[name] = None
                print(f"  skipping the {name} rows: {e}", flush=True)
        m = models[name]
        if m is None:
            continue
        start = time.perf_counter()
        plan = m.plan(sampler=sampler, steps=steps, spacing=spacing, **opts)
        bar = steps_bar(label, plan.steps * -(-num // BATCH)) if steps_bar is not None else None
        x, info = m.sample(plan, seeds=range(num), batch_size=BATCH, return_info=True,
                           callback=(lambda *a: bar.update(1)) if bar is not None else None)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        s = score(to_levels(x, ref.levels, m.data_range), ref, precision_recall=False)
        results.append({"sampler": label, "model": name, **plan.placed(), "nfe": info["nfe"],
                        "seconds": seconds, "num": num, "fid": s["fid"], "fid_se": s["fid_se"], "is": s["is"],
                        "classes": s["class_frequencies"], "shipped": shipped.get(label)})
        rows.append(x[:show])
        if not quiet:
            print(f"  {label:<10} {info['nfe']:>3} NFE  {seconds:6.1f} s  "
                  f"FID({num}) {s['fid']:.1f} ± {s['fid_se']:.1f}", flush=True)
    save_image(labelled_grid(rows, [r["sampler"] for r in results], scale=2), out_png)
    return results


def markdown_table(results: list[dict], num: int) -> str:
    """The demo's table: one line per row and the data floor's (at ``num`` and at 10k)."""
    ref = load_reference("mnist")
    floor, full = floor_at(ref, num), ref.info["floor"]
    lines = []
    for r in results:
        ship = r["shipped"] or {}
        fid10k = f"{ship['fid']:.2f}" if "fid" in ship else "—"
        is10k = f"{ship['is']:.2f}" if "is" in ship else "—"
        grid = f" (tuned t = {format_grid(r['timesteps'])})" if r.get("timesteps") else ""
        lines.append([f"{r['sampler']}{grid}", r["nfe"], f"{r['seconds']:.1f}", f"{r['fid']:.1f} ± {r['fid_se']:.1f}",
                      fid10k, is10k])
    lines.append(["real MNIST (data floor)", "", "", f"{floor['fid']:.1f}", f"{full['fid']:.2f}", f"{full['is']:.2f}"])
    return report.table(["sampler", "NFE", f"wall time (s, {num} samples)", f"FID ({num} samples)", "FID (10k)",
                         "IS (10k)"], lines)
