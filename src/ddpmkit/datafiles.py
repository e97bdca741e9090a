"""The official files of the image data sets, read without trusting them: MNIST and Fashion-MNIST
in LeCun's idx format (gzip or not), CIFAR-10's binary and python batches (pickles, read with an
unpickler that rebuilds numpy arrays and nothing else), and their download from the official
mirrors with the published checksum. Every problem with a file is a one-line ``ValueError``."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .files import atomic_path

# Where --download fetches from: (mirrors tried in order, {file name: "algorithm:hex digest"}).
REMOTE: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "mnist": (
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/"),
        {"train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion-mnist": (
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {"train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310"}),
    "cifar10": (
        ("https://www.cs.toronto.edu/~kriz/",),
        {"cifar-10-binary.tar.gz": "md5:c32a1d4ab5d03f1284b67883e8d87530"}),
}


# --- MNIST and Fashion-MNIST: LeCun's idx format -----------------------------------------------

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 0x00000803, 0x00000801
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def load_idx(path: str | os.PathLike, magic: int | None = None) -> np.ndarray:
    """Read an idx file (http://yann.lecun.com/exdb/mnist/), gzip-compressed or not.

    The header is a big-endian 32-bit magic number (two zero bytes, a type code -- 0x08 for
    unsigned bytes -- and the number of dimensions), then one big-endian 32-bit size per
    dimension; the data follow in C order, big-endian. The file must hold exactly the bytes its
    header announces. ``magic``, if given, is the magic number required (``IDX_IMAGES_MAGIC``,
    ``IDX_LABELS_MAGIC``). Returns a writable array in native byte order."""
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise ValueError(f"{path} is not an idx file (bad header {raw[:4].hex() or 'empty'})")
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        raise ValueError(f"{path} has idx magic number 0x{found:08x}, expected 0x{magic:08x}; is it the right file?")
    ndim, dtype = raw[3], np.dtype(_IDX_TYPES[raw[2]])
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated: its idx header is incomplete")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    expected, offset = int(np.prod(dims)) * dtype.itemsize, 4 + 4 * ndim
    if len(raw) - offset != expected:
        what = "truncated" if len(raw) - offset < expected else "too long"
        raise ValueError(f"{path} is {what}: its header announces {'x'.join(map(str, dims))} values "
                         f"({expected} bytes of data), the file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _read_maybe_gzip(path: str | os.PathLike) -> bytes:
    """The bytes of ``path``, decompressed if they start with the gzip magic number."""
    raw = Path(path).read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path} is not valid gzip data (truncated or corrupt?): {e}") from None


def load_idx_pair(name: str, root: Path, split: str, download: bool):
    """The images and labels of one split of mnist or fashion-mnist (same file names and layout):
    ``root/<stem>`` or ``root/<stem>.gz``, the latter downloaded when missing and asked to."""
    paths = []
    for stem in _IDX_FILES[split]:
        found = [p for p in (root / stem, root / f"{stem}.gz") if p.is_file()]
        if found:
            paths.append(found[0])
        elif download:
            paths.append(_fetch(name, root, f"{stem}.gz"))
        else:
            expected = " and ".join(f"{s}.gz" for s in _IDX_FILES[split])
            raise ValueError(f"{name} {split} file {stem}.gz not found in {root.resolve()}; expected {expected} "
                             f"there (or the same without .gz); pass --download (download=True) to fetch them")
    images, labels = load_idx(paths[0], IDX_IMAGES_MAGIC), load_idx(paths[1], IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels")
    _check_labels(labels, paths[1])
    return images[:, None], labels


def _check_labels(labels: np.ndarray, where) -> None:
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{where} does not hold labels 0..9 (found values {labels.min()}..{labels.max()})")


# --- downloads ---------------------------------------------------------------------------------

def download(urls: Sequence[str], dest: str | os.PathLike, checksum: str) -> Path:
    """Fetch ``dest`` from the first of ``urls`` that works, checking ``checksum``
    ("md5:<hex>" or "sha256:<hex>"). The data go to a temporary file beside ``dest`` that is
    renamed into place only once the checksum matches; on any failure it is removed and the next
    URL is tried. Raises ValueError naming every failure when no URL gave the right file."""
    dest, (algorithm, digest) = Path(dest), checksum.split(":", 1)
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, atomic_path(dest) as tmp:
                h = hashlib.new(algorithm)
                with open(tmp, "wb") as f:
                    while chunk := response.read(1 << 20):
                        h.update(chunk)
                        f.write(chunk)
                if h.hexdigest() != digest.lower():
                    raise ValueError(f"checksum mismatch: expected {algorithm} {digest}, got {h.hexdigest()}")
            return dest
        except (OSError, ValueError) as e:  # urllib.error.URLError is an OSError
            errors.append(f"{url}: {e}")
    raise ValueError(f"could not download {dest.name} into {dest.parent}: " + "; ".join(errors))


def _fetch(name: str, root: Path, filename: str) -> Path:
    mirrors, checksums = REMOTE[name]
    root.mkdir(parents=True, exist_ok=True)
    return download([m + filename for m in mirrors], root / filename, checksums[filename])


# --- CIFAR-10: Krizhevsky's binary and python versions -----------------------------------------

_CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_CIFAR_RECORD = 1 + 3 * 32 * 32


def _parse_cifar_bin(raw: bytes, where) -> tuple[np.ndarray, np.ndarray]:
    """A batch of the binary version (https://www.cs.toronto.edu/~kriz/cifar.html): records of one
    label byte (0..9) and 3072 pixel bytes, the 32x32 red, green then blue planes, row-major."""
    if not raw or len(raw) % _CIFAR_RECORD:
        raise ValueError(f"{where} is not a CIFAR-10 binary batch: {len(raw)} bytes is not a whole number "
                         f"of {_CIFAR_RECORD}-byte records (truncated?)")
    records = np.frombuffer(raw, np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, where)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _parse_cifar_py(raw: bytes, where) -> tuple[np.ndarray, np.ndarray]:
    """A batch of the python version: a pickled dict whose b"data" is a uint8 (N, 3072) array (rows
    laid out as in the binary version) and b"labels" a list of N ints. Python 2 pickles (the
    official files) have str keys once decoded; both kinds of key are accepted."""
    batch = _restricted_loads(raw, where)
    if not isinstance(batch, dict):
        raise ValueError(f"{where} is not a CIFAR-10 python batch (a pickled {type(batch).__name__}, not a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
            and isinstance(labels, list) and len(labels) == len(data) and all(type(y) is int for y in labels)):
        raise ValueError(f"{where} is not a CIFAR-10 python batch (needs data: uint8 (N, 3072) and N int labels)")
    labels = np.asarray(labels, np.int64)
    _check_labels(labels, where)
    return data.reshape(-1, 3, 32, 32), labels


def _numpy_pickle_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):  # pickles name either, whichever numpy wrote them
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol-5 pickles
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain Python containers and numpy arrays, and refuses every other global, so that
    a malicious file cannot make it call anything (os.system, eval, ...)."""

    allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only numpy arrays are "
                                         "allowed in a CIFAR-10 python batch") from None


def _restricted_loads(raw: bytes, where):
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # a malformed pickle can fail in many ways; all mean "bad file"
        raise ValueError(f"{where} cannot be read as a CIFAR-10 python batch: {e}") from None


# (folder, file suffix, archive, parser) for the binary and the python version
_CIFAR_FORMATS = (("cifar-10-batches-bin", ".bin", "cifar-10-binary.tar.gz", _parse_cifar_bin),
                  ("cifar-10-batches-py", "", "cifar-10-python.tar.gz", _parse_cifar_py))


def load_cifar10(name: str, root: Path, split: str, download: bool):
    """Batch files in root/cifar-10-batches-{bin,py}/ or root itself, else an official archive in
    root (read in memory: only the expected members, nothing is written), else a download."""
    batches = _CIFAR_BATCHES[split]
    for folder_name, suffix, _, parse in _CIFAR_FORMATS:
        for folder in (root / folder_name, root):
            paths = [folder / f"{b}{suffix}" for b in batches]
            if all(p.is_file() for p in paths):
                return _concat([parse(p.read_bytes(), p) for p in paths])
    for folder_name, suffix, archive, parse in _CIFAR_FORMATS:
        if (root / archive).is_file():
            members = _read_tar_members(root / archive, [f"{folder_name}/{b}{suffix}" for b in batches])
            return _concat([parse(raw, f"{root / archive}:{m}") for m, raw in members.items()])
    if download:
        _fetch(name, root, "cifar-10-binary.tar.gz")
        return load_cifar10(name, root, split, download=False)
    files = ", ".join(f"{b}.bin" for b in batches)
    raise ValueError(f"cifar10 {split} batches not found in {root.resolve()}; expected {files} in cifar-10-batches-bin/ "
                     f"(or the python version's cifar-10-batches-py/, or cifar-10-binary.tar.gz); "
                     f"pass --download (download=True) to fetch them")


def _read_tar_members(archive: Path, names: list[str]) -> dict[str, bytes]:
    """The contents of the regular-file members ``names`` of a tar archive, in ``names`` order.
    Nothing is extracted to disk, so member paths (../, links) cannot escape anywhere."""
    found = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name in names and member.isfile():
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{archive} is not a readable tar archive (truncated or corrupt?): {e}") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"{archive} lacks the member(s) {', '.join(missing)}")
    return {n: found[n] for n in names}


def _concat(parts):
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
