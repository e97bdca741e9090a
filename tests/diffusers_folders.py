"""Diffusers-format model folders for tests/test_diffusers_exact.py, and diffusers' own sampling
loop on them.

A tiny randomly initialised ``UNet2DModel`` is saved (safetensors) beside several scheduler
configs, in the layouts ``ddpmkit.load_model`` reads: a ``DDPMPipeline`` / ``DDIMPipeline``
folder, or a bare UNet folder with ``scheduler_config.json`` beside its ``config.json`` (the old
``google/ddpm-*`` layout). The diffusers side reads the folder back with diffusers alone and runs
a scheduler the way diffusers' pipelines do.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch

from conftest import diffusers  # a stand-in that skips the test touching it where diffusers is absent

SHAPE = (3, 8, 8)  # one sample: (C, H, W)
SEEDS = (3, 11)

# name: (layout, scheduler class, its config). T = 1000 (diffusers' default) unless said.
CONFIGS = {
    # a DDPMPipeline folder
    "eps-linear": ("pipeline", "DDPMScheduler",
                   {"beta_schedule": "linear", "prediction_type": "epsilon", "clip_sample": False,
                    "timestep_spacing": "trailing", "variance_type": "fixed_small"}),
    # a bare UNet folder with scheduler_config.json beside config.json
    "v-cosine": ("unet", "DDPMScheduler",
                 {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "clip_sample": False,
                  "timestep_spacing": "trailing", "variance_type": "fixed_large"}),
    # DDPMScheduler's own defaults (linear, epsilon, clip_sample, fixed_small, leading): google/ddpm-*'s config
    "eps-linear-clip": ("unet", "DDPMScheduler", {}),
    # a DDIMPipeline folder: x0 prediction, cosine, clipping to +-0.8, leading grid shifted by steps_offset
    "x0-cosine-clip": ("ddim-pipeline", "DDIMScheduler",
                       {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample", "clip_sample": True,
                        "clip_sample_range": 0.8, "timestep_spacing": "leading", "steps_offset": 1,
                        "set_alpha_to_one": True}),
    # a beta table (trained_betas) of T = 100, for ddpm's full chain
    "eps-betas-T100": ("unet", "DDPMScheduler",
                       {"num_train_timesteps": 100, "trained_betas": np.linspace(1e-3, 0.2, 100).tolist(),
                        "prediction_type": "epsilon", "clip_sample": False, "timestep_spacing": "linspace",
                        "variance_type": "fixed_large"}),
}


def tiny_unet(seed: int = 0):
    """A random 177k-parameter UNet2DModel on 3x8x8 images (two levels, attention at the lower one),
    its output layer scaled so that predictions are O(1) (std ~0.9) rather than ~0.3."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=SHAPE[1], in_channels=SHAPE[0], out_channels=SHAPE[0],
                                 block_out_channels=(16, 32), layers_per_block=1,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    with torch.no_grad():
        unet.conv_out.weight.mul_(3.0)
        unet.conv_out.bias.normal_(0.0, 0.1)
    return unet.eval()


def write_folder(root: pathlib.Path, name: str) -> pathlib.Path:
    """Save the tiny UNet with config ``name`` under root/name, in that config's layout."""
    layout, cls_name, kwargs = CONFIGS[name]
    folder = root / name
    scheduler = getattr(diffusers, cls_name)(**kwargs)
    unet = tiny_unet()
    if layout == "pipeline":
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    elif layout == "ddim-pipeline":
        diffusers.DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    else:
        unet.save_pretrained(folder, safe_serialization=True)
        scheduler.save_config(folder)
    return folder


def is_pipeline(folder: pathlib.Path) -> bool:
    return (folder / "model_index.json").is_file()


def scheduler_config(folder: pathlib.Path) -> dict:
    """The scheduler config as diffusers wrote it into the folder."""
    file = folder / "scheduler" / "scheduler_config.json" if is_pipeline(folder) else folder / "scheduler_config.json"
    return json.loads(file.read_text())


def their_unet(folder: pathlib.Path):
    """The folder's UNet2DModel, loaded by diffusers."""
    unet_dir = folder / "unet" if is_pipeline(folder) else folder
    return diffusers.UNet2DModel.from_pretrained(unet_dir, use_safetensors=True).eval()


def their_scheduler(folder: pathlib.Path, cls_name: str, **overrides):
    """diffusers' scheduler ``cls_name`` from the folder's scheduler config, as a user swaps
    schedulers (``Cls.from_config(pipe.scheduler.config, **overrides)``)."""
    return getattr(diffusers, cls_name).from_config(scheduler_config(folder), **overrides)


def generators(seeds) -> list[torch.Generator]:
    """One torch.Generator per sample, seeded with its seed (what ddpmkit's SeededNoise holds)."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def draw(gens, shape=SHAPE) -> torch.Tensor:
    """diffusers' randn_tensor with a list of generators: sample i is drawn from gens[i] alone."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor((len(gens), *shape), generator=gens, dtype=torch.float32)


def their_grid(scheduler) -> list[float]:
    """The distinct timesteps of a scheduler after set_timesteps (Heun lists each but the first twice)."""
    return [float(t) for t in dict.fromkeys(scheduler.timesteps.tolist())]


def diffusers_loop(unet, scheduler, x_T: torch.Tensor, *, steps: int | None = None, timesteps=None,
                   latents: torch.Tensor | None = None, callback=None, **step_kwargs) -> torch.Tensor:
    """diffusers' sampling loop, as its pipelines run it: set_timesteps (a step count, or explicit
    ``timesteps`` where the scheduler takes them), latents = x_T * init_noise_sigma (or ``latents``
    as given), then for each timestep scale_model_input, the UNet, scheduler.step(**step_kwargs).
    Returns the final sample, unclamped. ``callback(t, sample)`` sees the sample before each step."""
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=[int(t) if float(t).is_integer() else float(t) for t in timesteps])
    else:
        scheduler.set_timesteps(steps)
    y = x_T * scheduler.init_noise_sigma if latents is None else latents
    with torch.no_grad():
        for t in scheduler.timesteps:
            if callback is not None:
                callback(t, y)
            out = unet(scheduler.scale_model_input(y, t), t).sample
            y = scheduler.step(out, t, y, **step_kwargs).prev_sample
    return y
