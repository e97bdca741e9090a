"""The shipped feature networks: training, saving, loading, and turning images into features.

Generated samples are quantised to the data's own grey levels before features are taken, exactly
as real images are stored (the clean-fid lesson: a metric must not reward or punish a sample for
sub-level precision that no real image has).
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..checkpoint import CheckpointError, load_into, open_safetensors
from ..files import atomic_path
from ..images import from_levels, to_levels
from ..nets.classifier import FeatureClassifier

ASSETS = pathlib.Path(__file__).resolve().parent.parent / "assets"


def quantize(x: torch.Tensor, levels: int = 255, data_range=(-1.0, 1.0)) -> torch.Tensor:
    """Samples in ``data_range`` -> the nearest of ``levels + 1`` grey levels, back in [-1, 1]."""
    return from_levels(to_levels(x, levels, data_range), levels)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, epochs: int = 3, batch_size: int = 128,
                     lr: float = 1e-3, seed: int = 0, log=print) -> FeatureClassifier:
    """Adam on the cross-entropy, seeded; ``images`` float in [-1, 1], (N, C, H, W)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureClassifier(images.shape[1], images.shape[2], int(labels.max()) + 1)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        steps_per_epoch = math.ceil(len(images) / batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
        for epoch in range(epochs):
            net.train()
            perm = torch.randperm(len(images), generator=g)
            total = 0.0
            for i in range(steps_per_epoch):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                loss = F.cross_entropy(net(images[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            log(f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f}")
    return net.eval()


@torch.no_grad()
def predict(net: FeatureClassifier, images: torch.Tensor, batch_size: int = 1000):
    """(features (N, 128) float64, softmax probabilities (N, classes) float64)."""
    feats, probs = [], []
    for lo in range(0, len(images), batch_size):
        x = images[lo : lo + batch_size].to(torch.float32)
        f = net.features(x)
        feats.append(f.double())
        probs.append(torch.softmax(net.head(f), dim=1).double())
    return torch.cat(feats), torch.cat(probs)


def accuracy(net: FeatureClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (predict(net, images)[1].argmax(1) == labels).double().mean().item()


def save_feature_net(net: FeatureClassifier, path: str | os.PathLike, card: dict) -> None:
    meta = {"config": json.dumps(net.config()), "card": json.dumps(card)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata=meta)


def load_feature_net(name_or_path: str = "mnist") -> tuple[FeatureClassifier, dict]:
    """A shipped feature network by name (``mnist``, ``digits``) or a path; returns (net, card)."""
    path = pathlib.Path(name_or_path)
    if not path.suffix:
        path = ASSETS / f"{name_or_path}_classifier.safetensors"
    if not path.is_file():
        shipped = sorted(p.name.split("_")[0] for p in ASSETS.glob("*_classifier.safetensors"))
        raise ValueError(f"no feature network {name_or_path!r}; shipped: {', '.join(shipped) or 'none'}")
    with open_safetensors(path) as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    try:
        net, card = FeatureClassifier(**json.loads(meta["config"])), json.loads(meta.get("card", "{}"))
    except (KeyError, TypeError, ValueError) as e:  # ValueError: JSON's decode error, a bad size
        raise CheckpointError(f"{path} is not a ddpmkit feature network: its header has no usable 'config' "
                              f"({type(e).__name__}: {e})") from None
    load_into(net, tensors, path)
    return net.eval().requires_grad_(False), card
