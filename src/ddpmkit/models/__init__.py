"""Models for sampling: ``load_model(name_or_path)`` gives a ``LoadedModel`` that plans and samples
itself. Formats plug in here; the samplers never know where a network came from."""

from .checkpoints import (CANDIDATES, DEFAULT_MODEL, SHIPPED, SHIPPED_DIR, build_net, is_diffusers_model,
                          is_shipped_name, load_model, resolve, store_eps_moment, store_ems, store_tuned_grids)
from .diffusers_folder import SIDECAR
from .loaded import TUNED_KEY, LoadedModel

__all__ = ["LoadedModel", "load_model", "resolve", "is_shipped_name", "is_diffusers_model", "SIDECAR", "build_net",
           "store_eps_moment", "store_ems", "store_tuned_grids", "SHIPPED", "SHIPPED_DIR", "DEFAULT_MODEL", "CANDIDATES",
           "TUNED_KEY"]
