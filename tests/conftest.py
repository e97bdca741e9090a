import pathlib

import pytest

from ddpmkit.cli import main

MNIST_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


# -- diffusers, a test-only peer -------------------------------------------------------------------
# Only the parity tests need it; the closed forms, identities and convergence orders beside them
# must run without it. Mark such a test @pytest.mark.needs_diffusers (skipped at set-up when it is
# absent); a test module takes the module itself with ``from conftest import diffusers``, which
# without diffusers is a stand-in that skips whichever test touches it, marked or not.
class MissingModule:
    """Stands in for an optional module that is not installed: any attribute skips the test."""

    def __init__(self, name: str, reason: str):
        self._name, self._reason = name, reason

    def __getattr__(self, attr):
        if attr.startswith("__"):  # copy, pickle, inspect and pytest's own probing see a plain object
            raise AttributeError(attr)
        pytest.skip(self._reason)

    def __bool__(self):
        return False


DIFFUSERS_MISSING = "diffusers (a test-only peer: pip install -e '.[test]') is not installed"
try:
    import diffusers
except ImportError:
    diffusers = MissingModule("diffusers", DIFFUSERS_MISSING)


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_diffusers") and not diffusers:
        pytest.skip(DIFFUSERS_MISSING)


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny networks: as fast as two there, and immune to the
    OpenMP slow-downs (100x seen) of two threads when other processes share the cores. Take it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny digits DDPM (4 steps) to distil or tune from."""
    from ddpmkit.train import train

    out = tmp_path_factory.mktemp("teacher")
    return train(out, {"dataset": "digits", "net": "tiny", "steps": 4, "batch_size": 16, "checkpoint_every": 4,
                       "sample_every": 100}, quiet=True)


def model_extras(name, schedule, shape):
    """What a model supplies to sampler ``name`` where a test has no model file: for dpm-solver-v3,
    degenerate statistics (l = 1, s = b = 0) over ``schedule``'s range; nothing for the others."""
    if name != "dpm-solver-v3":
        return {}
    from ddpmkit.ems import EMS, ems_grid
    from ddpmkit.vp import alpha_sigma_lambda

    lambdas = [alpha_sigma_lambda(schedule.abar_at(t))[2] for t in ems_grid(schedule, 50)]
    return {"ems": EMS.degenerate(lambdas, shape)}
