"""The demo: sample the exact denoiser of the digits data set with several samplers.

The data distribution is the empirical one of scikit-learn's 1797 8x8 digits, whose ideal
denoiser E[x0 | x_t] is known in closed form (``GaussianMixture`` with std 0). A perfect sampler
therefore returns training digits exactly; how far a sampler's outputs land from the nearest
training digit measures its own error, with no network in the way.
"""

from __future__ import annotations

import time

import torch

from .data import load_digits
from .images import labelled_grid, save_image
from .oracles import GaussianMixture
from .sampling import sample
from .schedule import NoiseSchedule

# (label, sampler, steps, options, spacing): the DDIM paper's comparison in miniature, and two fast
# samplers at 10 network evaluations
ROWS = [
    ("ddpm 1000 large", "ddpm", 1000, {"variance": "large"}, "trailing"),
    ("ddpm 1000 small", "ddpm", 1000, {"variance": "small"}, "trailing"),
    ("ddpm 50 small", "ddpm", 50, {"variance": "small"}, "trailing"),
    ("ddim 100", "ddim", 100, {"eta": 0.0}, "trailing"),
    ("ddim 50", "ddim", 50, {"eta": 0.0}, "trailing"),
    ("ddim 20", "ddim", 20, {"eta": 0.0}, "trailing"),
    ("ddim 10", "ddim", 10, {"eta": 0.0}, "trailing"),
    ("ddim 10 eta=1", "ddim", 10, {"eta": 1.0}, "trailing"),
    ("dpmpp-2m 10 logsnr", "dpmpp-2m", 10, {}, "logsnr"),
    ("unipc 10 logsnr", "unipc", 10, {}, "logsnr"),
]
ON_DATA_RMS = 0.05  # below half a grey level (2/16): the sample is a training digit


def nearest_digit(x: torch.Tensor, images: torch.Tensor):
    """RMS distance of each sample to its nearest training image, and that image's index."""
    d = torch.cdist(x.reshape(len(x), -1).double(), images.reshape(len(images), -1).double())
    dist, idx = d.min(1)
    return dist / x[0].numel() ** 0.5, idx


def run_demo(out_png: str, num: int = 200, show: int = 12, quiet: bool = False) -> list[dict]:
    images, labels = load_digits()
    sched = NoiseSchedule("linear", 1000)
    model = GaussianMixture(images.double(), std=0.0).model(sched, "eps")
    rows, results = [], []
    for label, name, steps, opts, spacing in ROWS:
        calls = []
        counted = lambda x, t: calls.append(1) or model(x, t)  # noqa: E731
        start = time.perf_counter()
        x = sample(counted, sched, sampler=name, steps=steps, spacing=spacing, shape=(num, 1, 8, 8),
                   seeds=range(num), **opts)
        seconds = time.perf_counter() - start
        dist, idx = nearest_digit(x, images)
        results.append({
            "sampler": label, "nfe": len(calls), "seconds": seconds,
            "rms_to_nearest_digit": dist.mean().item(),
            "on_data": (dist < ON_DATA_RMS).double().mean().item(),
            "classes": len(set(labels[idx].tolist())),
        })
        rows.append(x[:show])
        if not quiet:
            r = results[-1]
            print(f"  {label:<20} {r['nfe']:>4} NFE  {seconds:6.2f} s", flush=True)
    save_image(labelled_grid(rows, [r[0] for r in ROWS]), out_png)
    return results


def markdown_table(results: list[dict], num: int) -> str:
    lines = [
        f"| sampler | NFE | wall time (s, {num} samples) | RMS to nearest digit | on a digit | classes |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['sampler']} | {r['nfe']} | {r['seconds']:.2f} | {r['rms_to_nearest_digit']:.3f} | "
            f"{100 * r['on_data']:.0f}% | {r['classes']} |"
        )
    return "\n".join(lines)
