"""One line that says which machine produced a measurement (for reports and model cards)."""

from __future__ import annotations

import platform

import torch


def describe_machine(device: str = "cpu") -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    from . import __version__

    where = torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda" else cpu
    return (f"{where}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
            f"torch {torch.__version__}, ddpmkit {__version__}")
