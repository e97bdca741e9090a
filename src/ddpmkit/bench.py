"""``ddpmkit bench``: every sampler at every NFE on one model, measured alike.

For each (sampler, NFE): FID with its bootstrap error and its paired difference to the table's best
row, IS, KID, precision, recall (``evaluate.score_features`` against the shipped reference, with the
data floor), the NFE actually spent, seconds per image, images/s and the
process's peak memory; written as markdown, CSV and JSON, with plots of FID against NFE and
against wall time, a grid of the same seeds per sampler, and a trajectory figure (x_t and x0_hat
along the steps) for DDPM against DDIM.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
import resource
import sys
from typing import NamedTuple

import torch

from . import metrics
from .evaluate import Reference, generate, score_features
from .feature_net import predict
from .files import atomic_path, write_text
from .images import from_levels, grid_scale, labelled_grid, save_image
from .models import LoadedModel
from .samplers import parse_bool, sampler_options, steps_for_nfe
from .sampling import sample

PRESETS = {
    # the shape of the DDIM paper's Table 1: eta in {0, 0.2, 0.5, 1} and DDPM's large variance
    "ddim-table": {"samplers": ["ddim:eta=0.0", "ddim:eta=0.2", "ddim:eta=0.5", "ddim:eta=1.0", "ddpm:variance=large"],
                   "nfe": [10, 20, 50, 100, 1000]},
}


# the denoiser's options a spec may carry beside the sampler's, with the type of their values
DENOISING = {"clip": False, "threshold": 0.995}


def parse_sampler(spec: str) -> tuple[str, str, dict, str]:
    """``name[@spacing][:key=value,...]`` -> (label, name, options, spacing). Keys are the
    sampler's options or the denoiser's ``clip`` and ``threshold``; values are parsed as the
    option's default type."""
    head, _, opts = spec.partition(":")
    name, _, spacing = head.partition("@")
    valid = sampler_options(name) | DENOISING
    options = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in valid:
            raise ValueError(f"sampler spec {spec!r}: {item!r} is not KEY=VALUE with KEY one of: {', '.join(valid)}")
        options[key] = _parse_value(spec, key, value, valid[key])
    if options.get("clip") is False:  # the default: one cache key for "clip=false" and no clip
        del options["clip"]
    return spec, name, options, spacing or None  # None: the model's tuned grid where it has one, else trailing


def _parse_value(spec: str, key: str, value: str, default):
    """A spec's option value, read as the type of the option's default."""
    kind = parse_bool if isinstance(default, bool) else type(default)
    try:
        return kind(value)
    except ValueError:
        what = {parse_bool: "true or false", int: "an integer", float: "a number"}.get(kind, f"a valid {key}")
        raise ValueError(f"sampler spec {spec!r}: {key}={value!r} is not {what}") from None


class Planned(NamedTuple):
    """One row of a bench: a sampler spec at an NFE budget, with the steps and grid it gets."""
    label: str
    name: str
    options: dict
    budget: int
    steps: int
    spacing: str
    grid: list[float] | None


def plan(model: LoadedModel, specs: list[str], nfes: list[int], log=None):
    """The rows of a bench, spec by spec and budget by budget; a budget too small for one step of a
    sampler is skipped (and logged)."""
    for spec in specs:
        label, name, options, spacing = parse_sampler(spec)
        for budget in nfes:
            try:
                steps = steps_for_nfe(name, budget, model.schedule.T, **options)
            except ValueError:
                if log is not None:
                    log(f"  {label}: cannot fit into {budget} NFE, skipped")
                continue
            try:
                used, grid = model.plan_grid(name, steps, spacing)
            except ValueError as e:
                raise ValueError(f"sampler spec {label!r} at {budget} NFE: {e}") from None
            yield Planned(label, name, options, budget, steps, used, grid)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run(model: LoadedModel, ref: Reference, specs: list[str], nfes: list[int], *, num: int, seed: int,
        cache_dir, batch_size: int = 250, device="cpu", log=print) -> list[dict]:
    rows, features = [], []
    for p in plan(model, specs, nfes, log):
        levels, info = generate(model, sampler=p.name, steps=p.steps, spacing=p.spacing, options=p.options, num=num,
                                seed=seed, levels=ref.levels, cache_dir=cache_dir, batch_size=batch_size,
                                device=device, timesteps=p.grid)
        if device != "cpu" and torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = peak_rss_mb()
        feats, probs = predict(ref.net, from_levels(levels, ref.levels))
        row = {"sampler": p.label, "spacing": p.spacing, "timesteps": p.grid, "nfe_budget": p.budget,
               "steps": p.steps, "nfe": info["nfe"], "num": num, "seconds_per_image": info["seconds"] / num,
               "images_per_s": num / info["seconds"] if info["seconds"] > 0 else None,
               "peak_memory_mb": peak, **score_features(feats, probs, ref)}
        rows.append(row)
        features.append(feats)
        log(f"  {p.label:<24} NFE {row['nfe']:>4}  FID {row['fid']:.3f}  IS {row['is']:.2f}  "
            f"{row['seconds_per_image']:.4f} s/img")
    compare_to_best(rows, features, ref)
    return rows


def compare_to_best(rows: list[dict], features: list, ref: Reference) -> None:
    """Every row's FID minus the lowest FID of the table, with the paired bootstrap error of that
    difference (``metrics.fid_difference_standard_error``): all rows sample the same seeds, so the
    noise that the seeds share cancels, and a difference is real when it is several errors wide.
    Adds ``fid_vs_best`` and ``fid_vs_best_se`` to each row (0 and None for the best row)."""
    if not rows:
        return
    best = min(range(len(rows)), key=lambda i: rows[i]["fid"])
    for i, row in enumerate(rows):
        row["fid_vs_best"] = row["fid"] - rows[best]["fid"]
        row["fid_vs_best_se"] = None if i == best else metrics.fid_difference_standard_error(
            features[i], features[best], ref.mu, ref.sigma)


COLUMNS = ["sampler", "spacing", "nfe", "fid", "fid_se", "fid_vs_best", "fid_vs_best_se", "is", "kid", "precision",
           "recall", "seconds_per_image", "images_per_s", "peak_memory_mb"]


def markdown(rows: list[dict], floor: dict, header: str) -> str:
    lines = [header, "", "| sampler | grid | NFE | FID | FID − best | IS | KID | precision | recall | s/image | "
             "images/s | peak MB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ips = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "—"
        vs = "best" if r["fid_vs_best_se"] is None else f"+{r['fid_vs_best']:.2f} ± {r['fid_vs_best_se']:.2f}"
        lines.append(f"| {r['sampler']} | {r['spacing']} | {r['nfe']} | {r['fid']:.3f} ± {r['fid_se']:.2f} | {vs} | "
                     f"{r['is']:.2f} | {r['kid']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['seconds_per_image']:.4f} | {ips} | {r['peak_memory_mb']:.0f} |")
    lines.append(f"| data floor ({floor['n']} real vs reference) | | | {floor['fid']:.3f} | | {floor['is']:.2f} | "
                 f"{floor['kid']:.4f} | {floor['precision']:.3f} | {floor['recall']:.3f} | | | |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], floor: dict, out: pathlib.Path, header: str) -> None:
    write_text(out / "bench.md", markdown(rows, floor, header))
    write_text(out / "bench.json", json.dumps({"rows": rows, "floor": floor}, indent=1) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "bench.csv", buf.getvalue())


def plot(rows: list[dict], floor: dict, out: pathlib.Path) -> None:
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
    with atomic_path(out / "fid.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def sample_grids(model: LoadedModel, rows: list[dict], out: pathlib.Path, seed: int, show: int = 16) -> None:
    """For every sampler at its largest NFE, the same ``show`` seeds side by side in one figure."""
    best = {}
    for r in rows:
        best[r["sampler"]] = r
    images, labels = [], []
    for label, r in best.items():
        _, name, options, _ = parse_sampler(label)
        x = sample(model.net, model.schedule, sampler=name, steps=None if r["timesteps"] else r["steps"],
                   timesteps=r["timesteps"], spacing=r["spacing"],
                   prediction=model.prediction, shape=(show, *model.shape), seeds=range(seed, seed + show),
                   data_range=model.data_range, eps_moment=model.eps_moment, **options)
        images.append(x)
        labels.append(f"{label} ({r['nfe']})")
    save_image(labelled_grid(images, labels, scale=grid_scale(model.shape[1]), data_range=model.data_range),
               out / "samples.png")


def trajectories(model: LoadedModel, out: pathlib.Path, seed: int, frames: int = 10) -> None:
    """x_t and x0_hat along the steps of one seed: DDPM (1000 steps) against DDIM (50 steps)."""
    rows, labels = [], []
    for name, steps in (("ddpm", model.schedule.T), ("ddim", 50)):
        xs, x0s = [], []
        keep = set(torch.linspace(0, steps - 1, frames).round().long().tolist())
        sample(model.net, model.schedule, sampler=name, steps=steps, prediction=model.prediction,
               shape=(1, *model.shape), seeds=[seed], data_range=model.data_range,
               callback=lambda i, t, x, x0: (xs.append(x[0]), x0s.append(x0[0])) if i in keep else None)
        rows += [torch.stack(xs), torch.stack(x0s)]
        labels += [f"{name} {steps}: x_t", f"{name} {steps}: x0_hat"]
    save_image(labelled_grid(rows, labels, scale=grid_scale(model.shape[1]), data_range=model.data_range),
               out / "trajectories.png")
