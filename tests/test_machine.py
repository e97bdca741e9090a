"""machine.keep_freed_memory: network calls stop page-faulting their activations in anew."""

import platform
import subprocess
import sys

import pytest

from ddpmkit.machine import describe_machine

PROBE = """
import resource, sys, torch
from ddpmkit.machine import keep_freed_memory
from ddpmkit.nets import build_unet
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    assert keep_freed_memory()
net = build_unet("small").eval()
x, t = torch.randn(64, 1, 28, 28), torch.full((64,), 500)
with torch.inference_mode():
    net(x, t)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        net(x, t)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 2)
"""


def page_faults_per_call(mode: str) -> float:
    r = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return float(r.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="keep_freed_memory applies to glibc's malloc only")
def test_keep_freed_memory_stops_page_faults_per_network_call():
    default, kept = page_faults_per_call("default"), page_faults_per_call("keep")
    assert default > 2000, default  # the U-Net's activations (6-25 MB) fault in at every call
    assert kept < 0.25 * default, (kept, default)


def test_describe_machine_names_torch_and_threads():
    text = describe_machine("cpu")
    assert "torch threads" in text and "torch " in text and "ddpmkit " in text
