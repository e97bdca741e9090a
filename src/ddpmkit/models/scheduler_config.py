"""Reading a diffusers scheduler config (``scheduler_config.json``) as what sampling must agree with.

The DDPM-family schedulers of diffusers (DDPM, DDIM, PNDM, DPM-Solver, UniPC, Euler, Heun, ...)
share the keys that describe the model: the beta schedule, T, the prediction type, clipping and
thresholding, the variance, the default grid. Those become the model's schedule, parameterisation
and default plan options here. Keys that only configure diffusers' own solver (its order, its
final step) do not describe the model and are skipped, by name. Everything else — a key this
module does not know, or a value it cannot honour — is refused by name, never ignored. Pure JSON:
diffusers is not needed to read a config.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..prediction import check_prediction
from ..schedule import NoiseSchedule

# the schedulers whose configs describe a discrete-time VP (DDPM) model
FAMILY = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
          "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler",
          "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
          "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler", "DEISMultistepScheduler", "SASolverScheduler",
          "DDPMParallelScheduler", "DDIMParallelScheduler")

# diffusers' defaults of the keys read here, where a class's differ from DDPMScheduler's (a key
# missing from a config means the class default)
_DEFAULTS = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
             "trained_betas": None, "prediction_type": "epsilon", "clip_sample": False, "clip_sample_range": 1.0,
             "thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0,
             "variance_type": None, "rescale_betas_zero_snr": False, "timestep_spacing": "linspace",
             "steps_offset": 0, "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_lu_lambdas": False}
_CLASS_DEFAULTS = {
    "DDPMScheduler": {"timestep_spacing": "leading", "clip_sample": True, "variance_type": "fixed_small"},
    "DDPMParallelScheduler": {"timestep_spacing": "leading", "clip_sample": True, "variance_type": "fixed_small"},
    "DDIMScheduler": {"timestep_spacing": "leading", "clip_sample": True},
    "DDIMParallelScheduler": {"timestep_spacing": "leading", "clip_sample": True},
    "PNDMScheduler": {"timestep_spacing": "leading"},
    "DPMSolverSinglestepScheduler": {"timestep_spacing": "linspace"},
    "HeunDiscreteScheduler": {"beta_start": 0.00085, "beta_end": 0.012},
    "KDPM2DiscreteScheduler": {"beta_start": 0.00085, "beta_end": 0.012},
    "KDPM2AncestralDiscreteScheduler": {"beta_start": 0.00085, "beta_end": 0.012},
}

# keys that configure diffusers' own solver or its last step, not the model: ddpmkit's sampler
# and plan choose these. (``set_alpha_to_one`` / ``final_sigmas_type``: our grids always end in
# clean data, abar = 1.)
SOLVER_KEYS = ("set_alpha_to_one", "skip_prk_steps", "solver_order", "algorithm_type", "solver_type",
               "lower_order_final", "euler_at_final", "final_sigmas_type", "lambda_min_clipped", "predict_x0",
               "solver_p", "disable_corrector", "predictor_order", "corrector_order", "tau_func",
               "interpolation_type", "noise_sampler_seed", "time_shift_type")

# keys whose value is honoured only at the default shown: anything else changes what the network
# takes or the grid in a way ddpmkit does not implement
_ONLY_DEFAULT = {"timestep_type": "discrete", "use_beta_sigmas": False, "use_flow_sigmas": False,
                 "use_dynamic_shifting": False, "flow_shift": 1.0, "shift_terminal": None, "sigma_min": None,
                 "sigma_max": None}
_WHY = {"timestep_type": "the network would take 0.25 log(sigma) instead of the timestep",
        "use_beta_sigmas": "a beta-distributed sigma grid, which ddpmkit does not have",
        "use_flow_sigmas": "a flow-matching model, not a DDPM", "use_dynamic_shifting": "a flow-matching model",
        "flow_shift": "a flow-matching model", "shift_terminal": "a flow-matching model",
        "sigma_min": "a custom sigma range for the grid", "sigma_max": "a custom sigma range for the grid"}

_VARIANCES = {"fixed_small": "small", "fixed_small_log": "small", "fixed_large": "large", "fixed_large_log": "large"}
_SPACINGS = ("leading", "trailing", "linspace")
MODEL_KEYS = tuple(_DEFAULTS)


class SchedulerConfigError(ValueError):
    """A scheduler config that ddpmkit cannot honour exactly; the message names the key."""


@dataclasses.dataclass(frozen=True)
class SchedulerSettings:
    """What a scheduler config says about the model: its schedule and prediction type, and the
    plan options that are its defaults (``spacing``, ``offset``, ``clip``, ``clip_range``,
    ``threshold``, ``threshold_max``, ``variance``); ``skipped`` lists the solver keys set in it."""

    schedule: NoiseSchedule
    prediction: str
    defaults: dict
    class_name: str
    skipped: tuple[str, ...]


def geodiff_sigmoid_betas(T: int, beta_start: float, beta_end: float) -> np.ndarray:
    """diffusers' ``sigmoid`` beta schedule (from GeoDiff, Xu et al. 2022): beta = sig(u) (beta_end
    - beta_start) + beta_start for u = linspace(-6, 6, T). (Not ddpmkit's ``sigmoid``, which is
    Chen 2023's abar schedule.)"""
    u = np.linspace(-6.0, 6.0, T, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-u)) * (beta_end - beta_start) + beta_start


def read_scheduler_config(config: dict, source: str = "scheduler config") -> SchedulerSettings:
    """The schedule, prediction type and default plan options that ``config`` (a scheduler config as
    diffusers writes it) describes. ``source`` names it in errors."""
    config = dict(config)
    class_name = config.get("_class_name", "DDPMScheduler")
    if class_name not in FAMILY:
        raise SchedulerConfigError(f"{source}: {class_name} is not a DDPM-family scheduler, so its model is not a "
                                   f"discrete-time VP diffusion ddpmkit can sample; known: {', '.join(FAMILY)}")
    keys = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(set(keys) - set(_DEFAULTS) - set(SOLVER_KEYS) - set(_ONLY_DEFAULT))
    if unknown:
        raise SchedulerConfigError(f"{source}: key {unknown[0]!r} (= {keys[unknown[0]]!r}) is not one ddpmkit "
                                   f"knows, so it cannot tell whether sampling must honour it; the keys it reads: "
                                   f"{', '.join(MODEL_KEYS)}")
    for k, default in _ONLY_DEFAULT.items():
        if k in keys and keys[k] != default:
            raise SchedulerConfigError(f"{source}: {k}={keys[k]!r} is not supported ({_WHY[k]}); ddpmkit reads "
                                       f"only {k}={default!r}")
    c = {**_DEFAULTS, **_CLASS_DEFAULTS.get(class_name, {}), **{k: v for k, v in keys.items() if k in _DEFAULTS}}
    schedule = _schedule(c, source)
    prediction = _choice(c, "prediction_type", ("epsilon", "v_prediction", "sample"), source)
    return SchedulerSettings(schedule, check_prediction(prediction), _defaults(c, source), class_name,
                             tuple(k for k in SOLVER_KEYS if k in keys))


def _choice(c: dict, key: str, valid, source: str):
    if c[key] not in valid:
        raise SchedulerConfigError(f"{source}: {key}={c[key]!r} is not supported; valid: {', '.join(map(str, valid))}")
    return c[key]


def _number(c: dict, key: str, source: str, *, integer: bool = False) -> float:
    v = c[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (integer and v != int(v)):
        raise SchedulerConfigError(f"{source}: {key}={v!r} is not {'an integer' if integer else 'a number'}")
    return int(v) if integer else float(v)


def _schedule(c: dict, source: str) -> NoiseSchedule:
    """The beta table diffusers builds from these keys, in float64 (diffusers computes float32)."""
    T = _number(c, "num_train_timesteps", source, integer=True)
    zero_snr = bool(c["rescale_betas_zero_snr"])
    try:
        if c["trained_betas"] is not None:
            betas = np.asarray(c["trained_betas"], dtype=np.float64)
            if betas.shape != (T,):
                raise SchedulerConfigError(f"{source}: trained_betas holds {betas.size} values; "
                                           f"num_train_timesteps is {T}")
            return _from_betas(betas, zero_snr, "trained_betas")
        name = _choice(c, "beta_schedule", ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"), source)
        start, end = _number(c, "beta_start", source), _number(c, "beta_end", source)
        if name == "sigmoid":
            return _from_betas(geodiff_sigmoid_betas(T, start, end), zero_snr, "diffusers sigmoid (GeoDiff)")
        if name == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine, s = 0.008, beta <= 0.999: ours
            return NoiseSchedule("cosine", T, zero_terminal_snr=zero_snr)
        return NoiseSchedule(name, T, zero_terminal_snr=zero_snr, beta_start=start, beta_end=end)
    except SchedulerConfigError:
        raise
    except ValueError as e:
        raise SchedulerConfigError(f"{source}: {e}") from None


def _from_betas(betas: np.ndarray, zero_snr: bool, label: str) -> NoiseSchedule:
    if zero_snr:
        from ..schedule import rescale_zero_terminal_snr

        betas, label = rescale_zero_terminal_snr(betas), f"{label}, rescaled to zero terminal SNR"
    return NoiseSchedule.from_betas(betas, label=label)


def _defaults(c: dict, source: str) -> dict:
    """The plan options the config sets: the default grid, clipping or thresholding, the variance."""
    out: dict = {}
    spacing = _choice(c, "timestep_spacing", _SPACINGS, source)
    sigma_grids = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_lu_lambdas") if c[k]]
    if len(sigma_grids) > 1:
        raise SchedulerConfigError(f"{source}: {' and '.join(sigma_grids)} are both set; diffusers allows one")
    if sigma_grids:  # Karras et al.'s grid; exponential sigmas and Lu's uniform lambdas are uniform in logSNR
        spacing = "karras" if sigma_grids[0] == "use_karras_sigmas" else "logsnr"
    out["spacing"] = spacing
    offset = _number(c, "steps_offset", source, integer=True)
    if offset and spacing == "leading":  # diffusers adds it to leading grids only
        out["offset"] = offset
    if c["thresholding"]:
        out["threshold"] = _number(c, "dynamic_thresholding_ratio", source)
        out["threshold_max"] = _number(c, "sample_max_value", source)
    elif c["clip_sample"]:
        out["clip"] = True
        r = _number(c, "clip_sample_range", source)
        if r != 1.0:
            out["clip_range"] = r
    variance = c["variance_type"]
    if variance is not None:
        if variance not in _VARIANCES:
            raise SchedulerConfigError(f"{source}: variance_type={variance!r} is not supported (a learned variance "
                                       f"needs a network with twice the channels); valid: {', '.join(_VARIANCES)}")
        out["variance"] = _VARIANCES[variance]
    return out
