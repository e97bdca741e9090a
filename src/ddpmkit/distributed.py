"""Several processes under torchrun: PyTorch's process group, and how ddpmkit splits work over it.

``torchrun --nproc_per_node N -m ddpmkit COMMAND ...`` starts N copies of the command with RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous address in their environment; ``init`` joins them into
one process group (gloo on the CPU, NCCL on GPUs, one GPU per process: cuda:LOCAL_RANK). Then

- ``sample``, ``eval`` and ``bench`` split the seeds between the processes as NVlabs/edm's
  generate.py does (batches dealt out in turn, ``shard_batches``), gather the samples on every
  process (``gather_rows``) and let rank 0 alone write files and print. On the CPU a sample's bits
  do not depend on which process drew it (``ddpmkit.sampling``'s micro-batches), so the output is
  the one-process output, bit for bit;
- ``train`` runs DistributedDataParallel: every process draws the whole batch of a step from the
  step's seed and takes its slice (``my_slice``), so a run is the same run at any process count
  up to float rounding, and resumes at any count.

Without torchrun (or WORLD_SIZE=1) every function here is the one-process identity.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist

# a collective waits this long for a slow process (rank 0 writing a checkpoint or a sample grid
# while the others wait at the next step's gradient reduction) before the run fails
TIMEOUT = datetime.timedelta(hours=2)


def launched() -> bool:
    """Whether torchrun started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init(device: str = "cpu") -> str:
    """Join the process group torchrun describes and return this process's device: cuda:LOCAL_RANK
    for ``cuda`` (one GPU per process), else ``device`` as given. Without torchrun: ``device``."""
    if not launched() or dist.is_initialized():
        return device
    kind = torch.device(device).type
    if kind == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.device(device).index not in (None, local):
            raise ValueError(f"--device {device}: under torchrun each process takes its own GPU (cuda:LOCAL_RANK); "
                             "give --device cuda and choose the GPUs with CUDA_VISIBLE_DEVICES")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    elif kind != "cpu":
        raise ValueError(f"--device {device}: several processes run on the CPU (gloo) or on CUDA GPUs (NCCL), "
                         f"not on {kind}")
    dist.init_process_group("nccl" if kind == "cuda" else "gloo", timeout=TIMEOUT)
    return device


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files and prints."""
    return rank() == 0


def _device() -> torch.device:
    """Where collectives take their tensors: the current GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_batches(seeds: Sequence[int], batch_size: int) -> list[list[int]]:
    """NVlabs/edm's cut: ``seeds`` in the fewest batches of at most ``batch_size`` whose count is a
    multiple of the number of processes (some may be empty where there are few seeds)."""
    seeds, world = list(seeds), world_size()
    count = (max(len(seeds) - 1, 0) // (batch_size * world) + 1) * world
    return [b.tolist() for b in torch.as_tensor(seeds, dtype=torch.int64).tensor_split(count)]


def shard_batches(seeds: Sequence[int], batch_size: int) -> list[list[int]]:
    """This process's batches of ``all_batches``: dealt out in turn (rank r takes batches r, r + N,
    ...); one process takes them all."""
    return all_batches(seeds, batch_size)[rank()::world_size()]


def sample_shared(draw, seeds: Sequence[int], batch_size: int, empty: torch.Tensor) -> torch.Tensor:
    """``draw(batch)`` for each of this process's non-empty batches of ``seeds``, gathered on every
    process in seed order (``empty``: this process's rows when it has no batch)."""
    parts = [draw(b) for b in shard_batches(seeds, batch_size) if b]
    return gather_rows(torch.cat(parts) if parts else empty, seeds, batch_size)


def gather_rows(local: torch.Tensor, seeds: Sequence[int], batch_size: int) -> torch.Tensor:
    """Every process's rows of ``shard_batches(seeds, batch_size)``, gathered on every process in
    the order of ``seeds``: ``local`` holds this process's rows, its batches one after the other."""
    world = world_size()
    if world == 1:
        return local
    counts = [len(b) for b in all_batches(seeds, batch_size)]
    per_rank = [sum(counts[r::world]) for r in range(world)]
    most = max(per_rank)
    padded = torch.zeros((most, *local.shape[1:]), dtype=local.dtype, device=_device())
    padded[: len(local)] = local.to(padded.device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    # put the batches back in seed order: batch i came from rank i % world, as its (i // world)-th
    offsets, out = [0] * world, []
    for i, n in enumerate(counts):
        r = i % world
        out.append(parts[r][offsets[r] : offsets[r] + n])
        offsets[r] += n
    return torch.cat(out).to(local.device)


def broadcast(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` on every process (each passes a tensor of the same shape and dtype)."""
    if world_size() == 1:
        return tensor
    buf = tensor.to(_device(), copy=True).contiguous()  # a copy: the caller's tensor is never written
    dist.broadcast(buf, 0)
    return buf.to(tensor.device)


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the processes, on every process (float64 stays float64)."""
    if world_size() == 1:
        return tensor
    buf = tensor.to(_device()).clone()
    dist.all_reduce(buf)
    return buf.to(tensor.device)


def any_true(flag: bool) -> bool:
    """Whether ``flag`` holds on any process (every process must call it)."""
    return bool(all_sum(torch.tensor([int(flag)], dtype=torch.int64)).item()) if world_size() > 1 else flag


def my_slice(n: int) -> slice:
    """This process's rows of a global batch of n (n must divide evenly: ``check_divides``)."""
    per = n // world_size()
    return slice(rank() * per, (rank() + 1) * per)


def check_divides(batch_size: int, option: str = "--batch-size") -> None:
    world = world_size()
    if batch_size % world:
        raise ValueError(f"{option} {batch_size} does not split evenly over {world} processes; give a multiple of "
                         f"{world} (it is the global batch, split between the processes)")
