import pathlib

import pytest

MNIST_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.fixture
def mnist_dir():
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST idx files not found at {MNIST_DIR} (../shared is absent on this machine)")
    return MNIST_DIR
