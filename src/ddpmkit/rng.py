"""Per-sample seeded noise (the approach of NVlabs/edm's StackedRandomGenerator).

Sample i owns a generator seeded with seeds[i]; its initial noise x_T and every later noise draw
come from that generator alone, in a fixed order. A sample is therefore the same whatever the
batch size, its position in the batch, or how many samples are drawn. Draws are made on the CPU
in float32 and then moved, so a seed gives the same noise on every device and in every dtype.
The global RNG is never touched.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import torch


def check_seeds(seeds: Iterable[int]) -> list[int]:
    out = []
    for s in seeds:
        try:
            if isinstance(s, bool):
                raise TypeError
            s = operator.index(s)
        except TypeError:
            raise ValueError(f"seed {s!r} is not an integer") from None
        if not 0 <= s < 2**63:
            raise ValueError(f"seed {s} is outside [0, 2**63)")
        out.append(s)
    if not out:
        raise ValueError("no seeds given; need at least one")
    return out


class SeededNoise:
    """``noise()`` returns the next standard-normal draw for every sample, shape (len(seeds), *shape)."""

    def __init__(self, seeds: Iterable[int], shape: tuple[int, ...], *, device="cpu", dtype=torch.float32):
        self.seeds = check_seeds(seeds)
        self.shape = tuple(shape)
        self.device, self.dtype = torch.device(device), dtype
        self._gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.draws = 0

    def __call__(self) -> torch.Tensor:
        z = torch.stack([torch.randn(self.shape, generator=g, dtype=torch.float32) for g in self._gens])
        self.draws += 1
        if self.device.type == "cuda":
            # from pinned memory the copy is queued behind the GPU's work; from pageable memory it would
            # wait for the stream, a host synchronisation at every step of a stochastic sampler
            return z.pin_memory().to(device=self.device, non_blocking=True).to(self.dtype)
        return z.to(device=self.device, dtype=self.dtype)

    def __len__(self) -> int:
        return len(self.seeds)
