"""The Inception network of the standard FID, for users who have its weights file.

The network is Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture for
Computer Vision") in the exact form of the TensorFlow graph ``inception-2015-12-05`` that the
reference FID code (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
Local Nash Equilibrium") takes its pool3 features from. Its PyTorch port is the file
``pt_inception-2015-12-05-6726825d.pth`` published by pytorch-fid; this module builds a network
whose state-dict keys and shapes are those of that file, so the file loads as-is.

That graph differs from torchvision's Inception-v3 in three places, reproduced here:

- the pooling branch of the 35x35, 17x17 and first 8x8 mixing blocks (Mixed_5b-d, Mixed_6b-e,
  Mixed_7b) averages over the valid pixels only (TensorFlow's padding, ``count_include_pad=False``);
- the pooling branch of the last block (Mixed_7c) is a 3x3 *max* pool, stride 1;
- the classifier ``fc`` has 1008 outputs (a background class, ImageNet's 1000 classes, 7 unused slots).

No weights are shipped and nothing is downloaded: pass the file to :func:`load_fid_inception`.
``setup`` and ``scores`` are what ``ddpmkit eval --inception`` runs: the network and the model's real
images, then the usual Inception FID and IS of quantised samples against them.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 2048
NUM_CLASSES = 1008
_MIXED = tuple(f"Mixed_{b}" for b in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"))


class _ConvBN(nn.Module):
    """Convolution (no bias), batch norm (eps 1e-3, as in the TF graph), ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_valid(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _Block(nn.Module):
    def _run(self, x, *names):
        """Apply the named sub-layers in order (the branch layers keep the flat names of the weights)."""
        for name in names:
            x = getattr(self, name)(x)
        return x


class _Mixed35(_Block):
    """35x35 block (Mixed_5b-d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(c_in, 64, 1)
        self.branch5x5_1 = _ConvBN(c_in, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(c_in, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self._run(x, "branch5x5_1", "branch5x5_2"),
                          self._run(x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                          self.branch_pool(_avg_pool_valid(x))], 1)


class _Reduce35(_Block):
    """35x35 -> 17x17 reduction (Mixed_6a): stride-2 3x3 | 1x1-3x3-3x3/2 | 3x3/2 max pool."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = _ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        deep = self._run(x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")
        return torch.cat([self.branch3x3(x), deep, F.max_pool2d(x, 3, stride=2)], 1)


class _Mixed17(_Block):
    """17x17 block (Mixed_6b-e) with factorised 7x7 convolutions (1x7 and 7x1) of width ``c7``."""

    def __init__(self, c_in: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _ConvBN(c_in, 192, 1)
        self.branch7x7_1 = _ConvBN(c_in, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, **row)
        self.branch7x7_3 = _ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = _ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = _ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = _ConvBN(c7, 192, **row)
        self.branch_pool = _ConvBN(c_in, 192, 1)

    def forward(self, x):
        b7 = self._run(x, *(f"branch7x7_{i}" for i in range(1, 4)))
        b7dbl = self._run(x, *(f"branch7x7dbl_{i}" for i in range(1, 6)))
        return torch.cat([self.branch1x1(x), b7, b7dbl, self.branch_pool(_avg_pool_valid(x))], 1)


class _Reduce17(_Block):
    """17x17 -> 8x8 reduction (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | 3x3/2 max pool."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(c_in, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self._run(x, "branch3x3_1", "branch3x3_2")
        b7 = self._run(x, *(f"branch7x7x3_{i}" for i in range(1, 5)))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _Mixed8(_Block):
    """8x8 block (Mixed_7b/7c) with split 1x3 / 3x1 outputs. ``max_pool``: the pooling branch of
    Mixed_7c in the FID graph is a max pool; Mixed_7b's averages over valid pixels."""

    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(c_in, 320, 1)
        self.branch3x3_1 = _ConvBN(c_in, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(c_in, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3dbl = self._run(x, "branch3x3dbl_1", "branch3x3dbl_2")
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_valid(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl),
                          self.branch_pool(pooled)], 1)


class FIDInceptionV3(_Block):
    """Inception-v3 as in the FID reference graph (see the module docstring); randomly initialised.

    ``forward(x)`` takes images in [-1, 1], shape (N, C, H, W) with C = 1 (repeated to 3) or 3,
    resizes them bilinearly (align_corners=False) to 299x299 and returns the (N, 2048) pool3
    features. ``forward(x, with_logits=True)`` returns (features, probs) with ``probs`` the
    (N, 1008) softmax of ``features @ fc.weight.T`` -- without the fc bias, as in the original
    Inception Score code (Salimans et al. 2016) that read the graph's ``logits/MatMul``.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _Mixed35(192, pool_features=32)
        self.Mixed_5c = _Mixed35(256, pool_features=64)
        self.Mixed_5d = _Mixed35(288, pool_features=64)
        self.Mixed_6a = _Reduce35(288)
        self.Mixed_6b = _Mixed17(768, c7=128)
        self.Mixed_6c = _Mixed17(768, c7=160)
        self.Mixed_6d = _Mixed17(768, c7=160)
        self.Mixed_6e = _Mixed17(768, c7=192)
        self.Mixed_7a = _Reduce17(768)
        self.Mixed_7b = _Mixed8(1280, max_pool=False)
        self.Mixed_7c = _Mixed8(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor, with_logits: bool = False):
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
        x = x.to(self.fc.weight.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = F.max_pool2d(self._run(x, "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"), 3, stride=2)
        x = F.max_pool2d(self._run(x, "Conv2d_3b_1x1", "Conv2d_4a_3x3"), 3, stride=2)
        x = self._run(x, *_MIXED)
        feats = F.adaptive_avg_pool2d(x, 1).flatten(1)
        if not with_logits:
            return feats
        return feats, torch.softmax(feats @ self.fc.weight.T, dim=1)


def _reason(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _read_state_dict(path: pathlib.Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:
            raise ValueError(f"{path} is not a readable safetensors file ({_reason(e)})") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused the file, or it is not a pickle at all
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused:
            raise ValueError(f"{path} was refused: it pickles a non-tensor object ({refused.group(1)}); "
                             "only a plain state dict of tensors is accepted") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        raise ValueError(f"{path} is not a readable torch weights file "
                         f"({detail.group(1).strip() if detail else _reason(e)})") from None
    except Exception as e:
        raise ValueError(f"{path} is not a readable torch weights file ({_reason(e)})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return sd


def load_fid_inception(path: str | os.PathLike) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load ``path`` (a ``.pth`` state dict, read with
    ``weights_only=True``, or a ``.safetensors`` file), e.g. pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth``. Every key and shape must match (BatchNorm's
    ``num_batches_tracked`` counters may be absent: they play no part in evaluation); otherwise a
    one-line ValueError names the file and the first offending key. Returns the net in eval mode
    with gradients off."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights not found: {path}")
    sd = dict(_read_state_dict(path))
    net = FIDInceptionV3()
    expected = net.state_dict()
    for key, ref in expected.items():
        if key not in sd:
            if key.endswith("num_batches_tracked"):
                sd[key] = ref
                continue
            raise ValueError(f"{path} is not the FID Inception weights: missing key {key!r}")
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise ValueError(f"{path} is not the FID Inception weights: {key!r} has shape "
                             f"{tuple(sd[key].shape)}, expected {tuple(ref.shape)}")
    extra = next((k for k in sd if k not in expected), None)
    if extra is not None:
        raise ValueError(f"{path} is not the FID Inception weights: unexpected key {extra!r}")
    net.load_state_dict(sd)
    return net.eval().requires_grad_(False)


@torch.no_grad()
def inception_features(net: FIDInceptionV3, images: torch.Tensor, batch_size: int = 100):
    """Pool3 features (N, 2048) and class probabilities (N, 1008) of ``images`` (N, C, H, W) in
    [-1, 1], both float64 numpy arrays, computed ``batch_size`` images at a time on the net's device."""
    device = next(net.parameters()).device
    feats, probs = [], []
    for lo in range(0, len(images), batch_size):
        f, p = net(images[lo:lo + batch_size].to(device), with_logits=True)
        feats.append(f.double().cpu())
        probs.append(p.double().cpu())
    if not feats:
        return np.zeros((0, FEATURE_DIM)), np.zeros((0, NUM_CLASSES))
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


INCEPTION_REAL = 10000  # real images the Inception FID compares against, at most


@dataclass
class InceptionSetup:
    """The FID Inception network, the real images it compares against, and what they are."""

    net: FIDInceptionV3
    real: torch.Tensor  # float in [-1, 1], (N, C, H, W)
    reference: str  # "mnist test, 10000 images"
    weights: str  # the weights file, as given


def setup(weights: str | os.PathLike, model, data_dir: str | os.PathLike | None = None, max_real: int | None = None,
          device="cpu") -> InceptionSetup:
    """The FID Inception network from ``weights`` and the real images of ``model``'s data set (a
    ``LoadedModel``; its test split where it has one, at most ``max_real``, default
    ``INCEPTION_REAL``), read from ``data_dir``. A model whose data set is unknown (a diffusers
    folder, say) needs ``data_dir``: a folder of its real images, fitted to the model's shape.
    A missing weights file is a ValueError naming ``--inception``."""
    from ..data import load_dataset

    dataset = model.config["data"].get("dataset")
    if dataset is None and data_dir is None:
        raise ValueError(f"--inception: {model.path.name} does not name its data set, so the Inception FID needs "
                         "its real images: give --inception-data FOLDER (image files, any layout)")
    try:
        net = load_fid_inception(weights).to(device)
    except FileNotFoundError as e:
        raise ValueError(f"--inception: {e}") from None
    if dataset is None:  # the user's folder of real images, at the model's size and channels
        c, h, _ = model.shape
        real, what = load_dataset(f"folder:{data_dir}", image_size=h, channels=c), str(data_dir)
    else:
        split = "train" if dataset == "digits" or dataset.startswith("folder:") else "test"
        real, what = load_dataset(dataset, data_dir, split=split), f"{dataset} {split}"
    n = min(len(real), max_real or INCEPTION_REAL)
    return InceptionSetup(net, real.to_float()[:n], f"{what}, {n} images", str(weights))


def scores(setup: InceptionSetup, levels, num_levels: int) -> dict:
    """The usual Inception FID and IS of samples given as grey levels 0..num_levels, against the
    setup's real images: {fid, is, is_std, weights, reference}."""
    from ..images import from_levels
    from .metrics import feature_statistics, frechet_distance, inception_score

    fake = from_levels(levels, num_levels)
    f_real, _ = inception_features(setup.net, setup.real)
    f_fake, p_fake = inception_features(setup.net, fake)
    is_mean, is_std = inception_score(p_fake, splits=min(10, len(fake)))
    return {"fid": frechet_distance(*feature_statistics(f_fake), *feature_statistics(f_real)), "is": is_mean,
            "is_std": is_std, "weights": setup.weights, "reference": setup.reference}
