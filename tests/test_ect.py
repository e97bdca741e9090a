"""Easy Consistency Tuning (ddpmkit.ect and distill's method ect): the mapping function, the
truncated log-normal against scipy, the shared dropout mask, learning the exact consistency
function of a Gaussian, and runs that resume exactly and log their FID."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ddpmkit.consistency import ConsistencyFunction
from ddpmkit.distill import Distiller, Pair, consistency_loss, pair_states
from ddpmkit.ect import LOWEST, ect_levels, r_from_t, shared_dropout, stage_at, truncated_lognormal
from ddpmkit.models import load_model
from ddpmkit.nets import build_unet
from ddpmkit.oracles import GaussianMixture
from gaussian_student import SCHED, ExactPlusCorrection, one_step_errors


def test_the_mapping_function_shrinks_the_gap_by_q_each_stage():
    t = torch.tensor([0.05, 1.0, 80.0], dtype=torch.float64)
    n = 1 + 8 / (1 + torch.exp(t))  # 1 + k sigmoid(-b t), k = 8, b = 1
    for stage in (0, 1, 2):
        expected = t * (1 - n / 256.0 ** (stage + 1))  # gap t n / q^(stage + 1)
        torch.testing.assert_close(r_from_t(t, stage, 256.0, 8.0, 1.0), expected, rtol=1e-14, atol=0)
    assert r_from_t(t, 0, 2.0, 8.0, 1.0)[0] == 0.0  # 1 - (1 + 8 sigmoid(-0.05)) / 2 < 0: r stops at 0
    assert [stage_at(k, 100) for k in (1, 100, 101, 250)] == [0, 0, 1, 2]
    assert stage_at(10**6, 0) == 0


def test_the_truncated_lognormal_is_scipys():
    from scipy import stats

    low, high, mean, std = 0.02, 157.0, -1.1, 2.0
    x = truncated_lognormal(20000, low, high, mean, std, torch.Generator().manual_seed(0))
    assert x.dtype == torch.float64 and x.min() >= low and x.max() <= high
    a, b = (math.log(low) - mean) / std, (math.log(high) - mean) / std
    oracle = stats.truncnorm(a, b, loc=mean, scale=std)
    assert stats.kstest(x.log().numpy(), oracle.cdf).pvalue > 1e-3
    t, r = ect_levels(5000, 0.01, 157.0, 0, q=2.0, k=8.0, b=1.0, p_mean=mean, p_std=std,
                      g=torch.Generator().manual_seed(1))
    assert t.min() >= LOWEST * 0.01 and (r >= 0.01).all() and (t - r >= 0.01 - 1e-12).all()


def test_the_target_sees_the_students_dropout_mask():
    net = build_unet("tiny", in_channels=1, image_size=8, dropout=0.5).train()
    with torch.no_grad():  # the output convolutions start at zero: give every weight something to pass on
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 300)
    target = shared_dropout(net, seed=7, devices=[])
    with torch.no_grad():
        goal = target(x, t)
        torch.manual_seed(7)
        assert torch.equal(net(x, t), goal)  # the same mask: the same output
        torch.manual_seed(8)
        assert not torch.allclose(net(x, t), goal)  # another mask (dropout 0.5 matters)
        state = torch.random.get_rng_state()
        target(x, t)
        assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left as it was


def test_tuning_from_the_exact_denoiser_learns_the_ode_endpoint():
    """On N(0.3, 0.5^2 I) the probability-flow ODE is affine and known in closed form. The consistency
    function starts as the exact denoiser, whose one-step output collapses to the mean (RMS error
    0.50 from the ODE endpoint). ECT's loss alone (no teacher: the target is the student itself,
    without gradient), the gap halving every 100 steps (q = 2), brings it to the endpoint: measured
    0.055 and 0.021 RMS after 400 steps for two seeds."""
    oracle = GaussianMixture.gaussian(0.3, 0.5, (4,))
    torch.manual_seed(0)
    f = ConsistencyFunction(ExactPlusCorrection(oracle), SCHED, prediction="x0")
    opt = torch.optim.Adam(f.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 401):
        x0 = oracle.sample(256, g).float()
        t, r = ect_levels(256, f.sigma_min, SCHED.sigma_max, stage_at(step, 100), q=2.0, k=8.0, b=1.0,
                          p_mean=-1.1, p_std=2.0, g=g)
        steps = [torch.from_numpy(SCHED.t_at_sigma(s.numpy())) for s in (t, r)]
        pair = Pair(steps[0], t, steps[1], r)
        y_t, y_r = pair_states(x0, torch.randn(x0.shape, generator=g), pair)
        loss = consistency_loss(f, f, y_t, y_r, pair, 1.0 / (t - r), "huber", 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    before, after, _ = one_step_errors(f, oracle, torch.randn(2000, 4, generator=torch.Generator().manual_seed(1)))
    assert before > 0.45
    assert after < 0.1, after


def test_an_ect_run_resumes_exactly_and_logs_its_fid(tmp_path, teacher):
    """RAdam, dropout 0.2 and a stage change at step 3 (q = 2): a run split at step 3 and resumed ends
    bitwise where the straight run ends; every --eval-every steps the log has the FID of 1- and 2-step
    samples, the same in both."""
    opts = {"teacher": str(teacher), "method": "ect", "steps": 4, "batch_size": 8, "checkpoint_every": 2,
            "sample_every": 100, "log_every": 1, "ect_q": 2.0, "ect_double": 2, "optimizer": "radam",
            "dropout": 0.2, "ema_decay": 0.9, "eval_every": 2, "eval_num": 20}
    Distiller(tmp_path / "straight", opts, quiet=True).run()
    Distiller(tmp_path / "split", dict(opts, steps=2), quiet=True).run()
    Distiller(tmp_path / "split", {"steps": 4}, resume=True, quiet=True).run()
    a, b = load_model(tmp_path / "straight"), load_model(tmp_path / "split")
    for (k, v), (_, w) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert torch.equal(v, w), k
    logs = [[json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
            for run in ("straight", "split")]
    assert [r["step"] for r in logs[0]] == [1, 2, 3, 4]
    evals = [[(r["step"], r["fid_1"], r["fid_2"]) for r in log if "fid_1" in r] for log in logs]
    assert [e[0] for e in evals[0]] == [2, 4] and evals[0] == evals[1]
    assert all(np.isfinite(e[1:]).all() and min(e[1:]) > 0 for e in evals[0])
    assert a.config["train"]["method"] == "ect" and all(v.isfinite().all() for v in a.net.state_dict().values())


def test_ect_options_are_checked(tmp_path, teacher):
    for opts, message in ((dict(ect_q=1.0), "ect_q=1.0 must be a finite number > 1"),
                          (dict(optimizer="sgd"), "optimizer='sgd' is not valid; choose one of: adamw, radam"),
                          (dict(init="scratch"), "init='scratch' is for method ct; ect starts from the teacher"),
                          (dict(huber_c=-1.0), "huber_c=-1.0 must be a finite number >= 0"),
                          (dict(eval_num=2), "eval_num=2 must be >= 4")):
        with pytest.raises(ValueError, match=message):
            Distiller(tmp_path / "x", {"teacher": str(teacher), "method": "ect", **opts})
