"""Models saved in diffusers' format: a pipeline folder, a bare ``UNet2DModel`` folder, or the older
single-folder layout of the ``google/ddpm-*`` repositories, read locally.

The network is diffusers' own ``UNet2DModel``, loaded by diffusers (an optional extra:
``pip install ddpmkit[diffusers]``); the scheduler config becomes the model's schedule,
parameterisation and default plan options (``scheduler_config``). Weights load from
``.safetensors``; a ``.bin`` file is first read with ``torch.load(weights_only=True)``, which runs no
code, and is refused if that fails. What ddpmkit measures for such a model (``ddpmkit moments``,
``ddpmkit tune``) goes to a file of its own beside diffusers' files, ``ddpmkit.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import torch

from ..checkpoint import CheckpointError, check_finite, read_config
from ..files import file_digest
from .extras import STORED, read_extras
from .loaded import TUNED_KEY, LoadedModel
from .scheduler_config import read_scheduler_config

WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SIDECAR = "ddpmkit.safetensors"  # what ddpmkit adds to a diffusers folder
EXTRA = "pip install 'ddpmkit[diffusers]'"
DATA_RANGE = (-1.0, 1.0)  # diffusers' pixel pipelines: images in [-1, 1]


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder in one of diffusers' layouts (a pipeline's model_index.json, or
    a model's config.json)."""
    p = pathlib.Path(path)
    return p.is_dir() and ((p / "model_index.json").is_file() or (p / "config.json").is_file())


def _read_json(path: pathlib.Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable JSON file: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def find_parts(folder: pathlib.Path, scheduler_config: dict | None = None) -> tuple[str, pathlib.Path, dict, str]:
    """(layout, the UNet's folder, the scheduler config, where it came from) of a diffusers folder.
    ``scheduler_config`` (a dict of diffusers' keys) stands in for a missing scheduler_config.json,
    or replaces the folder's."""
    if (folder / "model_index.json").is_file():
        index = _read_json(folder / "model_index.json")
        unet = index.get("unet")
        if not (isinstance(unet, list) and unet[-1:] == ["UNet2DModel"]):
            parts = ", ".join(k for k in index if not k.startswith("_"))
            raise CheckpointError(f"{folder} is a {index.get('_class_name', 'diffusers')} folder ({parts}) without a "
                                  f"UNet2DModel 'unet'; ddpmkit samples pixel-space DDPMs (DDPMPipeline, DDIMPipeline)")
        layout, unet_dir, sched_file = "pipeline", folder / "unet", folder / "scheduler" / "scheduler_config.json"
    else:
        layout, unet_dir, sched_file = "unet", folder, folder / "scheduler_config.json"
    if scheduler_config is not None:
        return layout, unet_dir, dict(scheduler_config), "the given scheduler config"
    if not sched_file.is_file():
        raise CheckpointError(f"{folder} has no {sched_file.relative_to(folder)}, so its noise schedule is unknown; "
                              "give one with --scheduler-config (a scheduler_config.json, or key=value pairs such "
                              "as beta_schedule=linear,prediction_type=epsilon)")
    return layout, unet_dir, _read_json(sched_file), str(sched_file)


def _check_unet_config(config: dict, where: pathlib.Path) -> tuple[tuple[int, int, int], int | None, bool]:
    """(sample shape, number of classes or None, conditional) of a UNet2DModel config; what ddpmkit
    cannot sample is refused by name."""
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(f"{where}: a {config['_class_name']}, not a UNet2DModel; ddpmkit samples pixel-space "
                              "UNet2DModel DDPMs")
    kind = config.get("time_embedding_type", "positional")
    if kind != "positional":
        raise CheckpointError(f"{where}: time_embedding_type={kind!r} (a score-SDE network of sigma); ddpmkit "
                              "samples DDPM networks of the timestep (time_embedding_type='positional')")
    cin, cout = config.get("in_channels", 3), config.get("out_channels", 3)
    if cin != cout:
        raise CheckpointError(f"{where}: out_channels={cout} differs from in_channels={cin} (a learned variance?); "
                              "ddpmkit needs one prediction per input channel")
    size = config.get("sample_size")
    if size is None:
        raise CheckpointError(f"{where}: sample_size is missing, so the image size is unknown")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    embed, n = config.get("class_embed_type"), config.get("num_class_embeds")
    if embed not in (None, "timestep"):
        raise CheckpointError(f"{where}: class_embed_type={embed!r} takes a vector per sample, not a class "
                              "label; ddpmkit's --class gives integer labels (class_embed_type None or 'timestep')")
    return (int(cin), int(h), int(w)), (int(n) if embed is None and n is not None else None), \
        embed is not None or n is not None


def _weights(unet_dir: pathlib.Path) -> pathlib.Path:
    for name in WEIGHTS:
        if (unet_dir / name).is_file():
            return unet_dir / name
    if any(unet_dir.glob("*.index.json")):
        raise CheckpointError(f"{unet_dir} holds sharded weights; ddpmkit reads one weights file ({WEIGHTS[0]})")
    raise CheckpointError(f"{unet_dir} has no weights (looked for {', '.join(WEIGHTS)})")


def _first_line(e: Exception) -> str:
    """An exception's message, first line only, for a one-line error."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_bin(file: pathlib.Path) -> None:
    """A pickled state dict is read with ``weights_only=True`` first: that unpickler builds only
    tensors and plain containers, so a file that passes holds nothing that could run code."""
    try:
        torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for code, RuntimeError for a broken zip, ...
        raise CheckpointError(f"{file} is refused: torch.load(weights_only=True) cannot read it ({_first_line(e)}); "
                              "ddpmkit never unpickles more than tensors — save the weights as .safetensors") from None


class DiffusersNet(torch.nn.Module):
    """A ``UNet2DModel`` as ddpmkit calls a network: ``net(x_t, t)`` or ``net(x_t, t, labels)``
    returns the prediction tensor."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x, t, class_labels=labels, return_dict=False)[0]


def load_unet(unet_dir: pathlib.Path, weights: pathlib.Path) -> torch.nn.Module:
    """diffusers' ``UNet2DModel.from_pretrained`` on a local folder (no download is tried), whose
    weights file is ``weights``."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise CheckpointError(f"{unet_dir} is a diffusers model; reading it needs diffusers: {EXTRA}") from None
    if weights.suffix == ".bin":
        _check_bin(weights)
    try:
        return UNet2DModel.from_pretrained(unet_dir, use_safetensors=weights.suffix == ".safetensors",
                                           local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{unet_dir}: diffusers could not load its UNet2DModel: {_first_line(e)}") from None


def sidecar_base(data: dict | None = None) -> dict:
    """The config of a new ``ddpmkit.safetensors``: the schedule and prediction stay in diffusers'
    files (the entries here only say so); ``data`` may name the data set (``{"dataset": "mnist"}``)."""
    return {"net": {"arch": "diffusers"}, "schedule": {"from": "scheduler_config.json"},
            "prediction": "from scheduler_config.json", "data": dict(data or {})}


def sidecar_config(folder: pathlib.Path) -> dict:
    """The config of ddpmkit's own file in a diffusers folder, empty where there is none."""
    file = folder / SIDECAR
    return read_config(file) if file.is_file() else {}


def load_diffusers(path: str | os.PathLike, *, scheduler_config: dict | None = None, device="cpu") -> LoadedModel:
    """A diffusers folder as a ``LoadedModel``: its UNet2DModel (loaded by diffusers), the schedule,
    prediction type and default plan options of its scheduler config, and what ddpmkit stored
    beside it (a data set name, Analytic-DPM's moments, DPM-Solver-v3's statistics, tuned grids)."""
    folder = pathlib.Path(path)
    layout, unet_dir, sched, source = find_parts(folder, scheduler_config)
    settings = read_scheduler_config(sched, source)
    unet_config = _read_json(unet_dir / "config.json")
    shape, num_classes, conditional = _check_unet_config(unet_config, unet_dir / "config.json")
    weights = _weights(unet_dir)
    net = DiffusersNet(load_unet(unet_dir, weights))
    check_finite(net, weights)
    own = sidecar_config(folder)
    extras = read_extras(folder / SIDECAR, own, settings.schedule.T, shape) if own else {}
    config = {"format": "diffusers", "layout": layout, "unet": unet_config, "scheduler": sched,
              "schedule": settings.schedule.to_config(), "prediction": settings.prediction,
              "data": {"shape": list(shape), "range": list(DATA_RANGE), **own.get("data", {})},
              **{k: own[k] for k in (TUNED_KEY, *STORED) if k in own}}
    files = [unet_dir / "config.json", weights] + ([folder / SIDECAR] if (folder / SIDECAR).is_file() else [])
    digest = hashlib.sha256(json.dumps({"files": [file_digest(f) for f in files], "scheduler": sched},
                                       sort_keys=True).encode()).hexdigest()
    return LoadedModel(net.to(device).eval().requires_grad_(False), settings.schedule, settings.prediction, shape,
                       DATA_RANGE, config, folder, extras, defaults=settings.defaults, num_classes=num_classes,
                       conditional=conditional, digest=digest)
