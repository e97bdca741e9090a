"""Turning samples into pictures."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .files import atomic_path


def to_levels(x: torch.Tensor, levels: int = 255, data_range=(-1.0, 1.0)) -> np.ndarray:
    """Samples in ``data_range`` -> uint8 grey-level indices 0..levels (same shape), rounded to the
    nearest level as real images are stored."""
    lo, hi = data_range
    u = (x.detach().to(torch.float64).cpu().clamp(lo, hi) - lo) / (hi - lo)
    return (u * levels).round().to(torch.uint8).numpy()


def from_levels(levels, num_levels: int = 255) -> torch.Tensor:
    """Grey-level indices 0..num_levels (uint8 array or tensor) -> float32 in [-1, 1], the inverse of
    ``to_levels`` on the default range and how real images are read."""
    return torch.as_tensor(levels).to(torch.float32) / num_levels * 2.0 - 1.0


def to_uint8(x: torch.Tensor, data_range=(-1.0, 1.0)) -> np.ndarray:
    """(N, C, H, W) samples in ``data_range`` to (N, H, W, C) uint8 pixels."""
    return to_levels(x, 255, data_range).transpose(0, 2, 3, 1)


def labelled_grid(rows: Sequence[torch.Tensor], labels: Sequence[str], *, scale: int = 4, pad: int = 2,
                  data_range=(-1.0, 1.0)) -> Image.Image:
    """One row of images per entry of ``rows`` (each (N, C, H, W)), its label on the left."""
    tiles = [to_uint8(r, data_range) for r in rows]
    n, h, w, c = tiles[0].shape
    h, w = h * scale, w * scale
    label_w = 8 + 6 * max(len(s) for s in labels) if any(labels) else 0
    grid = Image.new("RGB", (label_w + n * (w + pad) + pad, len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for r, (row, label) in enumerate(zip(tiles, labels)):
        y = pad + r * (h + pad)
        draw.text((4, y + h // 2 - 5), label, fill="black")
        for i, img in enumerate(row):
            pic = Image.fromarray(img[..., 0] if c == 1 else img).convert("RGB").resize((w, h), Image.NEAREST)
            grid.paste(pic, (label_w + pad + i * (w + pad), y))
    return grid


def pad_rows(rows: Sequence[torch.Tensor], value: float) -> list[torch.Tensor]:
    """Rows of images (each (N, C, H, W)) made as long as the longest by tiles of ``value`` (the
    data range's low end: blank), as ``labelled_grid`` lays every row out on one width."""
    width = max(len(r) for r in rows)
    blank = torch.full((1, *rows[0].shape[1:]), value, dtype=rows[0].dtype)
    return [torch.cat([r, blank.expand(width - len(r), *r.shape[1:])]) for r in rows]


def grid_scale(height: int) -> int:
    """Upscaling factor so small images (8x8 digits) stay visible in a grid: tiles of >= 32 px."""
    return max(1, 32 // height)


def save_image(img: Image.Image, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def output_kind(out: str | os.PathLike) -> str:
    """What a sample command's output path names: "grid" (a .png image grid), "npz" (arrays) or
    "dir" (a folder of one PNG per sample); an error for a path that can be none of them. Whether it
    can be written is the caller's to check."""
    out = pathlib.Path(out)
    if str(out) in ("", "."):
        raise ValueError(f"--out {str(out)!r} names no new file or folder; give grid.png, samples.npz or a folder name")
    suffix = out.suffix.lower()
    kind = {".png": "grid", ".npz": "npz"}.get(suffix, "dir")
    if kind == "dir" and suffix:
        raise ValueError(f"--out {out}: use .png for a grid, .npz for arrays, or a folder name without an extension")
    if kind != "dir" and out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name")
    if kind == "dir" and out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a .png, a .npz or a folder")
    return kind


def write_samples(x: torch.Tensor, seeds: Sequence[int], out: str | os.PathLike, kind: str, data_range,
                  labels: Sequence[int] | None = None) -> None:
    """Samples (N, C, H, W) in ``data_range`` to ``out`` as ``output_kind`` says: "npz" (float32
    ``samples`` clamped to the range, int64 ``seeds``, and ``labels`` where given), "grid" (a
    square-ish PNG grid; with ``labels``, one row per class label, in order, labelled; short rows
    padded with blank tiles) or "dir" (one PNG per sample, named by its seed). Missing folders are
    made; every file is written atomically."""
    import math

    out = pathlib.Path(out)
    (out if kind == "dir" else out.parent).mkdir(parents=True, exist_ok=True)
    if kind == "npz":
        extra = {} if labels is None else {"labels": np.array(labels, dtype=np.int64)}
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, samples=x.float().clamp(*data_range).cpu().numpy(), seeds=np.array(seeds, dtype=np.int64),
                         **extra)
    elif kind == "grid":
        if labels is None:
            side = math.ceil(math.sqrt(len(x)))
            rows, names = [x[i : i + side] for i in range(0, len(x), side)], None
        else:
            names = sorted(set(labels))
            rows = [x[[i for i, y in enumerate(labels) if y == c]] for c in names]
        text = [""] * len(rows) if names is None else [str(c) for c in names]
        save_image(labelled_grid(pad_rows(rows, data_range[0]), text, scale=grid_scale(x.shape[2]), data_range=data_range), out)
    elif kind == "dir":
        written = []
        try:
            for img, seed in zip(to_uint8(x, data_range), seeds):
                pic = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
                file = out / f"{seed:06d}.png"
                with atomic_path(file) as tmp:
                    pic.save(tmp, format="PNG")
                written.append(file)
        except OSError as e:  # a full disk, say: no partial set of samples is left behind
            for f in written:
                f.unlink(missing_ok=True)
            raise OSError(f"could not write {file} ({e.strerror or e}); removed the {len(written)} samples written "
                          f"before it to {out}") from None
    else:
        raise ValueError(f"kind={kind!r} is not valid; choose grid, npz or dir")
