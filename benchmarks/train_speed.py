"""Training speed: images per second of our training step against a plain PyTorch loop over the same
network and data, and the share of each step spent waiting for data.

    .venv/bin/python benchmarks/train_speed.py [--dataset mnist] [--data-dir ../shared/data/mnist]
        [--batch 128] [--steps 10] [--repeat 3] [--threads 1] [--precision fp32] [--device cpu]

Ours: ``Trainer.train_step``, what ``ddpmkit train`` runs at every step (without its log lines,
sample grids and checkpoints): the step's seeded draws (batch indices, timesteps, noise, dropout under
a forked RNG), AdamW with the warm-up, gradient clipping, the check that loss and gradient are finite,
and the EMA update.

Plain: the loop a user writes from Ho et al.'s Algorithm 1 with the same recipe, on a copy of the same
network with the same weights: a shuffling ``DataLoader`` over the same images (float32 in [-1, 1], no
worker processes), ``torch.randint`` and ``torch.randn_like`` from the global generator, the same loss,
AdamW, clipping to the same norm and the same EMA update. A second plain row ("bare") leaves out
clipping and the EMA: what those two cost.

Blocks of --steps steps alternate between the variants, --repeat times after one warm-up block each,
so that a slow spell of a shared machine hits all of them; the median block counts. Data wait: the
time spent fetching the batch (ours: ``Trainer.data_batch``; plain: the DataLoader's ``next``) over
the block's time. Writes benchmarks/results/train_speed.json and train_speed.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import pathlib
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from ddpmkit.machine import describe_machine, keep_freed_memory
from ddpmkit.measure.report import table, write_result
from ddpmkit.train import Trainer, autocast, net_preset

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Waits:
    """Seconds spent fetching data, summed."""

    def __init__(self):
        self.seconds = 0.0

    @contextlib.contextmanager
    def fetching(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0


class Ours:
    """``Trainer.train_step`` at steps 1, 2, ..., its ``data_batch`` timed."""

    name = "ddpmkit"

    def __init__(self, trainer: Trainer):
        self.trainer, self.waits, self.next_step = trainer, Waits(), 1
        fetch = trainer.data_batch

        def timed_fetch(step):
            with self.waits.fetching():
                return fetch(step)
        trainer.data_batch = timed_fetch  # the instance's own attribute: train_step calls it

    def step(self) -> None:
        self.trainer.train_step(self.next_step)
        self.next_step += 1


class Plain:
    """Ho et al.'s Algorithm 1 as a plain PyTorch loop; ``recipe`` adds our clipping and EMA."""

    def __init__(self, trainer: Trainer, recipe: bool):
        cfg = trainer.cfg
        self.name = "plain PyTorch" if recipe else "plain PyTorch, bare"
        self.device, self.recipe, self.cfg, self.waits = trainer.device, recipe, cfg, Waits()
        self.net = copy.deepcopy(trainer.net)  # the same network and weights, its own parameters
        self.ema = [p.detach().clone() for p in self.net.parameters()]
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.abar = trainer.abar
        images = torch.utils.data.TensorDataset(trainer.data.to_float())
        self.loader = torch.utils.data.DataLoader(images, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
        self.batches = iter(self.loader)

    def next_batch(self) -> torch.Tensor:
        try:
            return next(self.batches)[0]
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)[0]

    def step(self) -> None:
        with self.waits.fetching():
            x0 = self.next_batch().to(self.device)
        t = torch.randint(0, self.cfg.T, (len(x0),), device=self.device)
        eps = torch.randn_like(x0)
        abar = self.abar[t].view(-1, 1, 1, 1)
        self.net.train()
        with autocast(self.device, self.cfg.precision):
            loss = F.mse_loss(self.net(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, t).float(), eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.recipe:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.opt.step()
        if self.recipe:
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, list(self.net.parameters()), 1 - self.cfg.ema_decay)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def block(variant, steps: int, device) -> tuple[float, float]:
    """(seconds, seconds waiting for data) of ``steps`` steps."""
    sync(device)
    waited = variant.waits.seconds
    t0 = time.perf_counter()
    for _ in range(steps):
        variant.step()
    sync(device)
    return time.perf_counter() - t0, variant.waits.seconds - waited


def measure(trainer: Trainer, steps: int, repeat: int) -> list[dict]:
    variants = [Ours(trainer), Plain(trainer, recipe=True), Plain(trainer, recipe=False)]
    times = {v.name: [] for v in variants}
    for v in variants:  # warm-up
        block(v, steps, trainer.device)
    for _ in range(repeat):
        for v in variants:
            times[v.name].append(block(v, steps, trainer.device))
    batch = trainer.cfg.batch_size
    rows = []
    for v in variants:
        seconds = statistics.median(s for s, _ in times[v.name])
        rows.append({"variant": v.name, "seconds_per_step": seconds / steps, "images_per_s": batch * steps / seconds,
                     "data_wait_share": statistics.median(w / s for s, w in times[v.name]), "blocks": times[v.name]})
    ours = rows[0]["images_per_s"]
    for r in rows:
        r["ours_over_this"] = ours / r["images_per_s"]
    return rows


def markdown(result: dict) -> str:
    rows = result["rows"]
    return (f"# Training speed against a plain PyTorch loop\n\nMade by `{result['command']}` on {result['machine']}: "
            f"{result['dataset']}, batch {result['batch']}, the `{result['net']}` U-Net "
            f"({result['params'] / 1e6:.1f}M parameters), {result['precision']}; median of {result['repeat']} "
            f"interleaved blocks of {result['steps']} steps. Data wait: the share of a step spent fetching its "
            "batch.\n\n"
            + table(["variant", "s / step", "images/s", "data wait", "ours / this (images/s)"],
                    [[r["variant"], f"{r['seconds_per_step']:.3f}", f"{r['images_per_s']:.1f}",
                      f"{100 * r['data_wait_share']:.2f}%", f"{r['ours_over_this']:.3f}"] for r in rows]) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None, help="the dataset's folder (default for mnist: ../shared/data/mnist)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_speed"))
    args = p.parse_args(argv)
    if args.data_dir is None and args.dataset == "mnist":
        args.data_dir = str(ROOT.parent / "shared" / "data" / "mnist")
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as run_dir:  # the Trainer's folder: nothing is written to it here
        trainer = Trainer(pathlib.Path(run_dir) / "run", {"dataset": args.dataset, "data_dir": args.data_dir,
                                                          "batch_size": args.batch, "precision": args.precision},
                          device=args.device, quiet=True)
        rows = measure(trainer, args.steps, args.repeat)
    command = ("python benchmarks/train_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    result = {"command": command, "machine": describe_machine(args.device), "threads": torch.get_num_threads(),
              "dataset": args.dataset, "batch": args.batch, "net": net_preset(trainer.cfg.net, trainer.data.shape[1]),
              "params": sum(p.numel() for p in trainer.net.parameters()), "precision": args.precision,
              "steps": args.steps, "repeat": args.repeat, "rows": rows}
    write_result(args.out, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
