"""ddpmkit's own model files: shipped models by name, checkpoints and run folders; loading them into
a ``LoadedModel``, and adding what ``ddpmkit moments``, ``ddpmkit ems`` and ``ddpmkit tune`` measured to a file."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import torch

from ..checkpoint import CheckpointError, check_finite, check_tensors, load_into, load_tensors, read_config
from ..prediction import check_prediction
from ..schedule import NoiseSchedule
from .diffusers_folder import SIDECAR, is_diffusers_folder, load_diffusers, sidecar_base
from .extras import STORED, read_extras
from .loaded import TUNED_KEY, LoadedModel

CANDIDATES = ("model.safetensors", "checkpoint.safetensors")
SHIPPED_DIR = pathlib.Path(__file__).parent.parent / "assets" / "models"
# models that ship inside the package, by name (their cards: assets/models/README.md)
SHIPPED = {"mnist": "a DDPM on MNIST (28x28, eps, linear schedule, T = 1000)",
           "mnist-cond": "the MNIST DDPM fine-tuned with class labels (sample with --class and --guidance)",
           "mnist-cm": "the MNIST DDPM tuned into a consistency model by ECT (sample with --sampler cm)"}
DEFAULT_MODEL = "mnist"


def is_shipped_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a shipped model (and no file or folder of that name is here)."""
    return str(path) in SHIPPED and not pathlib.Path(path).exists()


def is_diffusers_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder in diffusers' format (and neither a shipped name nor a run folder)."""
    return (not is_shipped_name(path) and is_diffusers_folder(path)
            and not any((pathlib.Path(path) / name).is_file() for name in CANDIDATES))


def resolve(path: str | os.PathLike) -> pathlib.Path:
    """A shipped model's name (``SHIPPED``), a checkpoint file, or a training run's folder (its
    model.safetensors, else checkpoint.safetensors). A path that exists wins over a name."""
    p = pathlib.Path(path)
    if is_shipped_name(path):
        file = SHIPPED_DIR / f"{path}.safetensors"
        if not file.is_file():
            raise CheckpointError(f"the shipped model {path!r} is missing from this installation ({file})")
        return file
    if p.is_dir():
        for name in CANDIDATES:
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p} holds no checkpoint (looked for {', '.join(CANDIDATES)}, or diffusers' "
                              "model_index.json or config.json)")
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist (shipped models: {', '.join(SHIPPED)})")
    return p


def build_net(net_config: dict, schedule: NoiseSchedule | None = None) -> torch.nn.Module:
    """The network a config describes: a U-Net, or a consistency function around one (which needs
    the model's ``schedule``)."""
    from ..nets import build_unet

    config = dict(net_config)
    arch = config.pop("arch", None)
    try:
        if arch == "unet":
            return build_unet(config)
        if arch == "diffusers":
            raise CheckpointError("this file is what ddpmkit stored beside a diffusers model; load the folder that "
                                  "holds it")
        if arch == "consistency" and schedule is not None:
            from ..consistency import ConsistencyFunction

            inner = config.pop("unet")
            return ConsistencyFunction(build_net(inner), schedule, **config)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"network config is not valid: {e}") from None
    raise CheckpointError(f"unknown network architecture {arch!r}; this ddpmkit knows: unet, consistency")


def skeleton_state(net_config: dict) -> dict[str, torch.Tensor]:
    """The state a network config describes, built on the meta device: names and shapes, no memory,
    so that a header whose sizes the weights do not bear out is refused before anything is allocated."""
    config = dict(net_config)
    prefix = ""
    if config.get("arch") == "consistency":  # the U-Net inside; its weights are the function's net.*
        config, prefix = dict(config.get("unet") or {}), "net."
    with torch.device("meta"):
        return {prefix + k: v for k, v in build_net(config).state_dict().items()}


def load_model(path: str | os.PathLike, *, weights: str = "ema", device="cpu",
               scheduler_config: dict | None = None) -> LoadedModel:
    """The model at ``path``: a shipped model's name, a ddpmkit checkpoint or run folder (its ``ema``
    weights, the default, or the raw ``model`` weights), or a folder in diffusers' format
    (``models.diffusers_folder``; ``scheduler_config``, a dict of diffusers' keys, gives or
    replaces its schedule)."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights={weights!r} is not valid; choose ema or model")
    if is_diffusers_model(path):
        return load_diffusers(path, scheduler_config=scheduler_config, device=device)
    if scheduler_config is not None:
        raise ValueError(f"a scheduler config applies to diffusers folders; {path} is a ddpmkit model, whose "
                         "checkpoint holds its schedule")
    file = resolve(path)
    tensors, config = load_tensors(file, f"{weights}.")
    try:
        schedule = NoiseSchedule.from_config(config["schedule"])
        prediction = check_prediction(config["prediction"])
        shape = tuple(int(d) for d in config["data"]["shape"])
        data_range = tuple(float(v) for v in config["data"].get("range", (-1.0, 1.0)))
        if len(data_range) != 2 or not data_range[0] < data_range[1]:
            raise ValueError(f"data range {list(data_range)} is not [low, high] with low < high")
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"data shape {list(shape)} is not [channels, height, width] of positive sizes")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file} has an invalid config: {e}") from None
    check_tensors(skeleton_state(config["net"]), tensors, file)  # before any memory is taken for the network
    net = build_net(config["net"], schedule)
    load_into(net, tensors, file)
    check_finite(net, file)
    extras = read_extras(file, config, schedule.T, shape)
    num_classes = config["net"].get("num_classes")  # a class-conditional U-Net's labels 0..num_classes-1
    return LoadedModel(net.to(device).eval().requires_grad_(False), schedule, prediction, shape, data_range, config,
                       file, extras, num_classes=num_classes, conditional=num_classes is not None)


def _own_file(path: str | os.PathLike) -> pathlib.Path:
    """The file that holds what ddpmkit measured for a model: its checkpoint, or for a diffusers
    folder ddpmkit's file beside diffusers' own (which are never rewritten)."""
    return pathlib.Path(path) / SIDECAR if is_diffusers_model(path) else resolve(path)


def _rewrite(path: str | os.PathLike, tensors: dict | None, update: dict,
             out: str | os.PathLike | None = None) -> pathlib.Path:
    """Rewrite a model's own file (atomically) with extra tensors and config entries; with ``out``,
    write that file instead and leave the model's own file as it was. For a diffusers folder the
    file is its ``ddpmkit.safetensors``, made if it is not there yet."""
    from ..checkpoint import save_checkpoint

    file = _own_file(path)
    if is_diffusers_model(path):
        if out is not None:
            raise ValueError(f"{path} is a diffusers folder: what ddpmkit adds goes to {file}, beside its files, "
                             "not to a copy (drop --out)")
        config = read_config(file) if file.is_file() else sidecar_base()
        stored = load_tensors(file)[0] if file.is_file() and any(k in config for k in STORED) else {}
    else:
        stored, config = load_tensors(file)
    config = {k: v for k, v in config.items() if k not in ("format", "version")}
    config.update(update)
    target = file if out is None else pathlib.Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(target, {**stored, **(tensors or {})}, config)
    return target


def store_eps_moment(path: str | os.PathLike, moment: np.ndarray, info: dict,
                     out: str | os.PathLike | None = None) -> pathlib.Path:
    """Add Analytic-DPM's Gamma_t table to a model file (rewritten atomically, or written to
    ``out``), so that ``variance="optimal"`` works from it. ``info`` (data set, sample count, ...)
    goes to its config."""
    return _rewrite(path, {"analytic.eps_moment": torch.as_tensor(np.asarray(moment, dtype=np.float64))},
                    {"analytic": info}, out)


def store_ems(path: str | os.PathLike, ems, out: str | os.PathLike | None = None) -> pathlib.Path:
    """Add DPM-Solver-v3's empirical model statistics (``ddpmkit.ems.EMS``) to a model file (rewritten
    atomically, or written to ``out``), so that ``--sampler dpm-solver-v3`` works from it."""
    return _rewrite(path, ems.tensors(), {"ems": ems.info}, out)


def store_tuned_grids(path: str | os.PathLike, sampler: str, found: dict[int, dict],
                      out: str | os.PathLike | None = None) -> pathlib.Path:
    """Add the grids ``ddpmkit tune`` found ({steps: {"timesteps": [...], and how they were
    measured}}) to a model file (rewritten atomically, or written to ``out``), merged with those it
    already holds."""
    file = _own_file(path)
    tuned = read_config(file).get(TUNED_KEY, {}) if file.is_file() else {}
    tuned.setdefault(sampler, {}).update({str(k): v for k, v in found.items()})
    return _rewrite(path, None, {TUNED_KEY: tuned}, out)
