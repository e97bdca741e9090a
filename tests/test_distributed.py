"""Several processes (torchrun, gloo on the CPU) and samples that are bitwise the same for any batch
size or process count.

The oracle throughout is the one-process run of the same command: distributed sampling must equal
it bit for bit, distributed training and eval to float rounding. Each torchrun test starts two
processes of the real ``ddpmkit`` command (``--standalone`` picks a free port)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddpmkit import distributed
from ddpmkit.models import load_model
from ddpmkit.sampling import MicroBatched, sample

pytestmark = pytest.mark.usefixtures("one_thread")

TIMEOUT = 900  # a loaded machine: two processes importing torch and running a few network calls each


def ddpmkit(*args, procs: int = 1, cwd=None) -> subprocess.CompletedProcess:
    """``ddpmkit ARGS`` in its own process, or under torchrun in ``procs`` processes; must succeed."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                "-m", "ddpmkit"] if procs > 1 else [sys.executable, "-m", "ddpmkit"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if os.path.isdir("/sys/class/net/lo"):  # gloo on the loopback: no need for the host name to resolve
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    r = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


# -- micro-batches: bitwise batch-size invariance in one process -----------------------------------
def test_the_network_sees_only_micro_batches_of_one_size_and_the_padding_is_dropped():
    seen = []

    def net(x, t, labels):
        seen.append(len(x))
        return x * 2 + t.view(-1, 1) + labels.view(-1, 1)

    x, t, labels = torch.randn(10, 3), torch.arange(10.0), torch.arange(10)
    out = MicroBatched(net, 4)(x, t, labels)
    assert seen == [4, 4, 4]
    assert torch.equal(out, x * 2 + t.view(-1, 1) + labels.view(-1, 1))


@pytest.mark.parametrize("name, options", [
    ("mnist", {"sampler": "dpmpp-2m-sde", "steps": 3}),  # noise at every step
    ("mnist-cond", {"sampler": "ddim", "steps": 2, "guidance": 2.0}),  # guided: the batch doubled per call
])
def test_a_sample_is_bitwise_the_same_at_any_batch_size(name, options):
    model = load_model(name)
    seeds = range(5, 14)
    whole = model.sample(seeds=seeds, batch_size=9, **options)
    for batch in (1, 4):
        assert torch.equal(model.sample(seeds=seeds, batch_size=batch, **options), whole), batch


def test_micro_batch_values():
    model = load_model("mnist")
    with pytest.raises(ValueError, match=r"micro_batch=0 is not valid; need a positive integer, None"):
        model.sample(num=2, steps=1, micro_batch=0)
    # None (the whole batch per call) is the same network on the same inputs: close, not bitwise
    a = sample(model.net, model.schedule, shape=(3, 1, 28, 28), steps=2, micro_batch=None)
    b = sample(model.net, model.schedule, shape=(3, 1, 28, 28), steps=2)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_edm_split_deals_out_batches_in_turn(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    # 10 seeds at batch 3 over 2 processes: 4 batches (a multiple of 2) of 3, 3, 2, 2; rank 1 takes 2nd and 4th
    assert distributed.shard_batches(range(10), 3) == [[3, 4, 5], [8, 9]]
    assert distributed.my_slice(8) == slice(4, 8)
    with pytest.raises(ValueError, match="--batch-size 7 does not split evenly over 2 processes"):
        distributed.check_divides(7)


def test_no_option_of_the_distributed_commands_is_taken_by_torchruns_parser():
    """torchrun's parser reads every argument that looks like one of its options, or an abbreviation
    of one, even after the module name: an option of ours that is a prefix of one of its would be
    taken (or refused as ambiguous). --num is (of --numa-binding), so it has -n."""
    from torch.distributed.run import get_args_parser

    from ddpmkit.cli import DISTRIBUTED, build_parser

    theirs = [o for a in get_args_parser()._actions for o in a.option_strings]
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name in DISTRIBUTED:
        ours = [o for a in commands[name]._actions for o in a.option_strings if o not in ("-h", "--help")]
        taken = [o for o in ours if o != "--num" and any(t.startswith(o) for t in theirs)]
        assert not taken, (name, taken)
        if "--num" in ours:
            assert "-n" in ours and not any(t.startswith("-n") for t in theirs), name


# -- torchrun, two processes ---------------------------------------------------------------------
def test_distributed_sampling_is_bitwise_the_one_process_output(tmp_path):
    common = ("sample", "--model", "mnist", "--sampler", "dpmpp-2m-sde", "--steps", "3", "-n", "13", "--seed", "4")
    ddpmkit(*common, "--batch-size", "13", "--out", tmp_path / "one.npz")
    for batch in (2, 5):
        r = ddpmkit(*common, "--batch-size", batch, "--out", tmp_path / f"two-{batch}.npz", procs=2)
        assert r.stdout.count("wrote 13 samples") == 1  # rank 0 alone writes and says so
        one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / f"two-{batch}.npz")
        assert np.array_equal(one["seeds"], two["seeds"]) and np.array_equal(one["samples"], two["samples"]), batch


def test_distributed_eval_gives_the_one_process_fid_and_shares_the_cache(tmp_path):
    common = ("eval", "--model", "mnist", "--sampler", "ddim", "--steps", "2", "-n", "30", "--cache", tmp_path / "c",
              "--batch-size", "4", "--quiet")
    ddpmkit(*common, "--out", tmp_path / "two.json", procs=2)  # samples, writes the cache
    ddpmkit(*common, "--out", tmp_path / "one.json")  # reads the cache the two processes wrote
    two, one = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("two", "one"))
    assert two["cached_samples"] == 0 and one["cached_samples"] == 30
    # the same samples; the feature network runs in float32 on each process's share (rounding ~1e-7), and
    # the FID comes from float64 sums pooled over the processes instead of one two-pass covariance
    for key in ("fid", "is", "kid", "precision", "recall", "class_frequencies"):
        assert one[key] == pytest.approx(two[key], rel=1e-6), key


TRAIN = ("train", "--dataset", "digits", "--batch-size", "8", "--log-every", "1", "--sample-every", "1000",
         "--checkpoint-every", "2", "--warmup", "1", "--lr", "1e-3", "--quiet")


def checkpoint(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "checkpoint.safetensors")


def assert_same_run(a, b, atol=1e-5):
    ta, tb = checkpoint(a), checkpoint(b)
    assert sorted(ta) == sorted(tb)
    worst = max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta)
    assert worst <= atol, worst


def test_two_process_training_is_the_one_process_run_and_resumes_with_one_or_two(tmp_path):
    """Four steps of two processes at global batch 8 against four of one process at batch 8 (dropout
    0.1, the default: the masks are drawn for the whole batch, so they agree too); a run started with
    two processes, resumed with one (float rounding) or with two (bit for bit)."""
    import shutil

    ddpmkit(*TRAIN, "--steps", "4", "--out", tmp_path / "one")
    r = ddpmkit(*TRAIN, "--steps", "4", "--out", tmp_path / "two", procs=2)
    assert r.stdout.count("wrote") == 1
    assert_same_run(tmp_path / "one", tmp_path / "two")
    log = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in log] == [1, 2, 3, 4]  # one writer: no line twice
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())

    ddpmkit(*TRAIN, "--steps", "2", "--out", tmp_path / "then-one", procs=2)
    shutil.copytree(tmp_path / "then-one", tmp_path / "then-two")
    ddpmkit(*TRAIN, "--steps", "4", "--out", tmp_path / "then-one", "--resume")
    ddpmkit(*TRAIN, "--steps", "4", "--out", tmp_path / "then-two", "--resume", procs=2)
    assert_same_run(tmp_path / "one", tmp_path / "then-one")
    assert_same_run(tmp_path / "two", tmp_path / "then-two", atol=0)
