"""Sampling speed: what our loop adds to the network's cost, against diffusers' loops on the same network.

    .venv/bin/python benchmarks/speed.py [--nets mnist,unet2d-mnist,unet2d-cifar] [--nfe 10,20]
        [--batches mnist=1,16,64 ...] [--repeat 3] [--threads 2] [--device cpu]
        [--precisions fp32,bf16] [--compile] [--loop-alone 1,16,64,256]
        [--quality benchmarks/results/few_step_mnist.json --ems MODEL_FILE]

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
  ratio of our W to diffusers' for the same algorithm;
- in the same runs, the time spent inside the network (hooks on it: ``NetworkClock``), so that each
  loop's own cost, W minus that time, is measured apart from the network's, and the overhead W over
  that time is free of the drift between runs that W / (NFE x F) carries on a shared machine.

``--quality FEW_STEP_JSON`` adds the time to quality on the shipped MNIST model (``time_to_quality``):
from the FIDs that benchmarks/few_step_mnist.py measured, each side's fewest-NFE sampler that gets
within 10% of the best FID (and to diffusers' best), timed here. ``--loop-alone 1,16,64,256`` (the
default) also times each pair's loop on a network that costs nothing (``loop_alone``). With ``--nets ''``
these run alone and the network rows already in the results stay.

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
import contextlib
import json
import pathlib
import shlex
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


class NetworkClock:
    """The time spent inside one module's forward calls while the clock is on (a pre- and a post-hook):
    perf_counter on the CPU; on CUDA an event pair per call, read after the run, so that the clock
    adds no host synchronisation. What a loop spends outside these calls is its own cost."""

    def __init__(self, module: torch.nn.Module, device):
        self.module, self.cuda, self.spans, self.handles = module, device.type == "cuda", [], []

    def __enter__(self):
        self.spans = []
        self.handles = [self.module.register_forward_pre_hook(self._start),
                        self.module.register_forward_hook(self._stop)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _start(self, module, args):
        self.opened = self._now()

    def _stop(self, module, args, out):
        self.spans.append((self.opened, self._now()))

    def seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.spans) / 1000
        return sum(b - a for a, b in self.spans)


def timed(fn, device, clock: NetworkClock | None = None) -> tuple[float, float | None, float | None]:
    """(seconds, peak CUDA memory in MiB or None, seconds inside the network or None) of one call."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    with clock or contextlib.nullcontext():
        t0 = time.perf_counter()
        fn()
        sync(device)
        seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return seconds, peak, None if clock is None else clock.seconds()


def interleaved(runs: dict, repeat: int, device) -> dict:
    """{key: the seconds of each of its runs}: every run once to warm up, then all of them in turn,
    ``repeat`` times, so that a slow spell of a shared machine hits each one."""
    for fn in runs.values():
        timed(fn, device)
    times = {key: [] for key in runs}
    for _ in range(repeat):
        for key, fn in runs.items():
            times[key].append(timed(fn, device)[0])
    return times


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
    clock = NetworkClock(unet if unet is not None else ours, device)  # the module every variant calls
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
            times, inside = {key: [] for key in variants}, {key: [] for key in variants}
            peaks, syncs = {}, {}
            for key, (_, fn) in variants.items():  # warm-up, and the peak memory
                peaks[key] = timed(fn, device)[1]
                if device.type == "cuda" and key[1].startswith("ddpmkit"):
                    syncs[key] = host_syncs(fn)
            for _ in range(repeat):  # interleaved, so that a slow spell of a shared machine hits every variant
                for key, (_, fn) in variants.items():
                    # a compiled network's hooks would be traced into its graph: it goes unclocked
                    seconds, _, net_seconds = timed(fn, device, None if "compiled" in key[1] else clock)
                    times[key].append(seconds)
                    inside[key].append(net_seconds)
            F = statistics.median(times["network", "bare"]) / nfe
            for (label, source), (algo, _) in variants.items():
                if source == "bare":
                    continue
                W, net = statistics.median(times[label, source]), inside[label, source]
                clocked = net[0] is not None
                rows.append({"net": kind, "params": params, "batch": batch, "nfe": nfe, "variant": label,
                             "source": source, "algorithm": algo, "forward_s": F, "wall_s": W,
                             "overhead": W / (nfe * F),
                             # from each run's own network time, so that a slow spell cancels out
                             "in_run_overhead": statistics.median(w / n for w, n in zip(times[label, source], net))
                             if clocked else None,
                             "loop_ms_per_step": statistics.median(w - n for w, n in zip(times[label, source], net))
                             * 1000 / nfe if clocked else None,
                             "images_per_s": batch / W, "peak_mib": peaks[label, source],
                             "host_syncs": syncs.get((label, source)), "times": times[label, source],
                             "network_times": net})
            for r in rows:
                if r["net"] == kind and r["batch"] == batch and r["nfe"] == nfe and r["source"].startswith("ddpmkit"):
                    theirs = next(q for q in rows if q["net"] == kind and q["batch"] == batch and q["nfe"] == nfe
                                  and q["source"] == "diffusers" and q["variant"] == r["algorithm"])
                    r["ours_over_diffusers"] = r["wall_s"] / theirs["wall_s"]
                    if r["loop_ms_per_step"] is not None:
                        r["loop_ours_over_diffusers"] = r["loop_ms_per_step"] / theirs["loop_ms_per_step"]
                        # the same network code on both sides: what separates the wall times is the loops
                        r["in_run_ours_over_diffusers"] = r["in_run_overhead"] / theirs["in_run_overhead"]
            print(f"  {kind} batch {batch} NFE {nfe}: F {F * 1000:.1f} ms; " + "; ".join(
                f"{r['variant']} ({r['source']}) x{r['overhead']:.3f}"
                + (f" (in run x{r['in_run_overhead']:.4f})" if r["in_run_overhead"] else "") for r in rows
                if r["net"] == kind and r["batch"] == batch and r["nfe"] == nfe), flush=True)
    return rows


def loop_alone(batches: list[int], nfe: int, repeat: int, device) -> dict:
    """Each pair's loop on a network that costs nothing (it hands back one stored tensor), on MNIST's
    and CIFAR-10's image shapes: a run's wall time over NFE, ours and diffusers', the median of
    ``repeat`` interleaved runs. What the loops cost apart from any network, setup included (our
    per-seed noise, diffusers' set_timesteps)."""
    schedule = NoiseSchedule("linear", 1000)
    rows = []
    for shape_name, shape in (("28x28x1", (1, 28, 28)), ("32x32x3", (3, 32, 32))):
        for batch in batches:
            full = (batch, *shape)
            stored = torch.randn(full, device=device) * 0.1

            def free(x, t, stored=stored):
                return stored
            variants = {}
            for name, cls_name, kw in PAIRS:
                plan = make_plan(schedule, name, steps=nfe, spacing="trailing")
                variants[name, "ddpmkit"] = lambda plan=plan, full=full, free=free: sample(
                    free, schedule, plan, shape=full, micro_batch=None, device=device)
                variants[name, "diffusers"] = their_loop(free, cls_name, kw, schedule, nfe, full, device)
            times = interleaved(variants, repeat, device)
            for name, _, _ in PAIRS:
                ours, theirs = (statistics.median(times[name, src]) * 1000 / nfe for src in ("ddpmkit", "diffusers"))
                rows.append({"shape": shape_name, "batch": batch, "sampler": name, "ours_ms": ours,
                             "diffusers_ms": theirs, "ours_over_diffusers": ours / theirs})
    return {"nfe": nfe, "repeat": repeat, "rows": rows}


def time_to_quality(quality: pathlib.Path, ems: str | None, repeat: int, batch: int = 64) -> dict:
    """Seconds per image, ours and diffusers', to reach an FID within 10% of the best that any row of
    ``quality`` (few_step_mnist.json: the shipped MNIST model, 10k samples) measured, and to reach
    diffusers' own best FID: for each side the row with the fewest NFE that gets there (for diffusers,
    where none does, the row with the most NFE, which bounds its time from below), timed here on
    ``batch`` seeds, interleaved, the median of ``repeat`` runs. Our row's plan is rebuilt from its
    sampler and grid (on ``ems``'s copy of the model for a sampler that needs its statistics), diffusers'
    from its scheduler and grid as few_step_mnist.py runs it."""
    import few_step_mnist
    from ddpmkit.measure.exact import DIFFUSERS_GRIDS, diffusers_sample
    from ddpmkit.models import load_model
    from ddpmkit.rng import SeededNoise
    from ddpmkit.samplers import model_options
    from ddpmkit.sampling import MICRO_BATCH, MicroBatched

    measured = [r for r in json.loads(quality.read_text())["rows"] if r["num"] >= 10000]
    side = {src: [r for r in measured if r["source"] == src] for src in ("ddpmkit", "diffusers")}
    if not all(side.values()):
        raise SystemExit(f"{quality}: time to quality needs rows of 10000 samples from both ddpmkit and diffusers")
    best = min(measured, key=lambda r: r["fid"])
    targets = {"within 10% of the best": 1.1 * best["fid"],
               "diffusers' best": min(r["fid"] for r in side["diffusers"])}
    model, seeds = load_model("mnist"), range(batch)
    net = MicroBatched(model.net, MICRO_BATCH)

    def runner(row):
        if row["source"] == "diffusers":
            cls, kw = next((c, k) for label, c, k in few_step_mnist.DIFFUSERS if label == row["sampler"])
            kw = {**kw, **({} if row["grid"] == "trailing" else DIFFUSERS_GRIDS[row["grid"]][0])}
            return lambda: diffusers_sample(cls, kw, model.schedule, net, SeededNoise(seeds, model.shape)(),
                                            row["nfe"])
        m = load_model(ems) if model_options(row["sampler"]) else model
        plan = m.plan(sampler=row["sampler"], **({"timesteps": row["timesteps"]} if row["timesteps"]
                                                 else {"steps": row["nfe"], "spacing": row["grid"]}))
        return lambda: m.sample(plan, seeds=seeds, batch_size=batch)

    picks = {}
    for target, fid in targets.items():
        for src, rows in side.items():
            reached = [r for r in rows if r["fid"] <= fid]
            row = min(reached, key=lambda r: (r["nfe"], r["fid"])) if reached else max(rows, key=lambda r: r["nfe"])
            picks[target, src] = (row, bool(reached))
    times = interleaved({id(row): runner(row) for row, _ in picks.values()}, repeat, torch.device("cpu"))
    out = {"best": {k: best[k] for k in ("sampler", "grid", "nfe", "fid")}, "batch": batch, "targets": []}
    for target, fid in targets.items():
        entry = {"target": target, "fid": fid}
        for src in side:
            row, reached = picks[target, src]
            entry[src] = {"sampler": row["sampler"], "grid": row["grid"], "nfe": row["nfe"], "fid": row["fid"],
                          "reached": reached, "s_per_image": statistics.median(times[id(row)]) / batch}
        entry["diffusers_over_ours"] = entry["diffusers"]["s_per_image"] / entry["ddpmkit"]["s_per_image"]
        out["targets"].append(entry)
    return out


def summary(rows: list[dict], ttq: dict | None, alone: dict | None = None) -> list[str]:
    """The targets' lines: our loop's overhead at batch 16 and above, our wall time over diffusers' for
    the same algorithm (as measured, and over each run's network time), the loops alone, and the time
    to quality."""
    ours = [r for r in rows if r["source"] == "ddpmkit"]
    lines = ["\n## Summary\n"]
    big = [r for r in ours if r["batch"] >= 16 and r["in_run_overhead"] is not None]
    if big:
        worst = max(big, key=lambda r: r["in_run_overhead"])
        lines.append(f"- Our loop's overhead (W over the time inside the network in the same run) at batch 16 and "
                     f"above: at most **{worst['in_run_overhead']:.4f}** ({worst['net']}, {worst['variant']}, batch "
                     f"{worst['batch']}, NFE {worst['nfe']}); W / (NFE x F) at most "
                     f"{max(r['overhead'] for r in big):.3f}, the bare forward timed apart.")
    paired = [r for r in ours if "ours_over_diffusers" in r]
    if paired:
        ratios = sorted(r["ours_over_diffusers"] for r in paired)
        lines.append(f"- Our wall time over diffusers' for the same algorithm, network, batch and NFE: median "
                     f"**{statistics.median(ratios):.3f}**, from {ratios[0]:.3f} to {ratios[-1]:.3f} "
                     f"({len(ratios)} pairs).")
        clocked = sorted(r["in_run_ours_over_diffusers"] for r in paired if "in_run_ours_over_diffusers" in r)
        if clocked:
            lines.append(f"- The same, each wall time over its own runs' time inside the network (which takes out "
                         f"the drift between runs): median **{statistics.median(clocked):.4f}**, from "
                         f"{clocked[0]:.4f} to {clocked[-1]:.4f}; at or below 1 in {sum(c <= 1 for c in clocked)} "
                         f"of {len(clocked)} pairs.")
    if alone:
        ratios = sorted(r["ours_over_diffusers"] for r in alone["rows"])
        lines.append(f"- The loops alone (a network that costs nothing), {alone['nfe']} NFE: ours / diffusers "
                     f"median **{statistics.median(ratios):.2f}**, from {ratios[0]:.2f} to {ratios[-1]:.2f} "
                     f"({len(ratios)} rows, table below; made by `{alone['command']}`).")
    if ttq:
        b = ttq["best"]
        lines.append(f"\n## Time to quality (the shipped MNIST model)\n\nMade by `{ttq['command']}` on "
                     f"{ttq['machine']}. The best FID measured on 10k samples "
                     f"(benchmarks/results/few_step_mnist.md) is {b['fid']:.2f} ({b['sampler']}, {b['grid']}, "
                     f"{b['nfe']} NFE). Each side's fewest-NFE row that reaches the target, timed here at batch "
                     f"{ttq['batch']} (seconds per image):\n")
        cells = []
        for e in ttq["targets"]:
            for src in ("ddpmkit", "diffusers"):
                d = e[src]
                cells.append([f"{e['target']} (FID <= {e['fid']:.2f})", src, f"{d['sampler']} ({d['grid']})",
                              d["nfe"] if d["reached"] else f"not by {d['nfe']}", f"{d['fid']:.2f}",
                              f"{d['s_per_image']:.4f}" if d["reached"] else f"> {d['s_per_image']:.4f}",
                              "" if src == "ddpmkit" else ("" if d["reached"] else "> ")
                              + f"{e['diffusers_over_ours']:.1f}x"])
        lines.append(table(["target", "source", "sampler (grid)", "NFE", "FID", "s / image", "diffusers / ours"],
                           cells))
    return lines


def markdown(result: dict) -> str:
    rows = result["rows"]
    made = "".join(f" and `{c}`" for c in result.get("merged", []))
    lines = [f"# Sampling speed against diffusers\n\nMade by `{result['command']}`{made} on {result['machine']}: "
             "randomly initialised networks, the linear schedule (T = 1000), trailing grids; median of "
             f"{result['repeat']} interleaved runs. W: wall time of one batch; overhead: W / (NFE x F), F the "
             "bare forward timed apart; in run: W over the time spent inside the network during the same runs "
             "(hooks on the network), which a slow spell of a shared machine cancels out of; loop: what the "
             "loop spends outside the network, per step; ours / diffusers: our W over diffusers' scheduler "
             "loop's for the same algorithm.\n", *summary(rows, result.get("time_to_quality"), result.get("loop_alone"))]
    alone = result.get("loop_alone")
    if alone:
        lines += [f"\n## The loops alone\n\nA network that hands back one stored tensor, {alone['nfe']} NFE, median of "
                  f"{alone['repeat']} interleaved runs; ms per step (a run's wall time over NFE).\n",
                  table(["shape", "batch", "sampler", "ours (ms)", "diffusers (ms)", "ours / diffusers"],
                        [[r["shape"], r["batch"], r["sampler"], f"{r['ours_ms']:.3f}", f"{r['diffusers_ms']:.3f}",
                          f"{r['ours_over_diffusers']:.2f}"] for r in alone["rows"]])]
    for kind in dict.fromkeys(r["net"] for r in rows):
        mine = [r for r in rows if r["net"] == kind]
        lines.append(f"\n## {kind} ({mine[0]['params'] / 1e6:.1f}M parameters)\n")
        counted = any(r.get("host_syncs") is not None for r in mine)  # on CUDA
        lines.append(table(["batch", "NFE", "F (ms)", "variant", "source", "W (s)", "overhead", "in run",
                            "loop (ms)", "images/s", "ours / diffusers", "in run, ours / diffusers",
                            *(["host syncs"] if counted else [])],
                           [[r["batch"], r["nfe"], f"{r['forward_s'] * 1000:.1f}", r["variant"], r["source"],
                             f"{r['wall_s']:.3f}", f"{r['overhead']:.3f}",
                             f"{r['in_run_overhead']:.4f}" if r.get("in_run_overhead") else "",
                             f"{r['loop_ms_per_step']:.3f}" if r.get("loop_ms_per_step") is not None else "",
                             f"{r['images_per_s']:.1f}",
                             f"{r['ours_over_diffusers']:.3f}" if "ours_over_diffusers" in r else "",
                             f"{r['in_run_ours_over_diffusers']:.4f}" if "in_run_ours_over_diffusers" in r else "",
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
    p.add_argument("--quality", default=None, metavar="FEW_STEP_JSON",
                   help="also time to quality from these FID rows (benchmarks/results/few_step_mnist.json)")
    p.add_argument("--ems", default=None, metavar="MODEL_FILE",
                   help="the copy of the mnist model with DPM-Solver-v3's statistics, for --quality's rows that need it")
    p.add_argument("--loop-alone", default="1,16,64,256", metavar="B,B,...",
                   help="batch sizes of the loops on a network that costs nothing ('' for none)")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows already in --out that this run does not remeasure (same net, batch, NFE)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed"))
    args = p.parse_args(argv)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = dict(BATCHES, **dict(spec.split("=", 1) for spec in args.batches))
    start, rows, kinds = time.perf_counter(), [], [k for k in args.nets.split(",") if k]
    alone_batches = [int(b) for b in args.loop_alone.split(",") if b]
    if not kinds and not args.quality and not alone_batches:
        p.error("--nets, --loop-alone and --quality are all empty: nothing to measure")
    command = ("python benchmarks/speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
    for kind in kinds:
        rows += measure(kind, [int(b) for b in batches[kind].split(",")], [int(n) for n in args.nfe.split(",")],
                        args.repeat, device, precisions=args.precisions.split(","), compile_net=args.compile)
    made = {"command": command, "machine": describe_machine(args.device)}
    sections = {}
    if alone_batches:
        sections["loop_alone"] = {**loop_alone(alone_batches, 20, max(args.repeat, 10), device), **made}
    if args.quality:
        sections["time_to_quality"] = {**time_to_quality(pathlib.Path(args.quality), args.ems, args.repeat), **made}
    saved = pathlib.Path(args.out + ".json")
    if not kinds and saved.exists():  # no networks: the rows already there stay, with what is not remeasured
        result = {**json.loads(saved.read_text()), **sections}
    elif args.merge and saved.exists():  # read now, at the end, so that runs side by side all land
        result = json.loads(saved.read_text())
        done = {(r["net"], r["batch"], r["nfe"]) for r in rows}
        result["rows"] = [r for r in result["rows"] if (r["net"], r["batch"], r["nfe"]) not in done] + rows
        result["merged"] = [*result.get("merged", []), command]
        result.update(sections)
    else:
        result = {**made, "threads": torch.get_num_threads(), "repeat": args.repeat,
                  "seconds": time.perf_counter() - start, "rows": rows, **sections}
    write_result(args.out, result, markdown(result))
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
