"""The public ``sample`` call: per-sample seeds, init_noise, callbacks, options and errors."""

import numpy as np
import pytest
import torch

import ddpmkit
from ddpmkit import GaussianMixture, NoiseSchedule, SeededNoise, sample
from ddpmkit.samplers import SAMPLERS, sampler_options

SCHED = NoiseSchedule("linear", 1000)
GM = GaussianMixture(torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(0)), 0.1)
MODEL = GM.model(SCHED, "eps")
SHAPE = (1, 6, 6)
STOCHASTIC = [("ddpm", {"variance": "small"}), ("ddpm", {"variance": "large"}), ("ddim", {"eta": 0.5}), ("ddim", {})]


class TinyNet(torch.nn.Module):
    """A small conv net standing in for a U-Net: batch-size invariance must hold for real layers too."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x, t):
        h = torch.nn.functional.silu(self.conv1(x) + (t.float() / 1000)[:, None, None, None])
        return self.conv2(h)


@pytest.mark.parametrize("sampler,opts", STOCHASTIC)
def test_seed_invariance_across_batch_size_and_position(sampler, opts):
    kw = dict(sampler=sampler, steps=20, **opts)
    full = sample(MODEL, SCHED, shape=(6, *SHAPE), seeds=[10, 11, 12, 13, 14, 15], **kw)
    chunked = sample(MODEL, SCHED, shape=(6, *SHAPE), seeds=[10, 11, 12, 13, 14, 15], batch_size=4, **kw)
    reversed_ = sample(MODEL, SCHED, shape=(6, *SHAPE), seeds=[15, 14, 13, 12, 11, 10], **kw)
    single = sample(MODEL, SCHED, shape=(1, *SHAPE), seeds=[13], **kw)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(reversed_.flip(0), full, rtol=0, atol=1e-6)
    torch.testing.assert_close(single[0], full[3], rtol=0, atol=1e-6)
    assert (full[0] - full[1]).abs().max() > 0.1  # different seeds, different samples


def test_seed_invariance_with_a_conv_net():
    net = TinyNet()
    a = sample(net, SCHED, sampler="ddpm", steps=10, shape=(5, *SHAPE), seeds=range(5))
    b = sample(net, SCHED, sampler="ddpm", steps=10, shape=(2, *SHAPE), seeds=[3, 4])
    c = sample(net, SCHED, sampler="ddpm", steps=10, shape=(5, *SHAPE), seeds=range(5), batch_size=2)
    # conv kernels may round differently for other batch sizes: equal up to float32 rounding
    # (an untrained eps-net makes |x| ~ 1e3, hence the relative tolerance)
    torch.testing.assert_close(b, a[3:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)


def test_init_noise_reproduces_the_seed():
    x_T = SeededNoise([7, 8], SHAPE)()
    by_seed = sample(MODEL, SCHED, sampler="ddpm", steps=15, shape=(2, *SHAPE), seeds=[7, 8])
    by_noise = sample(MODEL, SCHED, sampler="ddpm", steps=15, init_noise=x_T, seeds=[7, 8])
    torch.testing.assert_close(by_noise, by_seed, rtol=0, atol=0)
    # deterministic DDIM is a function of x_T alone
    a = sample(MODEL, SCHED, sampler="ddim", steps=15, init_noise=x_T, seeds=[0, 1])
    b = sample(MODEL, SCHED, sampler="ddim", steps=15, init_noise=x_T, seeds=[5, 6])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_seeded_noise_draws():
    n = SeededNoise([1, 2], (3,))
    first, second = n(), n()
    assert first.shape == (2, 3) and not torch.equal(first, second)
    torch.testing.assert_close(first[1], torch.randn(3, generator=torch.Generator().manual_seed(2)))
    assert SeededNoise([5], (2,), dtype=torch.float64)().dtype == torch.float64
    for bad in ([1.5], [True], [-1], []):
        with pytest.raises(ValueError, match="seed"):
            SeededNoise(bad, (2,))


def test_global_rng_untouched():
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    sample(MODEL, SCHED, sampler="ddpm", steps=5, shape=(2, *SHAPE))
    assert torch.equal(state, torch.get_rng_state())
    assert np.array_equal(np_state, np.random.get_state()[1])


def test_callback_sees_every_step():
    seen = []
    sample(MODEL, SCHED, sampler="ddim", steps=4, shape=(2, *SHAPE), callback=lambda i, t, x, x0: seen.append((i, t, x.shape, x0.shape)))
    assert [(i, t) for i, t, _, _ in seen] == [(0, 999), (1, 749), (2, 499), (3, 249)]
    assert all(s == (2, *SHAPE) and s0 == (2, *SHAPE) for _, _, s, s0 in seen)


def test_explicit_fractional_timesteps():
    calls = []

    def model(x, t):
        calls.append(t)
        return MODEL(x, t)

    x = sample(model, SCHED, sampler="ddim", timesteps=[999, 500.5, 120.25], shape=(2, *SHAPE))
    assert x.shape == (2, *SHAPE)
    assert calls[0].dtype == torch.int64 and calls[1].dtype == torch.float64
    assert calls[1].tolist() == [500.5, 500.5]


def test_options_listed_from_signatures():
    assert sampler_options("ddpm") == {"variance": "small"}
    assert sampler_options("ddim") == {"eta": 0.0}
    assert sampler_options("heun") == {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}
    assert set(SAMPLERS) >= {"ddpm", "ddim", "euler", "heun", "euler-ancestral", "dpmpp-2m", "dpmpp-3m", "dpmpp-2m-sde"}
    assert ddpmkit.get_sampler("ddim") is SAMPLERS["ddim"]


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(sampler="plms"), "unknown sampler 'plms'; valid: ddpm, ddim, euler, heun"),
        (dict(sampler="ddim", variance="large"), "unknown option 'variance' for sampler 'ddim'; valid: eta, clip, clip_range, threshold"),
        (dict(sampler="ddpm", eta=0.5), "unknown option 'eta' for sampler 'ddpm'; valid: variance, clip"),
        (dict(sampler="ddim", eta=1.5), r"eta=1.5 is outside \[0, 1\]"),
        (dict(sampler="ddim", eta=-0.1), r"eta=-0.1 is outside \[0, 1\]"),
        (dict(sampler="ddpm", variance="learned"), "variance='learned' is not valid; choose one of: small, large"),
        (dict(sampler="ddim", steps=0), r"steps=0 is not valid; need an integer in \[1, 1000\]"),
        (dict(sampler="ddim", steps=1001), r"steps=1001 is not valid"),
        (dict(sampler="ddim", spacing="uniform"), "unknown spacing 'uniform'; valid: leading, trailing, linspace, karras, logsnr"),
        (dict(prediction="score"), "unknown prediction type 'score'; valid: eps, x0, v"),
        (dict(seeds=[1, 2]), "got 2 seeds for 3 samples"),
        (dict(steps=5, timesteps=[10, 5]), "only one of steps, nfe and timesteps"),
        (dict(steps=None, nfe=0), "nfe=0 is not valid"),
        (dict(threshold=1.5), "threshold=1.5 is not a quantile"),
        (dict(batch_size=0), "batch_size=0"),
    ],
)
def test_errors_name_the_bad_value_and_the_valid_ones(kw, message):
    args = dict(sampler="ddim", steps=10, shape=(3, *SHAPE))
    args.update(kw)
    with pytest.raises(ValueError, match=message):
        sample(MODEL, SCHED, **args)


def test_shape_errors_and_zero_snr_with_eps():
    with pytest.raises(ValueError, match="shape"):
        sample(MODEL, SCHED, sampler="ddim", steps=5)
    with pytest.raises(ValueError, match="disagrees"):
        sample(MODEL, SCHED, sampler="ddim", steps=5, shape=(2, 1, 6, 6), init_noise=torch.zeros(3, 1, 6, 6))
    zsnr = NoiseSchedule("linear", 1000, zero_terminal_snr=True)
    with pytest.raises(ValueError, match="prediction 'eps' cannot start at abar = 0"):
        sample(MODEL, zsnr, sampler="ddim", steps=5, shape=(2, *SHAPE))
    # v prediction is well defined there (Lin et al. 2023)
    x = sample(GM.model(zsnr, "v"), zsnr, sampler="ddim", steps=5, shape=(2, *SHAPE), prediction="v")
    assert torch.isfinite(x).all()
    with pytest.raises(ValueError, match="model output has shape"):
        sample(lambda x, t: x[:, :, :2], SCHED, sampler="ddim", steps=5, shape=(2, *SHAPE))


def test_dtype_and_device_kept():
    x = sample(MODEL, SCHED, sampler="ddpm", steps=3, shape=(2, *SHAPE), dtype=torch.float64)
    assert x.dtype == torch.float64 and x.device.type == "cpu" and x.shape == (2, *SHAPE)
    assert sample(TinyNet(), SCHED, sampler="ddim", steps=3, shape=(2, *SHAPE)).dtype == torch.float32


def test_the_recommended_plan_is_fast_and_good():
    """What sample, eval and bench run when no sampler is named: the shipped mnist model's best
    20-NFE sampler (dpmpp-2m-sde on logSNR, FID 12.94 on 10k samples), cm for a consistency model."""
    from ddpmkit.models import load_model

    assert load_model("mnist").recommended() == {"sampler": "dpmpp-2m-sde", "steps": 20, "spacing": "logsnr"}
    assert load_model("mnist-cm").recommended() == {"sampler": "cm"}


def test_bf16_and_fp16_run_the_network_alone_under_autocast():
    """precision: the network runs under autocast to that type, its output comes back in the solver's
    type, and the samples stay close to fp32's (the shipped MNIST U-Net, DDIM, 10 steps, 8 seeds:
    RMS 0.022 for bf16, whose mantissa has 8 bits, and 0.0017 for fp16, measured); fp32 is the
    default run, bit for bit."""
    mnist = ddpmkit.load_model("mnist")
    seen = []

    class Spy(torch.nn.Module):  # what the network saw: autocast's type, or None
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, t):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return self.net(x, t)

    plain = mnist.sample(mnist.plan(sampler="ddim", steps=10), seeds=range(8))
    for precision, dtype, tol in (("fp32", None, 0.0), ("bf16", torch.bfloat16, 0.05), ("fp16", torch.float16, 5e-3)):
        seen.clear()
        plan = mnist.plan(sampler="ddim", steps=10, precision=precision)
        x = sample(Spy(mnist.net), mnist.schedule, plan, shape=(8, *mnist.shape), seeds=range(8))
        assert x.dtype == torch.float32 and set(seen) == {dtype} and len(seen) == 10
        rms = ((x - plain) ** 2).mean().sqrt().item()
        assert rms <= tol and (precision == "fp32" or rms > 0), (precision, rms)
    assert "precision" in mnist.plan(sampler="ddim", steps=10, precision="bf16").key()["options"]
    with pytest.raises(ValueError, match="unknown precision 'fp8'; valid: fp32, bf16, fp16"):
        mnist.plan(sampler="ddim", precision="fp8")


def test_compile_puts_the_network_under_torch_compile(monkeypatch, tmp_path):
    """--compile MODE hands the loaded network to torch.compile with that mode (here a stand-in that
    records the call; the real compile runs in the slow test below)."""
    from ddpmkit.cli import main

    calls = []

    def fake_compile(net, mode=None):
        calls.append((type(net).__name__, mode))
        return net

    monkeypatch.setattr(torch, "compile", fake_compile)
    args = ["sample", "--model", "mnist", "--sampler", "ddim", "--steps", "2", "--num", "2", "--quiet"]
    assert main([*args, "--compile", "--out", str(tmp_path / "a.npz")]) == 0
    assert main([*args, "--compile", "reduce-overhead", "--out", str(tmp_path / "b.npz")]) == 0
    assert main([*args, "--out", str(tmp_path / "c.npz")]) == 0
    assert calls == [("UNet", "default"), ("UNet", "reduce-overhead")]
    with pytest.raises(ValueError, match="unknown compile mode 'fast'; valid: default, reduce-overhead, max-autotune"):
        ddpmkit.load_model("mnist").compiled("fast")


@pytest.mark.slow
def test_a_compiled_network_samples_what_the_plain_one_does():
    """torch.compile (inductor, on the CPU) of the shipped MNIST U-Net: the same samples up to float
    rounding (compiling takes minutes on two cores)."""
    mnist = ddpmkit.load_model("mnist")
    plan = mnist.plan(sampler="dpmpp-2m", steps=4)
    plain = mnist.sample(plan, seeds=range(4))
    compiled = mnist.compiled().sample(plan, seeds=range(4))
    torch.testing.assert_close(compiled, plain, rtol=0, atol=1e-4)


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "dpm-solver-v3"])  # v3 needs a model's statistics
def test_memory_is_flat_in_nfe(sampler):
    """No sampler keeps its trajectory: the states the network was given that are still alive at any
    call (weak references) are as many at 24 steps as at 12, a few at most (a multistep solver's history)."""
    import weakref

    class Watcher(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.refs, self.most = [], 0

        def forward(self, x, t):
            self.refs.append(weakref.ref(x))
            self.most = max(self.most, sum(r() is not None for r in self.refs))
            return MODEL(x, t)

    most = {}
    for steps in (12, 24):
        net = Watcher()
        sample(net, SCHED, sampler=sampler, steps=steps, shape=(2, *SHAPE), micro_batch=None)
        assert len(net.refs) >= steps
        most[steps] = net.most
    assert most[24] == most[12] <= 4, most
