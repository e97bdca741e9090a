"""End to end, as a new user runs it: train briefly on digits, then sample with each sampler."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from ddpmkit.checkpoint import read_config


def ddpmkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ddpmkit", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits"
    r = ddpmkit("train", "--dataset", "digits", "--steps", 30, "--out", out, "--net", "tiny", "--batch-size", 32,
                "--sample-every", 30, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_train_writes_a_run(run_dir):
    assert {p.name for p in run_dir.iterdir()} >= {"checkpoint.safetensors", "model.safetensors", "log.jsonl", "samples"}
    config = read_config(run_dir / "model.safetensors")
    assert config["step"] == 30 and config["command"].startswith("ddpmkit train --dataset digits")


@pytest.mark.parametrize("sampler,extra", [("ddpm", ["--variance", "large", "--steps", 100]),
                                           ("ddpm", ["--steps", 20]), ("ddim", ["--eta", 0.5, "--steps", 10])])
def test_sample_to_png_dir_and_npz(run_dir, tmp_path, sampler, extra):
    base = ["sample", "--model", run_dir, "--sampler", sampler, *extra, "--num", 6, "--seed", 40, "--quiet"]
    r = ddpmkit(*base, "--out", tmp_path / "grid.png")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "grid.png").size[0] > 8 * 3
    r = ddpmkit(*base, "--out", tmp_path / "each")
    assert r.returncode == 0, r.stderr
    names = sorted(os.listdir(tmp_path / "each"))
    assert names == [f"{s:06d}.png" for s in range(40, 46)]
    assert Image.open(tmp_path / "each" / names[0]).size == (8, 8)
    r = ddpmkit(*base, "--out", tmp_path / "s.npz", "--batch-size", 4)
    assert r.returncode == 0, r.stderr
    data = np.load(tmp_path / "s.npz", allow_pickle=False)
    x, seeds = data["samples"], data["seeds"]
    assert x.dtype == np.float32 and x.shape == (6, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert seeds.tolist() == list(range(40, 46))
    # the PNG of seed 43 is the npz sample of seed 43 (sampled with another batch size), quantised
    png = np.asarray(Image.open(tmp_path / "each" / "000043.png"), dtype=np.float64)
    assert np.abs(png - np.round((x[3, 0] + 1) / 2 * 255)).max() <= 1


def test_init_noise_round_trip(run_dir, tmp_path):
    noise = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", noise)
    args = ["sample", "--model", run_dir / "model.safetensors", "--sampler", "ddim", "--steps", 5, "--quiet"]
    a = ddpmkit(*args, "--init-noise", tmp_path / "x.npy", "--out", tmp_path / "a.npz")
    b = ddpmkit(*args, "--init-noise", tmp_path / "x.npy", "--seed", 9, "--out", tmp_path / "b.npz")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["samples"], np.load(tmp_path / "b.npz")["samples"])


def test_sample_errors(run_dir, tmp_path, cli_error):
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes((run_dir / "model.safetensors").read_bytes()[:1000])
    foreign = tmp_path / "f.safetensors"
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(2, dtype=np.float32)}, str(foreign))
    ok = ["--model", run_dir]
    out = ["--out", tmp_path / "o.png", "--quiet"]
    cases = [
        (ok + ["--sampler", "plms"], "unknown sampler 'plms'; valid: ddpm, ddim, euler"),
        (ok + ["--sampler", "ddim", "--eta", "1.5"], "eta=1.5 is outside [0, 1]"),
        (ok + ["--sampler", "ddpm", "--eta", "0.5"], "--eta does not apply to sampler 'ddpm'; its options: --variance"),
        (ok + ["--sampler", "ddpm", "--variance", "medium"], "variance='medium' is not valid; choose one of: small, large"),
        (ok + ["--sampler", "ddim", "--steps", "1001"], "steps=1001 is not valid; need an integer in [1, 1000]"),
        (ok + ["--steps", "0"], "--steps: '0' is not an integer >= 1"),
        (ok + ["--spacing", "uniform"], "unknown spacing 'uniform'; valid: leading, trailing, linspace, karras, logsnr"),
        (["--model", tmp_path / "nope.safetensors"], "does not exist"),
        (["--model", truncated], "not a readable safetensors checkpoint"),
        (["--model", foreign], "not a ddpmkit checkpoint"),
        (["--model", tmp_path], "holds no checkpoint"),
        (ok + ["--init-noise", tmp_path / "none.npy"], "is not a readable .npy array"),
    ]
    for args, message in cases:
        assert message in cli_error("sample", *args, *out)
    assert f"cannot be written: {foreign} is a file" in cli_error("sample", *ok, "--out", foreign / "d" / "x.png")
    assert not (tmp_path / "o.png").exists()  # nothing half-written
    # missing folders are made, once the samples are there to write (as demo, bench and train do)
    for target in (tmp_path / "missing" / "deeper" / "x.png", tmp_path / "new" / "pngs"):
        r = ddpmkit("sample", *ok, "--sampler", "ddim", "--steps", 2, "--num", 2, "--out", target, "--quiet")
        assert r.returncode == 0 and target.exists(), r.stderr
    assert sorted(p.name for p in (tmp_path / "new" / "pngs").iterdir()) == ["000000.png", "000001.png"]


def test_train_errors(tmp_path, cli_error):
    cases = [
        (["--dataset", "mnist", "--data-dir", tmp_path], "mnist"),
        (["--dataset", "imagenet"], "imagenet"),
        (["--steps", "0"], "--steps: '0' is not an integer >= 1"),
        (["--prediction", "score"], "unknown prediction type 'score'"),
        (["--resume"], "nothing to resume"),
    ]
    for args, message in cases:
        assert message in cli_error("train", "--out", tmp_path / "run", *args, "--quiet")


def test_kill_9_leaves_the_checkpoint_whole(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ddpmkit", "train", "--dataset", "digits", "--net", "tiny", "--steps", "100000",
           "--batch-size", "16", "--checkpoint-every", "1", "--sample-every", "100000", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoint.safetensors").exists():
        time.sleep(0.2)
    time.sleep(1.5)  # let it write a few more checkpoints, then kill it mid-flight
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = read_config(out / "checkpoint.safetensors")["step"]
    assert step >= 1
    r = ddpmkit("train", "--out", out, "--resume", "--steps", step + 2, "--quiet")
    assert r.returncode == 0, r.stderr
    assert read_config(out / "checkpoint.safetensors")["step"] == step + 2


def test_moments_enable_the_optimal_variance(run_dir, tmp_path, cli_error):
    source, model = run_dir / "model.safetensors", tmp_path / "m.safetensors"
    before = source.read_bytes()
    args = ["sample", "--model", source, "--sampler", "ddpm", "--variance", "optimal", "--steps", 10, "--num", 4]
    assert "needs the model's eps moments" in cli_error(*args, "--out", tmp_path / "a.png", "--quiet")
    r = ddpmkit("moments", "--model", source, "--dataset", "digits", "--num", 32, "--timesteps", 4, "--out", model)
    assert r.returncode == 0 and "stored Analytic-DPM's eps moments" in r.stdout, r.stderr
    assert source.read_bytes() == before  # --out writes a copy; the model's own file is untouched
    config = read_config(model)
    assert config["analytic"]["images"] == 32 and config["step"] == 30  # the rest of the config is kept
    args[2] = model
    r = ddpmkit(*args, "--out", tmp_path / "b.npz", "--quiet")
    assert r.returncode == 0, r.stderr
    assert np.isfinite(np.load(tmp_path / "b.npz")["samples"]).all()
    (tmp_path / "imgs").mkdir()
    Image.new("L", (5, 5)).save(tmp_path / "imgs" / "x.png")
    assert "has images of shape" in cli_error("moments", "--model", model, "--dataset", f"folder:{tmp_path / 'imgs'}")


def test_ems_enable_dpm_solver_v3(run_dir, tmp_path, cli_error):
    from ddpmkit.models import load_model

    source, model = run_dir / "model.safetensors", tmp_path / "m.safetensors"
    before = source.read_bytes()
    args = ["sample", "--model", source, "--sampler", "dpm-solver-v3", "--steps", 5, "--num", 4, "--quiet"]
    assert "`ddpmkit ems --model MODEL`" in cli_error(*args, "--out", tmp_path / "a.png")
    r = ddpmkit("ems", "--model", source, "--num", 8, "--points", 6, "--out", model)
    assert r.returncode == 0 and "stored DPM-Solver-v3's statistics" in r.stdout, r.stderr
    assert source.read_bytes() == before  # --out writes a copy
    config = read_config(model)
    assert config["ems"]["num"] == 8 and config["step"] == 30
    ems = load_model(model).extras["ems"]
    assert ems.l.shape == (6, 1, 8, 8) and np.all(np.diff(ems.lambdas) > 0)
    args[2] = model
    # 8 trajectories of a network trained for 30 steps: statistics far too noisy to integrate, refused
    assert "DPM-Solver-v3's statistics change too fast for this grid" in cli_error(*args, "--out", tmp_path / "b.npz")
    # statistics stored in a model file reach the sampler (degenerate ones: l = 1, s = b = 0, DDIM's step)
    from ddpmkit.ems import EMS
    from ddpmkit.models import store_ems

    store_ems(model, EMS.degenerate(ems.lambdas, ems.shape))
    r = ddpmkit(*args, "--corrector", "false", "--order", 1, "--out", tmp_path / "b.npz")
    assert r.returncode == 0, r.stderr
    ddim = ddpmkit(*args[:3], "--sampler", "ddim", "--steps", 5, "--num", 4, "--quiet", "--out", tmp_path / "d.npz")
    assert ddim.returncode == 0, ddim.stderr
    np.testing.assert_allclose(np.load(tmp_path / "b.npz")["samples"], np.load(tmp_path / "d.npz")["samples"],
                               rtol=0, atol=1e-4)
    assert "'lower' is not valid; choose one of: higher, same" in cli_error(*args, "--corrector-order", "lower",
                                                                          "--out", tmp_path / "c.npz")
    assert "'1' is not an integer >= 2" in cli_error("ems", "--model", model, "--num", 1)
    # the teacher search hands the model's statistics to the sampler it tunes
    r = ddpmkit("tune", "--model", model, "--by", "teacher", "--sampler", "dpm-solver-v3", "--steps", 2, "--num", 4,
                "--candidates", "999,800,600,400,200,100,50,0", "--quiet")
    assert r.returncode == 0, r.stderr
    assert len(read_config(model)["tuned_timesteps"]["dpm-solver-v3"]["2"]["timesteps"]) == 2


def test_eval_reports_metrics_with_the_floor_and_resumes(run_dir, tmp_path):
    import json

    args = ["eval", "--model", run_dir, "--sampler", "ddim", "--nfe", 5, "--num", 40, "--cache", tmp_path / "cache",
            "--quiet"]
    r = ddpmkit(*args, "--out", tmp_path / "a.json")
    assert r.returncode == 0, r.stderr
    assert "data floor" in r.stdout and "class frequencies" in r.stdout
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["nfe"] == 5 and a["num"] == 40 and a["cached_samples"] == 0
    assert {"fid", "fid_se", "is", "kid", "precision", "recall", "floor", "class_frequencies"} <= set(a)
    assert 0 < a["fid_se"] < a["fid"] and f"{a['fid']:.3f} ± {a['fid_se']:.2f}" in r.stdout
    assert abs(sum(a["class_frequencies"]) - 1) < 1e-9 and a["floor"]["fid"] > 0
    # digits has no real images outside its reference set for a floor at 40: its shipped floor (898) applies
    assert a["floor"]["n"] == 898 and f"| 898 | {a['floor']['fid']:.3f} |" in r.stdout
    r = ddpmkit(*args, "--out", tmp_path / "b.json")
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["cached_samples"] == 40 and b["fid"] == a["fid"]


def test_eval_measures_the_samples_that_clip_and_threshold_give(tmp_path):
    """eval --clip / --threshold scores what sample --clip / --threshold draws (eval once ignored
    both), and keeps each apart from plain samples in its cache and report. On the shipped MNIST
    model, where 3 DDIM steps make x0 estimates outside [-1, 1] that clipping changes."""
    import json

    import torch

    from ddpmkit.measure import load_reference
    from ddpmkit.images import to_levels

    num_levels = load_reference("mnist").levels
    common = ["--model", "mnist", "--sampler", "ddim", "--steps", 3, "--num", 12, "--batch-size", 12, "--quiet"]
    levels = {}
    for name, extra, options in (("plain", [], {}), ("clip", ["--clip"], {"clip": True}),
                                 ("threshold", ["--threshold", 0.9], {"threshold": 0.9})):
        cache = tmp_path / f"cache-{name}"
        r = ddpmkit("eval", *common, *extra, "--cache", cache, "--out", tmp_path / f"{name}.json")
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / f"{name}.json").read_text())["options"] == options
        (chunk,) = cache.glob("*/*.npz")
        levels[name] = np.load(chunk)["levels"].astype(int)
        r = ddpmkit("sample", *common, *extra, "--out", tmp_path / f"{name}.npz")
        assert r.returncode == 0, r.stderr
        drawn = to_levels(torch.from_numpy(np.load(tmp_path / f"{name}.npz")["samples"]), num_levels, (-1.0, 1.0))
        assert np.array_equal(levels[name], np.asarray(drawn, dtype=int)), name
    assert not np.array_equal(levels["clip"], levels["plain"])
    assert not np.array_equal(levels["threshold"], levels["clip"])


def test_generate_resumes_from_its_chunks(run_dir, tmp_path):
    from ddpmkit.measure import generate
    from ddpmkit.models import load_model

    model = load_model(run_dir)
    kw = dict(num=48, seed=3, levels=16, cache_dir=tmp_path, chunk=16)
    first, info = generate(model, model.plan(sampler="ddim", steps=4, spacing="trailing"), **kw)
    assert first.dtype == np.uint8 and first.shape == (48, 1, 8, 8) and first.max() <= 16 and info["cached"] == 0
    chunks = sorted(pathlib.Path(info["cache"]).iterdir())
    assert len(chunks) == 3
    chunks[1].unlink()  # as if interrupted while making the middle chunk
    again, info = generate(model, model.plan(sampler="ddim", steps=4, spacing="trailing"), **kw)
    assert info["cached"] == 32 and np.array_equal(again, first)


def test_cache_key_follows_the_model_bytes_not_its_path_or_mtime(run_dir, tmp_path):
    """A copy of the model file elsewhere (another path and mtime, as on another machine) finds the
    same cached chunks; other bytes behind the same size and mtime (rsync -t) do not."""
    import os
    import shutil

    from ddpmkit.measure import cache_key as plan_key
    from ddpmkit.models import load_model

    def cache_key(model, sampler, steps, spacing, options, levels):
        return plan_key(model, model.plan(sampler=sampler, steps=steps, spacing=spacing, **options), levels)

    copy = tmp_path / "elsewhere" / "model.safetensors"
    copy.parent.mkdir()
    shutil.copyfile(pathlib.Path(run_dir) / "model.safetensors", copy)
    args = ("ddim", 4, "trailing", {}, 16)
    moved = load_model(copy)
    assert cache_key(moved, *args) == cache_key(load_model(run_dir), *args)
    before = cache_key(moved, *args)
    st = copy.stat()
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1  # the last byte of the last tensor
    copy.write_bytes(bytes(data))
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (copy.stat().st_size, copy.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert cache_key(moved, *args) != before
    assert cache_key(moved, "ddim", 5, "trailing", {}, 16) != cache_key(moved, *args)
    # an option at its default value makes the same samples as no option: one key
    def key(sampler, **opts):
        return cache_key(moved, sampler, 4, "trailing", opts, 16)

    assert key("ddpm", variance="small") == key("ddpm") != key("ddpm", variance="large")
    assert key("ddim", eta=0) == key("ddim") == cache_key(moved, *args) != key("ddim", eta=0.5)


def test_bench_writes_every_output(run_dir, tmp_path):
    import csv
    import json

    out = tmp_path / "bench"
    r = ddpmkit("bench", "--model", run_dir, "--samplers", "ddim,ddpm:variance=large,unipc@logsnr:order=3,variant=bh1",
                "--nfe", "3,5", "--num", 12, "--cache", tmp_path / "cache", "--out", out, "--trajectories", "--quiet")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in out.iterdir()} == {"bench.md", "bench.csv", "bench.json", "fid.png", "samples.png",
                                               "trajectories.png"}  # the trajectories of the rows' own samplers
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [(r["sampler"], r["nfe"]) for r in rows] == [
        ("ddim", "3"), ("ddim", "5"), ("ddpm:variance=large", "3"), ("ddpm:variance=large", "5"),
        ("unipc@logsnr:order=3,variant=bh1", "3"), ("unipc@logsnr:order=3,variant=bh1", "5")]
    assert all(0 < float(r["fid_se"]) < float(r["fid"]) for r in rows)
    result = json.loads((out / "bench.json").read_text())
    best = min(result["rows"], key=lambda r: r["fid"])
    assert [r["fid_vs_best_se"] is None for r in result["rows"]].count(True) == 1 and best["fid_vs_best_se"] is None
    for r in result["rows"]:
        assert r["fid_vs_best"] == pytest.approx(r["fid"] - best["fid"])
        assert r is best or r["fid_vs_best_se"] > 0
    assert result["floor"]["fid"] > 0 and all(r["images_per_s"] > 0 for r in result["rows"])
    assert "data floor" in (out / "bench.md").read_text()
    for png in ("fid.png", "samples.png", "trajectories.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_bench_specs_and_errors(run_dir, tmp_path, cli_error):
    from ddpmkit.measure.bench import PRESETS, parse_sampler, split_specs

    assert split_specs("ddim:eta=0.5,unipc:order=3,variant=bh1,ddpm") == ["ddim:eta=0.5", "unipc:order=3,variant=bh1", "ddpm"]
    assert parse_sampler("unipc@logsnr:order=3,variant=bh1") == ("unipc@logsnr:order=3,variant=bh1", "unipc",
                                                                 {"order": 3, "variant": "bh1"}, "logsnr")
    assert PRESETS["ddim-table"]["nfe"] == [10, 20, 50, 100, 1000]
    assert [parse_sampler(s)[2] for s in PRESETS["ddim-table"]["samplers"]][:4] == [{"eta": e} for e in (0, 0.2, 0.5, 1)]
    assert parse_sampler("ddpm:variance=large,clip=true")[2] == {"variance": "large", "clip": True}
    assert parse_sampler("ddim:clip=false,threshold=0.99")[2] == {"threshold": 0.99}
    base = ["bench", "--model", run_dir, "--out", tmp_path / "b", "--quiet"]
    assert "is not KEY=VALUE with KEY one of: eta" in cli_error(*base, "--samplers", "ddim:beta=1")
    assert "unknown sampler 'plms'" in cli_error(*base, "--samplers", "plms")
    assert "unknown preset 'cifar'; valid: ddim-table" in cli_error(*base, "--preset", "cifar")
    assert "is not a comma-separated list of integers" in cli_error(*base, "--nfe", "ten")


def test_distill_then_sample_with_cm(run_dir, tmp_path):
    out = tmp_path / "cm"
    r = ddpmkit("distill", "--teacher", run_dir, "--steps", 3, "--batch-size", 8, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert read_config(out / "model.safetensors")["net"]["arch"] == "consistency"
    r = ddpmkit("sample", "--model", out, "--sampler", "cm", "--timesteps", "999,300", "--num", 4, "--out",
                tmp_path / "cm.npz", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "cm, 2 steps at timesteps 999, 300, 2 NFE per sample" in r.stdout
    x = np.load(tmp_path / "cm.npz")["samples"]
    assert x.shape == (4, 1, 8, 8) and x.min() >= -1 and x.max() <= 1  # clip_denoised keeps f in range
    r = ddpmkit("distill", "--teacher", run_dir, "--steps", 6, "--out", out, "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    assert read_config(out / "checkpoint.safetensors")["step"] == 6


def test_distill_and_timesteps_errors(run_dir, tmp_path, cli_error):
    assert "does not exist (shipped models: mnist, mnist-cond, mnist-cm)" in cli_error(
        "distill", "--teacher", tmp_path / "nope", "--out", tmp_path / "x")
    assert "solver='rk4' is not valid; choose one of: heun, ddim" in cli_error(
        "distill", "--teacher", run_dir, "--solver", "rk4", "--out", tmp_path / "y")
    assert "strictly descending" in cli_error("sample", "--model", run_dir, "--timesteps", "5,9", "--out",
                                              tmp_path / "a.png")
    assert "is not a comma-separated list of timesteps" in cli_error("sample", "--model", run_dir, "--timesteps",
                                                                     "9,x", "--out", tmp_path / "a.png")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_sample_uses_the_shipped_mnist_model_by_default(tmp_path):
    r = ddpmkit("sample", "--sampler", "ddim", "--steps", 2, "--num", 2, "--out", tmp_path / "m.npz", "--quiet")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "m.npz")["samples"].shape == (2, 1, 28, 28)


def test_eval_adds_the_inception_fid_with_given_weights(run_dir, tmp_path, cli_error):
    """With random weights in the FID Inception's format (the real file cannot be had offline)."""
    import json

    import torch

    from ddpmkit.measure.inception import FIDInceptionV3

    weights = tmp_path / "inception.pth"
    torch.save(FIDInceptionV3().state_dict(), weights)
    out = tmp_path / "e.json"
    r = ddpmkit("eval", "--model", run_dir, "--sampler", "ddim", "--steps", 2, "--num", 4, "--out", out, "--cache",
                tmp_path / "c", "--inception", weights, "--inception-real", 4, "--quiet")
    assert r.returncode == 0, r.stderr
    inc = json.loads(out.read_text())["inception"]
    assert inc["reference"] == "digits train, 4 images" and inc["fid"] >= 0 and 1.0 <= inc["is"] <= 1008
    assert "Inception FID" in r.stdout
    from ddpmkit.measure import inception
    from ddpmkit.models import load_model

    assert inception.setup(weights, load_model(run_dir)).reference == "digits train, 1797 images"  # at most 10000
    assert "--inception: FID Inception weights not found" in cli_error(
        "eval", "--model", run_dir, "--num", 4, "--out", tmp_path / "f.json", "--inception", tmp_path / "none.pth")
    assert not (tmp_path / "f.json").exists()


def test_tune_by_a_teacher_stores_grids_without_fid(run_dir, tmp_path, cli_error):
    """--by teacher and --by gits need no feature network: the grids are made of the candidates (and
    the grids the search may start from), and are stored beside the FID-tuned ones, for the sampler
    named; GITS's starts at T - 1."""
    import shutil

    model = tmp_path / "m.safetensors"
    shutil.copy(run_dir / "model.safetensors", model)
    for by, sampler in (("teacher", "unipc"), ("gits", "ddim")):
        r = ddpmkit("tune", "--model", model, "--by", by, "--sampler", sampler, "--steps", "2,3", "--num", 8,
                    "--candidates", "999,800,600,400,200,100,0")
        assert r.returncode == 0, r.stderr
        assert f"{sampler}, 3 steps: timesteps " in r.stdout
        tuned = read_config(model)["tuned_timesteps"][sampler]
        for k in ("2", "3"):
            grid = tuned[k]["timesteps"]
            assert tuned[k]["method"] == by and len(grid) == int(k) and (by == "teacher" or grid[0] == 999)
            starts = {999, 499, 667, 334, 666, 332, 751, 501, 251, 0, 500}  # trailing, leading, linspace
            assert set(grid) <= {999, 800, 600, 400, 200, 100, 0} | starts
    assert "class-conditional" not in r.stderr
    assert "a consistency model (or --sampler cm) is tuned --by fid" in cli_error(
        "tune", "--model", model, "--by", "teacher")


def test_tune_decouples_input_timesteps_that_sample_takes(run_dir, tmp_path, cli_error):
    """--decouple refines the teacher-searched grid with the network's input timesteps; what it
    reports is stored, and where kept, sample takes the grid with its inputs, the same samples as
    --timesteps with --input-timesteps."""
    import shutil

    model = tmp_path / "m.safetensors"
    shutil.copy(run_dir / "model.safetensors", model)
    r = ddpmkit("tune", "--model", model, "--by", "teacher", "--sampler", "ddim", "--steps", 2, "--num", 8,
                "--candidates", "999,800,600,400,200,100,0", "--decouple", 30)
    assert r.returncode == 0, r.stderr
    entry = read_config(model)["tuned_timesteps"]["ddim"]["2"]
    report = entry["decoupled"]
    assert report["runs"] <= 30 and report["fit_trajectories"] == 6
    assert report["kept"] == (report["held_out_after"] < report["held_out_before"])
    assert ("input_timesteps" in entry) == report["kept"] and "decoupled: timesteps " in r.stdout
    # a grid with inputs, stored as tune stores it, and the same by hand
    from ddpmkit.models import store_tuned_grids

    store_tuned_grids(model, "ddim", {2: {"timesteps": [700.0, 150.0], "input_timesteps": [650.5, 180.0]}})
    base = ["sample", "--model", model, "--sampler", "ddim", "--num", 3]
    tuned = ddpmkit(*base, "--steps", 2, "--out", tmp_path / "tuned.npz")
    assert tuned.returncode == 0, tuned.stderr
    assert "at timesteps 700, 150 (the network told 650.5, 180)" in tuned.stdout
    by_hand = ddpmkit(*base, "--timesteps", "700,150", "--input-timesteps", "650.5,180", "--out", tmp_path / "hand.npz")
    assert by_hand.returncode == 0, by_hand.stderr
    plain = ddpmkit(*base, "--timesteps", "700,150", "--out", tmp_path / "plain.npz")
    assert plain.returncode == 0, plain.stderr
    samples = {k: np.load(tmp_path / f"{k}.npz")["samples"] for k in ("tuned", "hand", "plain")}
    np.testing.assert_array_equal(samples["tuned"], samples["hand"])
    assert not np.array_equal(samples["tuned"], samples["plain"])
    out = ["--out", tmp_path / "bad.npz"]
    assert "--input-timesteps go with --timesteps" in cli_error(*base, *out, "--steps", 2, "--input-timesteps", "1,2")
    assert "got 1 input timesteps for a grid of 2" in cli_error(*base, *out, "--timesteps", "700,150",
                                                                 "--input-timesteps", "600")
    assert "--decouple 5 refines a teacher-searched grid; it needs --by teacher, not --by gits" in cli_error(
        "tune", "--model", model, "--by", "gits", "--sampler", "ddim", "--decouple", 5)


def test_tune_stores_grids_that_sample_eval_and_bench_use(run_dir, tmp_path, cli_error):
    import json
    import shutil

    model = tmp_path / "m.safetensors"
    shutil.copy(run_dir / "model.safetensors", model)  # tune rewrites the file it tunes
    cands = {999.0, 700.0, 400.0, 100.0}
    r = ddpmkit("tune", "--model", model, "--sampler", "ddim", "--steps", "1,2", "--candidates", "999,700,400,100",
                "--num", 24, "--cache", tmp_path / "cache", "--quiet")
    assert r.returncode == 0, r.stderr
    tuned = read_config(model)["tuned_timesteps"]["ddim"]
    assert set(tuned) == {"1", "2"} and tuned["2"]["grids_measured"] >= 4
    grid = tuned["2"]["timesteps"]
    assert len(grid) == 2 and grid[0] > grid[1] and set(grid) <= cands and set(tuned["1"]["timesteps"]) <= cands
    # the FID stored is what eval measures for that grid on the same seeds, sampled afresh
    r = ddpmkit("eval", "--model", model, "--sampler", "ddim", "--timesteps", ",".join(f"{t:g}" for t in grid),
                "--num", 24, "--seed", 1_000_000, "--cache", tmp_path / "fresh", "--out", tmp_path / "e.json", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "e.json").read_text())["fid"] == pytest.approx(tuned["2"]["fid"], rel=1e-9)
    # sample takes the tuned grid unless a spacing is asked for
    shown = f"at timesteps {grid[0]:g}, {grid[1]:g}"
    base = ["sample", "--model", model, "--sampler", "ddim", "--num", 2, "--out", tmp_path / "a.npz", "--quiet"]
    assert shown in ddpmkit(*base, "--steps", 2).stdout
    assert shown in ddpmkit(*base, "--nfe", 2, "--spacing", "tuned").stdout
    r = ddpmkit(*base, "--steps", 2, "--spacing", "trailing")
    assert r.returncode == 0 and "at timesteps" not in r.stdout
    r = ddpmkit("bench", "--model", model, "--samplers", "ddim,ddim@trailing", "--nfe", 2, "--num", 12,
                "--cache", tmp_path / "cache", "--out", tmp_path / "bench", "--quiet")
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert [(x["spacing"], x["timesteps"]) for x in rows] == [("tuned", grid), ("trailing", None)]
    assert "has no tuned grid for ddim with 3 steps (it has one for steps: 1, 2;" in cli_error(*base, "--steps", 3,
                                                                                               "--spacing", "tuned")
    assert "--steps 5 needs at least as many --candidates; got 2" in cli_error(
        "tune", "--model", model, "--steps", 5, "--candidates", "999,500")
    assert "--candidates: grid timesteps must lie in [0, 999]" in cli_error(
        "tune", "--model", model, "--candidates", "999,1500")
    assert "unknown sampler 'plms'" in cli_error("tune", "--model", model, "--sampler", "plms")


def test_the_shipped_conditional_model_draws_the_digit_it_is_asked_for(tmp_path):
    """mnist-cond with guidance 3 at 20 steps: the shipped MNIST classifier reads every digit as the
    class asked for (2 samples of each class; on 1000 samples the card measures 100.0%)."""
    from ddpmkit.images import to_levels
    from ddpmkit.measure.reference import load_reference
    from ddpmkit.measure.score import score
    from ddpmkit.models import load_model

    m = load_model("mnist-cond")
    assert m.conditional and m.num_classes == 10
    plan = m.plan(sampler="dpmpp-2m-sde", steps=20, spacing="logsnr", guidance=3.0)
    x = m.sample(plan, seeds=range(20))
    ref = load_reference("mnist")
    acc = score(to_levels(x, ref.levels, m.data_range), ref, precision_recall=False, standard_error=False,
                labels=plan.labels(range(20)))["class_accuracy"]
    assert acc["accuracy"] == 1.0, acc
    r = ddpmkit("sample", "--model", "mnist-cond", "--class", "all", "--guidance", 3, "--steps", 2, "--out",
                tmp_path / "grid.png", "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("wrote 20 samples")  # two full rows of each class by default
    assert "guidance=3.0, classes 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 by seed" in r.stdout


def test_the_shipped_consistency_model_samples_near_the_data_in_one_and_two_steps():
    """mnist-cm on its tuned grids, seeds 0..499: FID 64 in one step and 44 in two against the MNIST
    reference, where 500 real images score 26.4 and the distilled student it replaced 191 and 116."""
    from ddpmkit.images import to_levels
    from ddpmkit.measure.reference import load_reference
    from ddpmkit.measure.score import score
    from ddpmkit.models import load_model

    m, ref = load_model("mnist-cm"), load_reference("mnist")
    for steps, bound in ((1, 90), (2, 60)):
        x = m.sample(m.plan(sampler="cm", steps=steps), seeds=range(500))
        s = score(to_levels(x, ref.levels, m.data_range), ref, precision_recall=False, standard_error=False)
        assert s["fid"] < bound, (steps, s["fid"])
        assert min(s["class_frequencies"]) > 0.05  # every digit drawn
