"""Measuring a sampler on a trained model: samples -> quantised -> features -> metrics.

Samples are generated in chunks of consecutive seeds and cached on disk (uint8 grey levels, one
file per chunk, written atomically), so an interrupted evaluation resumes where it stopped and a
repeated one costs nothing. Every report carries the data floor: the same metrics between two real
sets of the same size, shipped with the feature network.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import safe_open

from . import metrics
from .feature_net import ASSETS, load_feature_net, predict
from .files import atomic_path, file_digest
from .images import from_levels, to_levels
from .models import LoadedModel
from .nets.classifier import FeatureClassifier
from .samplers import sampler_options
from .sampling import sample

FEATURE_NET_FOR = {"mnist": "mnist", "digits": "digits"}


@dataclass
class Reference:
    net: FeatureClassifier
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    levels: int
    info: dict
    floor_features: np.ndarray | None = None  # real images outside the reference set, for floor_at
    floor_probs: np.ndarray | None = None


def load_reference(name: str) -> Reference:
    """A shipped feature network with its reference set's statistics and features."""
    net, card = load_feature_net(name)
    with safe_open(str(ASSETS / f"{name}_stats.safetensors"), "pt") as f:
        info = json.loads(f.metadata()["info"])
        mu, sigma = f.get_tensor("mu").numpy(), f.get_tensor("sigma").numpy()
        feats = f.get_tensor("features").double().numpy()
        extra = {k: f.get_tensor(k).double().numpy() for k in ("floor_features", "floor_probs") if k in f.keys()}
    return Reference(net, mu, sigma, feats, int(info["levels"]), {**info, "card": card}, **extra)


def reference_for(model: LoadedModel, name: str | None = None) -> Reference:
    dataset = model.config["data"].get("dataset")
    name = name or FEATURE_NET_FOR.get(dataset)
    if name is None:
        raise ValueError(f"no shipped feature network for dataset {dataset!r}; give --feature-net "
                         f"({', '.join(FEATURE_NET_FOR.values())})")
    ref = load_reference(name)
    cfg = ref.net.config()
    if (cfg["in_channels"], cfg["image_size"], cfg["image_size"]) != tuple(model.shape):
        raise ValueError(f"feature network {name!r} takes images of shape "
                         f"{(cfg['in_channels'], cfg['image_size'], cfg['image_size'])}; the model makes {model.shape}")
    return ref


def cache_key(model: LoadedModel, sampler: str, steps: int, spacing: str, options: dict, levels: int,
              timesteps=None) -> str:
    """What decides the samples: the model file's bytes (their SHA-256, so that a copy of the file on
    another machine or path finds the same chunks, and a rewritten file never reads stale ones) and
    the sampler setup. An explicit grid replaces the spacing (one grid given as --timesteps or stored
    as tuned is one key). A sampler option given at its default value is left out, so that
    ``--variance small`` and no --variance (the same samples) share their chunks."""
    defaults = sampler_options(sampler)
    options = {k: v for k, v in options.items() if not (k in defaults and defaults[k] == v)}
    what = {"model_sha256": file_digest(model.path),
            "sampler": sampler, "steps": steps, "spacing": spacing, "options": options, "levels": levels}
    if timesteps is not None:
        what["timesteps"] = [float(t) for t in timesteps]
        del what["spacing"]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def generate(model: LoadedModel, *, sampler: str, steps: int, spacing: str, options: dict, num: int, seed: int,
             levels: int, cache_dir: str | os.PathLike, chunk: int = 500, batch_size: int = 250, device="cpu",
             progress=None, timesteps=None) -> tuple[np.ndarray, dict]:
    """Samples for seeds seed .. seed+num-1 as uint8 grey levels (0..levels), chunk by chunk, from
    the cache where a chunk is there already; ``timesteps``, an explicit grid, replaces steps and
    spacing. Returns (levels array, info with nfe and seconds)."""
    folder = pathlib.Path(cache_dir) / cache_key(model, sampler, steps, spacing, options, levels, timesteps)
    folder.mkdir(parents=True, exist_ok=True)
    parts, seconds, nfe, cached = [], 0.0, None, 0
    for first, count, path in chunk_files(folder, seed, num, chunk):
        if path.exists():
            with np.load(path, allow_pickle=False) as data:
                part, secs, used = data["levels"], float(data["seconds"]), int(data["nfe"])
            cached += count
        else:
            start = time.perf_counter()
            x, info = sample(model.net, model.schedule, sampler=sampler, steps=None if timesteps else steps,
                             timesteps=timesteps, spacing=spacing,
                             prediction=model.prediction, shape=(count, *model.shape),
                             seeds=range(first, first + count), batch_size=batch_size, data_range=model.data_range,
                             device=device, eps_moment=model.eps_moment, return_info=True, **options)
            part = to_levels(x, levels, model.data_range)
            secs, used = time.perf_counter() - start, info["nfe"]
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, levels=part, seconds=secs, nfe=used)
        parts.append(part)
        seconds += secs
        nfe = used
        if progress is not None:
            progress(count)
    return np.concatenate(parts), {"nfe": nfe, "seconds": seconds, "cached": cached, "cache": str(folder)}


def chunk_files(folder: pathlib.Path, seed: int, num: int, chunk: int = 500) -> list[tuple[int, int, pathlib.Path]]:
    """(first seed, count, file) of each cached chunk that seeds seed .. seed+num-1 fill."""
    counts = [(first, min(chunk, seed + num - first)) for first in range(seed, seed + num, chunk)]
    return [(first, count, folder / f"seeds-{first:09d}-{count:05d}.npz") for first, count in counts]


def score(levels_array: np.ndarray, ref: Reference, num_classes: int = 10, precision_recall: bool = True,
          standard_error: bool = True) -> dict:
    """FID with its bootstrap standard error, IS, KID, precision/recall against the reference, and
    the class frequencies. ``precision_recall`` (the reference's k-NN radii cost seconds on a CPU)
    and ``standard_error`` (100 resampled FIDs, a fraction of a second) can be turned off where only
    the FID is read, as in ``ddpmkit tune``'s search."""
    feats, probs = predict(ref.net, from_levels(levels_array, ref.levels))
    return score_features(feats, probs, ref, num_classes, precision_recall, standard_error)


def score_features(feats: torch.Tensor, probs: torch.Tensor, ref: Reference, num_classes: int = 10,
                   precision_recall: bool = True, standard_error: bool = True) -> dict:
    """``score`` from the feature network's features and class probabilities of the samples."""
    mu, sigma = metrics.feature_statistics(feats)
    is_mean, is_std = metrics.inception_score(probs.numpy(), splits=min(10, len(feats)))
    kid, kid_std = metrics.kernel_inception_distance(feats, ref.features)
    freq = np.bincount(probs.argmax(1).numpy(), minlength=num_classes) / len(feats)
    out = {"fid": metrics.frechet_distance(mu, sigma, ref.mu, ref.sigma),
           "fid_se": metrics.fid_standard_error(feats, ref.mu, ref.sigma) if standard_error else None,
           "is": is_mean, "is_std": is_std,
           "kid": kid, "kid_std": kid_std, "class_frequencies": freq.tolist()}
    if precision_recall:
        out["precision"], out["recall"] = metrics.precision_recall(ref.features, feats)
    return out


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
    floor["precision"], floor["recall"] = metrics.precision_recall(ref.features, torch.from_numpy(ref.floor_features[:n]))
    return floor


def score_samples(x: torch.Tensor, reference: str = "mnist", data_range=(-1.0, 1.0)) -> dict:
    """All metrics for an array of samples (N, C, H, W) in ``data_range``: quantised to the
    reference data's grey levels, then ``score`` against the shipped reference ``mnist`` or ``digits``."""
    ref = load_reference(reference)
    return score(to_levels(torch.as_tensor(x), ref.levels, data_range), ref)

