import pathlib

import pytest

from ddpmkit.cli import main

MNIST_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.fixture
def mnist_dir():
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST idx files not found at {MNIST_DIR} (../shared is absent on this machine)")
    return MNIST_DIR


@pytest.fixture
def cli_error(capsys):
    """Run ``ddpmkit ARGS`` in-process and return its stderr, after checking it failed the way a
    user should see: exit status 2, no traceback, one error line (argparse adds usage above it)."""

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own errors
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert "Traceback" not in err and sum("error:" in line for line in err.splitlines()) == 1, err
        assert err.strip().splitlines()[-1].startswith(f"ddpmkit {args[0]}: error:"), err
        return err

    return run
