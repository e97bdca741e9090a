"""The exact-denoiser benchmark's measurements, and a tiny run of it."""

import pytest
import torch

from ddpmkit import GaussianMixture, NoiseSchedule
from ddpmkit.measure.exact import (best_against_diffusers, distribution_errors, image_mixture, markdown,
                                   mixture_moments, principal_directions, run)


def test_exact_draws_score_as_the_truth():
    means = torch.randn(30, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gm = GaussianMixture(means, 0.1)
    proj = principal_directions(gm, 8)
    mu, cov = mixture_moments(gm, proj)
    big = gm.sample(20000, torch.Generator().manual_seed(2))
    z = big.reshape(len(big), -1) @ proj.T
    torch.testing.assert_close(z.mean(0), mu, atol=0.03, rtol=0)
    # Monte Carlo error of a covariance entry: about sqrt(C_ii C_jj / n); allow 4 of them
    tol = 4 * (torch.outer(cov.diagonal(), cov.diagonal()) / len(z)).sqrt()
    assert torch.all((torch.cov(z.T) - cov).abs() <= tol)
    errs = distribution_errors(big[:2000], gm, proj)
    shrunk = distribution_errors(0.9 * big[:2000], gm, proj)  # 10% under-dispersed about the origin
    assert errs["on_component"] > 0.99 and errs["fd"] < 0.15 and shrunk["fd"] > 3 * errs["fd"]
    assert distribution_errors(big, gm, proj)["fd"] < 0.01  # the estimate's bias shrinks with n
    blurred = gm.means.mean(0, keepdim=True).expand(100, -1, -1, -1)  # the mean image: on no component
    assert distribution_errors(blurred, gm, proj)["on_component"] == 0.0


@pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")  # diffusers' DEIS
def test_tiny_run_has_every_row():
    digits = torch.randn(50, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    gm = image_mixture(digits, 8, 0.2)
    result = run(gm, NoiseSchedule("linear", 1000), nfes=(5, 10), num=8, reference_steps=100, log=lambda *a: None,
                 searched_nfes=(5,), search={"num": 8, "candidates": 12, "decouple_num": 8, "decouple_runs": 6},
                 ems_num=8)
    labels = {r["sampler"] for r in result["rows"]}
    assert {"ddim", "heun", "dpmpp-3m", "unipc-3 bh1", "ipndm", "deis-3", "dpm-solver-v3", "diffusers DDIM",
            "diffusers UniPC", "diffusers DEIS"} <= labels
    grids = {(r["sampler"], r["spacing"], r["nfe"]) for r in result["rows"]}
    # at 5 NFE: our samplers on their searched grids and GITS's, diffusers' on its other grids
    assert {("unipc-3 bh1", "teacher", 5), ("ipndm", "gits", 5), ("dpm-solver-v3", "teacher", 5),
            ("unipc-2 bh2", "decoupled", 5), ("dpmpp-2m", "decoupled", 5),
            ("diffusers DPM++ 3M", "karras", 5),
            ("diffusers DPM++ 2M", "lu", 5), ("diffusers DDIM", "leading", 5)} <= grids
    assert not any(n == 10 and (spacing == "teacher" or label.startswith("diffusers") and spacing == "karras")
                   for label, spacing, n in grids)
    best = {b["nfe"]: b for b in best_against_diffusers(result["rows"])}
    assert best[5]["ratio"] == best[5]["ours"]["rms_error"] / best[5]["diffusers"]["rms_error"]
    assert best[5]["diffusers"]["rms_error"] == min(r["rms_error"] for r in result["rows"] if r["source"] == "diffusers"
                                                   and r["nfe_budget"] == 5 and r["rms_error"] is not None)
    ddim = {(r["sampler"], r["nfe"]): r["rms_error"] for r in result["rows"]
            if ("DDIM" in r["sampler"] or r["sampler"] == "ddim") and r["spacing"] == "trailing"}
    # the same algorithm on the same grid, the same error (diffusers' DDIM steps to t - T // n, which
    # is the next trailing grid point only when n divides T, as 5 and 10 do)
    for n in (5, 10):
        assert ddim[("ddim", n)] == pytest.approx(ddim[("diffusers DDIM", n)], rel=1e-3)
    assert all(r["nfe"] <= r["nfe_budget"] for r in result["rows"])
    report = markdown({**result, "seconds": 1.0, "machine": "this machine", "data": "noise", "reference_steps": 100},
                      "python benchmarks/exact.py")
    assert "8 trajectories from seed 1000000" in report and "dpm-solver-v3's statistics: 8 trajectories" in report
    assert "(`--decouple 6`, LD3's decoupled timesteps) on 6 of 8 teacher trajectories" in report
