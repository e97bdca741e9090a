"""Loading a trained model for sampling: network, schedule and data description from a checkpoint."""

from __future__ import annotations

import dataclasses
import os
import pathlib

import torch

from .checkpoint import CheckpointError, load_into, load_tensors
from .prediction import check_prediction
from .schedule import NoiseSchedule

CANDIDATES = ("model.safetensors", "checkpoint.safetensors")


@dataclasses.dataclass
class LoadedModel:
    net: torch.nn.Module
    schedule: NoiseSchedule
    prediction: str
    shape: tuple[int, ...]  # (C, H, W) of one sample
    data_range: tuple[float, float]
    config: dict
    path: pathlib.Path


def resolve(path: str | os.PathLike) -> pathlib.Path:
    """A checkpoint file, or a training run's folder (its model.safetensors, else checkpoint.safetensors)."""
    p = pathlib.Path(path)
    if p.is_dir():
        for name in CANDIDATES:
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p} holds no checkpoint (looked for {', '.join(CANDIDATES)})")
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    return p


def build_net(net_config: dict) -> torch.nn.Module:
    from .nets import build_unet

    config = dict(net_config)
    arch = config.pop("arch", None)
    if arch != "unet":
        raise CheckpointError(f"unknown network architecture {arch!r}; this ddpmkit knows: unet")
    try:
        return build_unet(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"network config is not valid: {e}") from None


def load_model(path: str | os.PathLike, *, weights: str = "ema", device="cpu") -> LoadedModel:
    """Build the network a checkpoint describes and load its ``ema`` (default) or raw ``model`` weights."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights={weights!r} is not valid; choose ema or model")
    file = resolve(path)
    tensors, config = load_tensors(file, f"{weights}.")
    net = build_net(config["net"])
    load_into(net, tensors, file)
    try:
        schedule = NoiseSchedule.from_config(config["schedule"])
        prediction = check_prediction(config["prediction"])
        shape = tuple(int(d) for d in config["data"]["shape"])
        data_range = tuple(float(v) for v in config["data"].get("range", (-1.0, 1.0)))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file} has an invalid config: {e}") from None
    return LoadedModel(net.to(device).eval().requires_grad_(False), schedule, prediction, shape, data_range, config, file)
