"""What ddpmkit measured for a model and keeps in its file (a checkpoint, or the ``ddpmkit.safetensors``
beside a diffusers folder's files): Analytic-DPM's eps moments (``ddpmkit moments``) and DPM-Solver-v3's
empirical model statistics (``ddpmkit ems``), read back as the extras that samplers take."""

from __future__ import annotations

import pathlib

from ..checkpoint import CheckpointError, load_tensors
from ..ems import EMS

# the config entries whose tensors the file holds (under the same name as prefix)
STORED = ("analytic", "ems")


def read_extras(file: pathlib.Path, config: dict, T: int, shape) -> dict:
    """{"eps_moment": (T,) array, "ems": EMS}, each where ``config`` says the file holds it, checked
    against the model's T and sample shape."""
    extras = {}
    if "analytic" in config:
        moment = load_tensors(file, "analytic.")[0]["eps_moment"].double().numpy()
        if moment.shape != (T,):
            raise CheckpointError(f"{file}: analytic.eps_moment has shape {moment.shape}, expected ({T},)")
        extras["eps_moment"] = moment
    if "ems" in config:
        try:
            ems = EMS.from_tensors(load_tensors(file, "ems.")[0], config["ems"])
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{file}: its DPM-Solver-v3 statistics are not valid: {e}") from None
        if shape is not None and ems.shape != tuple(shape):
            raise CheckpointError(f"{file}: its DPM-Solver-v3 statistics are for shape {list(ems.shape)}, "
                                  f"the model makes {list(shape)}")
        extras["ems"] = ems
    return extras
