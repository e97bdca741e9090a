"""Consistency models: the boundary condition, distillation against an exact teacher, the cm
sampler, and resumable distillation runs."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from ddpmkit.consistency import ConsistencyFunction, abar_tensor, c_skip
from ddpmkit.distill import (Distiller, Pair, with_x0_head, consistency_loss, ict_index_probs, ict_num_scales, karras_timesteps,
                             pair_states, teacher_step)
from ddpmkit.models import load_model
from ddpmkit.nets import build_unet
from ddpmkit.oracles import GaussianMixture
from ddpmkit.sampling import sample
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.vp import x_from_y
from gaussian_student import ExactPlusCorrection, one_step_errors

SCHED = NoiseSchedule("linear", 1000)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_boundary_condition_is_exact(prediction):
    """f(x, t_min) = y = x_t / sqrt(abar_{t_min}) to the last bit, whatever the weights."""
    torch.manual_seed(0)
    net = build_unet("tiny", in_channels=1, image_size=8)
    for p in net.parameters():  # non-trivial weights everywhere (the U-Net zero-initialises some)
        nn.init.normal_(p, std=0.2)
    f = ConsistencyFunction(net, SCHED, prediction=prediction)
    x = torch.randn(5, 1, 8, 8) * 3
    out = f(x, torch.zeros(5, dtype=torch.int64))
    expected = (x.double() / math.sqrt(SCHED.abar_at(0))).float()
    assert torch.equal(out, expected)
    assert not torch.equal(f(x, torch.full((5,), 1, dtype=torch.int64)), (x.double() / math.sqrt(SCHED.abar_at(1))).float())


def test_x0_head_starts_as_the_teacher_plus_a_zero_head():
    torch.manual_seed(0)
    net = build_unet("tiny", in_channels=1, image_size=8)
    for p in net.parameters():
        nn.init.normal_(p, std=0.2)
    wide = with_x0_head(net)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 500, 999])
    out = wide(x, t)
    assert out.shape == (3, 2, 8, 8)
    torch.testing.assert_close(out[:, :1], net(x, t), rtol=1e-5, atol=1e-5)
    assert torch.equal(out[:, 1:], torch.zeros_like(out[:, 1:]))
    f = ConsistencyFunction(wide, SCHED, x0_head=True)
    g = ConsistencyFunction(net, SCHED)
    abar = abar_tensor(SCHED, t)
    sigma = ((1 - abar) / abar).sqrt().view(-1, 1, 1, 1)
    y = x.double() / abar.sqrt().view(-1, 1, 1, 1)
    cs = c_skip(sigma, f.sigma_min, 0.5)
    d_eps = (g(x, t).double() - cs * y) / (1 - cs)
    w = 0.25 / (sigma**2 + 0.25)
    torch.testing.assert_close(f(x, t).double(), cs * y + (1 - cs) * w * d_eps, rtol=1e-4, atol=1e-4)
    assert torch.equal(f(x, torch.zeros(3, dtype=torch.int64)), (x.double() / math.sqrt(SCHED.abar_at(0))).float())


def test_c_skip_limits():
    sigma = torch.tensor([0.01, 0.5, 80.0], dtype=torch.float64)
    cs = c_skip(sigma, 0.01, 0.5)
    assert cs[0] == 1.0 and abs(cs[1] - 0.25 / (0.49**2 + 0.25)) < 1e-15 and cs[2] < 1e-4


def test_distillation_of_an_exact_teacher_learns_the_ode_endpoint():
    """On N(0.3, 0.5^2 I) the probability-flow ODE is affine and known in closed form. The student
    starts as the teacher's denoiser, whose one-step output collapses to the mean (RMS error ~ 0.5
    from the ODE endpoint); 300 steps of Algorithm 2 with the exact teacher's Heun step make the
    one-step map land on the endpoint."""
    torch.manual_seed(0)
    oracle = GaussianMixture.gaussian(0.3, 0.5, (4,))
    student = ConsistencyFunction(ExactPlusCorrection(oracle), SCHED, prediction="x0")
    target = copy.deepcopy(student).requires_grad_(False)
    ts = torch.as_tensor(karras_timesteps(SCHED, 18), dtype=torch.float64)
    abar = abar_tensor(SCHED, ts)
    sig = ((1 - abar) / abar).sqrt()

    def teacher_x0(y, t, sigma):
        return oracle.denoise(x_from_y(y, sigma).float().double(), 1.0 / (1 + sigma**2))

    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        x0 = oracle.sample(256, g).float()
        n = torch.randint(0, len(ts) - 1, (256,), generator=g)
        z = torch.randn(x0.shape, generator=g)
        pair = Pair(ts[n + 1], sig[n + 1], ts[n], sig[n])
        y_hi, y_lo = pair_states(x0, z, pair, teacher_x0, "heun")
        loss = consistency_loss(student, target, y_hi, y_lo, pair, torch.ones(256), "l2")
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(target.parameters()), list(student.parameters()), 0.05)

    before, after, one_step = one_step_errors(student, oracle, torch.randn(2000, 4, generator=g))
    assert before > 0.45
    assert after < 0.04, after
    assert abs(one_step.std() - 0.5) < 0.03


def test_teacher_step_is_exact_on_a_gaussian():
    """Heun's step is second order: on the Gaussian's affine ODE, halving the step cuts the error ~4x."""
    oracle = GaussianMixture.gaussian(0.3, 0.5, (3,))
    y = torch.randn(100, 3, dtype=torch.float64) * 5 + 0.3

    def d(y, t, sigma):
        return 0.3 + 0.25 / (0.25 + sigma.view(-1, 1) ** 2) * (y - 0.3)

    def err(s_hi, s_lo, solver):
        pair = Pair(None, torch.full((100,), s_hi, dtype=torch.float64), None, torch.full((100,), s_lo, dtype=torch.float64))
        exact = 0.3 + (y - 0.3) * math.sqrt((0.25 + s_lo**2) / (0.25 + s_hi**2))
        return (teacher_step(d, y, pair, solver) - exact).abs().max().item()

    assert oracle.std == 0.5
    for solver, ratio in (("heun", 8.0), ("ddim", 4.0)):  # local errors O(h^3) and O(h^2)
        assert err(2.0, 1.6, solver) / err(2.0, 1.8, solver) == pytest.approx(ratio, rel=0.25)


def test_teacher_step_is_the_heun_samplers_step():
    """Distillation's teacher and the heun sampler take one Heun step (``samplers.edm.heun_step``):
    from the same state on the same pair of noise levels they land on the same point."""
    from ddpmkit.prediction import Denoiser
    from ddpmkit.samplers import SAMPLERS
    from ddpmkit.vp import abar_from_sigma, sigma_from_abar, x0_from_output, y_from_x

    g = torch.Generator().manual_seed(4)
    model = GaussianMixture(torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64), 0.3).model(SCHED, "v")
    grid, x_T = [700.0, 400.5], torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    seen = []
    SAMPLERS["heun"](Denoiser(model, SCHED, "v"), x_T, grid, noise=None, callback=lambda i, t, x, x0: seen.append(x))
    t_hi, s_hi, t_lo, s_lo = (torch.full((2,), v, dtype=torch.float64)
                              for v in (grid[0], sigma_from_abar(SCHED.abar_at(grid[0])),
                                        grid[1], sigma_from_abar(SCHED.abar_at(grid[1]))))

    def teacher_x0(y, t, sigma):
        x_t = x_from_y(y, sigma)
        return x0_from_output(model(x_t, t), x_t, abar_from_sigma(sigma), "v")

    y_lo = teacher_step(teacher_x0, y_from_x(x_T, s_hi), Pair(t_hi, s_hi, t_lo, s_lo), "heun")
    torch.testing.assert_close(x_from_y(y_lo, s_lo), seen[1], rtol=1e-10, atol=1e-10)


def test_ict_curriculum_and_noise_distribution():
    assert ict_num_scales(0, 1000, 10, 1280) == 11
    assert ict_num_scales(999, 1000, 10, 1280) == 1281
    ks = [ict_num_scales(k, 800, 10, 80) for k in range(800)]
    assert sorted(set(ks)) == [11, 21, 41, 81] and ks == sorted(ks)
    sig = (abar := abar_tensor(SCHED, torch.as_tensor(karras_timesteps(SCHED, 41)))).neg().add(1).div(abar).sqrt()
    p = ict_index_probs(sig.numpy())
    assert p.shape == (40,) and abs(p.sum() - 1) < 1e-12 and (p >= 0).all()
    peak = sig[int(p.argmax())].item()
    assert 0.05 < peak < 1.0  # log-normal with mean -1.1 puts its mass near sigma ~ 0.33


def test_cm_sampler_one_step_is_the_consistency_function():
    oracle = GaussianMixture.gaussian(0.3, 0.5, (2,))
    model = oracle.model(SCHED, "x0")
    x1 = sample(model, SCHED, sampler="cm", steps=1, prediction="x0", shape=(5, 2), seeds=range(5))
    x_T = sample(model, SCHED, sampler="cm", timesteps=[999], prediction="x0", shape=(5, 2), seeds=range(5),
                 callback=None)
    assert torch.equal(x1, x_T)
    from ddpmkit.rng import SeededNoise

    z = SeededNoise(range(5), (2,))()
    assert torch.allclose(x1, oracle.denoise(z.double(), SCHED.abar_at(999)).float(), atol=1e-6)


def test_cm_multistep_renoises_to_each_grid_point():
    """Algorithm 1: after f at t_1, the next network input is sqrt(abar) (x0 + sqrt(s^2 - s_min^2) z)."""
    seen = []
    oracle = GaussianMixture.gaussian(0.0, 1.0, (3,))
    exact = oracle.model(SCHED, "x0")

    def model(x, t):
        seen.append((float(t[0]), x.clone()))
        return exact(x, t)

    x0s = []
    sample(model, SCHED, sampler="cm", timesteps=[999, 400], prediction="x0", shape=(4000, 3), seeds=range(4000),
           callback=lambda i, t, x, x0: x0s.append(x0))
    t, x = seen[1]
    abar = SCHED.abar_at(400)
    assert t == 400.0
    added = x.double() / math.sqrt(abar) - x0s[0].double()  # sqrt(sigma^2 - sigma_min^2) z
    expected = (1 / abar - 1) - (1 / SCHED.abar_at(0) - 1)
    assert added.var().item() == pytest.approx(expected, rel=0.05)
    assert abs(added.mean().item()) < 0.05 * math.sqrt(expected)


@pytest.mark.parametrize("method", ["cd", "ct"])
def test_distillation_resumes_exactly(tmp_path, teacher, method):
    opts = {"teacher": str(teacher), "method": method, "steps": 6, "batch_size": 8, "checkpoint_every": 3,
            "sample_every": 100, "log_every": 1, "ct_s1": 40, "ct_total": 6}
    Distiller(tmp_path / "straight", opts, quiet=True).run()
    Distiller(tmp_path / "split", dict(opts, steps=3), quiet=True).run()
    Distiller(tmp_path / "split", {"steps": 6}, resume=True, quiet=True).run()
    a = load_model(tmp_path / "straight")
    b = load_model(tmp_path / "split")
    for (k, v), (_, w) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert torch.equal(v, w), k
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert a.config["net"]["arch"] == "consistency" and a.prediction == "x0"
    x = sample(a.net, a.schedule, sampler="cm", steps=2, prediction=a.prediction, shape=(3, *a.shape), seeds=[0, 1, 2])
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


def test_distill_rejects_bad_options(tmp_path, teacher):
    with pytest.raises(ValueError, match="method='x' is not valid"):
        Distiller(tmp_path / "a", {"teacher": str(teacher), "method": "x"})
    with pytest.raises(ValueError, match="unknown training option 'eta'"):
        Distiller(tmp_path / "b", {"teacher": str(teacher), "eta": 1})
    with pytest.raises(ValueError, match="init='scratch' is for method ct"):
        Distiller(tmp_path / "c", {"teacher": str(teacher), "init": "scratch"})


@pytest.mark.parametrize("schedule", [SCHED, NoiseSchedule("cosine", 1000, zero_terminal_snr=True)])
def test_abar_tensor_equals_the_schedules_interpolation(schedule):
    t = torch.cat([torch.tensor([0.0, 1.0, 998.5, 999.0]), torch.rand(200, generator=torch.Generator().manual_seed(0)) * 999])
    expected = torch.from_numpy(schedule.abar_at(t.numpy()))
    torch.testing.assert_close(abar_tensor(schedule, t), expected, rtol=1e-13, atol=0)
    whole = torch.arange(1000.0)
    assert torch.equal(abar_tensor(schedule, whole), torch.tensor(np.array(schedule.alphas_cumprod)))  # the table


def test_distillation_warm_starts_from_a_consistency_model(tmp_path, teacher):
    first = Distiller(tmp_path / "a", {"teacher": str(teacher), "steps": 2, "batch_size": 4, "sample_every": 100},
                      quiet=True).run()
    d = Distiller(tmp_path / "b", {"teacher": str(teacher), "steps": 1, "batch_size": 4, "init_from": str(first)},
                  quiet=True)
    source = load_model(first).net.state_dict()
    for module in (d.net, d.ema, d.target):
        for k, v in module.state_dict().items():
            assert torch.equal(v, source[k]), k
