"""U-Net forward speed: what the memory layout of the convolutions and of attention's q, k, v cost,
and what glibc's malloc settings cost.

    .venv/bin/python benchmarks/unet_speed.py [--model mnist] [--batch 250] [--threads 1,2] [--repeat 5]

Times one forward pass of a shipped model's network (the same timestep for the whole batch) in three
layouts, in one process so that the ratios are fair on a shared machine:

- ``ddpmkit``: as the network runs (channels-last convolution weights, contiguous q, k, v);
- ``nchw``: the same network with its weights in the plain (NCHW) layout;
- ``nchw + strided qkv``: NCHW and attention fed strided views of q, k, v, as before this
  benchmark existed: ``scaled_dot_product_attention`` then takes its unfused "math" kernel.

These run with glibc's default malloc settings; a last row runs the network as the ``ddpmkit``
command does, after ``machine.keep_freed_memory`` (user and kernel CPU time show what it saves).
Also times the attention call alone at the shapes of the net's largest attention (14x14 in the
``small`` net), both ways. Writes
benchmarks/results/unet_speed.json and unet_speed.md. The outputs of the three layouts are checked
to agree (max abs difference printed), so only speed is compared.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import resource
import sys
import time

import torch
import torch.nn.functional as F

from ddpmkit.machine import describe_machine, keep_freed_memory
from ddpmkit.measure.report import table, write_result
from ddpmkit.models import load_model
from ddpmkit.nets import unet

ROOT = pathlib.Path(__file__).resolve().parents[1]


def strided_attention(self, x):
    """AttnBlock.forward as it was: q, k, v as transposed (strided) views."""
    B, C, H, W = x.shape
    qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
    q, k, v = qkv.transpose(-1, -2).unbind(1)
    h = F.scaled_dot_product_attention(q, k, v)
    return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


@contextlib.contextmanager
def layout(net, name):
    fmt = torch.contiguous_format if name.startswith("nchw") else torch.channels_last
    saved = unet.AttnBlock.forward
    net.to(memory_format=fmt)
    if name == "nchw + strided qkv":
        unet.AttnBlock.forward = strided_attention
    try:
        yield
    finally:
        unet.AttnBlock.forward = saved
        net.to(memory_format=torch.channels_last)


def best_of(fn, repeat) -> dict:
    """Wall time of the fastest call, and the process's user and kernel CPU time per call."""
    fn()  # warm-up: oneDNN builds its kernels on the first call
    times, before = [], resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": min(times), "user_s": (after.ru_utime - before.ru_utime) / repeat,
            "kernel_s": (after.ru_stime - before.ru_stime) / repeat}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    model = load_model(args.model)
    net, shape = model.net, model.shape
    x = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((args.batch,), 500)
    names = ["ddpmkit", "nchw", "nchw + strided qkv"]
    threads_list = [int(n) for n in args.threads.split(",")]
    rows, start = [], time.perf_counter()

    def add(what, threads, timing):
        rows.append({"what": what, "threads": threads, **timing, "ms_per_image": 1000 * timing["seconds"] / args.batch})

    with torch.inference_mode():
        outputs = {}
        for name in names:
            with layout(net, name):
                outputs[name] = net(x, t)
        agree = max(float((outputs[n] - outputs["ddpmkit"]).abs().max()) for n in names)
        block = next(m for m in net.modules() if isinstance(m, unet.AttnBlock))  # the largest attention
        seen = []
        hook = block.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape))
        net(x[:1], t[:1])
        hook.remove()
        _, ch, h, w = seen[0]
        where = f"{h}x{w}"
        qkv = torch.randn(args.batch, 3, block.heads, ch // block.heads, h * w)
        strided = qkv.transpose(-1, -2).unbind(1)
        packed = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
        # glibc's default allocator first: keep_freed_memory cannot be undone within a process
        for threads in threads_list:
            torch.set_num_threads(threads)
            for name in names:
                with layout(net, name):
                    add(f"forward, {name} layout, default allocator", threads, best_of(lambda: net(x, t), args.repeat))
            for name, (q, k, v) in ((f"attention {where}, contiguous q/k/v", packed),
                                    (f"attention {where}, strided q/k/v", strided)):
                add(name, threads, best_of(lambda: F.scaled_dot_product_attention(q, k, v), args.repeat))
        kept = keep_freed_memory()
        for threads in threads_list:
            torch.set_num_threads(threads)
            add("forward, as the ddpmkit command runs it (+ keep_freed_memory)", threads,
                best_of(lambda: net(x, t), args.repeat))
    order = {name: i for i, name in enumerate(dict.fromkeys(r["what"] for r in rows))}
    rows.sort(key=lambda r: (r["threads"], not r["what"].startswith("forward, as"), order[r["what"]]))
    for threads in threads_list:
        group = [r for r in rows if r["threads"] == threads]
        forward = next(r for r in group if r["what"].startswith("forward, as"))
        attention = next(r for r in group if r["what"].endswith("contiguous q/k/v"))
        for r in group:
            r["relative"] = r["seconds"] / (forward if r["what"].startswith("forward") else attention)["seconds"]
    command = "python benchmarks/unet_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command.strip(), "machine": describe_machine("cpu"), "model": str(model.path),
              "batch": args.batch, "max_abs_difference": agree, "keep_freed_memory_applied": kept,
              "seconds": time.perf_counter() - start, "rows": rows}
    md = [f"# U-Net forward speed by memory layout and allocator\n\nMade by `{result['command']}` on "
          f"{result['machine']}: one forward pass of the `{args.model}` network on {args.batch} images (wall time: "
          f"best of {args.repeat}; CPU time: mean per call); all layouts agree to {agree:.1e}. Relative: wall time "
          "over the first forward row (or the first attention row) of its thread count.\n",
          table(["what", "threads", "wall s per batch", "ms per image", "user CPU s", "kernel CPU s", "relative"],
                [[r["what"], r["threads"], f"{r['seconds']:.3f}", f"{r['ms_per_image']:.2f}", f"{r['user_s']:.2f}",
                  f"{r['kernel_s']:.2f}", f"{r['relative']:.2f}"] for r in rows])]
    write_result(pathlib.Path(args.out) / "unet_speed", result, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
