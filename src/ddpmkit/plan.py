"""A sampling plan: everything one run of a sampler needs, built and validated once.

A plan fixes the sampler and its options, the denoiser's options (clipping, thresholding), the
step grid and the network evaluations per sample it costs. Every command builds one from the user's
options before it spends any sampling: building it is the up-front check (each sampler's own
``samplers.check``, with no network run), its fields are what the sample cache is keyed on, and its
``nfe`` is the cost. The grid comes from exactly one of

  - ``steps`` and a ``spacing`` (``NoiseSchedule.grid``: leading, trailing, linspace, karras, logsnr),
  - ``nfe``, a budget of network evaluations: the most steps of the sampler that fit it,
  - ``timesteps``, an explicit descending grid (with, optionally, ``input_timesteps``: what the
    network is told at each of them, LD3's decoupled timesteps),
  - a model's tuned grid (``ddpmkit tune``) for this sampler and step count: ``spacing="tuned"``
    insists on it, and no spacing takes it where the model has one (else ``trailing``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

from . import samplers
from .guidance import GUIDANCE_OPTIONS
from .prediction import Denoiser
from .schedule import ALL_SPACINGS, NoiseSchedule, check_grid, format_grid

# the Denoiser's options (they change the samples, so they are part of a plan) and their defaults
DENOISER_OPTIONS = {"clip": False, "clip_range": None, "threshold": None, "threshold_max": None, **GUIDANCE_OPTIONS,
                    "precision": "fp32"}
TUNED = "tuned"


def default_steps(sampler: str, T: int) -> int:
    """Steps when none are asked for: all T for ddpm (Algorithm 2 as written), one for cm
    (one-step generation), 50 for the others."""
    return {"ddpm": T, "cm": 1}.get(sampler, 50)


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """One sampler run, validated: ``sampler(denoiser, x_T, grid, noise=..., **options,
    **model_options)`` with a Denoiser built with ``denoising``, costing ``nfe`` network
    evaluations per sample. ``spacing`` says how the grid was placed: a spacing name, ``"tuned"``
    (a model's tuned grid), or None (explicit timesteps). ``model_options`` are what the model
    supplies to the sampler (Analytic-DPM's ``eps_moment``), not the user. ``offset`` shifts a
    leading grid (diffusers' ``steps_offset``); ``classes``, for a class-conditional model, are the
    labels to sample: the sample with seed s gets ``classes[s % len(classes)]``.
    ``input_timesteps``, where set, are what the network is told at each grid timestep (its output
    is read as the prediction at the grid timestep): LD3's decoupled timesteps (Tong et al. 2025),
    found by ``ddpmkit tune --by teacher --decouple``."""

    sampler: str
    grid: tuple[float, ...]
    options: Mapping[str, object]
    denoising: Mapping[str, object]
    nfe: int
    spacing: str | None
    model_options: Mapping[str, object] = dataclasses.field(default_factory=dict)
    offset: int = 0
    classes: tuple[int, ...] | None = None
    input_timesteps: tuple[float, ...] | None = None

    @property
    def steps(self) -> int:
        return len(self.grid)

    @property
    def timesteps(self) -> list[float] | None:
        """The grid where no spacing placed it (explicit timesteps or a tuned grid), else None: what
        a record of the plan must spell out, since steps and spacing do not make it again."""
        return None if self.spacing in ALL_SPACINGS else list(self.grid)

    def placed(self) -> dict:
        """The grid as a record spells it out: {"timesteps": ``timesteps``}, and the input
        timesteps where there are any."""
        inputs = {} if self.input_timesteps is None else {"input_timesteps": list(self.input_timesteps)}
        return {"timesteps": self.timesteps, **inputs}

    def given_options(self) -> dict:
        """Sampler and denoiser options that differ from their defaults: what changes the samples."""
        defaults = samplers.sampler_options(self.sampler) | DENOISER_OPTIONS
        both = {**self.options, **self.denoising}
        return {k: v for k, v in both.items() if not (k in defaults and defaults[k] == v)}

    def key(self) -> dict:
        """What decides the samples, for a cache key: sampler, options at other than their defaults
        (so ``variance="small"`` and no variance share one key), and the grid — as steps and
        spacing where a spacing placed it, else as the timesteps themselves."""
        what = {"sampler": self.sampler, "steps": self.steps, "options": self.given_options()}
        if self.timesteps is None:
            what["spacing"] = self.spacing
            if self.offset:
                what["offset"] = self.offset
        else:
            what["timesteps"] = self.timesteps
        if self.input_timesteps is not None:
            what["input_timesteps"] = list(self.input_timesteps)
        if self.classes is not None:
            what["classes"] = list(self.classes)
        return what

    def labels(self, seeds) -> list[int] | None:
        """The class label of each seed's sample (None for an unconditional plan)."""
        return None if self.classes is None else [self.classes[s % len(self.classes)] for s in seeds]

    def describe(self) -> str:
        """For people: "unipc, 10 steps (logsnr), 10 NFE per sample"."""
        shift = f" + {self.offset}" if self.offset else ""
        where = f"({self.spacing}{shift})" if self.timesteps is None else f"at timesteps {format_grid(self.grid)}"
        if self.input_timesteps is not None:
            where += f" (the network told {format_grid(self.input_timesteps)})"
        opts = "".join(f", {k}={v}" for k, v in self.given_options().items())
        cls = "" if self.classes is None else (f", class {self.classes[0]}" if len(self.classes) == 1 else
                                               f", classes {format_grid(self.classes)} by seed")
        return f"{self.sampler}{opts}{cls}, {self.steps} steps {where}, {self.nfe} NFE per sample"


def make_plan(schedule: NoiseSchedule, sampler: str = "ddim", *, steps: int | None = None, nfe: int | None = None,
              timesteps: Iterable[float] | None = None, spacing: str | None = None, prediction: str = "eps",
              tuned: Mapping[int, Sequence[float]] | None = None, model_options: Mapping[str, object] | None = None,
              model_name: str = "the model", default_spacing: str = "trailing", offset: int = 0,
              classes: Sequence[int] | None = None, input_timesteps: Iterable[float] | None = None,
              **options) -> Plan:
    """Build and check a plan for ``sampler`` on ``schedule``.

    ``options`` are the sampler's options and the Denoiser's (``clip``, ``threshold``,
    ``threshold_max``); options the model supplies (``eps_moment``) may be given here too, or in
    ``model_options``. ``tuned`` maps step counts to a model's tuned grids for this sampler: the
    timesteps, or ``ddpmkit tune``'s entry {"timesteps", "input_timesteps" (where it found them)}
    (``model_name`` names the model in errors); ``input_timesteps`` go with explicit ``timesteps``
    (``Plan.input_timesteps``); ``default_spacing`` places the grid where no
    spacing is given and no tuned grid fits; ``offset`` shifts a leading grid (diffusers'
    ``steps_offset``); ``classes`` are a conditional model's labels (``Plan.labels``).
    ``prediction`` is checked against the grid (eps cannot start at zero terminal SNR).
    Every error is a ValueError that names the bad value and what would be valid.
    """
    valid = samplers.sampler_options(sampler)  # an unknown sampler: an error listing the valid ones
    from_model = samplers.model_options(sampler)
    unknown = sorted(set(options) - set(valid) - set(DENOISER_OPTIONS) - set(from_model))
    if unknown:
        names = ", ".join([*valid, *DENOISER_OPTIONS]) or "none"
        raise ValueError(f"unknown option {unknown[0]!r} for sampler {sampler!r}; valid: {names}")
    sampler_opts = {k: v for k, v in options.items() if k in valid}
    denoising = {k: v for k, v in options.items() if k in DENOISER_OPTIONS}
    supplied = {**(model_options or {}), **{k: v for k, v in options.items() if k in from_model}}
    supplied = {k: v for k, v in supplied.items() if k in from_model and v is not None}

    tuned = {k: v if isinstance(v, Mapping) else {"timesteps": v} for k, v in (tuned or {}).items()}
    grid, spacing = _place_grid(schedule, sampler, sampler_opts, steps, nfe, timesteps, spacing,
                                {k: v["timesteps"] for k, v in tuned.items()}, model_name, default_spacing, offset)
    if input_timesteps is not None and timesteps is None:
        raise ValueError("input_timesteps go with explicit timesteps, one for each of them")
    if spacing == TUNED:
        input_timesteps = tuned[len(grid)].get("input_timesteps")
    if input_timesteps is not None:
        input_timesteps = _check_inputs(sampler, input_timesteps, grid, schedule.T)
    if spacing != "leading":
        offset = 0  # a model's steps_offset applies to leading grids only, as in diffusers
    if classes is not None:
        classes = tuple(classes)
        if not classes or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in classes):
            raise ValueError(f"classes={list(classes)!r} is not valid; need one or more integers >= 0")
    samplers.check(sampler, schedule, grid, **sampler_opts, **supplied)
    denoiser = Denoiser(None, schedule, prediction, **denoising)  # checks clip / threshold, runs nothing
    if classes is None and denoiser.guidance != 1.0:
        raise ValueError(f"guidance={denoiser.guidance:g} needs class labels to guide towards: a class-conditional "
                         "model (--class); 1 means no guidance")
    if denoiser.prediction == "eps" and schedule.abar_at(grid[0]) == 0.0:
        raise ValueError("prediction 'eps' cannot start at abar = 0 (zero terminal SNR); use 'v' or 'x0'")
    cost = samplers.nfe_for(sampler, len(grid), **sampler_opts)
    return Plan(sampler, tuple(grid), sampler_opts, denoising, cost, spacing, supplied, int(offset), classes,
                input_timesteps)


def _check_inputs(sampler, inputs, grid, T) -> tuple[float, ...]:
    """Input timesteps, checked: one per grid timestep, each in [0, T - 1], for a sampler that
    evaluates the network at its grid's timesteps only."""
    if sampler in samplers.OFF_GRID:
        raise ValueError(f"sampler {sampler!r} evaluates the network between its grid's timesteps, so it cannot "
                         "take input timesteps (one per grid timestep)")
    values = tuple(float(t) for t in inputs)
    if len(values) != len(grid):
        raise ValueError(f"got {len(values)} input timesteps for a grid of {len(grid)}; give one for each")
    if any(not math.isfinite(t) or not 0 <= t <= T - 1 for t in values):
        raise ValueError(f"input timesteps must lie in [0, {T - 1}]; got {format_grid(values)}")
    return values


def _place_grid(schedule, sampler, options, steps, nfe, timesteps, spacing, tuned, model_name,
                default_spacing="trailing", offset=0) -> tuple[list[float], str | None]:
    """(grid, how it was placed) from exactly one of steps / nfe / timesteps, or the default steps."""
    if sum(v is not None for v in (steps, nfe, timesteps)) > 1:
        raise ValueError("give only one of steps, nfe and timesteps")
    if spacing is not None and spacing not in (*ALL_SPACINGS, TUNED):
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(ALL_SPACINGS)}, {TUNED}")
    if timesteps is not None:
        if spacing is not None:
            raise ValueError(f"spacing {spacing!r} and timesteps both place the steps; give one of them")
        return [float(t) for t in check_grid(list(timesteps), schedule.T)], None
    if nfe is not None:
        steps = samplers.steps_for_nfe(sampler, nfe, schedule.T, **options)
    elif steps is None:
        steps = default_steps(sampler, schedule.T)
    grid = tuned.get(steps)
    if offset and spacing not in (None, "leading"):
        raise ValueError(f"offset={offset} applies only to the 'leading' spacing, not {spacing!r}")
    if spacing is None:
        spacing = TUNED if grid is not None else default_spacing
    if spacing != TUNED:
        return [float(t) for t in schedule.grid(steps, spacing, offset=offset if spacing == "leading" else 0)], spacing
    if grid is None:
        have = ", ".join(str(k) for k in sorted(tuned)) or "none"
        raise ValueError(f"spacing 'tuned': {model_name} has no tuned grid for {sampler} with {steps} steps (it has "
                         f"one for steps: {have}; `ddpmkit tune` makes them)")
    return [float(t) for t in check_grid(list(grid), schedule.T)], TUNED
