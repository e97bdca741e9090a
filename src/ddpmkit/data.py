"""Image data sets, stored as uint8 and scaled to [-1, 1] on the way out.

``load_dataset(spec, data_dir)`` reads one of:

- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, grey levels 0..16). Always available
  offline; it has a single split, so ``split="test"`` is an error.
- ``mnist`` / ``fashion-mnist``: the official idx files (Y. LeCun's format, see ``load_idx``),
  gzip-compressed or not, e.g. ``train-images-idx3-ubyte.gz`` in ``data_dir``.
- ``cifar10``: A. Krizhevsky's CIFAR-10, binary version (``cifar-10-batches-bin/*.bin`` or the
  ``cifar-10-binary.tar.gz`` archive) or python version (``cifar-10-batches-py/*`` or
  ``cifar-10-python.tar.gz``); python batches are pickles, read with an unpickler that can only
  rebuild numpy arrays.
- ``folder:PATH``: every image file under PATH, unlabelled, with a single split like digits.

``data_dir`` defaults to ``data/<name>`` under the working directory. With ``download=True``,
missing mnist / fashion-mnist / cifar10 files are fetched from the official mirrors, checked
against their published md5 and renamed into place atomically. Local files are not checksummed
(too slow on every load), but their format is validated. Every problem with the arguments or the
files is a one-line ``ValueError``. The readers of the official files and their download live in
``ddpmkit.datafiles``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .datafiles import REMOTE, download, load_cifar10, load_idx, load_idx_pair
from .images import from_levels

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")  # plus "folder:PATH"
SPLITS = ("train", "test")
DATA_RANGE = (-1.0, 1.0)
DEFAULT_DATA_ROOT = Path("data")
__all__ = ["DATASETS", "SPLITS", "DATA_RANGE", "ImageDataset", "load_dataset", "load_digits", "load_idx", "download",
           "REMOTE"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10}


@dataclass
class ImageDataset:
    """Images as uint8 (N, C, H, W) with values 0..levels, and int64 labels (N,) or None;
    ``class_names`` names the labels 0, 1, ... where the data has names for them (a folder's
    subfolders)."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None
    levels: int = 255
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels is not None and self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must have shape ({len(self.images)},), got {tuple(self.labels.shape)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int | None:
        if self.labels is None:
            return None
        return _NUM_CLASSES.get(self.name, int(self.labels.max()) + 1 if len(self.labels) else 0)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx) -> torch.Tensor:
        """The images at ``idx`` as float32 in [-1, 1]: ``images[idx] / levels * 2 - 1``."""
        return from_levels(self.images[idx], self.levels)

    def to_float(self) -> torch.Tensor:
        """All images as float32 in [-1, 1]."""
        return self.batch(slice(None))


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (1797 images, 16 grey levels): images (N, 1, 8, 8) in [-1, 1]
    as float32, and labels (N,) as int64. Always available offline."""
    ds = load_dataset("digits")
    return ds.to_float(), ds.labels


def load_dataset(spec: str, data_dir: str | os.PathLike | None = None, *, split: str = "train",
                 download: bool = False, image_size: int | None = None,
                 channels: int | None = None) -> ImageDataset:
    """Load ``spec`` (one of ``DATASETS`` or ``folder:PATH``) from ``data_dir`` (default
    ``data/<name>``; digits and folder take none, and refuse one). ``image_size`` resizes every image to a square
    of that side (shorter side to ``image_size``, then a centre crop; Pillow bilinear) when it
    differs from the native size; ``channels`` (1 or 3) converts grey to RGB by repetition and RGB
    to grey with Pillow's ITU-R 601-2 luma."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    if data_dir is not None and (spec.startswith("folder:") or spec.strip().lower() == "digits"):
        where = "is the folder itself" if spec.startswith("folder:") else "ship with scikit-learn"
        raise ValueError(f"a data folder ({data_dir}) was given for {spec}, which reads none (its images {where}); "
                         f"drop it, or name a dataset that reads one: {', '.join(d for d in DATASETS if d != 'digits')}")
    if spec.startswith("folder:"):
        _single_split(spec, split)
        images, labels, names = _load_folder(spec[len("folder:"):], image_size, channels)
        return ImageDataset(spec, torch.from_numpy(images), labels, class_names=names)
    name = spec.strip().lower()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {spec!r}; valid: {', '.join(DATASETS)}, folder:PATH")
    levels = 255
    if name == "digits":
        _single_split(name, split)
        images, labels, levels = _load_digits()
    else:
        root = Path(data_dir) if data_dir is not None else DEFAULT_DATA_ROOT / name
        loader = load_cifar10 if name == "cifar10" else load_idx_pair
        images, labels = loader(name, root, split, download)
    images = _resize(_convert_channels(images, channels), image_size)
    return ImageDataset(name, torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), levels)


def _single_split(name: str, split: str) -> None:
    if split != "train":
        raise ValueError(f"{name} has a single split; use split='train' (got {split!r})")


# --- digits ------------------------------------------------------------------------------------

def _load_digits():
    from sklearn.datasets import load_digits as _load

    d = _load()
    return d.images.astype(np.uint8)[:, None], d.target, 16


# --- a folder of images ------------------------------------------------------------------------

_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}  # palette ("P") images count as colour


def _folder_labels(root: Path, files: list[Path]) -> tuple[torch.Tensor | None, tuple[str, ...] | None]:
    """(labels, class names) of image files by their subfolder of ``root``, the classes in sorted name
    order (as torchvision's ImageFolder); (None, None) unless every image lies in one of at least two
    subfolders."""
    parts = [f.relative_to(root).parts for f in files]
    if any(len(p) < 2 for p in parts):
        return None, None
    names = tuple(sorted({p[0] for p in parts}))
    if len(names) < 2:
        return None, None
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[p[0]] for p in parts], dtype=torch.int64), names


def _load_folder(path: str, image_size: int | None, channels: int | None):
    """Every image under ``path`` (recursively, sorted by path) as uint8 (N, C, H, W), with labels by
    subfolder (``_folder_labels``). ``channels`` None means 1 when every image has a greyscale mode,
    else 3; ``image_size`` None requires all images to share one size."""
    if not path:
        raise ValueError("folder: needs a path, e.g. folder:images/")
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        state = "holds no images" if root.is_dir() else "is not a folder"
        raise ValueError(f"folder:{path} {state}; expected image files ({', '.join(IMAGE_EXTENSIONS)}) under it")
    headers = [_image_header(p) for p in files]  # (mode, size): Pillow reads no pixels for these
    if channels is None:
        channels = 1 if all(mode in _GREY_MODES for mode, _ in headers) else 3
    if image_size is None:
        first = headers[0][1]
        for p, (_, size) in zip(files, headers):
            if size != first:
                raise ValueError(f"folder:{path}: images differ in size ({files[0]} is {first[0]}x{first[1]}, {p} is "
                                 f"{size[0]}x{size[1]}); pass image_size (--image-size) to resize them")
    out = []
    for p in files:
        with Image.open(p) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if image_size is not None and im.size != (image_size, image_size):
                im = ImageOps.fit(im, (image_size, image_size), method=Image.BILINEAR)
            out.append(np.asarray(im).reshape(im.size[1], im.size[0], channels))
    return (np.stack(out).transpose(0, 3, 1, 2).copy(), *_folder_labels(root, files))


def _image_header(path: Path):
    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's UnidentifiedImageError is an OSError
        raise ValueError(f"{path} is not a readable image: {e}") from None


# --- channel and size conversion ---------------------------------------------------------------

def _convert_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    """(N, C, H, W) uint8 to ``channels``: grey is repeated; RGB becomes grey with Pillow's
    fixed-point ITU-R 601-2 luma (bit-identical to ``Image.convert("L")``)."""
    if channels is None or channels == images.shape[1]:
        return images
    if images.shape[1] == 1:
        return np.repeat(images, 3, axis=1)
    r, g, b = images.astype(np.uint32).transpose(1, 0, 2, 3)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[:, None]


def _resize(images: np.ndarray, size: int | None) -> np.ndarray:
    """Each (square) image resized to size x size with Pillow's bilinear filter, plane by plane."""
    if size is None or images.shape[2:] == (size, size):
        return images
    out = np.empty(images.shape[:2] + (size, size), np.uint8)
    for i, image in enumerate(images):
        for c, plane in enumerate(image):
            out[i, c] = np.asarray(ImageOps.fit(Image.fromarray(plane), (size, size), method=Image.BILINEAR))
    return out
