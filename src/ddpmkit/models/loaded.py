"""A loaded model that samples itself: network, schedule, parameterisation, data description and
per-model extras, whatever format it came from."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Iterable

import torch

from .. import samplers
from ..plan import Plan, make_plan
from ..sampling import sample
from ..schedule import NoiseSchedule

# config key of the step grids ``ddpmkit tune`` searched: {sampler: {steps: {"timesteps": [...], ...}}}
TUNED_KEY = "tuned_timesteps"


@dataclasses.dataclass
class LoadedModel:
    """Everything sampling must agree with, from one model file. ``extras`` holds what the model
    supplies to samplers that take it (``samplers.MODEL_OPTIONS``: Analytic-DPM's ``eps_moment``,
    when ``ddpmkit moments`` stored it)."""

    net: torch.nn.Module
    schedule: NoiseSchedule
    prediction: str
    shape: tuple[int, ...]  # (C, H, W) of one sample
    data_range: tuple[float, float]
    config: dict
    path: pathlib.Path
    extras: dict = dataclasses.field(default_factory=dict)

    @property
    def eps_moment(self):
        return self.extras.get("eps_moment")

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def tuned_grids(self, sampler: str) -> dict[int, list[float]]:
        """The step grids ``ddpmkit tune`` found for ``sampler``, by step count."""
        found = self.config.get(TUNED_KEY, {}).get(sampler, {})
        return {int(k): [float(t) for t in v["timesteps"]] for k, v in found.items()}

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
        return make_plan(self.schedule, sampler, prediction=self.prediction, tuned=self.tuned_grids(sampler),
                         model_options=supplied, model_name=self.path.name, **options)

    def sample(self, plan: Plan | None = None, *, seeds: Iterable[int] | None = None, num: int | None = None,
               batch_size: int | None = None, init_noise: torch.Tensor | None = None, device=None,
               callback: Callable | None = None, return_info: bool = False, **options):
        """Samples of this model in its data range, shape (N, C, H, W): sample i from seeds[i]
        (default: seeds 0..num-1, num default 16, or as many as ``init_noise`` holds). ``plan`` or
        its options as keywords (``plan``); ``batch_size`` samples per network call (default all)."""
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
                      batch_size=batch_size, prediction=self.prediction, data_range=self.data_range,
                      device=device, callback=callback, return_info=return_info)
