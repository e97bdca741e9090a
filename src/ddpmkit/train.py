"""Training a DDPM noise predictor (Ho et al. 2020, Algorithm 1), resumable to the bit.

Every random choice of step k — the batch (a per-epoch permutation), the timesteps, the noise and
dropout — is drawn from generators seeded by (seed, k), never from running RNG state. Resuming
from the checkpoint of step k therefore continues exactly as the uninterrupted run would have,
and under torchrun (``distributed``) every process draws the same batch and trains on its slice.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import sys
import time

import torch

from . import distributed
from .checkpoint import load_into, load_tensors, nonfinite_tensors, read_config, save_checkpoint
from .data import DATA_RANGE, ImageDataset, load_dataset
from .files import remove_stale_temps, write_text
from .images import grid_scale, labelled_grid, save_image
from .machine import Terminated, deferred_interrupts
from .nets import build_unet
from .prediction import check_prediction, training_target
from .sampling import sample
from .schedule import SCHEDULES, NoiseSchedule

CHECKPOINT = "checkpoint.safetensors"  # everything, for --resume
MODEL = "model.safetensors"  # EMA weights and config, for sampling
LOG = "log.jsonl"


def option(default, help: str, kind=None):
    """A run option: its default, its --help text and (where the default's type does not say it)
    the type of its value, declared together; the ``ddpmkit`` command reads all three."""
    return dataclasses.field(default=default, metadata={"help": help, "kind": kind})


# A class embedding that starts at zero must grow towards the size of the time embedding it is added
# to (norm about 6 in the MNIST model) before the labels matter, and Adam moves a weight by about its
# learning rate a step. Fine-tuning the shipped mnist model: at 1x (lr 2e-4, batch 128) the labels were
# at chance after 1000 steps; at 250x (lr 4e-4, batch 64) the unguided class accuracy was 70% after
# 500 steps and 94% after 1000 (100 samples each).
ZERO_START_LR_SCALE = 250.0


@dataclasses.dataclass
class TrainConfig:
    dataset: str = option("digits", "digits, mnist, fashion-mnist, cifar10 or folder:PATH")
    data_dir: str | None = option(None, "folder with the dataset's files (default: data/DATASET)")
    download: bool = option(False, "download the dataset's official files into --data-dir if they are missing")
    image_size: int | None = option(None, "resize every image to this square side (shorter side, then centre crop); "
                                    "needed for folders of mixed sizes (default: the native size)", int)
    net: str = option("auto", "U-Net preset: auto (digits for 8x8 data, small otherwise), tiny, small, digits")
    dropout: float = option(0.1, "dropout in the residual blocks")
    schedule: str = option("linear", "noise schedule: linear, scaled_linear, cosine, sigmoid")
    T: int = option(1000, "number of diffusion timesteps")
    prediction: str = option("eps", "what the network predicts: eps, x0 or v")
    steps: int = option(5000, "total optimisation steps (with --resume: the new total)")
    batch_size: int = option(128, "images per step; under torchrun the global batch, split evenly between the "
                             "processes")
    lr: float = option(2e-4, "AdamW learning rate after warm-up")
    warmup: int = option(200, "linear learning-rate warm-up steps", "count")
    weight_decay: float = option(0.0, "AdamW weight decay")
    grad_clip: float = option(1.0, "clip the gradient norm to this")
    ema_decay: float = option(0.999, "EMA decay of the weights used for sampling")
    min_snr_gamma: float | None = option(None, "min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5; off when "
                                         "not given", float)
    init_from: str | None = option(None, "start from this model's EMA weights (same network; a warm start with a "
                                   "fresh optimiser). With --conditional, an unconditional model's: the new class "
                                   "embedding starts at zero, so training starts from its exact predictions")
    conditional: bool = option(False, "train a class-conditional model on the dataset's labels (digits, mnist, "
                               "fashion-mnist, cifar10, or folder:PATH with one subfolder per class)")
    label_dropout: float = option(0.1, "with --conditional: the fraction of labels replaced by the null label, so "
                                  "that the one network is also the unconditional model that classifier-free "
                                  "guidance needs (Ho & Salimans 2022)")
    class_lr: float | None = option(None, "with --conditional: the class embedding's AdamW learning rate (default: "
                                    f"{ZERO_START_LR_SCALE:g} x --lr when --init-from starts it at zero, since Adam "
                                    "moves a weight by about its learning rate a step; else --lr)", float)
    precision: str = option("fp32", "fp32, or bf16 (autocast of the network; on GPUs from Ampere on, or the CPU)")
    seed: int = option(0, "seed of the data order, timesteps, noise, dropout and initial weights", "count")
    checkpoint_every: int = option(500, "write the checkpoint every this many steps")
    sample_every: int = option(1000, "write a sample grid every this many steps")
    log_every: int = option(25, "append a line to log.jsonl every this many steps")

    def validate(self) -> None:
        check_run_options(self, ("T",))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        check_prediction(self.prediction)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if not 0.0 <= self.label_dropout <= 1.0:  # 1: every label dropped, an unconditional run
            raise ValueError(f"label_dropout={self.label_dropout} must be in [0, 1]")
        check_number(self, "class_lr", above=0)
        check_number(self, "min_snr_gamma", above=0, note=" (leave it out for no weighting)")


PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not valid; choose one of: {', '.join(PRECISIONS)}")


def check_number(cfg, name: str, *, above: float | None = None, at_least: float | None = None,
                 note: str = "") -> None:
    """That option ``name`` of ``cfg`` is a finite number, ``> above`` or ``>= at_least`` where given;
    None (an option left unset) passes. The error names the value and what is valid, then ``note``."""
    value = getattr(cfg, name)
    if value is None:
        return
    # written as "valid" tests so that NaN fails every one
    if not (math.isfinite(value) and (above is None or value > above) and (at_least is None or value >= at_least)):
        bound = f" > {above:g}" if above is not None else f" >= {at_least:g}" if at_least is not None else ""
        raise ValueError(f"{name}={value} must be a finite number{bound}{note}")


def check_run_options(cfg, positive: tuple[str, ...] = ()) -> None:
    """The checks every run's config needs (TrainConfig, DistillConfig): step counts and cadences
    >= 1 (and the fields in ``positive``), the optimiser's settings, the EMA decay and the precision."""
    for name in ("steps", "batch_size", "checkpoint_every", "sample_every", "log_every", *positive):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)} must be >= 1")
    check_precision(cfg.precision)
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"ema_decay={cfg.ema_decay} must be in [0, 1)")
    for name in ("lr", "grad_clip"):
        check_number(cfg, name, above=0)
    for name in ("warmup", "weight_decay"):
        check_number(cfg, name, at_least=0)


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    """AdamW, or RAdam (Liu et al. 2020) with the same decoupled weight decay where a run's config
    asks for it (``optimizer``: distillation's option). AdamW is PyTorch's fused kernel on the CPU and
    CUDA: one call for all parameters, where the default steps them one by one (for the 1.7M-parameter
    MNIST U-Net on one CPU thread: 2.6 ms a step against 9.7; benchmarks/train_speed.py)."""
    if getattr(cfg, "optimizer", "adamw") == "radam":
        return torch.optim.RAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled_weight_decay=True)
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors) or None
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def net_preset(net: str, image_size: int) -> str:
    """The U-Net preset that ``--net`` names; ``auto`` is digits for 8x8 data, small otherwise."""
    return net if net != "auto" else ("digits" if image_size <= 8 else "small")


def autocast(device: torch.device, precision: str):
    """bf16 autocast of the network's matrix work (norms and softmax stay float32), or nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def step_seed(seed: int, step: int, purpose: str) -> int:
    """A 63-bit seed for one purpose at one step, independent across (seed, step, purpose)."""
    digest = hashlib.sha256(f"{seed}/{step}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@functools.lru_cache(maxsize=2)
def epoch_permutation(n: int, batch_size: int, seed: int, epoch: int) -> torch.Tensor:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, epoch, "epoch")))
    if n < batch_size:  # tiny data: sample with repetition from the permutation
        perm = perm.repeat(math.ceil(batch_size / n))
    return perm


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the batch at ``step`` (1-based): epochs are seeded permutations, the last
    incomplete batch of an epoch is dropped."""
    per_epoch = max(n // batch_size, 1)
    epoch, i = divmod(step - 1, per_epoch)
    return epoch_permutation(n, batch_size, seed, epoch)[i * batch_size : (i + 1) * batch_size]


def snr_weight(abar: torch.Tensor, prediction: str, gamma: float | None) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, §3.4) expressed for each parameterisation:
    min(SNR, gamma) / SNR for eps, min(SNR, gamma) for x0, min(SNR, gamma) / (SNR + 1) for v."""
    if gamma is None:
        return torch.ones_like(abar)
    snr = abar / (1 - abar)
    clipped = snr.clamp(max=gamma)
    return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[prediction]


def diffusion_loss(net, x0, t, eps, alphas_cumprod, prediction, min_snr_gamma=None, labels=None):
    """Ho et al. Algorithm 1 with the target of ``prediction`` (the "simple" loss), optionally
    min-SNR weighted: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; MSE(net(x_t, t), target).
    ``labels``: the class label of each image for a conditional network (``net(x_t, t, labels)``)."""
    abar = alphas_cumprod[t].view(-1, *([1] * (x0.ndim - 1)))
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    target = training_target(x0, eps, abar, prediction)
    out = net(x_t, t) if labels is None else net(x_t, t, labels)
    per_sample = ((out - target) ** 2).flatten(1).mean(1)
    return (snr_weight(abar.flatten(), prediction, min_snr_gamma) * per_sample).mean()


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then constant (DDPM's recipe)."""
    return cfg.lr * min(1.0, step / cfg.warmup) if cfg.warmup else cfg.lr


def ema_decay_at(decay: float, step: int) -> float:
    """The EMA decay at ``step``, ramped up as min(decay, (1 + step) / (10 + step)) so that short
    runs are not dominated by the random initial weights."""
    return min(decay, (1 + step) / (10 + step))


class Trainer:
    """A training run in folder ``out``. ``options``: TrainConfig fields to set. On ``resume`` the
    run's saved settings rule; only the target ``steps``, where the data lives and how often to log,
    sample and checkpoint may change, and any other option given must agree with the saved one.

    Subclasses (``ddpmkit.distill.Distiller``) change what is trained through ``Config``, ``_setup``
    (data, schedule, ``net`` and ``ema``), ``modules``, ``train_step``, ``sample_grid`` and
    ``config``; checkpoints, resume and the loop are shared."""

    Config = TrainConfig
    DISTRIBUTED = True  # runs under torchrun: DistributedDataParallel, each process a slice of every batch
    MAX_NONFINITE = 5  # non-finite steps in a row (each skipped) after which a run stops
    CHANGEABLE = ("steps", "data_dir", "download", "checkpoint_every", "sample_every", "log_every", "precision")

    def __init__(self, out: str | os.PathLike, options: dict | None = None, *, resume: bool = False, device="cpu",
                 quiet: bool = False, command: str | None = None):
        self.out, self.device, self.quiet, self.command = pathlib.Path(out), torch.device(device), quiet, command
        options = dict(options or {})
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(self.Config)})
        if unknown:
            raise ValueError(f"unknown training option {unknown[0]!r}")
        ckpt = self.out / CHECKPOINT
        if ckpt.exists() and not resume:
            raise ValueError(f"{self.out} already holds a training run ({CHECKPOINT}); pass --resume to continue it "
                             "or choose another --out")
        if resume and not ckpt.exists():
            raise ValueError(f"nothing to resume: {ckpt} does not exist")
        if resume:
            saved_options = read_config(ckpt)["train"]
            if "class_lr" in {f.name for f in dataclasses.fields(self.Config)}:
                saved_options.setdefault("class_lr", saved_options["lr"])  # a run from before --class-lr: one rate
            saved = self.Config(**saved_options)
            for name, value in options.items():
                if name not in self.CHANGEABLE and value != getattr(saved, name):
                    raise ValueError(f"--resume: {name}={value!r} differs from the run's {name}={getattr(saved, name)!r}; "
                                     "drop the option or start a new run with another --out")
            cfg = dataclasses.replace(saved, **options)
        else:
            cfg = self.Config(**options)
        cfg.validate()
        self.cfg = cfg
        self.world, self.main = distributed.world_size(), distributed.is_main()
        if self.world > 1:
            if not self.DISTRIBUTED:
                raise ValueError(f"{type(self).__name__} runs in one process; run it without torchrun")
            distributed.check_divides(cfg.batch_size)
        self.part = distributed.my_slice(cfg.batch_size)  # this process's rows of every global batch
        self._setup()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
        self.ema.load_state_dict(self.net.state_dict())
        self.ema.eval().requires_grad_(False)
        self.opt = make_optimizer(self.param_groups(), self.cfg)
        self.step, self.wall = 0, 0.0
        self.skipped = False  # whether the last step was skipped for a non-finite loss or gradient
        if self.main:  # rank 0 alone writes: folders, logs, grids, checkpoints
            self.out.mkdir(parents=True, exist_ok=True)
            for folder in (self.out, self.out / "samples"):  # what a killed earlier start of this run left half-written
                if folder.is_dir():
                    remove_stale_temps(folder)
        if resume:
            self._load(ckpt)
        elif self.main:
            self._set_aside_stale_log()
        self.forward_net = self._data_parallel()

    def _setup(self) -> None:
        cfg = self.cfg
        self.data: ImageDataset = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download,
                                               image_size=cfg.image_size)
        self.schedule = NoiseSchedule(cfg.schedule, cfg.T)
        self.abar = torch.tensor(self.schedule.alphas_cumprod, dtype=torch.float32, device=self.device)
        c, h, _ = self.data.shape
        preset = net_preset(cfg.net, h)
        classes = {}
        if cfg.conditional:
            if self.data.labels is None:
                raise ValueError(f"--conditional needs labels, and {self.data.name} has none; labelled: digits, mnist, "
                                 "fashion-mnist, cifar10, or folder:PATH with one subfolder per class")
            classes = {"num_classes": self.data.num_classes}
        with torch.random.fork_rng(devices=self._rng_devices()):  # initial weights from the seed; RNG restored
            torch.manual_seed(step_seed(cfg.seed, 0, "init"))
            self.net = build_unet(preset, in_channels=c, image_size=h, dropout=cfg.dropout, **classes).to(self.device)
            self.ema = build_unet(preset, in_channels=c, image_size=h, dropout=cfg.dropout, **classes).to(self.device)
        zero_start = cfg.init_from is not None and self._warm_start(cfg.init_from)
        if getattr(cfg, "class_lr", 0.0) is None:  # DistillConfig has none; a resumed run has its own
            scale = ZERO_START_LR_SCALE if zero_start else 1.0
            self.cfg = dataclasses.replace(cfg, class_lr=scale * cfg.lr if cfg.conditional else None)

    def param_groups(self) -> list[dict]:
        """The optimiser's parameter groups: one, or with its own ``class_lr`` the class embedding
        as a second (``lr_scale`` times the warm-up schedule of --lr)."""
        class_lr = getattr(self.cfg, "class_lr", None)
        if class_lr is None or class_lr == self.cfg.lr:
            return [{"params": list(self.net.parameters())}]
        named = list(self.net.named_parameters())
        return [{"params": [p for n, p in named if not n.startswith("class_emb.")]},
                {"params": [p for n, p in named if n.startswith("class_emb.")], "lr_scale": class_lr / self.cfg.lr}]

    def _warm_start(self, path) -> bool:
        """Start from another model's EMA weights (same network shape); the optimiser starts fresh. A
        conditional run from an unconditional model starts its class embedding at zero, so that its
        first predictions are that model's for every label; returns whether it did."""
        from .models import resolve

        file = resolve(path)
        tensors = load_tensors(file, "ema.")[0]
        zero_start = getattr(self.cfg, "conditional", False) and "class_emb.weight" not in tensors  # DistillConfig: none
        if zero_start:
            tensors["class_emb.weight"] = torch.zeros_like(self.net.state_dict()["class_emb.weight"])
        load_into(self.net, tensors, file)
        return zero_start

    def modules(self) -> dict[str, torch.nn.Module]:
        """What a checkpoint holds besides the optimiser, by key prefix; ``ema`` is the sampling model."""
        return {"model": self.net, "ema": self.ema}

    def _rng_devices(self) -> list:
        return [self.device] if self.device.type == "cuda" else []

    # -- checkpoints ---------------------------------------------------------------------------
    def config(self) -> dict:
        return {
            "net": {"arch": "unet", **self.net.config()},
            "schedule": self.schedule.to_config(),
            "prediction": check_prediction(self.cfg.prediction),
            "data": {"dataset": self.data.name, "shape": list(self.data.shape), "range": list(DATA_RANGE),
                     "num_classes": self.data.num_classes,
                     **({"class_names": list(self.data.class_names)} if self.data.class_names else {})},
            "ema": {"decay": self.cfg.ema_decay},
            "step": self.step,
            "wall_time_s": round(self.wall, 1),
            "train": dataclasses.asdict(self.cfg),
            "command": self.command,
        }

    def save(self) -> None:
        """Write the checkpoint and the model file, atomically; never weights that are not finite
        (the files already there stay as they are)."""
        for name, module in self.modules().items():
            bad = nonfinite_tensors(module)
            if bad:
                raise ValueError(f"step {self.step}: the {name} weights are not finite ({bad[0]!r} and "
                                 f"{len(bad) - 1} more); {self.out / CHECKPOINT} is left as it was")
        config = self.config()
        tensors = {f"{name}.{k}": v for name, m in self.modules().items() for k, v in m.state_dict().items()}
        state = self.opt.state_dict()
        for idx, st in state["state"].items():
            for key, value in st.items():
                tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
        config["optimizer"] = {"param_groups": state["param_groups"]}
        save_checkpoint(self.out / CHECKPOINT, tensors, config)
        save_checkpoint(self.out / MODEL, {f"ema.{k}": v for k, v in self.ema.state_dict().items()}, config)

    def _load(self, path) -> None:
        tensors, config = load_tensors(path)

        def part(prefix):
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        for name, module in self.modules().items():
            load_into(module, part(f"{name}."), path)
        state: dict = {}
        params = [p for group in self.opt.param_groups for p in group["params"]]
        for name, value in part("optim.").items():
            idx, key = name.split(".", 1)
            if int(idx) < len(params) and value.shape == params[int(idx)].shape:
                # a moment in its parameter's memory layout (channels-last convolutions): the fused AdamW
                # kernel walks parameter, gradient and moments as one flat layout, and a file's tensors
                # are contiguous
                value = torch.empty_like(params[int(idx)], dtype=value.dtype).copy_(value)
            state.setdefault(int(idx), {})[key] = value
        self.opt.load_state_dict({"state": state, "param_groups": config["optimizer"]["param_groups"]})
        self.step, self.wall = int(config["step"]), float(config.get("wall_time_s", 0.0))
        if self.main:
            self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint we resume from (an interrupted tail), and a
        line torn by a kill, with a warning."""
        log = self.out / LOG
        if log.exists():
            keep, torn = [], 0
            for ln in filter(str.strip, log.read_text().splitlines()):
                try:
                    step = json.loads(ln)["step"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    torn += 1
                    continue
                if step <= self.step:
                    keep.append(ln)
            if torn:
                print(f"warning: {log}: skipped {torn} unreadable line(s), torn by an interruption", file=sys.stderr)
            write_text(log, "".join(ln + "\n" for ln in keep))

    def _set_aside_stale_log(self) -> None:
        """A fresh run in a folder whose log has no checkpoint behind it (an earlier start, killed
        before its first checkpoint) starts a new log; the old one is kept beside it."""
        log = self.out / LOG
        if log.exists():
            aside = log.with_name(LOG + ".stale")
            os.replace(log, aside)
            print(f"warning: {log} belonged to an earlier start of this run with no checkpoint; moved to "
                  f"{aside.name}", file=sys.stderr)

    # -- the loop ------------------------------------------------------------------------------
    def _data_parallel(self) -> torch.nn.Module:
        """What the loss calls: under torchrun ``self.net`` in DistributedDataParallel (gradients
        averaged over the processes in the backward pass), with dropout masks drawn for the whole
        batch (``global_dropout``); in one process ``self.net`` itself."""
        if self.world == 1:
            return self.net
        from torch.nn.parallel import DistributedDataParallel

        global_dropout(self.net, self.part, self.cfg.batch_size)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.net, device_ids=ids)

    def data_batch(self, step: int) -> tuple[torch.Tensor, torch.Generator]:
        """This process's images of ``step`` on the device (under torchrun its slice of the global
        batch; else all of it), and the CPU generator of that step's other draws."""
        cfg = self.cfg
        idx = self.batch_indices(step)[self.part]
        return self.data.batch(idx).to(self.device), torch.Generator().manual_seed(step_seed(cfg.seed, step, "noise"))

    def draw(self, g: torch.Generator, draw, *shape, **kw) -> torch.Tensor:
        """``draw(batch_size, *shape, generator=g)`` for the whole global batch (so that every process
        draws what a single process draws), this process's rows of it."""
        return draw((self.cfg.batch_size, *shape), generator=g, **kw)[self.part]

    def batch_indices(self, step: int) -> torch.Tensor:
        return batch_indices(len(self.data), self.cfg.batch_size, self.cfg.seed, step)

    def batch_labels(self, step: int, g: torch.Generator) -> torch.Tensor | None:
        """The class labels of ``step``'s images for a conditional run (None otherwise), each replaced by
        the null label (num_classes) with probability label_dropout, drawn from ``g`` after the noise."""
        if not self.cfg.conditional:
            return None
        labels = self.data.labels[self.batch_indices(step)].clone()
        dropped = torch.rand(len(labels), generator=g) < self.cfg.label_dropout
        labels, dropped = labels[self.part], dropped[self.part]
        labels[dropped] = self.data.num_classes
        return labels.to(self.device)

    def optimise(self, step: int, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on ``loss_fn()`` (dropout seeded per step), then the EMA update; skipped
        (no optimiser or EMA update, ``self.skipped``) when the loss or the gradient is not finite.
        Returns (loss, gradient norm) as tensors. The finiteness test is the one device sync a step."""
        cfg = self.cfg
        for group in self.opt.param_groups:
            group["lr"] = lr_at(cfg, step) * group.get("lr_scale", 1.0)
        self.net.train()
        with torch.random.fork_rng(devices=self._rng_devices()):  # dropout, seeded per step; RNG restored after
            torch.manual_seed(step_seed(cfg.seed, step, "dropout"))
            with autocast(self.device, cfg.precision):
                loss = loss_fn()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()  # under DistributedDataParallel: the gradient averaged over the processes
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        if self.world > 1:  # the batch's loss, the same on every process, so they skip a step together
            loss = distributed.all_sum(loss.detach().float()) / self.world
        self.skipped = not bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))
        if self.skipped:
            self.opt.zero_grad(set_to_none=True)
            return loss.detach(), grad_norm.detach()
        self.opt.step()
        with torch.no_grad():
            d = ema_decay_at(cfg.ema_decay, step)
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.net.parameters()), 1 - d)
            for e, b in zip(self.ema.buffers(), self.net.buffers()):
                e.copy_(b)
        return loss.detach(), grad_norm.detach()

    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        x0, g = self.data_batch(step)
        t = self.draw(g, lambda size, **kw: torch.randint(0, cfg.T, size, **kw)).to(self.device)
        eps = self.draw(g, torch.randn, *x0.shape[1:]).to(self.device)
        labels = self.batch_labels(step, g)
        return self.optimise(step, lambda: diffusion_loss(self.forward_net, x0, t, eps, self.abar, cfg.prediction,
                                                          cfg.min_snr_gamma, labels))

    def sample_grid(self, path, n: int = 64) -> None:
        side = int(math.sqrt(n))
        # a conditional model's grid has one class per row (0, 1, ... in turn)
        classes = [(i // side) % self.data.num_classes for i in range(n)] if self.cfg.conditional else None
        x = sample(self.ema, self.schedule, sampler="ddim", steps=50, prediction=self.cfg.prediction,
                   shape=(n, *self.data.shape), seeds=range(n), device=self.device, classes=classes)
        rows = [x[i * side : (i + 1) * side] for i in range(side)]
        save_image(labelled_grid(rows, [""] * side, scale=grid_scale(self.data.shape[1])), path)

    def _skip(self, in_a_row: int) -> None:
        """Log a step skipped for a non-finite loss or gradient; stop after MAX_NONFINITE in a row."""
        if self.main:
            with open(self.out / LOG, "a") as f:
                f.write(json.dumps({"step": self.step, "skipped": "the loss or gradient is not finite"}) + "\n")
        if in_a_row >= self.MAX_NONFINITE:
            ckpt = self.out / CHECKPOINT
            saved = _last_saved_step(ckpt)
            kept = f"{ckpt} (step {saved}) is kept as it was" if saved is not None else "no checkpoint was written"
            raise ValueError(f"step {self.step}: the loss or gradient was not finite {in_a_row} steps in a row, "
                             f"so training stopped (lower --lr, now {self.cfg.lr:g}?); {kept}")

    def run(self) -> pathlib.Path:
        from tqdm import tqdm

        cfg = self.cfg
        if self.main:
            (self.out / "samples").mkdir(exist_ok=True)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=self.quiet or not self.main, unit="step",
                   dynamic_ncols=True)
        window, window_start, window_first, in_a_row = [], time.perf_counter(), self.step, 0
        consistent, saved = True, None  # consistent: False while the weights are ahead of self.step
        try:
            with deferred_interrupts() as requested:  # Ctrl-C and SIGTERM wait for the step's end
                while self.step < cfg.steps:
                    start = time.perf_counter()
                    consistent = False
                    loss, gnorm = self.train_step(self.step + 1)
                    self.step += 1
                    consistent = True
                    bar.update(1)
                    if self.skipped:
                        in_a_row += 1
                        self._skip(in_a_row)
                    else:
                        in_a_row = 0
                        window.append(loss)
                    evaluating = bool(getattr(cfg, "eval_every", 0)) and self.step % cfg.eval_every == 0
                    logging = self.step % cfg.log_every == 0 or self.step == cfg.steps or evaluating
                    if logging:
                        mean_loss = torch.stack(window).mean().item() if window else None
                    # training time only (no grids, no saves); exact at log lines, where the device has caught up
                    self.wall += time.perf_counter() - start
                    if logging and not self.main:  # rank 0 logs; the others only start a new window
                        window, window_start, window_first = [], time.perf_counter(), self.step
                    elif logging:
                        elapsed = time.perf_counter() - window_start
                        rate = (self.step - window_first) * cfg.batch_size / elapsed
                        g = gnorm.item()
                        record = {"step": self.step, "loss": mean_loss, "grad_norm": g if math.isfinite(g) else None,
                                  "lr": lr_at(cfg, self.step), "images_per_s": rate, "wall_time_s": round(self.wall, 2)}
                        if evaluating:  # after the rate is taken: evaluation is not training time
                            record.update(self.evaluate())
                        with open(self.out / LOG, "a") as f:
                            f.write(json.dumps(record) + "\n")
                        if mean_loss is not None:
                            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}")
                        window, window_start, window_first = [], time.perf_counter(), self.step
                    # under torchrun every process stops at the step where any of them was asked to
                    stop = distributed.any_true(bool(requested)) if self.world > 1 else bool(requested)
                    if self.main and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                        self.sample_grid(self.out / "samples" / f"step-{self.step:07d}.png")
                    if self.main and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or stop):
                        self.save()
                        saved = self.step
                    if stop:
                        raise requested[0] if requested else Terminated()
        except KeyboardInterrupt:  # a second Ctrl-C, or a signal before the loop
            # atomic: the old checkpoint stays whole until the new one is
            if self.main and consistent and saved != self.step:
                self.save()
            raise
        finally:
            bar.close()
        return self.out / MODEL


def global_dropout(net: torch.nn.Module, part: slice, batch_size: int) -> None:
    """Make ``net``'s dropout layers draw their mask for the whole global batch of ``batch_size``
    and apply this process's rows (``part``) of it. Every process seeds its dropout from the step,
    so the masks are the ones a single process draws for the whole batch: a run is the same run at
    any number of processes, dropout included (up to float rounding)."""

    def forward(layer, x):
        if not layer.training or layer.p == 0.0:
            return x
        # the mask as F.dropout draws it for the whole batch: bernoulli_ over a tensor with the
        # input's strides (channels-last or not), 1 / (1 - p) where kept
        whole = torch.empty_strided((batch_size, *x.shape[1:]), x.stride(), dtype=x.dtype, device=x.device)
        mask = whole.bernoulli_(1 - layer.p).div_(1 - layer.p)
        return x * mask[part]

    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.forward = functools.partial(forward, m)


def _last_saved_step(path: pathlib.Path):
    return read_config(path)["step"] if path.exists() else None


def train(out, options: dict | None = None, **kw) -> pathlib.Path:
    """Train (or with resume=True continue) a run in ``out``; returns the path of its model file."""
    return Trainer(out, options, **kw).run()

