"""Sampling speed: what our loop adds to the network's cost, against diffusers' loops on the same network.

    .venv/bin/python benchmarks/speed.py [--nets mnist,unet2d-mnist,unet2d-cifar] [--nfe 10,20]
        [--batches mnist=1,16,64 ...] [--repeat 3] [--threads 2] [--device cpu]
        [--precisions fp32,bf16] [--compile]

For each network and batch size, in one process:

- F: the bare network forward, from NFE calls in a loop at the grid's timesteps (inference mode),
  timed among the variants below;
- for each pair of matching algorithms (ours on a trailing grid / diffusers' scheduler, trailing
  spacing): ddim / DDIMScheduler, dpmpp-2m / DPMSolverMultistepScheduler, unipc /
  UniPCMultistepScheduler, the wall time W of sampling one batch at each NFE, ours through
  ``ddpmkit.sample`` (per-seed noise, the whole batch per network call) and diffusers' as its
  documentation writes the loop (``set_timesteps``, then ``step`` after each network call); and for a
  ``UNet2DModel`` also diffusers' ``DDIMPipeline`` and ``DDPMPipeline`` at the same NFE (with their
  image post-processing, ``output_type="np"``). Variants run interleaved, --repeat times each, and the
  median counts; the overhead W / (NFE x F) and images per second are reported for each, with the
  ratio of our W to diffusers' for the same algorithm.

``--precisions fp32,bf16,fp16`` adds our loop with the network under autocast (``precision``), and
``--compile`` our loop on the network under ``torch.compile`` (mode reduce-overhead on CUDA, which
captures it in CUDA graphs; default elsewhere), each against diffusers' fp32 loop. On CUDA each of our
variants is also run once under ``torch.cuda.set_sync_debug_mode("warn")``, and the host
synchronisations it warns of are counted (``host_syncs``).

Networks: ``mnist``, the shipped MNIST U-Net (1.7M parameters); ``unet2d-mnist``, a diffusers
``UNet2DModel`` of about the same size (1.6M, 28x28x1); ``unet2d-cifar``, a ``UNet2DModel`` with
google/ddpm-cifar10-32's configuration (35.7M, 32x32x3). All randomly initialised (speed does not need
trained weights) on the linear schedule of T = 1000. Peak memory is reported on CUDA only.

Writes benchmarks/results/speed.json and speed.md.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch

from ddpmkit import NoiseSchedule, make_plan, sample
from ddpmkit.machine import describe_machine, keep_freed_memory
from ddpmkit.measure.exact import diffusers_scheduler
from ddpmkit.measure.report import table, write_result

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAIRS = [  # (our sampler, diffusers' scheduler class, its keyword arguments)
    ("ddim", "DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}),
    ("dpmpp-2m", "DPMSolverMultistepScheduler", {"solver_order": 2}),
    ("unipc", "UniPCMultistepScheduler", {}),
]
PIPELINES = [("DDIMPipeline", "DDIMScheduler"), ("DDPMPipeline", "DDPMScheduler")]
BATCHES = {"mnist": "1,16,64", "unet2d-mnist": "1,16,64", "unet2d-cifar": "1,16"}


def unet2d(kind: str):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    if kind == "unet2d-cifar":  # google/ddpm-cifar10-32
        return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                           block_out_channels=(128, 256, 256, 256),
                           down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2, block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)


def network(kind: str, device):
    """(ours: net(x, t) -> tensor, theirs: how a diffusers loop calls it, the UNet2DModel or None, shape)."""
    if kind == "mnist":
        from ddpmkit.models import load_model

        net = load_model("mnist", device=device).net
        return net, lambda x, t: net(x, t.expand(len(x))), None, (1, 28, 28)
    from ddpmkit.models.diffusers_folder import DiffusersNet

    unet = unet2d(kind).to(device).eval().requires_grad_(False)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    return DiffusersNet(unet), lambda x, t: unet(x, t).sample, unet, shape


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> tuple[float, float | None]:
    """(seconds, peak CUDA memory in MiB or None) of one call."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return seconds, peak


def their_loop(call, cls_name, kwargs, schedule, nfe, shape, device):
    """diffusers' documented loop, from set_timesteps to the last step."""
    def run():
        sched = diffusers_scheduler(cls_name, kwargs, schedule)
        sched.set_timesteps(nfe)
        g = torch.Generator(device).manual_seed(0)
        x = torch.randn(shape, generator=g, device=device) * sched.init_noise_sigma
        with torch.inference_mode():
            for t in sched.timesteps:
                out = call(sched.scale_model_input(x, t), t.to(device))
                x = sched.step(out, t, x).prev_sample
        return x
    return run


def pipeline(unet, pipe_name, sched_name, schedule, nfe, batch, device):
    import diffusers

    pipe = getattr(diffusers, pipe_name)(unet=unet, scheduler=diffusers_scheduler(sched_name, {}, schedule)).to(device)
    pipe.set_progress_bar_config(disable=True)

    def run():
        g = torch.Generator(device).manual_seed(0)
        return pipe(batch_size=batch, num_inference_steps=nfe, generator=g, output_type="np").images
    return run


def host_syncs(fn) -> int:
    """Host synchronisations that one call of ``fn`` makes on CUDA (each one warns in this mode)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def measure(kind: str, batches: list[int], nfes: list[int], repeat: int, device, precisions=("fp32",),
            compile_net: bool = False) -> list[dict]:
    ours, theirs_call, unet, shape = network(kind, device)
    compiled = torch.compile(ours, mode="reduce-overhead" if device.type == "cuda" else "default") if compile_net \
        else None
    schedule = NoiseSchedule("linear", 1000)
    params = sum(p.numel() for p in ours.parameters())
    rows = []
    for batch in batches:
        x = torch.randn(batch, *shape, device=device)
        for nfe in nfes:
            ts = [torch.full((batch,), float(t), device=device) for t in schedule.grid(nfe, "trailing")]

            def bare(ts=ts):  # the network alone, called as often as a sampler calls it
                with torch.inference_mode():
                    for t in ts:
                        ours(x, t)
            variants = {("network", "bare"): ("network", bare)}
            for name, cls_name, kw in PAIRS:
                for precision in precisions:
                    plan = make_plan(schedule, name, steps=nfe, spacing="trailing", precision=precision)
                    source = "ddpmkit" if precision == "fp32" else f"ddpmkit {precision}"
                    variants[name, source] = (name, lambda plan=plan: sample(
                        ours, schedule, plan, shape=(batch, *shape), micro_batch=None, device=device))
                if compiled is not None:
                    plan = make_plan(schedule, name, steps=nfe, spacing="trailing")
                    variants[name, "ddpmkit compiled"] = (name, lambda plan=plan: sample(
                        compiled, schedule, plan, shape=(batch, *shape), micro_batch=None, device=device))
                variants[name, "diffusers"] = (name, their_loop(theirs_call, cls_name, kw, schedule, nfe,
                                                                (batch, *shape), device))
            if unet is not None:
                for pipe_name, sched_name in PIPELINES:
                    algo = "ddim" if pipe_name == "DDIMPipeline" else "ddpm"
                    variants[pipe_name, "diffusers"] = (algo, pipeline(unet, pipe_name, sched_name, schedule, nfe,
                                                                       batch, device))
            times = {key: [] for key in variants}
            peaks, syncs = {}, {}
            for key, (_, fn) in variants.items():  # warm-up, and the peak memory
                peaks[key] = timed(fn, device)[1]
                if device.type == "cuda" and key[1].startswith("ddpmkit"):
                    syncs[key] = host_syncs(fn)
            for _ in range(repeat):  # interleaved, so that a slow spell of a shared machine hits every variant
                for key, (_, fn) in variants.items():
                    times[key].append(timed(fn, device)[0])
            F = statistics.median(times["network", "bare"]) / nfe
            for (label, source), (algo, _) in variants.items():
                if source == "bare":
                    continue
                W = statistics.median(times[label, source])
                rows.append({"net": kind, "params": params, "batch": batch, "nfe": nfe, "variant": label,
                             "source": source, "algorithm": algo, "forward_s": F, "wall_s": W,
                             "overhead": W / (nfe * F), "images_per_s": batch / W, "peak_mib": peaks[label, source],
                             "host_syncs": syncs.get((label, source)), "times": times[label, source]})
            for r in rows:
                if r["net"] == kind and r["batch"] == batch and r["nfe"] == nfe and r["source"].startswith("ddpmkit"):
                    theirs = next(q for q in rows if q["net"] == kind and q["batch"] == batch and q["nfe"] == nfe
                                  and q["source"] == "diffusers" and q["variant"] == r["algorithm"])
                    r["ours_over_diffusers"] = r["wall_s"] / theirs["wall_s"]
            print(f"  {kind} batch {batch} NFE {nfe}: F {F * 1000:.1f} ms; " + "; ".join(
                f"{r['variant']} ({r['source']}) x{r['overhead']:.3f}" for r in rows
                if r["net"] == kind and r["batch"] == batch and r["nfe"] == nfe), flush=True)
    return rows


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [f"# Sampling speed against diffusers\n\nMade by `{result['command']}` on {result['machine']}: "
             "randomly initialised networks, the linear schedule (T = 1000), trailing grids; median of "
             f"{result['repeat']} interleaved runs. W: wall time of one batch; overhead: W / (NFE x F), F the "
             "bare forward; ours / diffusers: our W over diffusers' scheduler loop's for the same algorithm.\n"]
    for kind in dict.fromkeys(r["net"] for r in rows):
        mine = [r for r in rows if r["net"] == kind]
        lines.append(f"\n## {kind} ({mine[0]['params'] / 1e6:.1f}M parameters)\n")
        counted = any(r.get("host_syncs") is not None for r in mine)  # on CUDA
        lines.append(table(["batch", "NFE", "F (ms)", "variant", "source", "W (s)", "overhead", "images/s",
                            "ours / diffusers", *(["host syncs"] if counted else [])],
                           [[r["batch"], r["nfe"], f"{r['forward_s'] * 1000:.1f}", r["variant"], r["source"],
                             f"{r['wall_s']:.3f}", f"{r['overhead']:.3f}", f"{r['images_per_s']:.1f}",
                             f"{r['ours_over_diffusers']:.3f}" if "ours_over_diffusers" in r else "",
                             *([r.get("host_syncs") if r.get("host_syncs") is not None else ""] if counted else [])]
                            for r in mine]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default="mnist,unet2d-mnist,unet2d-cifar")
    p.add_argument("--nfe", default="10,20")
    p.add_argument("--batches", action="append", default=[], metavar="NET=B,B,...",
                   help=f"batch sizes per network (default: {BATCHES})")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precisions", default="fp32", help="our loop at these network precisions (fp32, bf16, fp16)")
    p.add_argument("--compile", action="store_true", help="also our loop on the network under torch.compile")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed"))
    args = p.parse_args(argv)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = dict(BATCHES, **dict(spec.split("=", 1) for spec in args.batches))
    start, rows = time.perf_counter(), []
    for kind in args.nets.split(","):
        rows += measure(kind, [int(b) for b in batches[kind].split(",")], [int(n) for n in args.nfe.split(",")],
                        args.repeat, device, precisions=args.precisions.split(","), compile_net=args.compile)
    command = ("python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    result = {"command": command, "machine": describe_machine(args.device), "threads": torch.get_num_threads(),
              "repeat": args.repeat, "seconds": time.perf_counter() - start, "rows": rows}
    write_result(args.out, result, markdown(result))
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
