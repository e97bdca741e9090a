"""The measurement pipeline (ddpmkit.measure): sample cache, scoring, reports, bench, eval, tune."""

import hashlib
import json
import pathlib

import numpy as np
import pytest

from ddpmkit import measure
from ddpmkit.images import to_levels
from ddpmkit.measure import bench, report
from ddpmkit.models import SHIPPED_DIR, load_model


@pytest.fixture(scope="module")
def mnist():
    return load_model("mnist")


# the consistency model shipped as mnist-cm until ECT's student replaced it (distilled, tuned grids
# 775 and 775, 450); the cache keys below were recorded on it
CM_BEFORE = pathlib.Path(__file__).parent / "data" / "mnist-cm-cd.safetensors"


@pytest.fixture(scope="module")
def mnist_cm():
    return load_model(CM_BEFORE)


@pytest.fixture(scope="module")
def ref():
    return measure.load_reference("mnist")


# -- the one table writer --------------------------------------------------------------------------
def test_table_writer_against_a_hand_written_table():
    text = report.table(["sampler", "NFE", "FID"], [["ddim", 10, "4.20 ± 0.10"], ["data floor", "", None]])
    assert text == ("| sampler | NFE | FID |\n"
                    "|---|---|---|\n"
                    "| ddim | 10 | 4.20 ± 0.10 |\n"
                    "| data floor | | |")
    with pytest.raises(ValueError, match="table row 0 has 2 cells for 3 columns"):
        report.table(["a", "b", "c"], [["x", "y"]])


def test_csv_and_json_writers(tmp_path):
    rows = [{"sampler": "ddim", "nfe": 10, "extra": 1}, {"sampler": "ddpm", "nfe": 20, "extra": 2}]
    report.write_csv(tmp_path / "t.csv", rows, ["sampler", "nfe"])
    assert (tmp_path / "t.csv").read_text().splitlines() == ["sampler,nfe", "ddim,10", "ddpm,20"]
    report.write_json(tmp_path / "t.json", {"rows": rows})
    text = (tmp_path / "t.json").read_text()
    assert text.endswith("}\n") and json.loads(text) == {"rows": rows}


def test_bench_table_against_a_hand_written_one():
    row = {"sampler": "ddim", "spacing": "trailing", "nfe": 10, "fid": 12.3456, "fid_se": 0.512, "fid_vs_best": 2.5,
           "fid_vs_best_se": 0.25, "is": 9.123, "kid": 0.01234, "precision": 0.81234, "recall": 0.7, "seconds_per_image":
           0.01234, "images_per_s": 81.04, "peak_memory_mb": 512.4}
    best = row | {"sampler": "unipc", "fid_vs_best_se": None, "images_per_s": None}
    floor = {"n": 500, "fid": 1.5, "is": 9.9, "kid": 0.001, "precision": 0.9, "recall": 0.95}
    assert bench.markdown([row, best], floor, "# H") == (
        "# H\n\n"
        "| sampler | grid | NFE | FID | FID − best | IS | KID | precision | recall | s/image | images/s | peak MB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        "| ddim | trailing | 10 | 12.346 ± 0.51 | +2.50 ± 0.25 | 9.12 | 0.0123 | 0.812 | 0.700 | 0.0123 | 81.0 | 512 |\n"
        "| unipc | trailing | 10 | 12.346 ± 0.51 | best | 9.12 | 0.0123 | 0.812 | 0.700 | 0.0123 | — | 512 |\n"
        "| data floor (500 real vs reference) | | | 1.500 | | 9.90 | 0.0010 | 0.900 | 0.950 | | | |\n")


def test_demo_and_exact_tables_against_hand_written_ones():
    from ddpmkit.measure import demo, exact

    results = [{"sampler": "cm 2", "timesteps": [775.0, 450.0], "nfe": 2, "seconds": 1.234, "fid": 40.06, "fid_se": 2.04,
                "shipped": {"fid": 12.345, "is": 9.1}},
               {"sampler": "ddim 10", "timesteps": None, "nfe": 10, "seconds": 3.0, "fid": 5.0, "fid_se": 0.5,
                "shipped": None}]
    lines = demo.markdown_table(results, 100).splitlines()
    assert lines[:4] == ["| sampler | NFE | wall time (s, 100 samples) | FID (100 samples) | FID (10k) | IS (10k) |",
                         "|---|---|---|---|---|---|",
                         "| cm 2 (tuned t = 775, 450) | 2 | 1.2 | 40.1 ± 2.0 | 12.35 | 9.10 |",
                         "| ddim 10 | 10 | 3.0 | 5.0 ± 0.5 | — | — |"]
    assert lines[4].startswith("| real MNIST (data floor) | | | ") and len(lines) == 5
    exact_rows = [{"sampler": "ddim 10", "nfe": 10, "seconds": 0.5, "rms_to_nearest_digit": 0.01234, "on_data": 0.875,
                   "classes": 10}]
    assert exact.markdown_table(exact_rows, 8) == (
        "| sampler | NFE | wall time (s, 8 samples) | RMS to nearest digit | on a digit | classes |\n"
        "|---|---|---|---|---|---|\n"
        "| ddim 10 | 10 | 0.50 | 0.012 | 88% | 10 |")


def test_exact_benchmark_report_tables():
    from ddpmkit.measure.exact import markdown

    row = {"nfe_budget": 5, "nfe": 5, "rms_error": 0.0123, "fd": 0.5, "same_component": 0.75, "on_component": 0.5,
           "source": "ddpmkit"}
    result = {"nfes": [5, 10], "orders": {"ddim / trailing": 1.0}, "seconds": 3, "machine": "m", "data": "d",
              "num": 4, "mixture": {"components": 2, "std": 0.1, "shape": [1, 2, 2]}, "reference_steps": 8,
              "reference_check": 1e-4, "schedule": {"name": "linear", "T": 10}, "floor": {"fd": 0.1, "on_component": 1.0},
              "reference": {"fd": 0.2, "on_component": 0.9},
              "rows": [row | {"sampler": "ddim", "spacing": "trailing"},
                       row | {"sampler": "ddim", "spacing": "trailing", "nfe_budget": 10, "nfe": 9},
                       row | {"sampler": "ddpm", "spacing": "trailing", "rms_error": None, "same_component": None}]}
    text = markdown(result, "cmd")
    assert ("| sampler | grid | NFE 5 | NFE 10 | fitted order |\n|---|---|---|---|---|\n"
            "| ddim | trailing | 1.23e-02 | 1.23e-02 (9) | 1.00 |\n\nOrders are fitted") in text
    assert "| ddpm | trailing | — | — |" not in text.split("## Frechet")[0]  # stochastic: no RMS row
    assert "| ddpm | trailing | 0.5000 | — |" in text and text.count("\n|---|---|---|---|\n") == 3


# -- the sample cache ------------------------------------------------------------------------------
def recipe_key(model, levels, **what) -> str:
    """The cache key as documented: 16 hex digits of the SHA-256 of the sorted JSON of the model
    file's SHA-256, sampler, steps, spacing (or timesteps, for a grid given or tuned), the options
    at other than their defaults, and the grey levels."""
    what = {"model_sha256": hashlib.sha256(pathlib.Path(model.path).read_bytes()).hexdigest(), **what,
            "levels": levels}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def test_cache_key_is_the_documented_recipe(mnist, mnist_cm):
    def key(model, levels=255, **options):
        return measure.cache_key(model, model.plan(**options), levels)

    assert key(mnist, sampler="ddim", steps=10, spacing="trailing") == recipe_key(
        mnist, 255, sampler="ddim", steps=10, spacing="trailing", options={})
    # an option at its default value is left out: the same samples, one key
    assert key(mnist, sampler="ddim", steps=10, eta=0.0) == key(mnist, sampler="ddim", steps=10, spacing="trailing")
    assert key(mnist, sampler="ddpm", steps=20, variance="small") == key(mnist, sampler="ddpm", steps=20)
    assert key(mnist, sampler="ddpm", steps=20, variance="large") == recipe_key(
        mnist, 255, sampler="ddpm", steps=20, spacing="trailing", options={"variance": "large"})
    assert key(mnist, sampler="ddim", steps=3, clip=True, eta=0.5) == recipe_key(
        mnist, 255, sampler="ddim", steps=3, spacing="trailing", options={"clip": True, "eta": 0.5})
    assert key(mnist, sampler="ddim", steps=3, threshold=0.9, clip=False) == recipe_key(
        mnist, 255, sampler="ddim", steps=3, spacing="trailing", options={"threshold": 0.9})
    # a grid given as timesteps, or tuned, is keyed by the timesteps themselves
    assert key(mnist, sampler="ddim", timesteps=[999, 500]) == recipe_key(
        mnist, 255, sampler="ddim", steps=2, timesteps=[999.0, 500.0], options={})
    tuned = mnist_cm.tuned_grids("cm")[2]
    assert key(mnist_cm, sampler="cm", steps=2) == key(mnist_cm, sampler="cm", timesteps=tuned) == recipe_key(
        mnist_cm, 255, sampler="cm", steps=2, timesteps=tuned, options={})
    assert key(mnist, 16, sampler="ddim", steps=4) != key(mnist, sampler="ddim", steps=4)


# keys that evaluate.cache_key gave at c590e80 (before the measure package) for the shipped models
SHIPPED_SHA256 = {"mnist": "e74ba0b435b645ca0224865b39856b7f82e0b9a574de1642a98cc5733135f0ab",
                  "mnist-cm": "fb0288750d383cd39c726917cd2bda5cf19f6ecc9bd34d08f2b8e782f3cdba16"}


def test_cache_keys_are_those_of_the_code_before_the_pipeline(mnist, mnist_cm):
    for name, path in (("mnist", SHIPPED_DIR / "mnist.safetensors"), ("mnist-cm", CM_BEFORE)):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != SHIPPED_SHA256[name]:
            pytest.skip(f"the shipped {name} model has changed since the keys were recorded")

    def key(model, levels=255, **options):
        return measure.cache_key(model, model.plan(**options), levels)

    assert key(mnist, sampler="ddim", steps=10) == "7308e2eaa0ccf3f2"
    assert key(mnist, sampler="ddim", steps=10, eta=0.5) == "e9c4565b945a8189"
    assert key(mnist, sampler="ddpm", steps=20, variance="large") == "267f304b4cc1893d"
    assert key(mnist, sampler="ddpm", steps=20, variance="small") == "13842c92b546e933"
    assert key(mnist, sampler="unipc", steps=10, spacing="logsnr", order=3, variant="bh1") == "72aea7f24a2858a0"
    assert key(mnist, sampler="ddim", steps=3, clip=True) == "db61193b206cccdf"
    assert key(mnist, sampler="ddim", steps=3, threshold=0.9) == "c144ac2b951aa77d"
    assert key(mnist, 16, sampler="ddim", steps=4) == "085beccf00f5eacd"
    assert key(mnist, sampler="ddim", timesteps=[999, 500]) == "daa485990bee16f4"
    assert key(mnist_cm, sampler="cm", steps=2) == "d7615a5d28b5025c"  # its tuned grid, 775, 450
    assert key(mnist_cm, sampler="cm", timesteps=[999, 300.5]) == "bc9a2a17b3c38c4b"


def test_generate_is_the_models_samples_and_resumes_from_its_chunks(mnist, tmp_path):
    plan = mnist.plan(sampler="ddim", steps=2)
    kw = dict(num=10, seed=3, levels=255, cache_dir=tmp_path, chunk=4, batch_size=3)
    seen = []
    first, info = measure.generate(mnist, plan, progress=seen.append, **kw)
    assert first.dtype == np.uint8 and first.shape == (10, 1, 28, 28) and info["cached"] == 0 and info["nfe"] == 2
    # each chunk in the fewest batches of at most 3, of equal sizes (4 seeds: 2 and 2)
    assert seen == [2, 2, 2, 2, 2] and pathlib.Path(info["cache"]).name == measure.cache_key(mnist, plan, 255)
    # the model's own samples of those seeds: in one batch, since on the CPU a sample's bits do not
    # depend on the batch it is drawn in
    drawn = to_levels(mnist.sample(plan, seeds=range(3, 13)), 255, mnist.data_range)
    assert np.array_equal(first, drawn)
    chunks = sorted(pathlib.Path(info["cache"]).iterdir())
    assert [c.name for c in chunks] == [p.name for _, _, p in measure.chunk_files(tmp_path, 3, 10, 4)]
    chunks[1].unlink()  # as if interrupted while making the middle chunk
    assert measure.missing_chunks(mnist, plan, num=10, seed=3, levels=255, cache_dir=tmp_path, chunk=4) == [chunks[1]]
    again, info = measure.generate(mnist, plan, **kw)
    assert info["cached"] == 6 and np.array_equal(again, first)


def test_generate_gives_the_model_its_eps_moment(mnist, tmp_path):
    """Analytic-DPM's optimal variance needs the model's eps moments: the plan carries them to the
    sampler at every sampling site (two sites once forgot them)."""
    from ddpmkit import make_plan

    assert mnist.eps_moment is not None
    with pytest.raises(ValueError, match="eps_moment"):  # without them the sampler refuses up front
        make_plan(mnist.schedule, "ddpm", steps=3, variance="optimal")
    plan = mnist.plan(sampler="ddpm", steps=3, variance="optimal")
    assert plan.model_options["eps_moment"] is mnist.eps_moment
    levels, info = measure.generate(mnist, plan, num=2, seed=0, levels=255, cache_dir=tmp_path)
    assert levels.shape == (2, 1, 28, 28) and info["nfe"] == 3
    (row,) = bench.plan_rows(mnist, ["ddpm:variance=optimal"], [3])
    assert row.plan.model_options["eps_moment"] is mnist.eps_moment


# -- eval ------------------------------------------------------------------------------------------
def test_evaluate_writes_the_eval_report(mnist, ref, tmp_path):
    plan = mnist.plan(sampler="ddim", timesteps=[999, 500], clip=True, eta=0.0)
    result = measure.evaluate(mnist, plan, num=6, seed=2, ref=ref, cache_dir=tmp_path, batch_size=4)
    assert list(result) == ["model", "step", "sampler", "steps", "spacing", "timesteps", "options", "nfe", "num",
                            "seed", "seconds_per_image", "fid", "fid_se", "is", "is_std", "kid", "kid_std",
                            "class_frequencies", "precision", "recall", "floor", "reference", "cached_samples"]
    assert result["spacing"] == "explicit" and result["timesteps"] == [999.0, 500.0] and result["steps"] == 2
    assert result["options"] == {"eta": 0.0, "clip": True}  # the sampler's options as given, clip where on
    assert result["model"] == str(mnist.path) and result["nfe"] == 2 and result["cached_samples"] == 0
    levels, _ = measure.generate(mnist, plan, num=6, seed=2, levels=ref.levels, cache_dir=tmp_path)
    assert result["fid"] == measure.score(levels, ref, precision_recall=False)["fid"]
    assert result["floor"] == measure.floor_for(ref, 6)
    assert measure.evaluate(mnist, plan, num=6, seed=2, ref=ref, cache_dir=tmp_path)["cached_samples"] == 6
    # the plan an eval.json was made with, rebuilt from it, finds its samples
    again = measure.report_plan(mnist, json.loads(json.dumps(result)))
    assert measure.cache_key(mnist, again, 255) == measure.cache_key(mnist, plan, 255)
    plain = measure.evaluate(mnist, mnist.plan(sampler="ddim", steps=2), num=6, seed=2, ref=ref, cache_dir=tmp_path)
    assert (plain["spacing"], plain["timesteps"], plain["options"]) == ("trailing", None, {})
    r, fl = result, result["floor"]
    expected = [
        "| sampler | NFE | samples | FID | IS | KID | precision | recall | s/image |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| ddim | 2 | 6 | {r['fid']:.3f} ± {r['fid_se']:.2f} | {r['is']:.2f} | {r['kid']:.4f} | {r['precision']:.3f} | "
        f"{r['recall']:.3f} | {r['seconds_per_image']:.4f} |",
        f"| data floor ({ref.info['reference']}) | | 6 | {fl['fid']:.3f} | {fl['is']:.2f} | {fl['kid']:.4f} | "
        f"{fl['precision']:.3f} | {fl['recall']:.3f} | |",
        "FID ± its bootstrap standard error over the samples",
        "class frequencies (%, by the feature network): " + " ".join(f"{100 * f:.1f}" for f in r["class_frequencies"])]
    assert measure.eval_table(result, ref) == "\n".join(expected)
    inc = {"fid": 1.23456, "is": 2.345, "reference": "mnist test, 4 images"}
    assert measure.eval_table(result | {"inception": inc}, ref).endswith(
        "\nInception FID 1.235, IS 2.35 against mnist test, 4 images")


def test_inception_setup_names_the_option_of_missing_weights(mnist, tmp_path):
    from ddpmkit.measure import inception

    with pytest.raises(ValueError, match="^--inception: FID Inception weights not found: .*nope.pth"):
        inception.setup(tmp_path / "nope.pth", mnist)


# -- bench -----------------------------------------------------------------------------------------
def test_bench_spec_grammar():
    assert bench.split_specs("ddim:eta=0.5,unipc:order=3,variant=bh1,ddpm") == [
        "ddim:eta=0.5", "unipc:order=3,variant=bh1", "ddpm"]
    assert bench.split_specs(" ddim , ,ddpm") == ["ddim", "ddpm"]
    assert bench.parse_sampler("unipc@logsnr:order=3,variant=bh1") == (
        "unipc@logsnr:order=3,variant=bh1", "unipc", {"order": 3, "variant": "bh1"}, "logsnr")
    assert bench.parse_sampler("ddpm:variance=large,clip=true")[2] == {"variance": "large", "clip": True}
    assert bench.parse_sampler("ddim:clip=false,threshold=0.99")[2] == {"threshold": 0.99}
    assert [bench.parse_sampler(s)[2] for s in bench.PRESETS["ddim-table"]["samplers"]][:4] == [
        {"eta": e} for e in (0, 0.2, 0.5, 1)]
    with pytest.raises(ValueError, match="'ddim:beta=1': 'beta=1' is not KEY=VALUE with KEY one of: eta"):
        bench.parse_sampler("ddim:beta=1")
    with pytest.raises(ValueError, match="eta='x' is not a number"):
        bench.parse_sampler("ddim:eta=x")
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        bench.parse_sampler("plms")


def test_bench_rows_are_checked_plans(mnist, mnist_cm):
    logged = []
    rows = bench.plan_rows(mnist, ["ddim", "unipc@logsnr:order=3", "restart", "heun"], [1, 5], logged.append)
    assert [(r.label, r.budget, r.plan.steps, r.plan.spacing, r.plan.nfe) for r in rows] == [
        ("ddim", 1, 1, "trailing", 1), ("ddim", 5, 5, "trailing", 5), ("unipc@logsnr:order=3", 1, 1, "logsnr", 1),
        ("unipc@logsnr:order=3", 5, 5, "logsnr", 5), ("heun", 1, 1, "trailing", 1), ("heun", 5, 3, "trailing", 5)]
    assert logged == ["  restart: cannot fit into 1 NFE, skipped", "  restart: cannot fit into 5 NFE, skipped"]
    with pytest.raises(ValueError, match="^sampler spec 'ddim@tuned' at 5 NFE: .*no tuned grid for ddim with 5 steps"):
        bench.plan_rows(mnist, ["ddim@tuned"], [5])
    with pytest.raises(ValueError, match="^sampler spec 'ddim@even' at 5 NFE: unknown spacing 'even'"):
        bench.plan_rows(mnist, ["ddim@even"], [5])
    (row,) = bench.plan_rows(mnist_cm, ["cm"], [2])  # no spacing: the model's tuned grid
    assert row.plan.spacing == "tuned" and list(row.plan.grid) == mnist_cm.tuned_grids("cm")[2]


def test_bench_run_rows(mnist, ref, tmp_path):
    rows = bench.plan_rows(mnist, ["ddim", "ddpm:variance=large"], [2])
    results = bench.run(mnist, ref, rows, num=4, seed=0, cache_dir=tmp_path, log=lambda *a: None)
    assert [(r["sampler"], r["nfe"], r["steps"], r["spacing"], r["timesteps"]) for r in results] == [
        ("ddim", 2, 2, "trailing", None), ("ddpm:variance=large", 2, 2, "trailing", None)]
    for r, row in zip(results, rows):
        levels, _ = measure.generate(mnist, row.plan, num=4, seed=0, levels=ref.levels, cache_dir=tmp_path)
        assert r["fid"] == measure.score(levels, ref, precision_recall=False)["fid"]
    assert sorted(r["fid_vs_best_se"] is None for r in results) == [False, True]
    (tmp_path / "out").mkdir()
    bench.write(tmp_path / "out", results, measure.floor_for(ref, 4), "# H")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"bench.md", "bench.csv", "bench.json", "fid.png"}
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["rows"] == json.loads(json.dumps(results))


# -- tune ------------------------------------------------------------------------------------------
def test_tune_searches_by_the_fid_of_cached_samples(mnist_cm, ref, tmp_path):
    from ddpmkit.tune import found_line, tune

    kw = dict(num=4, seed=5, ref=ref, cache_dir=tmp_path, log=lambda *a: None)
    with pytest.raises(ValueError, match="^--candidates: "):
        tune(mnist_cm, "cm", [1], candidates=[5000, 10], **kw)
    with pytest.raises(ValueError, match=r"^--steps 3 needs at least as many --candidates; got 2"):
        tune(mnist_cm, "cm", [1, 3], candidates=[999, 500], **kw)
    shown = []
    found = tune(mnist_cm, "cm", [1], candidates=[500, 999, 999], show=shown.append, **kw)
    (entry,) = found.values()
    assert set(found) == {1} and entry["candidates"] == [999.0, 500.0] and entry["grids_measured"] == 2
    plan = mnist_cm.plan(sampler="cm", timesteps=entry["timesteps"])
    levels, info = measure.generate(mnist_cm, plan, num=4, seed=5, levels=ref.levels, cache_dir=tmp_path)
    assert info["cached"] == 4 and entry["fid"] == measure.score(levels, ref)["fid"]
    assert shown == [found_line("cm", 1, entry)] and shown[0].startswith("cm, 1 steps: timesteps ")


def test_generate_refuses_to_score_samples_with_nan(mnist, tmp_path, monkeypatch):
    plan = mnist.plan(sampler="ddim", steps=2)
    real = type(mnist).sample

    def broken(self, plan, **kw):  # seed 5's sample goes non-finite, as a diverging sampler's would
        x, info = real(self, plan, **kw)
        seeds = list(kw["seeds"])
        if 5 in seeds:
            x[seeds.index(5), 0, 3, 3] = float("nan")
        return x, info

    monkeypatch.setattr(type(mnist), "sample", broken)
    with pytest.raises(ValueError, match="1 of seeds 4..7 gave samples with NaN or inf \\(seeds 5, ...\\), which are "
                                         "not scored"):
        measure.generate(mnist, plan, num=8, seed=0, levels=255, cache_dir=tmp_path, chunk=4)
    chunks = sorted(p.name for p in tmp_path.rglob("*.npz"))
    assert chunks == [measure.chunk_files(tmp_path, 0, 8, 4)[0][2].name]  # the good chunk stays cached, no other


def test_a_damaged_cache_chunk_is_set_aside_and_sampled_again(mnist, tmp_path, capsys):
    plan = mnist.plan(sampler="ddim", steps=2)
    kw = dict(num=12, seed=0, levels=255, cache_dir=tmp_path, chunk=4)
    first, info = measure.generate(mnist, plan, **kw)
    (a, _, p0), (_, _, p1), (_, _, p2) = measure.chunk_files(pathlib.Path(info["cache"]), 0, 12, 4)
    p0.write_bytes(p0.read_bytes()[:200])  # truncated, as by a kill
    with np.load(p1) as d:  # the wrong number of samples
        np.savez(p1, levels=d["levels"][:3], seconds=d["seconds"], nfe=d["nfe"])
    with np.load(p2) as d:  # one grey level changed: the checksum no longer fits
        levels = d["levels"].copy()
        levels[0, 0, 0, 0] ^= 1
        np.savez(p2, levels=levels, seconds=d["seconds"], nfe=d["nfe"], sha256=d["sha256"])
    capsys.readouterr()
    again, info = measure.generate(mnist, plan, **kw)
    assert info["cached"] == 0 and np.array_equal(again, first)
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 3 and all("was damaged" in w and "sampled again" in w for w in warnings)
    assert all(p.with_name(p.name + ".damaged").exists() for p in (p0, p1, p2))
    assert measure.generate(mnist, plan, **kw)[1]["cached"] == 12  # healed
