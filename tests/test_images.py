"""Writing samples: what an output path names, and the files each kind gets."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.images import output_kind, write_samples


def test_output_kind(tmp_path):
    assert output_kind(tmp_path / "g.PNG") == "grid" and output_kind(tmp_path / "s.npz") == "npz"
    assert output_kind(tmp_path / "new" / "folder") == "dir" and output_kind(tmp_path) == "dir"
    for bad, message in ((".", "names no new file or folder"), ("x.jpg", "use .png for a grid")):
        with pytest.raises(ValueError, match=message):
            output_kind(bad)
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        output_kind(tmp_path / "d.png")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file; give a .png, a .npz or a folder"):
        output_kind(tmp_path / "file")


def test_write_samples_of_each_kind(tmp_path):
    x = torch.linspace(-1.5, 1.5, 5 * 4).reshape(5, 1, 2, 2)
    seeds = [7, 8, 9, 10, 11]
    write_samples(x, seeds, tmp_path / "a" / "s.npz", "npz", (-1.0, 1.0))
    data = np.load(tmp_path / "a" / "s.npz")
    assert data["samples"].dtype == np.float32 and data["samples"].min() == -1 and data["samples"].max() == 1
    assert data["seeds"].tolist() == seeds
    write_samples(x, seeds, tmp_path / "b", "dir", (-1.0, 1.0))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [f"{s:06d}.png" for s in seeds]
    first = np.asarray(Image.open(tmp_path / "b" / "000007.png"))
    assert first.shape == (2, 2) and first[0, 0] == 0  # below the range: clamped to black
    write_samples(x, seeds, tmp_path / "c" / "g.png", "grid", (-1.0, 1.0))
    grid = Image.open(tmp_path / "c" / "g.png")
    # 5 samples: a 3 x 3 grid of 32-px tiles (2-px images scaled by 16), 2-px padding, no labels
    assert grid.size == (3 * (32 + 2) + 2, 2 * (32 + 2) + 2)
    with pytest.raises(ValueError, match="kind='gif' is not valid"):
        write_samples(x, seeds, tmp_path / "d.gif", "gif", (-1.0, 1.0))
