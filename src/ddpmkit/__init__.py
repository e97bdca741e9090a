"""ddpmkit: train DDPM noise predictors, sample them with DDPM, DDIM and fast samplers, and measure
what each sampler buys."""

from .models import LoadedModel, load_model
from .oracles import GaussianMixture
from .plan import Plan, make_plan
from .prediction import PREDICTIONS, Denoiser
from .rng import SeededNoise
from .samplers import SAMPLERS, get_sampler, sampler_options
from .sampling import sample
from .schedule import SCHEDULES, SPACINGS, NoiseSchedule, make_grid

__version__ = "0.1.0"

__all__ = [
    "load_model",
    "LoadedModel",
    "Plan",
    "make_plan",
    "NoiseSchedule",
    "make_grid",
    "Denoiser",
    "GaussianMixture",
    "SeededNoise",
    "sample",
    "SAMPLERS",
    "get_sampler",
    "sampler_options",
    "SCHEDULES",
    "SPACINGS",
    "PREDICTIONS",
]
