"""Checkpoints: safetensors tensors with the JSON config in the file's own header.

One file holds the weights and everything sampling must agree with (network shape, schedule,
prediction type, data shape and range, EMA, training step), so the two can never drift apart,
and one atomic rename replaces it whole: a kill at any moment leaves the previous file intact.
No pickle anywhere: safetensors stores raw tensors, the config is JSON.

Tensor names: ``ema.*`` (EMA weights, used for sampling), ``model.*`` (raw weights), and in
training checkpoints ``optim.*`` (AdamW moments). ``save_checkpoint`` writes them; a shipped model
needs only ``ema.*``.
"""

from __future__ import annotations

import json
import os
import pathlib

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .files import atomic_path

FORMAT = "ddpmkit-checkpoint"
VERSION = 1
CONFIG_KEY = "ddpmkit_config"
REQUIRED = ("net", "schedule", "prediction", "data")


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, foreign or inconsistent."""


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict) -> None:
    """Write ``tensors`` and ``config`` to ``path`` atomically (temp file, fsync, rename)."""
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise ValueError(f"checkpoint config lacks {missing[0]!r}; it needs {', '.join(REQUIRED)}")
    header = json.dumps({"format": FORMAT, "version": VERSION, **config}, sort_keys=True)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        with atomic_path(path) as tmp:
            save_file(flat, str(tmp), metadata={CONFIG_KEY: header})
    except SafetensorError as e:  # a full disk, say: the file that was there stays as it was
        raise OSError(f"could not write {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def read_config(path: str | os.PathLike) -> dict:
    """The JSON config of a checkpoint, validated; raises CheckpointError naming the problem."""
    with open_safetensors(path) as f:
        return _config_of(f, path)


def load_tensors(path: str | os.PathLike, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors whose names start with ``prefix`` (prefix stripped), and the config."""
    with open_safetensors(path) as f:
        config = _config_of(f, path)
        names = [k for k in f.keys() if k.startswith(prefix)]
        if not names:
            raise CheckpointError(f"{path} holds no tensors named {prefix}*")
        return {k[len(prefix):]: f.get_tensor(k) for k in names}, config


def check_tensors(own: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], path) -> None:
    """That ``tensors`` are exactly a network's state ``own`` (names and shapes; ``own`` may live on the
    meta device), else an error that names the first missing, unexpected or misshapen tensor."""
    for name, value in tensors.items():
        if name not in own:
            raise CheckpointError(f"{path}: tensor {name!r} does not belong to this network")
        if own[name].shape != value.shape:
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(value.shape)}, the network expects {tuple(own[name].shape)}"
            )
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise CheckpointError(f"{path}: tensor {missing[0]!r} is missing ({len(missing)} in all)")


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path) -> None:
    """load_state_dict with an error that names the first missing, unexpected or misshapen tensor."""
    check_tensors(module.state_dict(), tensors, path)
    module.load_state_dict(tensors, strict=True)


def nonfinite_tensors(module: torch.nn.Module) -> list[str]:
    """The names of ``module``'s floating-point tensors that hold NaN or inf."""
    return [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]


def check_finite(module: torch.nn.Module, path) -> None:
    """A CheckpointError naming the first tensor of ``module`` that holds NaN or inf: such weights
    (a diverged run's) make samples and metrics meaningless."""
    bad = nonfinite_tensors(module)
    if bad:
        raise CheckpointError(f"{path}: tensor {bad[0]!r} holds NaN or inf ({len(bad)} tensors in all), so the model "
                              "cannot be sampled; use a checkpoint from before training diverged")


class open_safetensors:
    """``safe_open`` of a file (framework pt) whose failures, a missing, truncated or foreign file,
    are a CheckpointError naming the path."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __enter__(self):
        if not self.path.is_file():
            raise CheckpointError(f"checkpoint {self.path} does not exist")
        try:
            self._cm = safe_open(str(self.path), framework="pt")
            return self._cm.__enter__()
        except (SafetensorError, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"{self.path} is not a readable safetensors checkpoint (truncated or foreign?): {reason}") from None

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def _config_of(f, path) -> dict:
    raw = (f.metadata() or {}).get(CONFIG_KEY)
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file without a ddpmkit config (not a ddpmkit checkpoint)")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} has a corrupt config: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} has an invalid config: a JSON {type(config).__name__}, not an object")
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ddpmkit checkpoint (format {config.get('format')!r})")
    if config.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {config.get('version')!r}; this ddpmkit reads version {VERSION}")
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise CheckpointError(f"{path} config lacks {missing[0]!r}")
    for key in ("net", "schedule", "data"):
        if not isinstance(config[key], dict):
            raise CheckpointError(f"{path} has an invalid config: {key!r} is a JSON {type(config[key]).__name__}, "
                                  f"not an object")
    return config
