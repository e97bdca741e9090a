"""Faults as a user meets them: a full disk and closed pipes. Each failure is one line naming the
file, a non-zero exit, and nothing half-written left behind; kill -9 during training, distillation
and eval. (NaN runs, damaged caches and torn logs: test_train.py and test_measure.py.)"""

import os
import pathlib
import subprocess
import sys
import uuid

import pytest
import torch

from ddpmkit.checkpoint import load_tensors, save_checkpoint


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, filled to all but ``free`` bytes by ``fill(free)``; skipped where this
    machine does not let the tests mount one (it needs root, or CAP_SYS_ADMIN)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({(r.stderr or r.stdout).strip() or r.returncode})")

    def fill(free: int) -> pathlib.Path:
        st = os.statvfs(mount)
        with open(mount / "filler", "wb") as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - free))
        return mount

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_checkpoint_that_no_longer_fits_leaves_the_old_one_whole(small_disk):
    mount, fill = small_disk
    path = mount / "model.safetensors"
    config = {"net": {}, "schedule": {}, "data": {}, "prediction": "eps"}
    save_checkpoint(path, {"w": torch.zeros(1000)}, config)
    fill(2000)
    with pytest.raises(OSError, match=f"could not write {path}"):
        save_checkpoint(path, {"w": torch.ones(100_000)}, config)  # 400 kB into 2 kB
    tensors, _ = load_tensors(path)
    assert torch.equal(tensors["w"], torch.zeros(1000))
    assert sorted(p.name for p in mount.iterdir()) == ["filler", "model.safetensors"]


def test_sample_to_a_full_folder_fails_naming_the_file_and_leaves_no_samples(small_disk, cli_error):
    mount, fill = small_disk
    fill(6000)  # room for a dozen 28x28 PNGs of about 400 bytes, not for 64
    err = cli_error("sample", "--model", "mnist", "--sampler", "ddim", "--steps", "1", "--num", "64",
                    "--out", mount / "samples")
    assert f"could not write {mount / 'samples'}" in err and "removed the" in err
    assert list((mount / "samples").iterdir()) == []


def test_a_closed_pipe_ends_quietly():
    r = subprocess.run(f"{sys.executable} -m ddpmkit samplers | head -c 10", shell=True, capture_output=True,
                       text=True, timeout=300)
    assert r.stderr == "" and len(r.stdout) == 10


def test_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / f"{uuid.uuid4().hex}.safetensors"
    env = {**os.environ, "DDPMKIT_DEBUG": "1"}
    r = subprocess.run([sys.executable, "-m", "ddpmkit", "sample", "--model", str(missing), "--out",
                        str(tmp_path / "x.png")], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0 and "Traceback" in r.stderr
    r = subprocess.run([sys.executable, "-m", "ddpmkit", "sample", "--model", str(missing), "--out",
                        str(tmp_path / "x.png")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not pathlib.Path("/proc/self").is_dir(), reason="needs Linux's /proc, a folder no one can write")
def test_an_unwritable_out_is_refused_before_sampling_even_for_root(cli_error):
    # root passes every permission test; creating a file is the test that holds
    err = cli_error("sample", "--model", "mnist", "--num", "2", "--out", "/proc/nope/a.png")
    assert "--out /proc/nope/a.png cannot be written: /proc is not a writable folder" in err


def test_torchrun_is_refused_by_the_commands_that_run_in_one_process(cli_error, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    err = cli_error("distill", "--teacher", "mnist", "--out", tmp_path / "run")
    assert "WORLD_SIZE=2: `ddpmkit distill` runs in one process" in err and not (tmp_path / "run").exists()


def test_kill_9_during_eval_resumes_from_the_cached_chunks(tmp_path):
    """eval killed (SIGKILL) after its first 500-sample chunk: the rerun reads that chunk, samples
    the rest, and leaves no temporary file in the cache."""
    import json
    import signal
    import time

    from ddpmkit.train import train

    model = train(tmp_path / "run", {"dataset": "digits", "net": "tiny", "steps": 2, "batch_size": 16}, quiet=True)
    cache, out = tmp_path / "cache", tmp_path / "e.json"
    argv = [sys.executable, "-m", "ddpmkit", "eval", "--model", str(model), "--sampler", "ddim", "--steps", "2",
            "--num", "600", "--batch-size", "100", "--cache", str(cache), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300  # generous for a loaded machine
        while time.monotonic() < deadline and not list(cache.glob("*/seeds-*-00500.npz")) and proc.poll() is None:
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    if out.exists():
        pytest.skip("eval finished before it could be killed")
    assert list(cache.glob("*/seeds-*.npz")), "eval wrote no chunk in 300 s"
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["cached_samples"] >= 500
    assert not list(cache.rglob(".*.tmp*"))


KILLED_RUNS = {  # (module, class, options) of small runs, each checkpointing at every step
    "train": ("ddpmkit.train", "Trainer", {"dataset": "digits", "net": "tiny", "batch_size": 32}),
    "distill": ("ddpmkit.distill", "Distiller", {"method": "ect", "batch_size": 8}),
}


def killed_run(kind: str, teacher, steps: int):
    """The run's class and its options (``teacher``: the distillation's)."""
    module, name, opts = KILLED_RUNS[kind]
    opts = dict(opts, steps=steps, checkpoint_every=1, log_every=1, sample_every=100000)
    if kind == "distill":
        opts["teacher"] = str(teacher)
    return getattr(__import__(module, fromlist=[name]), name), opts


def start_and_kill(kind: str, out: pathlib.Path, teacher, after: float, steps: int = 100000) -> None:
    """Start (or resume) a KILLED_RUNS run in a subprocess; SIGKILL it ``after`` seconds after it
    has a checkpoint (a resumed run: after it wrote a newer one)."""
    import contextlib
    import signal
    import time

    from ddpmkit.checkpoint import CheckpointError, read_config

    ckpt = out / "checkpoint.safetensors"
    before = read_config(ckpt)["step"] if ckpt.exists() else 0
    run, opts = killed_run(kind, teacher, steps)
    code = (f"from {run.__module__} import {run.__name__} as Run; "
            f"Run({str(out)!r}, {opts!r}, resume={before > 0}, quiet=True).run()")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300  # generous: a loaded machine is slow to import torch
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(CheckpointError):  # none yet (never half of one: writes are atomic)
                if read_config(ckpt)["step"] > before:
                    break
            time.sleep(0.05)
        time.sleep(after)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert ckpt.exists(), "the run wrote no checkpoint in 300 s"


@pytest.mark.parametrize("kind", KILLED_RUNS)
def test_kill_9_while_checkpointing_leaves_a_run_that_resumes(tmp_path, teacher, kind):
    """A training or distillation process killed at once (SIGKILL, no cleanup) while it checkpoints
    every step: the checkpoint it left loads, the run resumes by a step, and that start removes
    every temporary file the killed writer left (safetensors' own included)."""
    from ddpmkit.checkpoint import read_config

    out = tmp_path / "run"
    start_and_kill(kind, out, teacher, after=1.0)  # a few checkpoints later, likely in the middle of one
    step = read_config(out / "checkpoint.safetensors")["step"]
    run, _ = killed_run(kind, teacher, step + 1)
    run(out, {"steps": step + 1}, resume=True, quiet=True).run()
    assert read_config(out / "checkpoint.safetensors")["step"] == step + 1
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KILLED_RUNS)
def test_a_run_killed_again_and_again_ends_as_if_never_killed(tmp_path, teacher, kind, one_thread):
    """Eight SIGKILLs at random moments (0 to 1.5 s after each start's first new checkpoint), each
    followed by a resume: every checkpoint and model file left loads, and the run finished from
    there has the weights, bit for bit, and the log of one that ran straight through (all of it on
    one thread, as the killed processes ran: float sums may differ between thread counts)."""
    import json
    import random

    from ddpmkit.checkpoint import read_config
    from ddpmkit.models import load_model

    rng = random.Random(0)
    out, straight = tmp_path / "killed", tmp_path / "straight"
    for _ in range(8):
        start_and_kill(kind, out, teacher, after=rng.uniform(0.0, 1.5))
        read_config(out / "checkpoint.safetensors")
        if (out / "model.safetensors").exists():
            load_model(out / "model.safetensors")
    steps = read_config(out / "checkpoint.safetensors")["step"] + 2
    run, opts = killed_run(kind, teacher, steps)
    run(out, {"steps": steps}, resume=True, quiet=True).run()
    run(straight, opts, quiet=True).run()
    a, b = load_model(out / "model.safetensors"), load_model(straight / "model.safetensors")
    for (name, v), (_, w) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert torch.equal(v, w), name
    log = [json.loads(ln)["step"] for ln in (out / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, steps + 1))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_what_a_library_writes_beside_a_temp_file_goes_with_it(tmp_path):
    """safetensors' save_file writes a full-size sibling ``.tmpXXXXXX`` of the path it is given and
    renames it: a writer killed (SIGKILL) at that moment leaves it in atomic_path's private folder,
    which the next start removes, so the user's folder holds only what it held before."""
    from ddpmkit.files import remove_stale_temps

    (tmp_path / "model.safetensors").write_text("the user's saved model")
    code = ("import os, signal, sys; from ddpmkit.files import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    (tmp.parent / '.tmpAbC123').write_bytes(b'half of a checkpoint')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.safetensors")], timeout=300)
    assert r.returncode == -9
    assert len(remove_stale_temps(tmp_path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert (tmp_path / "model.safetensors").read_text() == "the user's saved model"


def test_every_option_of_every_command_refuses_bad_values_cleanly(one_thread):
    """benchmarks/bad_inputs.py's campaign (words, NaN, inf and negatives for numbers, 0 and 1.5 for
    counts, unknown names, missing, foreign and truncated files, unwritable outputs, for each of the
    commands' options): each is refused with exit 2 and one line naming it, before any network call
    (a tripwire on torch.nn.Module.__call__), leaving no file."""
    import importlib.util

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bad_inputs.py"
    spec = importlib.util.spec_from_file_location("bad_inputs", path)
    bad_inputs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bad_inputs)
    cases = bad_inputs.campaign()
    assert len(cases) > 500 and {c["command"] for c in cases} >= {"train", "distill", "sample", "eval", "bench",
                                                                  "tune", "moments", "export", "demo"}
    assert [(c["command"], c["option"], c["value"], c["outcome"], c["stderr"][:1]) for c in cases
            if c["outcome"] != "clean"] == []
