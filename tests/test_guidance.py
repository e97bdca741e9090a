"""Classifier-free guidance in the Denoiser, so in every sampler: its identities on an exact
class-conditional model (classes are the components of a Gaussian mixture; the null label is the
mixture), the guidance interval and rescale, seeds and labels, and the errors."""

import math

import pytest
import torch

from ddpmkit import GaussianMixture, NoiseSchedule, make_plan, sample
from ddpmkit.guidance import check_guidance, combine, in_interval
from ddpmkit.prediction import Denoiser
from ddpmkit.samplers import SAMPLERS
from ddpmkit.vp import sigma_from_abar

from conftest import model_extras

SCHED = NoiseSchedule("cosine", 1000)
K, SHAPE = 3, (2, 3, 3)
MEANS = torch.randn(K, *SHAPE, generator=torch.Generator().manual_seed(0))
MIX = GaussianMixture(MEANS, 0.2)
PARTS = [GaussianMixture(MEANS[k : k + 1], 0.2) for k in range(K)]


class Conditional:
    """The exact class-conditional model: label k is component k alone, the null label K the mixture.
    Records the batch size of every call."""

    null_label = K

    def __init__(self, prediction="v"):
        self.models = [p.model(SCHED, prediction) for p in PARTS] + [MIX.model(SCHED, prediction)]
        self.batches = []

    def __call__(self, x, t, y):
        self.batches.append(len(x))
        out = torch.empty_like(x)
        for k in y.unique().tolist():
            rows = y == k
            out[rows] = self.models[k](x[rows], t[rows]).to(x.dtype)
        return out


class Guided:
    """The guided model written out: uncond + W (cond - uncond), for fixed labels, as an
    unconditional network (two separate calls, no batching)."""

    def __init__(self, w, labels, prediction="v"):
        self.net, self.w, self.labels = Conditional(prediction), w, labels

    def __call__(self, x, t):
        y = self.labels.repeat_interleave(len(x) // len(self.labels))
        cond, uncond = self.net(x, t, y), self.net(x, t, torch.full_like(y, K))
        return uncond + self.w * (cond - uncond)


def run(model, sampler, classes=None, seeds=range(6), steps=6, **options):
    seeds = list(seeds)
    plan = make_plan(SCHED, sampler, steps=steps, prediction="v", classes=classes, **options)
    return sample(model, SCHED, plan, shape=(len(seeds), *SHAPE), seeds=seeds, prediction="v", dtype=torch.float64,
                  return_info=True)


@pytest.mark.parametrize("name", [s for s in SAMPLERS if s != "cm"])
def test_every_sampler_samples_the_guided_model(name):
    # classes 0, 1, 2 by seed: seeds 0..5 get 0, 1, 2, 0, 1, 2
    net = Conditional()
    extras = model_extras(name, SCHED, SHAPE)
    guided, info = run(net, name, classes=[0, 1, 2], guidance=2.5, **extras)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    reference, ref_info = run(Guided(2.5, labels), name, **extras)
    torch.testing.assert_close(guided, reference, rtol=1e-10, atol=1e-10)
    assert info["nfe"] == ref_info["nfe"] and info["evaluations"] == 2 * info["nfe"]
    assert set(net.batches) == {12}  # both halves in one call of twice the batch


@pytest.mark.parametrize("name", ["ddim", "dpmpp-2m", "ddpm", "heun"])
def test_w1_is_the_conditional_model_and_w0_the_unconditional_one(name):
    one, info = run(Conditional(), name, classes=[1], guidance=1.0)
    alone, _ = run(PARTS[1].model(SCHED, "v"), name)  # component 1's exact model, unconditional
    torch.testing.assert_close(one, alone, rtol=1e-12, atol=1e-12)
    assert info["evaluations"] == info["nfe"]
    zero, info = run(Conditional(), name, classes=[1], guidance=0.0)
    mixture, _ = run(MIX.model(SCHED, "v"), name)
    torch.testing.assert_close(zero, mixture, rtol=1e-12, atol=1e-12)
    assert info["evaluations"] == info["nfe"]  # the unconditional half alone


@pytest.mark.parametrize("t", [50, 500, 950])
def test_guiding_eps_x0_or_v_predictions_is_one_guidance(t):
    # the combination's weights sum to one, and each parameterisation is affine in the others at
    # fixed x_t: the same exact model guided in eps, x0 or v gives one (eps_hat, x0_hat)
    x = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = {}
    for prediction in ("eps", "x0", "v"):
        den = Denoiser(Conditional(prediction), SCHED, prediction, guidance=3.0)
        den.labels = torch.tensor([0, 1, 2, 0, 1, 2])
        out[prediction] = den(x, t)
    for prediction in ("x0", "v"):
        torch.testing.assert_close(out[prediction], out["eps"], rtol=1e-9, atol=1e-9)


def test_the_interval_guides_only_between_its_noise_levels():
    lo, hi = 0.5, 5.0
    net = Conditional()
    x, info = run(net, "ddim", classes=[0, 1, 2], guidance=3.0, guidance_interval=(lo, hi), steps=10)
    sigmas = [sigma_from_abar(SCHED.abar_at(t)) for t in info["grid"]]
    guided = [lo < s <= hi for s in sigmas]
    assert 0 < sum(guided) < len(guided)
    assert info["evaluations"] == info["nfe"] + sum(guided)
    assert net.batches == [12 if g else 6 for g in guided]

    class Piecewise(Guided):  # guided inside the interval, conditional outside it
        def __call__(self, x, t):
            s = sigma_from_abar(SCHED.abar_at(float(t[0])))
            if in_interval(s, (lo, hi)):
                return super().__call__(x, t)
            return self.net(x, t, self.labels.repeat_interleave(len(x) // len(self.labels)))

    reference, _ = run(Piecewise(3.0, torch.tensor([0, 1, 2, 0, 1, 2])), "ddim", steps=10)
    torch.testing.assert_close(x, reference, rtol=1e-10, atol=1e-10)


def test_rescale_brings_the_std_back_to_the_conditional_ones():
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(4, 3, 5, 5, generator=g), 0.3 * torch.randn(4, 3, 5, 5, generator=g)
    plain = combine(cond, uncond, 7.0)
    torch.testing.assert_close(plain, uncond + 7.0 * (cond - uncond))
    full = combine(cond, uncond, 7.0, rescale=1.0)
    torch.testing.assert_close(full.flatten(1).std(1), cond.flatten(1).std(1))
    half = combine(cond, uncond, 7.0, rescale=0.5)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * plain)


def test_labels_follow_the_seed_in_any_batch():
    kw = dict(classes=[2, 0, 1], guidance=2.0)
    full, _ = run(Conditional(), "dpmpp-2m-sde", seeds=range(7), **kw)
    plan = make_plan(SCHED, "dpmpp-2m-sde", steps=6, prediction="v", **kw)
    parts = sample(Conditional(), SCHED, plan, shape=(7, *SHAPE), seeds=range(7), prediction="v",
                   dtype=torch.float64, batch_size=3)
    one = sample(Conditional(), SCHED, plan, shape=(1, *SHAPE), seeds=[5], prediction="v", dtype=torch.float64)
    torch.testing.assert_close(parts, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one[0], full[5], rtol=1e-12, atol=1e-12)
    assert plan.labels([5, 6, 0]) == [1, 2, 2]


def test_bad_guidance_is_refused_by_name():
    with pytest.raises(ValueError, match="guidance=-1 is not valid; need a finite number >= 0"):
        check_guidance(-1)
    with pytest.raises(ValueError, match=r"guidance_interval=\(5, 1\) is not valid; need 0 <= lo < hi"):
        check_guidance(2.0, (5, 1))
    with pytest.raises(ValueError, match="guidance_rescale=2 is not valid; need a number in \\[0, 1\\]"):
        check_guidance(2.0, None, 2)
    with pytest.raises(ValueError, match="guidance=3 needs class labels to guide towards"):
        make_plan(SCHED, "ddim", steps=4, prediction="v", guidance=3.0)
    den = Denoiser(lambda x, t, y: x, SCHED, "v", guidance=2.0)
    den.labels = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="needs a network trained with a null label"):
        den(torch.zeros(1, *SHAPE), 500)
    assert not math.isnan(check_guidance(1)[0])


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """A tiny class-conditional digits model, three steps into training (its samples are noise; the
    plumbing is what is tested)."""
    from ddpmkit.train import train

    out = tmp_path_factory.mktemp("cond") / "run"
    train(out, {"dataset": "digits", "net": "tiny", "steps": 3, "batch_size": 16, "conditional": True}, quiet=True)
    return out


def test_cli_samples_a_conditional_model_by_class_with_guidance(conditional_run, tmp_path, cli_error):
    import numpy as np
    from PIL import Image

    from ddpmkit.cli import main

    grid = tmp_path / "grid.png"
    assert main(["sample", "--model", str(conditional_run), "--class", "all", "--guidance", "3", "--steps", "2",
                 "--num", "20", "--out", str(grid), "--quiet"]) in (0, None)
    tile = 32 + 2  # 8x8 digits at scale 4, and the padding
    assert Image.open(grid).size[1] == 10 * tile + 2  # one row per class
    assert main(["sample", "--model", str(conditional_run), "--class", "3,5", "--guidance", "2", "--guidance-interval",
                 "0.5,10", "--sampler", "unipc", "--steps", "3", "--num", "4", "--out", str(tmp_path / "x.npz"),
                 "--quiet"]) in (0, None)
    with np.load(tmp_path / "x.npz") as data:
        assert data["labels"].tolist() == [3, 5, 3, 5] and data["seeds"].tolist() == [0, 1, 2, 3]
    err = cli_error("sample", "--model", "mnist", "--guidance", "2", "--out", tmp_path / "y.png")
    assert "guidance=2 needs class labels to guide towards: a class-conditional model" in err
    err = cli_error("sample", "--model", conditional_run, "--guidance-interval", "5", "--out", tmp_path / "y.png")
    assert "'5' is not two noise levels LO,HI" in err
    assert not (tmp_path / "y.png").exists()


def test_eval_and_bench_report_the_class_accuracy(conditional_run, tmp_path):
    import json

    from ddpmkit.cli import main

    out = tmp_path / "e.json"
    assert main(["eval", "--model", str(conditional_run), "--sampler", "ddim", "--steps", "2", "--num", "20",
                 "--guidance", "2", "--out", str(out), "--cache", str(tmp_path / "c"), "--quiet"]) in (0, None)
    report = json.loads(out.read_text())
    acc = report["class_accuracy"]
    assert len(acc["per_class"]) == 10 and all(a is not None for a in acc["per_class"])  # seeds 0..19: each class twice
    assert acc["accuracy"] == pytest.approx(sum(acc["per_class"]) / 10)
    assert report["options"]["guidance"] == 2.0
    # bench's rows and table (the command adds figures, among them DDPM's 1000-step trajectory)
    from ddpmkit.measure import bench, load_reference
    from ddpmkit.models import load_model

    model, ref = load_model(conditional_run), load_reference("digits")
    specs = bench.split_specs("ddim:guidance=2,ddim:guidance=2,guidance_interval=0.5/20")
    rows = bench.run(model, ref, bench.plan_rows(model, specs, [2]), num=20, seed=0, cache_dir=tmp_path / "c",
                     log=lambda *a: None)
    assert [r["sampler"] for r in rows] == ["ddim:guidance=2", "ddim:guidance=2,guidance_interval=0.5/20"]
    # the eval's plan again: the same cached samples, the same scores
    assert (rows[0]["accuracy"], rows[0]["fid"]) == (acc["accuracy"], report["fid"])
    assert 0 <= rows[1]["accuracy"] <= 1
    assert "class acc." in bench.markdown(rows, {"n": 20, "fid": 1, "is": 1, "kid": 0, "precision": 1, "recall": 1})
