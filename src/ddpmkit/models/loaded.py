"""A loaded model that samples itself: network, schedule, parameterisation, data description and
per-model extras, whatever format it came from."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Iterable

import torch

from .. import samplers
from ..files import file_digest
from ..plan import DENOISER_OPTIONS, Plan, make_plan
from ..sampling import sample
from ..schedule import NoiseSchedule

# config key of the step grids ``ddpmkit tune`` searched: {sampler: {steps: {"timesteps": [...], ...}}}
TUNED_KEY = "tuned_timesteps"


# torch.compile's modes: reduce-overhead captures the network in CUDA graphs where shapes are static
# (on the CPU the micro-batch fixes them; on a GPU, a fixed --batch-size that divides --num)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclasses.dataclass
class LoadedModel:
    """Everything sampling must agree with, from one model file. ``extras`` holds what the model
    supplies to samplers that take it (``samplers.MODEL_OPTIONS``: Analytic-DPM's ``eps_moment``,
    when ``ddpmkit moments`` stored it; DPM-Solver-v3's ``ems``, when ``ddpmkit ems`` did)."""

    net: torch.nn.Module
    schedule: NoiseSchedule
    prediction: str
    shape: tuple[int, ...]  # (C, H, W) of one sample
    data_range: tuple[float, float]
    config: dict
    path: pathlib.Path
    extras: dict = dataclasses.field(default_factory=dict)
    # plan options the model's own description sets (a diffusers scheduler config: the default grid,
    # clipping or thresholding, ddpm's variance); the user's options override them
    defaults: dict = dataclasses.field(default_factory=dict)
    num_classes: int | None = None  # class labels 0..num_classes-1, where the model says how many
    conditional: bool = False  # the network takes a class label per sample
    digest: str | None = None  # what identifies the model's files, where it is not one file's SHA-256

    @property
    def eps_moment(self):
        return self.extras.get("eps_moment")

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def compiled(self, mode: str = "default") -> LoadedModel:
        """This model with its network under ``torch.compile`` (``mode``: default, reduce-overhead,
        which on a GPU also captures each call in a CUDA graph, or max-autotune). The first calls
        compile (minutes on a CPU); samples agree with the plain network's up to float rounding,
        so they share its sample cache."""
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {mode!r}; valid: {', '.join(COMPILE_MODES)}")
        return dataclasses.replace(self, net=torch.compile(self.net, mode=mode))

    def fingerprint(self) -> str:
        """SHA-256 of what decides this model's outputs: its file's bytes, or its files' digests."""
        return self.digest or file_digest(self.path)

    def tuned_grids(self, sampler: str) -> dict[int, list[float]]:
        """The step grids ``ddpmkit tune`` found for ``sampler``, by step count."""
        return {k: entry["timesteps"] for k, entry in self.tuned_entries(sampler).items()}

    def tuned_entries(self, sampler: str) -> dict[int, dict]:
        """What ``ddpmkit tune`` found for ``sampler``, by step count: {"timesteps", and
        "input_timesteps" where it decoupled them}."""
        found = self.config.get(TUNED_KEY, {}).get(sampler, {})
        return {int(k): {key: [float(t) for t in v[key]] for key in ("timesteps", "input_timesteps") if key in v}
                for k, v in found.items()}

    def plan(self, plan: Plan | None = None, **options) -> Plan:
        """A checked ``Plan`` for this model (``ddpmkit.make_plan``'s options: sampler, steps / nfe /
        timesteps, spacing, the sampler's and the denoiser's options). Without a spacing the
        model's tuned grid for that sampler and step count is used where it has one, else
        trailing; the model's extras go to the samplers that take them."""
        if plan is not None:
            if options:
                raise ValueError(f"give a plan or sampling options, not both (got {', '.join(sorted(options))})")
            return plan
        sampler = options.pop("sampler", "ddim")
        supplied = {k: self.extras[k] for k in samplers.model_options(sampler) if k in self.extras}
        options = self._with_defaults(sampler, {k: v for k, v in options.items() if v is not None})
        options["classes"] = self._classes(options.get("classes"))
        plan = make_plan(self.schedule, sampler, prediction=self.prediction, tuned=self.tuned_entries(sampler),
                         model_options=supplied, model_name=self.path.name, **options)
        if plan.denoising.get("guidance", 1.0) != 1.0 and getattr(self.net, "null_label", None) is None:
            raise ValueError(f"{self.path.name} has no null label (one trained with label dropout), so it cannot "
                             "be sampled with classifier-free guidance; --guidance 1 (the default) samples it")
        return plan

    def recommended(self) -> dict:
        """The plan options that sample this model well and fast when the user names no sampler:
        ``cm`` for a consistency model (its tuned grid where it has one), else SDE-DPM-Solver++(2M)
        at 20 steps, the best 20-NFE sampler of the shipped mnist model (FID 12.94 on 10k samples),
        on a logSNR grid unless the model's scheduler config names its own grid."""
        if self.config.get("net", {}).get("arch") == "consistency":
            return {"sampler": "cm"}
        grid = {} if "spacing" in self.defaults else {"spacing": "logsnr"}
        return {"sampler": "dpmpp-2m-sde", "steps": 20, **grid}

    def _with_defaults(self, sampler: str, options: dict) -> dict:
        """The user's options over the model's defaults. The default grid applies where the user
        places none; clipping and thresholding are one choice, so giving either replaces the
        model's (keeping its clip range or threshold cap); a sampler option applies where the
        sampler takes it."""
        d = dict(self.defaults)
        out = dict(options)
        if any(k in options for k in ("spacing", "timesteps")):
            d.pop("spacing", None), d.pop("offset", None)
        elif "spacing" in d:
            out["default_spacing"] = d.pop("spacing")
            if "offset" in d:
                out.setdefault("offset", d.pop("offset"))
        if options.get("clip") is not None or options.get("threshold") is not None:
            keep = "clip_range" if options.get("clip") else "threshold_max" if options.get("threshold") else None
            d = {k: v for k, v in d.items() if k not in ("clip", "clip_range", "threshold", "threshold_max") or k == keep}
        takes = set(samplers.sampler_options(sampler)) | set(DENOISER_OPTIONS)
        for k, v in d.items():
            if k in takes:
                out.setdefault(k, v)
        return out

    def _classes(self, classes) -> tuple[int, ...] | None:
        """The class labels to sample (sample with seed s gets classes[s % len(classes)]): as given,
        checked against the model; for a conditional model given none, every class in turn."""
        if classes is None:
            if not self.conditional:
                return None
            if self.num_classes is None:
                raise ValueError(f"{self.path.name} is class-conditional without a stated number of classes; "
                                 "give the class labels to sample (--class)")
            return tuple(range(self.num_classes))
        if not self.conditional:
            raise ValueError(f"{self.path.name} is not class-conditional, so it takes no class labels (--class)")
        classes = tuple(classes)
        for c in classes:
            if isinstance(c, bool) or not isinstance(c, int) or c < 0 or (
                    self.num_classes is not None and c >= self.num_classes):
                valid = f"0..{self.num_classes - 1}" if self.num_classes is not None else "integers >= 0"
                raise ValueError(f"class {c!r} is not valid for {self.path.name}; valid: {valid}")
        if not classes:
            raise ValueError("no class labels given; give at least one")
        return classes

    def sample(self, plan: Plan | None = None, *, seeds: Iterable[int] | None = None, num: int | None = None,
               batch_size: int | None = None, micro_batch: int | str | None = "auto",
               init_noise: torch.Tensor | None = None, device=None, callback: Callable | None = None, return_info: bool = False, **options):
        """Samples of this model in its data range, shape (N, C, H, W): sample i from seeds[i]
        (default: seeds 0..num-1, num default 16, or as many as ``init_noise`` holds). ``plan`` or
        its options as keywords (``plan``); ``batch_size`` samples advanced together (default all),
        ``micro_batch`` samples per network call (``ddpmkit.sample``: on the CPU a fixed 16 by default,
        which makes sample i bitwise the same for any batch size)."""
        plan = self.plan(plan, **options)
        if init_noise is not None:
            n = len(init_noise)
        elif seeds is not None:
            seeds = list(seeds)
            n = len(seeds)
        else:
            n = 16 if num is None else num
        if num is not None and num != n:
            raise ValueError(f"num={num} disagrees with the {n} seeds or init_noise samples given")
        return sample(self.net, self.schedule, plan, shape=(n, *self.shape), seeds=seeds, init_noise=init_noise,
                      batch_size=batch_size, micro_batch=micro_batch, prediction=self.prediction, data_range=self.data_range,
                      device=device, callback=callback, return_info=return_info)
