"""A small CNN classifier whose penultimate features stand in for InceptionV3 in FID/KID/precision/
recall, and whose softmax stands in for Inception's in IS, on data where Inception does not apply
or cannot be downloaded (MNIST, the 8x8 digits). Metrics computed with it are comparable only
with each other, never with published Inception numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureClassifier(nn.Module):
    """Two conv blocks (conv3x3-ReLU x2, max-pool) and a 128-d feature layer, then the logits.
    ``forward`` returns logits; ``features`` the 128-d penultimate activations (after ReLU)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10, width: int = 32,
                 feature_dim: int = 128):
        super().__init__()
        self._config = dict(in_channels=in_channels, image_size=image_size, num_classes=num_classes, width=width,
                            feature_dim=feature_dim)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.fc = nn.Linear(2 * w * side * side, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.dropout = nn.Dropout(0.3)

    def config(self) -> dict:
        return dict(self._config)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.body(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))
