"""U-Net forward speed: what the memory layout of the convolutions and of attention's q, k, v cost.

    .venv/bin/python benchmarks/unet_speed.py [--model mnist] [--batch 250] [--threads 1,2] [--repeat 5]

Times one forward pass of a shipped model's network (the same timestep for the whole batch) in three
layouts, interleaved and in one process so that the ratios are fair on a shared machine:

- ``ddpmkit``: as the network runs (channels-last convolution weights, contiguous q, k, v);
- ``nchw``: the same network with its weights in the plain (NCHW) layout;
- ``nchw + strided qkv``: NCHW and attention fed strided views of q, k, v, as before this
  benchmark existed: ``scaled_dot_product_attention`` then takes its unfused "math" kernel.

Also times the attention call alone at the shapes of the net's largest attention (14x14 in the
``small`` net), both ways. Writes
benchmarks/results/unet_speed.json and unet_speed.md. The outputs of the three layouts are checked
to agree (max abs difference printed), so only speed is compared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

from ddpmkit.files import write_text
from ddpmkit.machine import describe_machine
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


def best_of(fn, repeat):
    fn()  # warm-up: oneDNN builds its kernels on the first call
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


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
    rows, start = [], time.perf_counter()
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
        for threads in [int(n) for n in args.threads.split(",")]:
            torch.set_num_threads(threads)
            for name in names:
                with layout(net, name):
                    sec = best_of(lambda: net(x, t), args.repeat)
                rows.append({"what": f"forward, {name}", "threads": threads, "seconds": sec,
                             "ms_per_image": 1000 * sec / args.batch})
            for name, (q, k, v) in ((f"attention {where}, contiguous q/k/v", packed),
                                    (f"attention {where}, strided q/k/v", strided)):
                sec = best_of(lambda: F.scaled_dot_product_attention(q, k, v), args.repeat)
                rows.append({"what": name, "threads": threads, "seconds": sec,
                             "ms_per_image": 1000 * sec / args.batch})
    for threads in sorted({r["threads"] for r in rows}):
        base = {r["what"]: r["seconds"] for r in rows if r["threads"] == threads}
        for r in rows:
            if r["threads"] == threads:
                ref = base["forward, ddpmkit"] if r["what"].startswith("forward") else \
                    base[f"attention {where}, contiguous q/k/v"]
                r["relative"] = r["seconds"] / ref
    command = "python benchmarks/unet_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command.strip(), "machine": describe_machine("cpu"), "model": str(model.path),
              "batch": args.batch, "torch": torch.__version__, "max_abs_difference": agree,
              "seconds": time.perf_counter() - start, "rows": rows}
    md = [f"# U-Net forward speed by memory layout\n\nMade by `{result['command']}` on {result['machine']}, "
          f"one forward pass of the `{args.model}` network on {args.batch} images, best "
          f"of {args.repeat}; all layouts agree to {agree:.1e}. Relative: time over the first row of its group.\n",
          "| what | threads | s per batch | ms per image | relative |", "|---|---|---|---|---|"]
    md += [f"| {r['what']} | {r['threads']} | {r['seconds']:.3f} | {r['ms_per_image']:.2f} | {r['relative']:.2f} |"
           for r in rows]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "unet_speed.json", json.dumps(result, indent=1) + "\n")
    write_text(out / "unet_speed.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
