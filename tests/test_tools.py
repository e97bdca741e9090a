"""The maintainers' tools that the model card's numbers come from."""

import json
import pathlib
import subprocess
import sys
import tarfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_lease_tool_measures_a_given_model_into_chunks_that_eval_reads(tmp_path):
    """tools/mnist_model.py --model: no training, DDPM with all (here 2) steps sampled by worker
    processes into the cache, where ``ddpmkit eval`` finds them; results.tar holds the score and
    the chunks."""
    out, work = tmp_path / "out", tmp_path / "work"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "mnist_model.py"), "--device", "cpu", "--model", "mnist",
                        "--out", str(out), "--work", str(work), "--run", str(tmp_path / "run"), "--ddpm-full", "--variances", "large",
                        "--ddpm-steps", "2", "--num", "12", "--workers", "2", "--deadline", "300"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "run").exists() and sorted(p.name for p in out.iterdir()) == ["commands.json",
                                                                                          "results.tar"]
    with tarfile.open(out / "results.tar") as tar:
        names = tar.getnames()
    # the eval after the workers sampled nothing: the workers' chunks lie under eval's cache key, and
    # that folder's chunks are what the tar carries to the next lease
    report = json.loads((work / "ddpm2-large.json").read_text())
    assert report["options"] == {"variance": "large"} and report["cached_samples"] == 12
    (folder,) = (work / "cache").iterdir()
    assert [n for n in names if n.startswith("cache/")] == [f"cache/{folder.name}/seeds-000000000-00012.npz"]
    assert any(n.endswith("/work/ddpm2-large.json") for n in names), names
    assert "--variances 'tiny': give small, large or both" in subprocess.run(
        [sys.executable, str(ROOT / "tools" / "mnist_model.py"), "--model", "mnist", "--out", str(tmp_path / "x"),
         "--variances", "tiny"], capture_output=True, text=True, timeout=600).stderr


def test_one_split_is_of_confident_balanced_predictions_is_the_class_count():
    """IS = exp(E KL(p(y|x) || p(y))): one-hot predictions spread evenly over k classes give exactly k
    (KL = log k for every sample); a bootstrap resample is unbalanced, so it reads at most k."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from is_small_sample import one_split_is
    finally:
        sys.path.remove(str(ROOT / "tools"))
    probs = np.eye(10)[np.arange(500) % 5]  # 5 of 10 classes, 100 samples each
    value, se = one_split_is(probs, resamples=50)
    assert abs(value - 5.0) < 1e-9 and 0 < se < 0.05


def test_fid_noise_reads_an_eval_reports_samples_from_the_cache(tmp_path):
    """tools/fid_noise.py (and is_small_sample.py, which uses it) rebuild an eval report's plan and
    read its samples through the pipeline's cache, sampling nothing; a missing chunk is refused."""
    import json

    import numpy as np
    import pytest

    from ddpmkit import measure
    from ddpmkit.models import load_model

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from fid_noise import cached_predictions, markdown
    finally:
        sys.path.remove(str(ROOT / "tools"))
    model, ref = load_model("mnist"), measure.load_reference("mnist")
    plan = model.plan(sampler="ddim", timesteps=[999, 400])
    report = json.loads(json.dumps(measure.evaluate(model, plan, num=4, seed=1, ref=ref, cache_dir=tmp_path)))
    feats, probs = cached_predictions(report, ref, tmp_path)
    levels, info = measure.generate(model, plan, num=4, seed=1, levels=ref.levels, cache_dir=tmp_path)
    assert info["cached"] == 4 and np.array_equal(feats.numpy(), measure.features_of(levels, ref)[0].numpy())
    for chunk in pathlib.Path(info["cache"]).iterdir():
        chunk.unlink()
    with pytest.raises(SystemExit, match="1 sample chunks of ddim 2 are not in"):
        cached_predictions(report, ref, tmp_path)
    result = {"reference": "R", "resamples": 10, "floor": 1.0, "pairs": [], "real_subsets": None,
              "rows": [{"sampler": "ddim 2", "num": 4, "fid": 3.0, "fid_se": 0.5, "block_fids": [1.0, 2.0],
                        "block_fid_se": 0.25}]}
    assert markdown(result, "cmd").splitlines()[4:] == [
        "| sampler | FID (4) | FID of each disjoint 2000-seed block | bootstrap error at 2000 |",
        "|---|---|---|---|", "| ddim 2 | 3.00 ± 0.50 | 1.0, 2.0 (spread 0.7) | 0.25 |"]
