"""ddpmkit.machine: describe_machine's fields against independent sources; keep_freed_memory's
effect measured as page faults (counts, not timings, so a loaded machine does not disturb them)."""

import ast
import importlib.metadata
import platform
import re
import resource
import shutil
import subprocess
import sys

import pytest
import torch

from ddpmkit import machine
from ddpmkit.machine import describe_machine

LINE = re.compile(r"(?P<where>.+), (?P<threads>\d+) torch threads, Python (?P<python>\S+), "
                  r"torch (?P<torch>\S+), ddpmkit (?P<ddpmkit>\S+)")


def fields(device="cpu") -> dict:
    text = describe_machine(device)
    m = LINE.fullmatch(text)
    assert m, text
    return m.groupdict()


@pytest.mark.parametrize("threads", [1, 2])
def test_describe_machine_reports_threads_now_and_installed_versions(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        f = fields()
    finally:
        torch.set_num_threads(before)
    assert int(f["threads"]) == threads  # read when called, not at import
    assert f["python"].startswith("{}.{}.{}".format(*sys.version_info[:3]))
    assert f["torch"] == importlib.metadata.version("torch")
    assert f["ddpmkit"] == importlib.metadata.version("ddpmkit")  # the installed distribution's version


@pytest.mark.skipif(shutil.which("lscpu") is None or not sys.platform.startswith("linux"), reason="needs lscpu")
def test_describe_machine_names_the_cpu_model():
    out = subprocess.run(["lscpu"], capture_output=True, text=True, env={"LC_ALL": "C"}).stdout
    model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")), None)
    if not model:
        pytest.skip("lscpu names no CPU model here")
    assert fields()["where"] == model


def test_describe_machine_without_proc_cpuinfo_names_the_architecture(monkeypatch):
    def no_file(*args, **kwargs):
        raise FileNotFoundError(args[0] if args else "")

    monkeypatch.setattr(machine, "open", no_file, raising=False)  # found before the builtin
    assert fields()["where"] == (platform.processor() or platform.machine())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_describe_machine_names_the_gpu_for_a_cuda_device():
    assert fields("cuda:0")["where"] == torch.cuda.get_device_name(0)
    assert fields("cpu")["where"] != torch.cuda.get_device_name(0)


# One subprocess (a fresh malloc state, and the pytest process's own left alone) measures minor page
# faults per repetition with glibc's defaults, then calls keep_freed_memory and measures again:
# - blocks: 8 blocks of 3 MiB malloc'd, written and freed. With the defaults the first round is
#   mmap'ed, which raises the dynamic mmap threshold to 3 MiB and the trim threshold to 6 MiB; from
#   then on the blocks come from the heap and the 24 MiB freed at its top is trimmed, so every round
#   faults its 6144 pages in again. Kept, the heap stays mapped and a round faults (almost) none.
# - network: a forward call of the small U-Net, whose activations behave the same way.
PROBE = """
import ctypes, resource, torch
from ddpmkit.machine import keep_freed_memory
from ddpmkit.nets import build_unet
torch.set_num_threads(1)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
BLOCK, COUNT = 3 << 20, 8

def blocks():
    ptrs = [libc.malloc(BLOCK) for _ in range(COUNT)]
    for p in ptrs:
        ctypes.memset(p, 1, BLOCK)
    for p in reversed(ptrs):
        libc.free(p)

net = build_unet("small").eval()
x, t = torch.randn(16, 1, 28, 28), torch.full((16,), 500)

def network():
    with torch.inference_mode():
        net(x, t)

def per_round(f, n=2):
    f()  # the first round maps its memory in either way
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        f()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

out = {"blocks_default": per_round(blocks), "network_default": per_round(network)}
out["applied"] = keep_freed_memory()
out.update(blocks_kept=per_round(blocks), network_kept=per_round(network))
print(out)
"""


@pytest.fixture(scope="module")
def faults():
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return ast.literal_eval(r.stdout.strip().splitlines()[-1])


def pages(nbytes: int) -> float:
    """Pages a fresh mapping of nbytes faults in (2 MiB ones where transparent huge pages are always on)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            huge = "[always]" in f.read()
    except OSError:
        huge = False
    return nbytes / (2 << 20 if huge else resource.getpagesize())


glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="keep_freed_memory applies to glibc's malloc only")


@glibc_only
def test_keep_freed_memory_keeps_freed_blocks_mapped(faults):
    assert faults["applied"] is True
    assert faults["blocks_default"] > 0.9 * pages(8 * (3 << 20)), faults  # trimmed and faulted in anew
    assert faults["blocks_kept"] < 0.05 * faults["blocks_default"], faults


@glibc_only
def test_keep_freed_memory_stops_page_faults_per_network_call(faults):
    assert faults["network_default"] > 0.5 * pages(6 << 20), faults  # a few MiB of activations per call
    assert faults["network_kept"] < 0.25 * faults["network_default"], faults


def test_keep_freed_memory_elsewhere_changes_nothing(monkeypatch):
    monkeypatch.setattr(machine.platform, "libc_ver", lambda *a, **k: ("musl", "1.2"))
    assert machine.keep_freed_memory() is False
