"""``ddpmkit bench``: every sampler at every NFE on one model, measured alike.

For each (sampler, NFE): FID with its bootstrap error and its paired difference to the table's best
row, IS, KID, precision, recall (``score_features`` against the shipped reference, with the data
floor), the NFE actually spent, seconds per image, images/s and the process's peak memory; written
as markdown, CSV and JSON, with plots of FID against NFE and against wall time, a grid of the same
seeds per sampler, and optionally a trajectory figure (x_t and x0_hat along the steps) of each sampler.

Sampler specs: ``NAME[@SPACING][:KEY=VALUE,...]``, KEY a sampler option or the denoiser's ``clip``,
``threshold``, ``guidance``, ``guidance_rescale`` or ``guidance_interval`` (``ddim:eta=0.5``,
``dpmpp-2m@logsnr``, ``ddpm:clip=true``, ``unipc:guidance=3,guidance_interval=0.3/5``); several are
separated by commas, where a KEY=VALUE item continues the spec before it (``split_specs``).
"""

from __future__ import annotations

import pathlib
import resource
import sys
from typing import NamedTuple

import torch

from ..files import write_text
from ..images import grid_scale, labelled_grid, pad_rows, save_image
from ..plan import Plan
from ..samplers import parse_bool, sampler_options, steps_for_nfe
from . import report
from .cache import generate
from .reference import Reference
from .score import asked_classes, compare_to_best, features_of, score_features

PRESETS = {
    # the shape of the DDIM paper's Table 1: eta in {0, 0.2, 0.5, 1} and DDPM's large variance
    "ddim-table": {"samplers": ["ddim:eta=0.0", "ddim:eta=0.2", "ddim:eta=0.5", "ddim:eta=1.0", "ddpm:variance=large"],
                   "nfe": [10, 20, 50, 100, 1000]},
}

# the denoiser's options a spec may carry beside the sampler's, with the type of their values
# (guidance_interval=LO/HI: two noise levels, a slash between them, since commas separate options)
DENOISING = {"clip": False, "threshold": 0.995, "guidance": 1.0, "guidance_rescale": 0.0,
             "guidance_interval": (0.0, 1.0)}


def split_specs(text: str) -> list[str]:
    """'ddim:eta=0.5,unipc:order=3,variant=bh1,ddpm' -> ['ddim:eta=0.5', 'unipc:order=3,variant=bh1', 'ddpm']:
    a KEY=VALUE item continues the sampler spec before it."""
    specs: list[str] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        if "=" in item and ":" not in item and specs:
            specs[-1] += "," + item
        else:
            specs.append(item)
    return specs


def parse_sampler(spec: str) -> tuple[str, str, dict, str | None]:
    """``name[@spacing][:key=value,...]`` -> (label, name, options, spacing). Keys are the
    sampler's options or the denoiser's ``clip`` and ``threshold``; values are parsed as the
    option's default type. Spacing None: the model's tuned grid where it has one, else trailing."""
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
    return spec, name, options, spacing or None


def _parse_value(spec: str, key: str, value: str, default):
    """A spec's option value, read as the type of the option's default."""
    kind = parse_bool if isinstance(default, bool) else _interval if isinstance(default, tuple) else type(default)
    try:
        return kind(value)
    except ValueError:
        what = {parse_bool: "true or false", int: "an integer", float: "a number",
                _interval: "two noise levels LO/HI"}.get(kind, f"a valid {key}")
        raise ValueError(f"sampler spec {spec!r}: {key}={value!r} is not {what}") from None


def _interval(value: str) -> tuple[float, float]:
    lo, hi = value.split("/")
    return float(lo), float(hi)


class Row(NamedTuple):
    """One row of a bench: a sampler spec at an NFE budget, and the checked plan it gets."""

    label: str
    budget: int
    plan: Plan


def plan_rows(model, specs: list[str], nfes: list[int], log=None) -> list[Row]:
    """The rows of a bench, spec by spec and budget by budget, each planned (and so checked) by
    ``model.plan``: building them is the up-front check. A budget too small for the fewest steps of
    a sampler is skipped (and logged); any other error names the spec and the budget."""
    rows = []
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
                plan = model.plan(sampler=name, steps=steps, spacing=spacing, **options)
            except ValueError as e:
                raise ValueError(f"sampler spec {label!r} at {budget} NFE: {e}") from None
            rows.append(Row(label, budget, plan))
    return rows


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run(model, ref: Reference, rows: list[Row], *, num: int, seed: int, cache_dir, batch_size: int = 250,
        micro_batch: int | str | None = "auto", device="cpu", log=print, progress=None) -> list[dict]:
    """Every planned row sampled (through the cache) and scored; one dict per row, with
    ``fid_vs_best`` (``compare_to_best``). ``progress(count)`` as samples are made or read."""
    results, features = [], []
    for r in rows:
        plan = r.plan
        levels, info = generate(model, plan, num=num, seed=seed, levels=ref.levels, cache_dir=cache_dir,
                                batch_size=batch_size, micro_batch=micro_batch, device=device, progress=progress)
        if device != "cpu" and torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = peak_rss_mb()
        feats, probs, stats = features_of(levels, ref, statistics=True)
        row = {"sampler": r.label, "spacing": plan.spacing, **plan.placed(), "nfe_budget": r.budget,
               "steps": plan.steps, "nfe": info["nfe"], "num": num, "seconds_per_image": info["seconds"] / num,
               "images_per_s": num / info["seconds"] if info["seconds"] > 0 else None,
               "peak_memory_mb": peak,
               **score_features(feats, probs, ref, labels=asked_classes(model, plan, seed, num), statistics=stats)}
        if "class_accuracy" in row:
            row["accuracy"] = row["class_accuracy"]["accuracy"]
        results.append(row)
        features.append(feats)
        acc = f"  class accuracy {100 * row['accuracy']:.1f}%" if "accuracy" in row else ""
        log(f"  {r.label:<24} NFE {row['nfe']:>4}  FID {row['fid']:.3f}  IS {row['is']:.2f}  "
            f"{row['seconds_per_image']:.4f} s/img{acc}")
    compare_to_best(results, features, ref)
    return results


def header(command: str, model, ref: Reference, num: int, seed: int, machine: str) -> str:
    """bench.md's first paragraph: the command, the model, the samples and how to read the table."""
    return (f"# Sampler benchmark\n\n`{command}` — model {model.path} (step {model.config.get('step')}), "
            f"{num} samples per row from seeds {seed}.., metrics with the shipped "
            f"'{ref.info['card'].get('data', '')}' feature network against {ref.info['reference']}; {machine}. "
            f"FID ± its bootstrap standard error over the samples (the reference held fixed); FID − best: "
            f"the row's FID minus the lowest, ± the paired bootstrap error (every row samples the same seeds).")


COLUMNS = ["sampler", "spacing", "nfe", "fid", "fid_se", "fid_vs_best", "fid_vs_best_se", "is", "kid", "precision",
           "recall", "accuracy", "seconds_per_image", "images_per_s", "peak_memory_mb"]
TABLE = ["sampler", "grid", "NFE", "FID", "FID − best", "IS", "KID", "precision", "recall", "s/image", "images/s",
         "peak MB"]


def markdown(rows: list[dict], floor: dict, header: str = "") -> str:
    """bench.md: ``header``, then one table line per row and the data floor's; a conditional model's
    table has the class accuracy (the asked class, by the feature network) after recall."""
    accuracy = any("accuracy" in r for r in rows)

    def line(r):
        ips = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "—"
        vs = "best" if r["fid_vs_best_se"] is None else f"+{r['fid_vs_best']:.2f} ± {r['fid_vs_best_se']:.2f}"
        acc = [f"{100 * r['accuracy']:.1f}%" if "accuracy" in r else "—"] if accuracy else []
        return [r["sampler"], r["spacing"], r["nfe"], f"{r['fid']:.3f} ± {r['fid_se']:.2f}", vs, f"{r['is']:.2f}",
                f"{r['kid']:.4f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}", *acc,
                f"{r['seconds_per_image']:.4f}", ips, f"{r['peak_memory_mb']:.0f}"]

    last = [f"data floor ({floor['n']} real vs reference)", "", "", f"{floor['fid']:.3f}", "", f"{floor['is']:.2f}",
            f"{floor['kid']:.4f}", f"{floor['precision']:.3f}", f"{floor['recall']:.3f}", *([""] if accuracy else []),
            "", "", ""]
    columns = TABLE[:9] + ["class acc."] + TABLE[9:] if accuracy else TABLE
    return "\n".join([header, "", report.table(columns, [*map(line, rows), last])]) + "\n"


def write(out_dir, rows: list[dict], floor: dict, header: str) -> None:
    """bench.md, bench.csv (``COLUMNS``), bench.json ({rows, floor}) and, where there are rows,
    fid.png (FID against NFE and against time) in ``out_dir``, which exists."""
    out = pathlib.Path(out_dir)
    write_text(out / "bench.md", markdown(rows, floor, header))
    report.write_json(out / "bench.json", {"rows": rows, "floor": floor})
    report.write_csv(out / "bench.csv", rows, COLUMNS)
    if rows:
        report.plot_fid(rows, floor, out / "fid.png")


def figures(model, rows: list[Row], out_dir, seed: int, with_trajectories: bool = False) -> list[str]:
    """samples.png (where there are rows) and, ``with_trajectories``, trajectories.png in ``out_dir``:
    the figures that sample the model again, from the planned ``rows`` (``write`` draws fid.png from
    the results). Returns the names of the files written."""
    out = pathlib.Path(out_dir)
    if not rows:
        return []
    sample_grids(model, rows, out, seed)
    if not with_trajectories:
        return ["samples.png"]
    trajectories(model, rows, out, seed)
    return ["samples.png", "trajectories.png"]


def sample_grids(model, rows: list[Row], out: pathlib.Path, seed: int, show: int = 16) -> None:
    """For every sampler spec at its last NFE budget, the same ``show`` seeds side by side in one
    figure."""
    last = {r.label: r.plan for r in rows}
    images, labels = [], []
    for label, plan in last.items():
        images.append(model.sample(plan, seeds=range(seed, seed + show)))
        labels.append(f"{label} ({plan.nfe})")
    save_image(labelled_grid(images, labels, scale=grid_scale(model.shape[1]), data_range=model.data_range),
               out / "samples.png")


def trajectories(model, rows: list[Row], out: pathlib.Path, seed: int, frames: int = 10) -> None:
    """x_t and x0_hat along the steps of one seed, for every sampler spec of ``rows`` at its last NFE
    budget (at most ``frames`` steps of each, evenly spaced; shorter rows padded with blank tiles)."""
    last = {r.label: r.plan for r in rows}
    strips, labels = [], []
    for label, plan in last.items():
        xs, x0s = [], []
        keep = set(torch.linspace(0, plan.steps - 1, min(frames, plan.steps)).round().long().tolist())
        model.sample(plan, seeds=[seed],
                     callback=lambda i, t, x, x0: (xs.append(x[0]), x0s.append(x0[0])) if i in keep else None)
        strips += [torch.stack(xs), torch.stack(x0s)]
        labels += [f"{label} ({plan.nfe}): x_t", f"{label} ({plan.nfe}): x0_hat"]
    save_image(labelled_grid(pad_rows(strips, model.data_range[0]), labels, scale=grid_scale(model.shape[1]), data_range=model.data_range),
               out / "trajectories.png")
