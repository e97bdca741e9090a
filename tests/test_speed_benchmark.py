"""benchmarks/speed.py: its network clock, a tiny run against diffusers, and its time-to-quality picks."""

import importlib.util
import json
import pathlib
import sys
import time

import pytest
import torch

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def speed():
    sys.path.insert(0, str(BENCH))  # speed.py imports few_step_mnist beside it
    spec = importlib.util.spec_from_file_location("speed", BENCH / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCH))


class Sleeper(torch.nn.Module):
    def forward(self, x, t):
        time.sleep(0.02)
        return x


def test_clock_counts_the_network_calls_and_nothing_else(speed):
    net = Sleeper()
    with speed.NetworkClock(net, torch.device("cpu")) as clock:
        t0 = time.perf_counter()
        for _ in range(3):
            net(torch.zeros(1), torch.zeros(1))
            time.sleep(0.01)  # the loop's own time
        total = time.perf_counter() - t0
    inside = clock.seconds()
    assert len(clock.spans) == 3 and inside >= 0.06  # three sleeps of 20 ms at least
    assert total - inside >= 0.03  # the three 10 ms sleeps between the calls are not in it
    net(torch.zeros(1), torch.zeros(1))
    assert len(clock.spans) == 3  # off outside the with-block: its hooks are gone
    assert not net._forward_hooks and not net._forward_pre_hooks


def test_tiny_run_pairs_every_algorithm(speed, tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "speed"
    assert speed.main(["--nets", "mnist", "--batches", "mnist=1", "--nfe", "2", "--repeat", "1", "--threads", "1",
                       "--loop-alone", "2", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    ours = [r for r in result["rows"] if r["source"] == "ddpmkit"]
    assert {r["variant"] for r in ours} == {name for name, _, _ in speed.PAIRS}
    for r in result["rows"]:
        # a run's wall time holds its network calls: never less than the time inside them
        assert r["in_run_overhead"] >= 1.0 and r["loop_ms_per_step"] >= 0.0
        assert len(r["network_times"]) == len(r["times"]) == 1
    for r in ours:
        theirs = next(q for q in result["rows"] if q["source"] == "diffusers" and q["variant"] == r["variant"])
        assert r["ours_over_diffusers"] == pytest.approx(r["wall_s"] / theirs["wall_s"])
    alone = result["loop_alone"]["rows"]
    assert {(r["shape"], r["batch"], r["sampler"]) for r in alone} == {
        (shape, 2, name) for shape in ("28x28x1", "32x32x3") for name, _, _ in speed.PAIRS}
    assert all(r["ours_over_diffusers"] == r["ours_ms"] / r["diffusers_ms"] for r in alone)
    report = out.with_suffix(".md").read_text()
    assert "## Summary" in report and "Our wall time over diffusers'" in report and "## mnist" in report
    assert "## The loops alone" in report
    # --merge: a run at another batch keeps the rows it does not remeasure
    assert speed.main(["--nets", "mnist", "--batches", "mnist=2", "--nfe", "2", "--repeat", "1", "--threads", "1",
                       "--loop-alone", "", "--merge", "--out", str(out)]) == 0
    merged = json.loads(out.with_suffix(".json").read_text())
    assert {r["batch"] for r in merged["rows"]} == {1, 2} and merged["rows"][:len(result["rows"])] == result["rows"]
    assert merged["loop_alone"] == result["loop_alone"] and merged["merged"][0].endswith("--out " + str(out))
    result = merged
    # time to quality alone adds its section and keeps the network rows
    assert speed.main(["--nets", "", "--loop-alone", "", "--quality", str(quality_file(tmp_path)), "--repeat", "1",
                       "--out", str(out)]) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["rows"] == result["rows"] and again["loop_alone"] == result["loop_alone"]
    assert again["time_to_quality"]["command"].endswith("--out " + str(out))
    assert "## Time to quality" in out.with_suffix(".md").read_text()


def quality_file(tmp_path) -> pathlib.Path:
    """A few_step_mnist.json of five rows."""
    rows = [  # FIDs made up; only the picks and the timing of the picked plans are checked
        {"sampler": "ddim", "grid": "trailing", "source": "ddpmkit", "nfe": 2, "num": 10000, "fid": 10.0,
         "timesteps": None},
        {"sampler": "ddim", "grid": "trailing", "source": "ddpmkit", "nfe": 3, "num": 10000, "fid": 9.0,
         "timesteps": [999, 500, 100]},
        {"sampler": "ddim", "grid": "trailing", "source": "ddpmkit", "nfe": 1, "num": 500, "fid": 1.0,
         "timesteps": None},  # too few samples to count
        {"sampler": "diffusers DDIM", "grid": "leading", "source": "diffusers", "nfe": 2, "num": 10000, "fid": 30.0,
         "timesteps": None},
        {"sampler": "diffusers DDIM", "grid": "trailing", "source": "diffusers", "nfe": 3, "num": 10000, "fid": 20.0,
         "timesteps": None},
    ]
    path = tmp_path / "few.json"
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_time_to_quality_picks_the_fewest_steps_that_reach(speed, tmp_path):
    pytest.importorskip("diffusers")
    path = quality_file(tmp_path)
    ttq = speed.time_to_quality(path, None, repeat=1, batch=2)
    assert ttq["best"]["fid"] == 9.0
    within, theirs = ttq["targets"]
    assert within["fid"] == pytest.approx(9.9)
    # ours: 3 NFE is the fewest that gets within 10% of 9.0; diffusers never does, so its most-NFE row bounds it
    assert within["ddpmkit"]["nfe"] == 3 and within["ddpmkit"]["reached"]
    assert within["diffusers"]["nfe"] == 3 and not within["diffusers"]["reached"]
    # to diffusers' best (20.0), our 2-NFE row is enough
    assert theirs["fid"] == 20.0 and theirs["ddpmkit"]["nfe"] == 2 and theirs["diffusers"]["reached"]
    for e in ttq["targets"]:
        assert e["diffusers_over_ours"] == e["diffusers"]["s_per_image"] / e["ddpmkit"]["s_per_image"]
    lines = "\n".join(speed.summary([], {**ttq, "command": "its command", "machine": "here"}))
    assert "not by 3" in lines and "> " in lines
