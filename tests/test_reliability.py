"""Faults as a user meets them: a full disk and closed pipes. Each failure is one line naming the
file, a non-zero exit, and nothing half-written left behind. (Kills, NaN runs, damaged caches and
torn logs: test_train.py and test_measure.py.)"""

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


def test_torchrun_is_refused_until_several_processes_are_supported(cli_error, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    err = cli_error("train", "--dataset", "digits", "--out", tmp_path / "run")
    assert "WORLD_SIZE=2: ddpmkit runs in one process" in err and not (tmp_path / "run").exists()


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
