"""The sample cache: a model's samples under a plan, as grey levels, chunk by chunk on disk.

Samples are generated in chunks of consecutive seeds and cached (uint8 grey levels, one file per
chunk, written atomically), so an interrupted measurement resumes where it stopped and a repeated
one costs nothing. The key of a chunk's folder is what decides the samples: the model file's bytes,
the plan's ``key()`` and the grey levels.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time

import numpy as np
import torch

from .. import distributed
from ..files import atomic_path, remove_stale_temps
from ..images import to_levels

CHUNK = 500  # seeds per cached file


def cache_key(model, plan, levels: int) -> str:
    """16 hex digits of the SHA-256 of what decides the samples: the model's ``fingerprint()`` (its
    file's SHA-256, or its files' for a diffusers folder, so that a copy on another machine or path
    finds the same chunks, and a rewritten file never reads stale ones), the plan's ``key()`` (sampler, steps, the spacing or
    the timesteps themselves for an explicit or tuned grid, options at other than their defaults)
    and the number of grey levels."""
    what = {"model_sha256": model.fingerprint(), **plan.key(), "levels": levels}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def chunk_files(folder: pathlib.Path, seed: int, num: int, chunk: int = CHUNK) -> list[tuple[int, int, pathlib.Path]]:
    """(first seed, count, file) of each cached chunk that seeds seed .. seed+num-1 fill."""
    counts = [(first, min(chunk, seed + num - first)) for first in range(seed, seed + num, chunk)]
    return [(first, count, pathlib.Path(folder) / f"seeds-{first:09d}-{count:05d}.npz") for first, count in counts]


def cache_folder(model, plan, levels: int, cache_dir: str | os.PathLike) -> pathlib.Path:
    """The folder of ``cache_dir`` that holds the chunks of this model, plan and grey levels."""
    return pathlib.Path(cache_dir) / cache_key(model, plan, levels)


def missing_chunks(model, plan, *, num: int, seed: int, levels: int, cache_dir: str | os.PathLike,
                   chunk: int = CHUNK) -> list[pathlib.Path]:
    """The chunk files that ``generate`` would have to sample (empty: everything is cached)."""
    folder = cache_folder(model, plan, levels, cache_dir)
    return [path for _, _, path in chunk_files(folder, seed, num, chunk) if not path.exists()]


def read_chunk(path: pathlib.Path, count: int, shape) -> tuple[np.ndarray, float, int] | None:
    """(levels, seconds, nfe) of a cached chunk, or None when it is unreadable (truncated by a kill,
    say), holds other than ``count`` uint8 samples of ``shape``, or fails its SHA-256."""
    try:
        with np.load(path, allow_pickle=False) as data:
            part, secs, used = data["levels"], float(data["seconds"]), int(data["nfe"])
            digest = str(data["sha256"]) if "sha256" in data.files else None
    except Exception:  # noqa: BLE001 -- np.load raises BadZipFile, EOFError, ValueError, KeyError, OSError...
        return None
    if part.dtype != np.uint8 or part.shape != (count, *shape):
        return None
    if digest is not None and hashlib.sha256(part.tobytes()).hexdigest() != digest:
        return None
    return part, secs, used


def set_aside(path: pathlib.Path) -> pathlib.Path:
    """Move a damaged chunk out of the way (kept for inspection, never read again), with a warning."""
    import sys

    aside = path.with_name(path.name + ".damaged")
    os.replace(path, aside)
    print(f"warning: cache chunk {path} was damaged (truncated, the wrong size, or a checksum mismatch); moved to "
          f"{aside.name} and sampled again", file=sys.stderr)
    return aside


def generate(model, plan, *, num: int, seed: int, levels: int, cache_dir: str | os.PathLike, chunk: int = CHUNK,
             batch_size: int = 250, micro_batch: int | str | None = "auto", device="cpu",
             progress=None) -> tuple[np.ndarray, dict]:
    """Samples of ``model`` (a ``LoadedModel``) under ``plan`` for seeds seed .. seed+num-1, as
    uint8 grey levels 0..levels, chunk by chunk, from the cache where a chunk is there already.
    ``progress(count)`` is called after each batch sampled and each chunk read. Returns (levels
    array, info with ``nfe`` per sample, ``seconds`` spent sampling (as measured when each chunk
    was made), ``cached`` (samples read from the cache) and ``cache`` (the folder)).

    Under torchrun every process calls it: rank 0 alone reads and writes the cache, a missing
    chunk's seeds are split between the processes (``distributed.shard_batches``), and every
    process returns all the samples. On the CPU the chunks are the same bits at any process count
    or batch size, so a cache made by one process serves a run of several and the other way round."""
    main = distributed.is_main()
    folder = cache_folder(model, plan, levels, cache_dir)
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)  # chunks a killed run left half-written
    parts, seconds, nfe, cached = [], 0.0, plan.nfe, 0
    for first, count, path in chunk_files(folder, seed, num, chunk):
        found = read_chunk(path, count, tuple(model.shape)) if main and path.exists() else None
        if main and path.exists() and found is None:
            set_aside(path)
        if distributed.any_true(found is not None):  # rank 0 has it: every process takes rank 0's copy
            empty = torch.empty((count, *model.shape), dtype=torch.uint8)
            part = distributed.broadcast(torch.from_numpy(found[0]) if main else empty).numpy()
            secs, used = found[1:] if main else (0.0, plan.nfe)
            cached += count
            if progress is not None:
                progress(count)
        else:
            start = time.perf_counter()
            x, used = _sample_chunk(model, plan, first, count, batch_size, micro_batch, device, progress)
            bad = (~torch.isfinite(x.flatten(1))).any(1)
            if bad.any():  # quantising would clamp NaN and inf into grey levels and score them as images
                seeds = [first + int(i) for i in bad.nonzero().flatten()[:3]]
                raise ValueError(f"{plan.describe()}: {int(bad.sum())} of seeds {first}..{first + count - 1} gave "
                                 f"samples with NaN or inf (seeds {', '.join(map(str, seeds))}, ...), which are not "
                                 "scored; another sampler or more steps may be stable")
            part = to_levels(x, levels, model.data_range)
            secs = time.perf_counter() - start
            if main:
                with atomic_path(path) as tmp:
                    with open(tmp, "wb") as f:
                        np.savez(f, levels=part, seconds=secs, nfe=used,
                                 sha256=hashlib.sha256(part.tobytes()).hexdigest())
        parts.append(part)
        seconds += secs
        nfe = used
    return np.concatenate(parts), {"nfe": nfe, "seconds": seconds, "cached": cached, "cache": str(folder)}


def _sample_chunk(model, plan, first: int, count: int, batch_size: int, micro_batch, device, progress):
    """(samples of seeds first .. first+count-1 on every process, network calls per sample): each
    process samples its batches of the chunk (all of them in one process) and they are gathered."""
    seeds, used, own = list(range(first, first + count)), [plan.nfe], [0]

    def draw(batch):
        xb, info = model.sample(plan, seeds=batch, batch_size=batch_size, micro_batch=micro_batch, device=device,
                                return_info=True)
        used[0], own[0] = info["nfe"], own[0] + len(xb)
        if progress is not None:
            progress(len(xb))
        return xb.cpu()

    x = distributed.sample_shared(draw, seeds, batch_size, torch.empty((0, *model.shape)))
    if progress is not None and own[0] < count:  # the other processes' samples, once they are here
        progress(count - own[0])
    return x, used[0]
