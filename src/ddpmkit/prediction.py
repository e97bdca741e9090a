"""What the network predicts, and the Denoiser that turns any of it into (eps_hat, x0_hat).

With x_t = a x0 + b eps, a = sqrt(abar_t), b = sqrt(1 - abar_t), a network may predict
  - ``eps``: the noise (Ho et al. 2020),
  - ``x0``: the clean sample (diffusers calls it ``sample``),
  - ``v`` = a eps - b x0 (Salimans & Ho 2022, "Progressive Distillation", §4).
Samplers only ever see eps_hat and x0_hat, so they never branch on the parameterisation. The
conversions themselves live in ``ddpmkit.vp`` (``to_eps_x0``, ``training_target`` are re-exported
here for the modules that import them from this one).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .guidance import check_guidance, combine, in_interval
from .schedule import NoiseSchedule, _choice_error
from .vp import PREDICTIONS, eps_from_x0, sigma_from_abar, to_eps_x0, training_target

__all__ = ["PREDICTIONS", "Denoiser", "check_prediction", "dynamic_threshold", "to_eps_x0", "training_target"]

# the network's precision while sampling: autocast to these types, or none (fp32)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# diffusers' names, accepted so a diffusers config can be read as it is
_ALIASES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def check_prediction(prediction: str) -> str:
    prediction = _ALIASES.get(prediction, prediction)
    if prediction not in PREDICTIONS:
        raise _choice_error("prediction type", prediction, PREDICTIONS)
    return prediction


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float | None = None, data_range=(-1.0, 1.0)):
    """Imagen's dynamic thresholding (Saharia et al. 2022, §2.3): per sample, s = the ``ratio``
    quantile of |x0| (in units of the data range's half-width), s = max(s, 1), then x0 is clipped
    to [-s, s] and divided by s. ``max_value`` caps s (diffusers' ``sample_max_value``)."""
    lo, hi = data_range
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    u = ((x0 - centre) / half).reshape(x0.shape[0], -1)
    work = u if u.dtype in (torch.float32, torch.float64) else u.float()
    s = torch.quantile(work.abs(), ratio, dim=1).clamp(min=1.0, max=max_value)[:, None]
    u = (torch.clamp(work, -s, s) / s).to(x0.dtype)
    return centre + half * u.reshape(x0.shape)


class Denoiser:
    """Wraps ``model(x_t, t) -> output`` into ``denoiser(x_t, t) -> (eps_hat, x0_hat)``.

    ``t`` is a scalar timestep (integer or fractional); the model receives a 1-D tensor of the
    batch size, int64 when t is a whole number (as diffusers passes it) and float64 otherwise (exact;
    a network casts it to its own precision).
    ``clip=True`` clamps x0_hat to ``data_range`` (or, with ``clip_range=r``, to r either side of
    its centre: diffusers' ``clip_sample_range``); ``threshold=p`` applies dynamic thresholding with
    quantile p instead. After either, eps_hat is recomputed from the adjusted x0_hat so the pair
    stays consistent with x_t (as improved/guided-diffusion's DDIM does). ``nfe`` counts model calls.
    ``labels`` (set per batch), for a class-conditional network: ``model(x_t, t, labels)``.

    ``guidance=W`` (with labels) is classifier-free guidance (``ddpmkit.guidance``): the
    conditional and unconditional halves run as one batch of twice the size, with the model's
    ``null_label`` for the unconditional half, and are combined before clipping; only inside
    ``guidance_interval`` (sigma) where one is given; ``guidance_rescale`` is Lin et al.'s phi.
    ``evaluations`` counts network evaluations per sample: two for a guided call.
    ``precision="bf16"`` or ``"fp16"`` runs the network under autocast to that type (its matrix work;
    norms and softmax stay float32); its output is cast back to x_t's type, and everything else (the
    conversion to eps_hat and x0_hat, guidance, clipping, the solver) keeps x_t's precision.
    ``inputs`` ({grid timestep: input timestep}, set by ``sample`` from a plan's
    ``input_timesteps``) decouples the timestep the network is told from the one the solver steps
    at (LD3's decoupled timesteps, Tong et al. 2025): at grid timestep t the network gets
    ``inputs[t]`` and its output is read as the prediction at t.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        schedule: NoiseSchedule,
        prediction: str = "eps",
        *,
        clip: bool = False,
        clip_range: float | None = None,
        threshold: float | None = None,
        threshold_max: float | None = None,
        data_range: tuple[float, float] = (-1.0, 1.0),
        guidance: float = 1.0,
        guidance_interval: tuple[float, float] | None = None,
        guidance_rescale: float = 0.0,
        precision: str = "fp32",
    ):
        self.model, self.schedule = model, schedule
        if precision not in PRECISIONS:
            raise _choice_error("precision", precision, tuple(PRECISIONS))
        self.precision = precision
        self.prediction = check_prediction(prediction)
        if clip and threshold is not None:
            raise ValueError("give clip or threshold, not both (thresholding already clips)")
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold={threshold} is not a quantile; need a value in (0, 1]")
        if clip_range is not None and not (clip and clip_range > 0):
            raise ValueError(f"clip_range={clip_range} needs clip=True and a value > 0")
        if threshold_max is not None and threshold_max < 1.0:
            raise ValueError(f"threshold_max={threshold_max} must be >= 1")
        self.clip, self.threshold, self.threshold_max = bool(clip), threshold, threshold_max
        self.data_range = (float(data_range[0]), float(data_range[1]))
        if clip_range is not None:
            centre = sum(self.data_range) / 2
            self.clip_to = (centre - float(clip_range), centre + float(clip_range))
        else:
            self.clip_to = self.data_range
        self.clip_range = clip_range
        self.guidance, self.guidance_interval, self.guidance_rescale = check_guidance(
            guidance, guidance_interval, guidance_rescale)
        self.labels: torch.Tensor | None = None
        self.inputs: dict[float, float] | None = None
        self.nfe = self.evaluations = 0

    def told(self, t: float) -> float:
        """The timestep the network is told at timestep t: t itself, or its input timestep."""
        if self.inputs is None:
            return t
        for grid_t, input_t in self.inputs.items():
            if math.isclose(float(t), grid_t, rel_tol=1e-9, abs_tol=1e-9):
                return input_t
        raise ValueError(f"the network was asked for t = {float(t):g}, which is not a grid timestep; input "
                         "timesteps need a sampler that evaluates the network at its grid's timesteps only")

    def timestep_tensor(self, t: float, x: torch.Tensor) -> torch.Tensor:
        if float(t).is_integer():
            return torch.full((x.shape[0],), int(t), dtype=torch.int64, device=x.device)
        return torch.full((x.shape[0],), float(t), dtype=torch.float64, device=x.device)

    def null_labels(self, x_t: torch.Tensor) -> torch.Tensor:
        null = getattr(self.model, "null_label", None)
        if null is None:
            raise ValueError("classifier-free guidance needs a network trained with a null label (ddpmkit train "
                             "--conditional); this one has none, so only guidance=1 can run")
        return torch.full((x_t.shape[0],), int(null), dtype=torch.int64, device=x_t.device)

    def run(self, x_t: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        """The model itself on (x_t, *args), under autocast where ``precision`` asks for it; the output
        in x_t's type."""
        if self.precision == "fp32":
            return self.model(x_t, *args)
        with torch.autocast(x_t.device.type, dtype=PRECISIONS[self.precision]):
            out = self.model(x_t, *args)
        return out.to(x_t.dtype)

    def network(self, x_t: torch.Tensor, t: float, abar: float) -> torch.Tensor:
        """The model's output at (x_t, t): conditional on the labels where there are any, guided where
        guidance applies (W != 1, inside the interval), the unconditional model's alone for W = 0."""
        tt = self.timestep_tensor(self.told(t), x_t)
        if self.labels is None:
            self.evaluations += 1
            return self.run(x_t, tt)
        w = self.guidance
        if w == 1.0 or not in_interval(sigma_from_abar(abar), self.guidance_interval):
            self.evaluations += 1
            return self.run(x_t, tt, self.labels)
        if w == 0.0:
            self.evaluations += 1
            return self.run(x_t, tt, self.null_labels(x_t))
        both = self.run(torch.cat([x_t, x_t]), torch.cat([tt, tt]), torch.cat([self.labels, self.null_labels(x_t)]))
        self.evaluations += 2
        cond, uncond = both.chunk(2)
        return combine(cond, uncond, w, self.guidance_rescale)

    def __call__(self, x_t: torch.Tensor, t: float):
        abar = self.schedule.abar_at(t)
        output = self.network(x_t, t, abar)
        self.nfe += 1
        if output.shape != x_t.shape:
            raise ValueError(f"model output has shape {tuple(output.shape)}, expected {tuple(x_t.shape)}")
        eps, x0 = to_eps_x0(output.to(x_t.dtype), x_t, abar, self.prediction)
        if self.threshold is not None or self.clip:
            if self.threshold is not None:
                x0 = dynamic_threshold(x0, self.threshold, self.threshold_max, self.data_range)
            else:
                x0 = x0.clamp(*self.clip_to)
            eps = eps_from_x0(x_t, x0, abar)
        return eps, x0
