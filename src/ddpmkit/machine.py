"""One line that says which machine produced a measurement (for reports and model cards)."""

from __future__ import annotations

import contextlib
import platform
import signal
import threading

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


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    A network's activations are freed and allocated again at every call. By default glibc maps
    blocks above a (dynamic) mmap threshold freshly and trims the freed top of its heap, so each call
    page-faults its activations in anew: with the ``small`` U-Net on a CPU that was 15-25% of the
    process's CPU time, spent in the kernel (``benchmarks/unet_speed.py`` measures it). Raising
    both thresholds (glibc's ``mallopt``, M_MMAP_THRESHOLD up to its 32 MiB maximum, M_TRIM_THRESHOLD)
    keeps the memory mapped, which is what PyTorch's CPU tuning guide gets by preloading jemalloc or
    tcmalloc. The cost: the process keeps its peak memory. Returns whether it applied (glibc only).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                       trim_threshold))


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system's notice before it stops a job), handled like Ctrl-C: a
    training run saves its checkpoint, eval keeps its finished chunks; the command exits with 143."""


def raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def deferred_interrupts():
    """Within: Ctrl-C (where it is not ignored, as in a background job) and SIGTERM only record
    themselves, as a KeyboardInterrupt or Terminated in the yielded list, for the caller to raise at a
    safe point (a training step's end); a second signal interrupts at once. Outside the main thread,
    where no handler can be set, signals act as usual."""
    requested: list[KeyboardInterrupt] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def record(signum, frame):
        if requested:  # asked twice: do not wait
            raise requested[0]
        requested.append(Terminated() if signum == signal.SIGTERM else KeyboardInterrupt())

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, handler in before.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, record)
    try:
        yield requested
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
