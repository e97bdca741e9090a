"""``ddpmkit eval``: one sampler on one model, sampled through the cache and scored against the
reference, beside the data floor at the same sample size."""

from __future__ import annotations

import os

from .. import distributed
from ..plan import DENOISER_OPTIONS
from . import report
from .cache import generate
from .reference import Reference, floor_for
from .score import asked_classes, score

IMAGE_LEVELS = 255  # Inception alone scores 8-bit images, as image files hold them


def report_options(plan) -> dict:
    """The options of an eval report: the sampler's as the plan was given them (defaults included,
    unlike ``Plan.given_options``), and the denoiser's (clip, threshold) where they are not at
    their defaults."""
    denoising = {k: v for k, v in plan.denoising.items() if DENOISER_OPTIONS.get(k) != v}
    return {**plan.options, **denoising}


def evaluate(model, plan, *, num: int, seed: int, ref: Reference | None, cache_dir: str | os.PathLike,
             batch_size: int = 250, micro_batch: int | str | None = "auto", device="cpu", progress=None,
             inception=None) -> dict:
    """Samples of ``model`` (a ``LoadedModel``) under ``plan`` for seeds seed .. seed+num-1 (from the
    cache where they are there), scored against ``ref``: the report ``ddpmkit eval`` writes. Its
    ``spacing`` is the plan's, "explicit" for explicit timesteps; ``timesteps`` the grid where it is
    explicit or tuned, else None. With ``inception`` (an ``inception.InceptionSetup``) the report
    also holds the usual Inception FID and IS; with it, ``ref`` may be None (a model whose data has
    no shipped feature network): the samples are then quantised to 8 bits and scored by Inception
    alone. ``progress(count)`` is called as samples are made or read (``cache.generate``)."""
    if ref is None and inception is None:
        raise ValueError("evaluate needs a reference (a shipped feature network) or an Inception setup, or both")
    num_levels = ref.levels if ref is not None else IMAGE_LEVELS
    levels, info = generate(model, plan, num=num, seed=seed, levels=num_levels, cache_dir=cache_dir,
                            batch_size=batch_size, micro_batch=micro_batch, device=device, progress=progress)
    result = {"model": str(model.path), "step": model.config.get("step"), "sampler": plan.sampler,
              "steps": plan.steps, "spacing": plan.spacing or "explicit",
              **plan.placed(), "options": report_options(plan), "nfe": info["nfe"],
              "num": num, "seed": seed, "seconds_per_image": info["seconds"] / num}
    if ref is not None:
        result.update(**score(levels, ref, labels=asked_classes(model, plan, seed, num)), floor=floor_for(ref, num),
                      reference=ref.info["reference"])
    result["cached_samples"] = info["cached"]
    if inception is not None and distributed.is_main():  # under torchrun: rank 0's report alone is written
        from .inception import scores

        result["inception"] = scores(inception, levels, num_levels)
    return result


def _inception_table(result: dict) -> str:
    inc = result["inception"]
    row = [result["sampler"], result["nfe"], result["num"], f"{inc['fid']:.3f}", f"{inc['is']:.2f}",
           f"{result['seconds_per_image']:.4f}"]
    return "\n".join([report.table(["sampler", "NFE", "samples", "Inception FID", "IS", "s/image"], [row]),
                      f"against {inc['reference']} (no shipped feature network for this model's data)"])


def eval_table(result: dict, ref: Reference | None) -> str:
    """What ``ddpmkit eval`` prints of a report: the table with the data floor, what ± means, the
    class frequencies, and the Inception scores where the report has them (a report without ``ref``
    holds Inception's alone). No trailing newline."""
    if ref is None:
        return _inception_table(result)
    fl = result["floor"]
    row = [result["sampler"], result["nfe"], result["num"], f"{result['fid']:.3f} ± {result['fid_se']:.2f}",
           f"{result['is']:.2f}", f"{result['kid']:.4f}", f"{result['precision']:.3f}", f"{result['recall']:.3f}",
           f"{result['seconds_per_image']:.4f}"]
    floor = [f"data floor ({ref.info['reference']})", "", fl["n"], f"{fl['fid']:.3f}", f"{fl['is']:.2f}",
             f"{fl['kid']:.4f}", f"{fl['precision']:.3f}", f"{fl['recall']:.3f}", ""]
    freq = " ".join(f"{100 * f:.1f}" for f in result["class_frequencies"])
    lines = [report.table(["sampler", "NFE", "samples", "FID", "IS", "KID", "precision", "recall", "s/image"],
                          [row, floor]),
             "FID ± its bootstrap standard error over the samples",
             f"class frequencies (%, by the feature network): {freq}"]
    if "class_accuracy" in result:
        acc = result["class_accuracy"]
        per = " ".join("-" if a is None else f"{100 * a:.1f}" for a in acc["per_class"])
        lines.append(f"class accuracy (%, the asked class by the feature network): {100 * acc['accuracy']:.1f}; "
                     f"per class {per}")
    if "inception" in result:
        inc = result["inception"]
        lines.append(f"Inception FID {inc['fid']:.3f}, IS {inc['is']:.2f} against {inc['reference']}")
    return "\n".join(lines)


def report_plan(model, result: dict):
    """The plan an eval report (``evaluate``'s dict, or its eval.json) was made with, on ``model``:
    its timesteps where it has them (explicit or tuned), else its steps and spacing; its options."""
    options = dict(result.get("options") or {})
    if result.get("timesteps") is not None:
        return model.plan(sampler=result["sampler"], timesteps=result["timesteps"], **options)
    return model.plan(sampler=result["sampler"], steps=result["steps"], spacing=result["spacing"], **options)
