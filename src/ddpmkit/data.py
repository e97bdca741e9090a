"""Datasets, scaled to [-1, 1]."""

from __future__ import annotations

import torch


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (1797 images, 16 grey levels): images (N, 1, 8, 8) in [-1, 1]
    as float32, and labels (N,) as int64. Always available offline."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    images = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0 * 2.0 - 1.0
    return images, torch.tensor(d.target, dtype=torch.int64)
