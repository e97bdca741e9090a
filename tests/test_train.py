"""The training loop: loss, min-SNR weights, deterministic data order, exact resume, atomic checkpoints."""

import json
import math

import pytest
import torch

from ddpmkit.checkpoint import load_tensors, read_config
from ddpmkit.prediction import training_target
from ddpmkit.train import Trainer, batch_indices, ema_decay_at, snr_weight, train

FAST = dict(dataset="digits", net="tiny", batch_size=32, lr=1e-3, warmup=5, log_every=5, sample_every=1000,
            checkpoint_every=1000)


def test_min_snr_weights_agree_across_parameterisations():
    """Hang et al.'s weighting is min(SNR, gamma) * ||x0 - x0_hat||^2 whatever the network predicts:
    ||eps err||^2 = SNR ||x0 err||^2 and ||v err||^2 = (SNR + 1) ||x0 err||^2 at fixed x_t."""
    g = torch.Generator().manual_seed(0)
    x0, eps, x0_hat = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(3))
    abar = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.01, 1e-4], dtype=torch.float64)[:, None]
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    eps_hat = (x_t - abar.sqrt() * x0_hat) / (1 - abar).sqrt()
    losses = {}
    for pred in ("eps", "x0", "v"):
        out = training_target(x0_hat, eps_hat, abar, pred)  # what a network of this kind would output
        err = ((out - training_target(x0, eps, abar, pred)) ** 2).mean(1)
        losses[pred] = snr_weight(abar.flatten(), pred, 5.0) * err
    snr = abar.flatten() / (1 - abar.flatten())
    expect = snr.clamp(max=5.0) * ((x0 - x0_hat) ** 2).mean(1)
    for pred, value in losses.items():
        torch.testing.assert_close(value, expect, rtol=1e-9, atol=1e-12, msg=pred)
    assert torch.equal(snr_weight(abar.flatten(), "eps", None), torch.ones(6, dtype=torch.float64))


def test_batch_indices_are_seeded_epoch_permutations():
    n, b = 100, 32  # 3 full batches per epoch, the last 4 images of each permutation dropped
    epoch = torch.cat([batch_indices(n, b, 0, s) for s in (1, 2, 3)])
    assert len(set(epoch.tolist())) == 96
    assert torch.equal(batch_indices(n, b, 0, 2), batch_indices(n, b, 0, 2))
    assert not torch.equal(batch_indices(n, b, 0, 1), batch_indices(n, b, 0, 4))  # a new epoch, a new order
    assert not torch.equal(batch_indices(n, b, 0, 1), batch_indices(n, b, 1, 1))
    assert len(batch_indices(5, 8, 0, 1)) == 8  # fewer images than a batch


def test_ema_decay_ramp():
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 10**6) == 0.999


def test_loss_falls_on_digits(tmp_path):
    train(tmp_path / "run", dict(FAST, steps=60), quiet=True)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(5, 61, 5))
    first, last = log[0]["loss"], sum(r["loss"] for r in log[-3:]) / 3
    assert last < 0.6 * first, (first, last)
    assert all(math.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in log)
    config = read_config(tmp_path / "run" / "model.safetensors")
    assert config["step"] == 60 and config["data"]["shape"] == [1, 8, 8] and config["prediction"] == "eps"
    assert (tmp_path / "run" / "samples" / "step-0000060.png").exists()


def test_resume_is_exact(tmp_path):
    opts = dict(FAST, steps=16, checkpoint_every=8, dropout=0.1)
    state = torch.get_rng_state()
    train(tmp_path / "straight", opts, quiet=True)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is never touched
    train(tmp_path / "halves", dict(opts, steps=8), quiet=True)
    train(tmp_path / "halves", {"steps": 16}, resume=True, quiet=True)
    a, ca = load_tensors(tmp_path / "straight" / "checkpoint.safetensors")
    b, cb = load_tensors(tmp_path / "halves" / "checkpoint.safetensors")
    assert set(a) == set(b) and any(k.startswith("optim.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert ca["step"] == cb["step"] == 16
    log = [json.loads(x)["step"] for x in (tmp_path / "halves" / "log.jsonl").read_text().splitlines()]
    assert log == [5, 8, 10, 15, 16]


def test_interrupt_keeps_a_consistent_checkpoint(tmp_path, monkeypatch):
    # Ctrl-C inside a step: the weights may be half updated, so the last periodic checkpoint stands
    trainer = Trainer(tmp_path / "a", dict(FAST, steps=50, checkpoint_every=4), quiet=True)
    original = trainer.train_step

    def interrupted_step(step):
        if step == 7:
            raise KeyboardInterrupt
        return original(step)

    monkeypatch.setattr(trainer, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert read_config(tmp_path / "a" / "checkpoint.safetensors")["step"] == 4
    # Ctrl-C between steps (here while drawing a sample grid): the current step is saved
    trainer = Trainer(tmp_path / "b", dict(FAST, steps=50, checkpoint_every=4, sample_every=6), quiet=True)

    def interrupted_grid(path, n=64):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "sample_grid", interrupted_grid)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert read_config(tmp_path / "b" / "checkpoint.safetensors")["step"] == 6


def test_run_folder_is_protected_and_resume_checks_options(tmp_path):
    train(tmp_path / "run", dict(FAST, steps=3), quiet=True)
    with pytest.raises(ValueError, match="already holds a training run"):
        Trainer(tmp_path / "run", dict(FAST, steps=3), quiet=True)
    with pytest.raises(ValueError, match=r"--resume: lr=0.5 differs from the run's lr=0.001"):
        Trainer(tmp_path / "run", {"lr": 0.5}, resume=True, quiet=True)
    with pytest.raises(ValueError, match="nothing to resume"):
        Trainer(tmp_path / "other", {}, resume=True, quiet=True)
    with pytest.raises(ValueError, match="unknown training option 'learning_rate'"):
        Trainer(tmp_path / "x", {"learning_rate": 1.0}, quiet=True)
    with pytest.raises(ValueError, match="ema_decay=1.5"):
        Trainer(tmp_path / "x", {"ema_decay": 1.5}, quiet=True)


def test_warm_start_and_bf16(tmp_path):
    """--init-from starts the network (and its EMA) at another model's EMA weights; bf16 autocast
    trains on the CPU too; a bad precision is refused."""
    from ddpmkit.models import load_model

    base = train(tmp_path / "a", {"dataset": "digits", "net": "tiny", "steps": 3, "batch_size": 16}, quiet=True)
    t = Trainer(tmp_path / "b", {"dataset": "digits", "net": "tiny", "steps": 2, "batch_size": 16,
                                 "init_from": str(base), "precision": "bf16"}, quiet=True)
    source = load_model(base).net.state_dict()
    for k, v in t.net.state_dict().items():
        assert torch.equal(v, source[k]), k
        assert torch.equal(t.ema.state_dict()[k], source[k]), k
    t.run()
    assert load_model(tmp_path / "b").config["train"]["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision='fp16' is not valid; choose one of: fp32, bf16"):
        Trainer(tmp_path / "c", {"dataset": "digits", "precision": "fp16"})


def test_conditional_training_starts_from_an_unconditional_model(tmp_path):
    """--conditional --init-from an unconditional model: the class embedding starts at zero, so the
    network's first predictions are that model's for every label, the null label included."""
    from ddpmkit.models import load_model

    base = train(tmp_path / "a", {"dataset": "digits", "net": "tiny", "steps": 3, "batch_size": 16}, quiet=True)
    t = Trainer(tmp_path / "b", {"dataset": "digits", "net": "tiny", "steps": 2, "batch_size": 16,
                                 "conditional": True, "init_from": str(base)}, quiet=True)
    uncond = load_model(base).net
    x, steps = torch.randn(11, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(11) * 90
    with torch.no_grad():
        t.net.eval()
        assert torch.equal(t.net(x, steps, torch.arange(11)), uncond(x, steps))  # labels 0..9 and null (10)
    t.run()
    model = load_model(tmp_path / "b")
    assert model.conditional and model.num_classes == 10 and model.config["train"]["label_dropout"] == 0.1
    assert model.sample(sampler="ddim", steps=2, seeds=[0, 1], classes=[3]).shape == (2, 1, 8, 8)


def test_a_zero_started_class_embedding_learns_at_its_own_rate(tmp_path):
    """Adam's first step moves every weight with a gradient by its learning rate (m/sqrt(v) = sign g),
    so after one step the zero-started class embedding has moved by class_lr = ZERO_START_LR_SCALE
    x lr, the rest of the network by lr; a run resumes with both rates, and a conditional run from
    scratch (or --class-lr = --lr) keeps one."""
    from ddpmkit.train import ZERO_START_LR_SCALE

    # lr 1e-2: the zero-initialised output convolutions grow enough that the gradient reaching the
    # embedding (about 1e-11 after 3 steps at 1e-4) is far above Adam's eps = 1e-8
    base = train(tmp_path / "a", {"dataset": "digits", "net": "tiny", "steps": 3, "batch_size": 16, "lr": 1e-2,
                                  "warmup": 0}, quiet=True)
    opts = {"dataset": "digits", "net": "tiny", "steps": 1, "batch_size": 64, "warmup": 0, "lr": 1e-4,
            "weight_decay": 0.0, "conditional": True, "init_from": str(base)}
    t = Trainer(tmp_path / "b", opts, quiet=True)
    assert t.cfg.class_lr == pytest.approx(ZERO_START_LR_SCALE * 1e-4) and len(t.opt.param_groups) == 2
    before = {k: v.clone() for k, v in t.net.state_dict().items()}
    t.run()
    moved = {k: (v - before[k]).abs().max().item() for k, v in t.net.state_dict().items() if v.is_floating_point()}
    assert moved.pop("class_emb.weight") == pytest.approx(ZERO_START_LR_SCALE * 1e-4, rel=1e-3)
    assert max(moved.values()) == pytest.approx(1e-4, rel=1e-3)
    resumed = Trainer(tmp_path / "b", {"steps": 2}, resume=True, quiet=True)
    assert [g["lr_scale"] for g in resumed.opt.param_groups[1:]] == [ZERO_START_LR_SCALE]
    resumed.run()

    scratch = Trainer(tmp_path / "c", {**opts, "init_from": None}, quiet=True)
    same = Trainer(tmp_path / "d", {**opts, "class_lr": 1e-4}, quiet=True)
    assert scratch.cfg.class_lr == same.cfg.class_lr == 1e-4
    assert len(scratch.opt.param_groups) == len(same.opt.param_groups) == 1
    with pytest.raises(ValueError, match="class_lr=-1.0 must be a finite number > 0"):
        Trainer(tmp_path / "e", {**opts, "class_lr": -1.0})


def test_label_dropout_replaces_labels_by_the_null_label(tmp_path):
    def labels(p):
        t = Trainer(tmp_path / str(p), {"dataset": "digits", "net": "tiny", "batch_size": 1000, "conditional": True,
                                        "label_dropout": p}, quiet=True)
        g = torch.Generator().manual_seed(0)
        return t.batch_labels(1, g), t.data.labels[t.batch_indices(1)]

    kept, data = labels(0.0)
    assert torch.equal(kept, data)
    assert (labels(1.0)[0] == 10).all()
    some, data = labels(0.3)
    dropped = some == 10
    assert torch.equal(some[~dropped], data[~dropped])
    assert abs(dropped.float().mean().item() - 0.3) < 0.05  # 3.4 binomial standard errors
    with pytest.raises(ValueError, match="label_dropout=1.5 must be in \\[0, 1\\]"):
        Trainer(tmp_path / "x", {"dataset": "digits", "conditional": True, "label_dropout": 1.5})


def test_folder_labels_come_from_subfolders(tmp_path):
    import numpy as np
    from PIL import Image

    from ddpmkit.data import load_dataset

    for name, value in (("cats", 0), ("dogs", 255)):
        (tmp_path / "two" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((4, 4), value, np.uint8)).save(tmp_path / "two" / name / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path / 'two'}")
    assert data.class_names == ("cats", "dogs") and data.labels.tolist() == [0, 0, 1, 1]
    assert data.images[2].min() == 255
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "flat" / "0.png")
    assert load_dataset(f"folder:{tmp_path / 'flat'}").labels is None
    with pytest.raises(ValueError, match="--conditional needs labels, and folder:.*flat has none"):
        Trainer(tmp_path / "r", {"dataset": f"folder:{tmp_path / 'flat'}", "net": "tiny", "conditional": True})


def test_a_diverging_run_skips_non_finite_steps_then_stops_keeping_its_checkpoint(tmp_path):
    """lr 1e6 goes non-finite within a few steps: those steps are skipped (logged as such, the log
    stays strict JSON), the run stops after MAX_NONFINITE in a row naming the step and the kept
    checkpoint, and no file it wrote holds NaN."""
    from ddpmkit.checkpoint import CheckpointError, save_checkpoint
    from ddpmkit.models import load_model

    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"step \d+: the loss or gradient was not finite 5 steps in a row, so training "
                                         r"stopped \(lower --lr, now 1e\+06\?\); .*checkpoint.safetensors \(step \d+\)"):
        train(out, {**FAST, "steps": 40, "lr": 1e6, "warmup": 0, "checkpoint_every": 1, "log_every": 1}, quiet=True)

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"log.jsonl holds {c}"))

    lines = [strict(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    skipped = [ln["step"] for ln in lines if "skipped" in ln]
    assert len(skipped) >= 5 and skipped[-5:] == list(range(skipped[-1] - 4, skipped[-1] + 1))
    model = load_model(out)  # finite weights, or load_model would refuse them
    assert model.config["step"] < skipped[-1]
    tensors, config = load_tensors(out / "model.safetensors")
    tensors[next(iter(tensors))] = torch.full_like(next(iter(tensors.values())), float("nan"))
    save_checkpoint(tmp_path / "nan.safetensors", tensors, config)
    with pytest.raises(CheckpointError, match="holds NaN or inf .* so the model cannot be sampled"):
        load_model(tmp_path / "nan.safetensors")


def test_a_killed_writers_temp_files_go_at_the_next_start(tmp_path):
    import os

    from ddpmkit.files import atomic_path, remove_stale_temps

    dead = 2**22 + 12345  # above Linux's default pid_max (2^22): no process has it
    stale = tmp_path / f".checkpoint.safetensors.{dead}.abc123.tmp.safetensors"  # an older version's file
    stale_folder = tmp_path / f".model.safetensors.{dead}.ghi789.tmp"
    live = tmp_path / f".model.safetensors.{os.getpid()}.def456.tmp.safetensors"
    other = tmp_path / ".notes.tmp"
    stale_folder.mkdir()
    for p in (stale, live, other, stale_folder / ".tmpAbC123"):  # the last as safetensors' own temp file
        p.write_text("x")
    assert sorted(remove_stale_temps(tmp_path)) == sorted([stale, stale_folder])
    assert live.exists() and other.exists() and not stale_folder.exists()
    with atomic_path(tmp_path / "a.txt") as tmp:  # a writer's temp folder carries its pid
        assert tmp.name == "a.txt" and tmp.parent.parent == tmp_path
        assert tmp.parent.name.startswith(f".a.txt.{os.getpid()}.") and tmp.parent.name.endswith(".tmp")
        tmp.write_text("a")
    assert (tmp_path / "a.txt").read_text() == "a" and not tmp.parent.exists()
    # a run folder: a stale temp file beside its checkpoint, a torn last log line
    out = tmp_path / "run"
    train(out, {**FAST, "steps": 3, "checkpoint_every": 1, "log_every": 1}, quiet=True)
    (out / f".checkpoint.safetensors.{dead}.abc123.tmp.safetensors").write_text("half")
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 4, "lo')
    train(out, {**FAST, "steps": 5, "checkpoint_every": 1, "log_every": 1}, resume=True, quiet=True)
    assert not list(out.glob(".*.tmp*"))
    assert [json.loads(ln)["step"] for ln in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_a_fresh_start_sets_an_orphaned_log_aside(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n')  # killed before step 500
    train(out, {**FAST, "steps": 2, "log_every": 1}, quiet=True)
    assert [json.loads(ln)["step"] for ln in (out / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert (out / "log.jsonl.stale").read_text().startswith('{"step": 1, "loss": 0.5}')


def test_sigterm_saves_the_checkpoint_of_the_last_step(tmp_path):
    """``kill PID`` (SIGTERM, also what a batch system sends before it stops a job) ends a training
    run like Ctrl-C: the checkpoint of the step it was at is written, the exit status is 143 with one
    line, and the run resumes from that step."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ddpmkit", "train", "--dataset", "digits", "--net", "tiny",
                             "--batch-size", "16", "--steps", "100000", "--checkpoint-every", "100000", "--log-every", "1",
                             "--sample-every", "100000", "--quiet", "--out", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300  # generous: a loaded machine is slow to import torch
        while time.monotonic() < deadline and not ((out / "log.jsonl").exists() and
                                                   len((out / "log.jsonl").read_text().splitlines()) >= 2):
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "ddpmkit train: terminated", err
    logged = json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"]
    step = read_config(out / "checkpoint.safetensors")["step"]
    assert step >= logged >= 2  # every step logged: the checkpoint is of the step the run was at
    train(out, {"steps": step + 1}, resume=True, quiet=True)
    assert read_config(out / "checkpoint.safetensors")["step"] == step + 1
