"""Reference statistics: a shipped feature network with its reference set, and the data floor.

Every report carries the data floor: the same metrics between two real sets, shipped with the
feature network, at the report's own sample size where the shipped floor images reach (FID is
biased upwards at small sizes, so n samples are read against n real images).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import safe_open

from ..nets.classifier import FeatureClassifier
from . import metrics
from .features import ASSETS, load_feature_net

# the shipped feature network for each data set a model may have been trained on
FEATURE_NET_FOR = {"mnist": "mnist", "digits": "digits"}


@dataclass
class Reference:
    """A feature network with its reference set's feature statistics and features (``levels``: the
    grey levels the set's images are stored in, 255 for MNIST, 16 for the digits)."""

    net: FeatureClassifier
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    levels: int
    info: dict
    floor_features: np.ndarray | None = None  # real images outside the reference set, for floor_at
    floor_probs: np.ndarray | None = None


def load_reference(name: str) -> Reference:
    """A shipped feature network (``mnist``, ``digits``) with its reference set's statistics and features."""
    net, card = load_feature_net(name)
    with safe_open(str(ASSETS / f"{name}_stats.safetensors"), "pt") as f:
        info = json.loads(f.metadata()["info"])
        mu, sigma = f.get_tensor("mu").numpy(), f.get_tensor("sigma").numpy()
        feats = f.get_tensor("features").double().numpy()
        extra = {k: f.get_tensor(k).double().numpy() for k in ("floor_features", "floor_probs") if k in f.keys()}
    return Reference(net, mu, sigma, feats, int(info["levels"]), {**info, "card": card}, **extra)


def feature_net_for(model, name: str | None = None) -> str | None:
    """``name``, else the shipped feature network of a ``LoadedModel``'s data set; None if it has none."""
    return name or FEATURE_NET_FOR.get(model.config["data"].get("dataset"))


def reference_for(model, name: str | None = None, *, otherwise: str = "") -> Reference:
    """The shipped reference for a ``LoadedModel``: ``name``, else the one of the model's data set;
    an error if there is none (ending with ``otherwise``, what else the caller can measure) or its
    images are not the model's shape."""
    name = feature_net_for(model, name)
    if name is None:
        dataset = model.config["data"].get("dataset")
        what = f"dataset {dataset!r}" if dataset else "an unknown data set"
        raise ValueError(f"{model.path.name} makes {'x'.join(map(str, model.shape))} images of {what}, for which "
                         f"ddpmkit ships no feature network; the shipped ones ({', '.join(FEATURE_NET_FOR.values())}) "
                         f"take 1x28x28 and 1x8x8 digits: give --feature-net NAME for a model of such images{otherwise}")
    ref = load_reference(name)
    cfg = ref.net.config()
    if (cfg["in_channels"], cfg["image_size"], cfg["image_size"]) != tuple(model.shape):
        raise ValueError(f"feature network {name!r} takes images of shape "
                         f"{(cfg['in_channels'], cfg['image_size'], cfg['image_size'])}; the model makes {model.shape}")
    return ref


def floor_at(ref: Reference, n: int) -> dict:
    """The data floor at sample size n: FID, KID and IS of n real images (not in the reference set)
    against the reference, from the features shipped for this (FID is biased upwards at small n, so
    an evaluation of n samples is read against this, not against the 10k floor)."""
    if ref.floor_features is None or n > len(ref.floor_features):
        have = 0 if ref.floor_features is None else len(ref.floor_features)
        raise ValueError(f"the shipped statistics hold {have} real images outside the reference set; "
                         f"cannot give the floor at n={n}")
    feats = torch.from_numpy(ref.floor_features[:n])
    mu, sigma = metrics.feature_statistics(feats)
    kid, kid_std = metrics.kernel_inception_distance(feats, ref.features)
    is_mean, _ = metrics.inception_score(ref.floor_probs[:n], splits=min(10, n))
    return {"n": n, "fid": metrics.frechet_distance(mu, sigma, ref.mu, ref.sigma), "kid": kid, "kid_std": kid_std,
            "is": is_mean}


def floor_for(ref: Reference, n: int) -> dict:
    """The data floor to read an n-sample evaluation against: at n itself (precision and recall
    included) where the shipped floor images reach, so that FID's small-sample bias is on both
    sides; else the shipped floor at its own size. Its ``n`` says which."""
    full = ref.info["floor"]
    if n >= full["n"] or ref.floor_features is None or n > len(ref.floor_features):
        return full
    floor = floor_at(ref, n)
    real = torch.from_numpy(ref.floor_features[:n])
    floor["precision"], floor["recall"] = metrics.precision_recall(ref.features, real)
    return floor
