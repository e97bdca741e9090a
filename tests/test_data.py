"""Data loading, on small files the tests write (idx, CIFAR-10 binary/python, image folders)."""

import gzip
import hashlib
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit import data
from ddpmkit.data import DATA_RANGE, ImageDataset, download, load_dataset, load_idx

IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0B: ">i2"}[type_code]
    header = bytes([0, 0, type_code, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(dtype).tobytes()


def write_idx_split(folder, split, n, *, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    for stem, arr in zip(IDX_NAMES[split], (images, labels)):
        raw = idx_bytes(arr)
        (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(raw) if gz else raw)
    return images, labels


def cifar_records(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()


def cifar_bin(pixels, labels) -> bytes:
    return np.concatenate([np.asarray(labels, np.uint8)[:, None], pixels], axis=1).tobytes()


BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def write_cifar_bin(folder, n=10):
    """Binary batches of n records each; returns {split: (pixels, labels)} concatenated in batch order."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, names in BATCHES.items():
        parts = [cifar_records(n, seed=10 * len(split) + i) for i, _ in enumerate(names)]
        for name, (px, lb) in zip(names, parts):
            (folder / f"{name}.bin").write_bytes(cifar_bin(px, lb))
        out[split] = (np.concatenate([p for p, _ in parts]), sum((lb for _, lb in parts), []))
    return out


def assert_cifar(ds, pixels, labels):
    assert ds.shape == (3, 32, 32) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images, torch.from_numpy(pixels.reshape(-1, 3, 32, 32)))
    assert ds.labels.tolist() == list(labels) and ds.labels.dtype == torch.int64


def no_temp_files(folder):
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


# --- digits ----------------------------------------------------------------------------------------

def test_digits_match_the_original_loader():
    from sklearn.datasets import load_digits as sk_digits

    ds = load_dataset("digits")
    d = sk_digits()
    original = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0 * 2.0 - 1.0
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == torch.uint8 and ds.levels == 16
    assert ds.shape == (1, 8, 8) and len(ds) == 1797 and ds.num_classes == 10
    x = ds.to_float()
    assert x.dtype == torch.float32 and x.min() >= DATA_RANGE[0] and x.max() <= DATA_RANGE[1]
    assert torch.equal(x, original)
    assert torch.equal(ds.batch(torch.tensor([5, 0, 1796])), original[[5, 0, 1796]])
    images, labels = data.load_digits()
    assert torch.equal(images, original) and torch.equal(labels, torch.tensor(d.target, dtype=torch.int64))


def test_digits_single_split_and_conversions():
    with pytest.raises(ValueError, match="single split"):
        load_dataset("digits", split="test")
    ds = load_dataset("DIGITS", image_size=16, channels=3)
    assert ds.name == "digits" and ds.images.shape == (1797, 3, 16, 16) and ds.images.max() <= 16
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])


def test_a_data_folder_is_refused_where_none_is_read(tmp_path):
    # a --data-dir given with digits most likely meant another dataset: say so rather than ignore it
    for spec in ("digits", f"folder:{tmp_path}"):
        with pytest.raises(ValueError, match=f"data folder \\({tmp_path}\\) was given for .*mnist"):
            load_dataset(spec, tmp_path)


# --- idx (MNIST, Fashion-MNIST) ----------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_load_idx(tmp_path, gz):
    arr = np.arange(-30, 30, dtype=np.int16).reshape(3, 4, 5)
    raw = idx_bytes(arr, 0x0B)
    path = tmp_path / ("a.gz" if gz else "a")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = load_idx(path)
    assert out.dtype == np.int16 and out.dtype.isnative and out.flags.writeable
    assert np.array_equal(out, arr)


@pytest.mark.parametrize("name,gz", [("mnist", True), ("fashion-mnist", False)])
def test_idx_datasets(tmp_path, name, gz):
    train = write_idx_split(tmp_path, "train", 7, gz=gz, seed=1)
    test = write_idx_split(tmp_path, "test", 3, gz=gz, seed=2)
    for split, (images, labels) in (("train", train), ("test", test)):
        ds = load_dataset(name, tmp_path, split=split)
        assert ds.name == name and ds.shape == (1, 28, 28) and len(ds) == len(images) and ds.num_classes == 10
        assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
        assert ds.labels.tolist() == labels.tolist()
        expected = torch.from_numpy(images).float()[:, None] / 255 * 2 - 1
        assert torch.equal(ds.to_float(), expected)


def test_idx_resize_and_channels(tmp_path):
    images, _ = write_idx_split(tmp_path, "train", 4)
    ds = load_dataset("mnist", tmp_path, image_size=14, channels=3)
    assert ds.images.shape == (4, 3, 14, 14)
    expected = np.asarray(Image.fromarray(images[2]).resize((14, 14), Image.BILINEAR))
    assert np.array_equal(ds.images[2, 1].numpy(), expected)


def test_idx_truncated_and_corrupt_files(tmp_path):
    write_idx_split(tmp_path, "train", 5, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is truncated"):
        load_dataset("mnist", tmp_path)
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28, 28), np.uint8)))[:-20])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is not valid gzip"):
        load_idx(path)
    path.write_bytes(b"\x89PNG not an idx file")
    with pytest.raises(ValueError, match="is not an idx file"):
        load_dataset("mnist", tmp_path)


def test_idx_wrong_magic_and_mismatched_counts(tmp_path):
    write_idx_split(tmp_path, "train", 5)
    images, labels = (tmp_path / f"{s}.gz" for s in IDX_NAMES["train"])
    images.write_bytes(labels.read_bytes())  # a labels file where the images should be
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz has idx magic number 0x00000801, expected 0x00000803"):
        load_dataset("mnist", tmp_path)
    write_idx_split(tmp_path, "train", 5)
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(ValueError, match="holds 5 images but .* holds 4 labels"):
        load_dataset("mnist", tmp_path)
    labels.write_bytes(gzip.compress(idx_bytes(np.full(5, 12, np.uint8))))
    with pytest.raises(ValueError, match="labels 0..9"):
        load_dataset("mnist", tmp_path)


def test_missing_idx_files_name_what_is_expected(tmp_path):
    write_idx_split(tmp_path, "train", 2)
    with pytest.raises(ValueError) as e:
        load_dataset("fashion-mnist", tmp_path, split="test")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and "--download" in msg
    assert "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz" in msg


# --- downloads (offline, through file:// URLs) -----------------------------------------------------

def test_download_checks_the_checksum(tmp_path):
    src, dest_dir = tmp_path / "mirror", tmp_path / "data"
    src.mkdir(), dest_dir.mkdir()
    payload = os.urandom(3 << 20)  # several read chunks
    (src / "f.bin").write_bytes(payload)
    url, md5 = (src / "f.bin").as_uri(), hashlib.md5(payload).hexdigest()

    with pytest.raises(ValueError, match="checksum mismatch") as e:
        download([url], dest_dir / "f.bin", "md5:" + "0" * 32)
    assert "\n" not in str(e.value) and list(dest_dir.iterdir()) == []

    dead = (src / "missing.bin").as_uri()  # the first mirror fails, the second is used
    assert download([dead, url], dest_dir / "f.bin", f"md5:{md5}") == dest_dir / "f.bin"
    assert (dest_dir / "f.bin").read_bytes() == payload and [p.name for p in dest_dir.iterdir()] == ["f.bin"]
    sha = hashlib.sha256(payload).hexdigest()
    download([url], dest_dir / "g.bin", f"sha256:{sha}")
    assert sorted(p.name for p in dest_dir.iterdir()) == ["f.bin", "g.bin"]


def test_load_dataset_downloads_missing_idx_files(tmp_path, monkeypatch):
    mirror, dest = tmp_path / "mirror", tmp_path / "new" / "mnist"
    mirror.mkdir()
    images, labels = write_idx_split(mirror, "test", 6)
    sums = {f"{s}.gz": "md5:" + hashlib.md5((mirror / f"{s}.gz").read_bytes()).hexdigest() for s in IDX_NAMES["test"]}
    monkeypatch.setitem(data.REMOTE, "mnist", ((tmp_path.joinpath("nowhere").as_uri() + "/", mirror.as_uri() + "/"), sums))
    with pytest.raises(ValueError, match="--download"):
        load_dataset("mnist", dest, split="test")
    ds = load_dataset("mnist", dest, split="test", download=True)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images)) and ds.labels.tolist() == labels.tolist()
    assert sorted(p.name for p in dest.iterdir()) == sorted(sums)

    bad = dict(sums, **{"t10k-labels-idx1-ubyte.gz": "md5:" + "f" * 32})
    monkeypatch.setitem(data.REMOTE, "mnist", ((mirror.as_uri() + "/",), bad))
    (dest / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="could not download t10k-labels-idx1-ubyte.gz .*checksum mismatch"):
        load_dataset("mnist", dest, split="test", download=True)
    assert sorted(p.name for p in dest.iterdir()) == ["t10k-images-idx3-ubyte.gz"]


def test_load_dataset_downloads_cifar10(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    expected = write_cifar_bin(mirror / "cifar-10-batches-bin", n=4)
    with tarfile.open(mirror / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(mirror / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    md5 = hashlib.md5((mirror / "cifar-10-binary.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setitem(data.REMOTE, "cifar10", ((mirror.as_uri() + "/",), {"cifar-10-binary.tar.gz": f"md5:{md5}"}))
    ds = load_dataset("cifar10", tmp_path / "cifar", split="test", download=True)
    assert_cifar(ds, *expected["test"])
    assert [p.name for p in (tmp_path / "cifar").iterdir()] == ["cifar-10-binary.tar.gz"]


# --- CIFAR-10 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["subfolder", "flat"])
def test_cifar_binary_batches(tmp_path, layout):
    expected = write_cifar_bin(tmp_path / "cifar-10-batches-bin" if layout == "subfolder" else tmp_path)
    for split in ("train", "test"):
        ds = load_dataset("cifar10", tmp_path, split=split)
        assert_cifar(ds, *expected[split])
        assert len(ds) == (50 if split == "train" else 10) and ds.num_classes == 10
    x = ds.batch(torch.arange(3))
    assert x.shape == (3, 3, 32, 32) and x.min() >= -1 and x.max() <= 1


def test_cifar_binary_errors_and_grey_conversion(tmp_path):
    expected = write_cifar_bin(tmp_path / "cifar-10-batches-bin", n=3)
    ds = load_dataset("cifar10", tmp_path, split="test", channels=1)
    rgb = expected["test"][0].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    grey = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb])
    assert ds.shape == (1, 32, 32) and np.array_equal(ds.images[:, 0].numpy(), grey)

    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"test_batch.bin is not a CIFAR-10 binary batch.*truncated"):
        load_dataset("cifar10", tmp_path, split="test")
    with pytest.raises(ValueError) as e:
        load_dataset("cifar10", tmp_path / "elsewhere")
    assert "data_batch_1.bin" in str(e.value) and "--download" in str(e.value)


def test_cifar_tarball_reads_only_expected_members(tmp_path):
    src = tmp_path / "src"
    expected = write_cifar_bin(src / "cifar-10-batches-bin", n=2)
    (src / "evil").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(src / "evil", arcname="../escaped")
        tar.add(src / "evil", arcname="/tmp/absolute")
        for name in BATCHES["train"]:
            tar.add(src / "cifar-10-batches-bin" / f"{name}.bin", arcname=f"cifar-10-batches-bin/{name}.bin")
        link = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    assert_cifar(load_dataset("cifar10", root), *expected["train"])
    with pytest.raises(ValueError, match="lacks the member.*test_batch.bin"):  # a link is not a batch
        load_dataset("cifar10", root, split="test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root", "src"]
    assert [p.name for p in root.iterdir()] == ["cifar-10-binary.tar.gz"]
    (root / "cifar-10-binary.tar.gz").write_bytes((root / "cifar-10-binary.tar.gz").read_bytes()[:200])
    with pytest.raises(ValueError, match="cifar-10-binary.tar.gz is not a readable tar archive"):
        load_dataset("cifar10", root)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_python_batches(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    expected = {}
    for split, names in BATCHES.items():
        parts = [cifar_records(10, seed=i) for i, _ in enumerate(names)]
        for name, (px, lb) in zip(names, parts):
            batch = {b"batch_label": b"x", b"data": px, b"labels": lb, b"filenames": [b"a.png"] * 10}
            if protocol == 2:  # Python 3 protocol 2 writes bytes through _codecs.encode: use str keys
                batch = {"data": px, "labels": lb}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        expected[split] = (np.concatenate([p for p, _ in parts]), sum((lb for _, lb in parts), []))
    if protocol == 2:
        with pytest.raises(ValueError, match="refusing to load global _codecs.encode"):
            load_dataset("cifar10", tmp_path)
        return
    for split in ("train", "test"):
        assert_cifar(load_dataset("cifar10", tmp_path, split=split), *expected[split])


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_python_refuses_malicious_pickles(tmp_path):
    marker = tmp_path / "pwned"
    px, lb = cifar_records(2)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": px, b"labels": lb, b"x": Evil(marker)}))
    with pytest.raises(ValueError, match=r"test_batch cannot be read .*refusing to load global (posix|os)\.system"):
        load_dataset("cifar10", tmp_path, split="test")
    assert not marker.exists()
    (tmp_path / "test_batch").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        load_dataset("cifar10", tmp_path, split="test")
    (tmp_path / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="test_batch cannot be read"):
        load_dataset("cifar10", tmp_path, split="test")


# --- image folders ---------------------------------------------------------------------------------

def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def test_folder_of_grey_and_colour_images(tmp_path):
    rng = np.random.default_rng(0)
    grey = [rng.integers(0, 256, (6, 5), dtype=np.uint8) for _ in range(3)]
    save(tmp_path / "b.png", grey[1])
    save(tmp_path / "a.png", grey[0])
    save(tmp_path / "sub" / "c.PNG", grey[2])
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.name == f"folder:{tmp_path}" and ds.labels is None and ds.num_classes is None
    assert ds.images.shape == (3, 1, 6, 5)
    assert np.array_equal(ds.images[:, 0].numpy(), np.stack(grey))  # sorted: a, b, sub/c
    assert load_dataset(f"folder:{tmp_path}", channels=3).images.shape == (3, 3, 6, 5)

    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    save(tmp_path / "d.bmp", rgb)
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.images.shape == (4, 3, 6, 5)
    assert np.array_equal(ds.images[2].numpy(), rgb.transpose(2, 0, 1))  # a, b, d, sub/c
    assert np.array_equal(ds.images[0, 1].numpy(), grey[0])
    with pytest.raises(ValueError, match="single split"):
        load_dataset(f"folder:{tmp_path}", split="test")


def test_folder_sizes_must_match_unless_resized(tmp_path):
    ramp = np.tile(np.arange(16, dtype=np.uint8) * 10, (8, 1))  # 8 high, 16 wide
    save(tmp_path / "wide.png", ramp)
    save(tmp_path / "small.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="images differ in size .*image_size"):
        load_dataset(f"folder:{tmp_path}")
    ds = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert ds.images.shape == (2, 1, 8, 8)
    assert np.array_equal(ds.images[1, 0].numpy(), ramp[:, 4:12])  # shorter side fits; centre crop


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"holds no images; expected image files \(.png, .jpg"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("folder:")
    with pytest.raises(ValueError, match="is not a folder"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png is not a readable image"):
        load_dataset(f"folder:{tmp_path}")


# --- arguments and the container -------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(spec="imagenet"), "unknown dataset 'imagenet'; valid: digits, mnist, fashion-mnist, cifar10, folder:PATH"),
    (dict(spec="mnist", split="val"), "unknown split 'val'; valid splits: train, test"),
    (dict(spec="digits", image_size=0), "image_size must be a positive integer"),
    (dict(spec="digits", channels=2), "channels must be 1, 3 or None"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        load_dataset(**kwargs)
    assert "\n" not in str(e.value)


def test_image_dataset_container():
    ds = ImageDataset("x", torch.tensor([[[[0, 255]]], [[[51, 102]]]], dtype=torch.uint8), torch.tensor([3, 1]))
    assert ds.shape == (1, 1, 2) and len(ds) == 2 and ds.num_classes == 4
    assert torch.allclose(ds.to_float().flatten(), torch.tensor([-1.0, 1.0, -0.6, -0.2]))
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset("x", torch.zeros(2, 1, 2, 2), None)


# --- the real MNIST, where ../shared has it ---------------------------------------------------------

MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def test_real_mnist(mnist_dir):
    for stem, sha in MNIST_SHA256.items():
        assert hashlib.sha256(gzip.decompress((mnist_dir / f"{stem}.gz").read_bytes())).hexdigest() == sha
    for split, n in (("train", 60000), ("test", 10000)):
        ds = load_dataset("mnist", mnist_dir, split=split)
        assert len(ds) == n and ds.shape == (1, 28, 28) and ds.num_classes == 10
        assert sorted(ds.labels.unique().tolist()) == list(range(10))
        x = ds.batch(torch.arange(0, n, 97))
        assert x.min() == -1 and x.max() == 1
    assert ds.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known start of the test set
