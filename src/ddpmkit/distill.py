"""Consistency distillation and consistency training (Song, Dhariwal, Chen & Sutskever 2023,
"Consistency Models", Algorithms 2 and 3; Song & Dhariwal 2023, "Improved Techniques for Training
Consistency Models", iCT).

Both train a consistency function f_theta (``ddpmkit.consistency``) so that it agrees with itself
at adjacent points of one probability-flow ODE trajectory: with y = x0 + sigma eps (EDM's variable)
and noise levels sigma_min = s_1 < ... < s_N = sigma_max on a Karras grid (rho = 7) between the
schedule's sigma at t = 0 and t = T-1,

    loss = lambda(s_n) d( f_theta(y_{n+1}, s_{n+1}), f_theta-(y_n, s_n) ),

where y_{n+1} = x0 + s_{n+1} z and
  - ``cd`` (distillation, Algorithm 2): y_n is one step of the teacher's ODE solver from y_{n+1}
    (``solver``: heun, EDM's second-order step, or ddim, Euler in sigma); lambda = 1; n uniform;
    the target theta- is an EMA of theta with rate ``target_decay`` (0.95, the paper's CIFAR setting);
  - ``ct`` (training, Algorithm 3 with iCT): y_n = x0 + s_n z with the same z, no teacher; N follows
    iCT's curriculum N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2 floor(s1/s0) + 1)),
    K = ``ct_total`` (default: the run's first ``steps``, kept when a resumed run goes further);
    n is drawn from iCT's discretised log-normal (P_mean = -1.1, P_std = 2.0); lambda = 1 / (s_{n+1} - s_n);
    theta- = stop-grad(theta) (target_decay 0).
d is the pseudo-Huber metric sqrt(||a - b||^2 + c^2) - c, c = 0.00054 sqrt(dim) (iCT), or ``l2``
(the mean squared difference).

The student starts as the teacher's network (so f starts as the teacher's one-step x0 estimate);
``ct`` uses the teacher's file only for the network's shape, the schedule and, unless
``init="scratch"``, the initial weights. Runs resume exactly like ``ddpmkit train`` (the same
``Trainer``: every draw of step k comes from generators seeded by (seed, k)).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from typing import NamedTuple

import numpy as np
import torch

from .consistency import ConsistencyFunction, abar_tensor
from .data import DATA_RANGE, load_dataset
from .ect import ect_levels, shared_dropout, stage_at
from .images import grid_scale, labelled_grid, save_image, to_levels
from .measure.reference import FEATURE_NET_FOR
from .models import build_net, load_model
from .samplers.edm import heun_step
from .sampling import sample
from .train import TrainConfig, Trainer, autocast, check_number, check_run_options, option, step_seed
from .vp import abar_from_sigma, sigma_from_abar, x0_from_output, x_from_y

METHODS = ("cd", "ct", "ect")
OPTIMIZERS = ("adamw", "radam")
SOLVERS = ("heun", "ddim")
LOSSES = ("huber", "l2")


# the fields a distillation run shares with a training run, declared once (TrainConfig)
TRAIN = {f.name: dataclasses.field(default=f.default, metadata=f.metadata) for f in dataclasses.fields(TrainConfig)}


@dataclasses.dataclass
class DistillConfig:
    teacher: str = option("mnist", "the DDPM to distil: a shipped model name (mnist) or a model file / run folder")
    method: str = option("cd", "cd (consistency distillation, Algorithm 2), ct (consistency training, Algorithm 3 "
                         "with iCT) or ect (Easy Consistency Tuning, Geng et al. 2024: ct from the teacher with a "
                         "shrinking gap; ddpmkit.ect)")
    data_dir: str | None = TRAIN["data_dir"]
    download: bool = TRAIN["download"]
    steps: int = option(2000, TRAIN["steps"].metadata["help"])
    batch_size: int = option(128, TRAIN["batch_size"].metadata["help"])
    lr: float = option(1e-4, TRAIN["lr"].metadata["help"])
    warmup: int = option(100, TRAIN["warmup"].metadata["help"], "count")
    weight_decay: float = TRAIN["weight_decay"]
    grad_clip: float = TRAIN["grad_clip"]
    ema_decay: float = TRAIN["ema_decay"]
    target_decay: float | None = option(None, "EMA rate mu of the target network theta- (default: 0.95 for cd, 0 "
                                        "for ct)", float)
    num_scales: int = option(18, "N, the points of the Karras grid for cd")
    ct_s0: int = option(10, "iCT curriculum: initial number of intervals for ct")
    ct_s1: int = option(1280, "iCT curriculum: final number of intervals for ct")
    ct_total: int | None = option(None, "iCT curriculum: the steps K it spans (default: --steps of the run's start, "
                                  "kept on resume)", int)
    ect_q: float = option(256.0, "ect: the gap t - r is about t / q^(stage + 1) (ECT's 1-hour recipe: 256, one stage)")
    ect_double: int = option(0, "ect: steps per stage (the gap shrinks by q at each); 0: one stage", "count")
    ect_k: float = option(8.0, "ect: k of the mapping function n(t) = 1 + k sigmoid(-b t)")
    ect_b: float = option(1.0, "ect: b of the mapping function")
    p_mean: float = option(-1.1, "ect: mean of log t (EDM's log-normal)")
    p_std: float = option(2.0, "ect: std of log t")
    solver: str = option("heun", "the teacher's ODE step for cd: heun (2 NFE) or ddim (Euler, 1 NFE)")
    loss: str = option("huber", "huber (pseudo-Huber, iCT) or l2")
    huber_c: float | None = option(None, "c of the pseudo-Huber loss (default: 0, the L2 norm, for ect as ECT's "
                                   "recipe; 0.00054 sqrt(image dimension) for cd and ct as iCT)", float)
    dropout: float | None = option(None, "the student's dropout (default: the teacher's; ECT's recipe: 0.2)", float)
    optimizer: str = option("adamw", "adamw or radam (ECT's recipe)")
    eval_every: int = option(0, "every this many steps, log the FID of 1- and 2-step samples of the EMA model "
                             "(the shipped feature network of the data; 0: never)", "count")
    eval_num: int = option(500, "samples (seeds 0..N-1) of each --eval-every FID")
    sigma_data: float = option(0.5, "sigma_data of the boundary parameterisation c_skip")
    init: str = option("teacher", "ct only: start from the teacher's weights (teacher) or from fresh ones (scratch)")
    x0_head: bool = option(False, "give the student a direct x0 output, blended in at high noise (better one-step "
                           "samples from an eps teacher; ddpmkit.consistency)")
    init_from: str | None = option(None, "start the student from this consistency model's EMA weights (e.g. "
                                   "mnist-cm), to continue a distillation whose checkpoint is gone")
    precision: str = option("fp32", "fp32, or bf16 (autocast of the student, target and teacher)")
    seed: int = option(0, "seed of the data order, noise levels, noise and dropout", "count")
    checkpoint_every: int = TRAIN["checkpoint_every"]
    sample_every: int = TRAIN["sample_every"]
    log_every: int = TRAIN["log_every"]

    def validate(self) -> None:
        check_run_options(self, ("ct_s0", "ct_s1"))
        for name, value, valid in (("method", self.method, METHODS), ("solver", self.solver, SOLVERS),
                                   ("loss", self.loss, LOSSES), ("init", self.init, ("teacher", "scratch")),
                                   ("optimizer", self.optimizer, OPTIMIZERS)):
            if value not in valid:
                raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(valid)}")
        if self.num_scales < 2:
            raise ValueError(f"num_scales={self.num_scales} must be >= 2")
        if self.ct_total is not None and self.ct_total < 1:
            raise ValueError(f"ct_total={self.ct_total} must be >= 1")
        if self.ct_s1 < self.ct_s0:
            raise ValueError(f"ct_s1={self.ct_s1} must be >= ct_s0={self.ct_s0}")
        if self.target_decay is not None and not 0.0 <= self.target_decay < 1.0:
            raise ValueError(f"target_decay={self.target_decay} must be in [0, 1)")
        check_number(self, "sigma_data", above=0)
        if self.method in ("cd", "ect") and self.init == "scratch":
            raise ValueError(f"init='scratch' is for method ct; {self.method} starts from the teacher")
        check_number(self, "ect_q", above=1)
        check_number(self, "ect_k", at_least=0)
        check_number(self, "ect_b")
        check_number(self, "p_mean")
        check_number(self, "p_std", above=0)
        check_number(self, "huber_c", at_least=0)
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.eval_num < 4:
            raise ValueError(f"eval_num={self.eval_num} must be >= 4 (FID needs a covariance)")

    @property
    def mu(self) -> float:
        return self.target_decay if self.target_decay is not None else (0.95 if self.method == "cd" else 0.0)


def karras_timesteps(schedule, n: int) -> np.ndarray:
    """N ascending timesteps whose sigmas form the Karras grid (rho = 7) from t = 0 to t = T-1."""
    return schedule.grid(n, "karras")[::-1].copy()


def ict_num_scales(step: int, total: int, s0: int, s1: int) -> int:
    """iCT's discretisation curriculum (Song & Dhariwal 2023, eq. 5), for 0-based step k of K."""
    k_prime = max(1, math.floor(total / (math.log2(math.floor(s1 / s0)) + 1)))
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def ict_index_probs(sigmas: np.ndarray, p_mean: float = -1.1, p_std: float = 2.0) -> np.ndarray:
    """iCT's discretised log-normal over the N - 1 intervals (s_n, s_{n+1}) of an ascending grid."""
    cdf = torch.special.erf(torch.as_tensor((np.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))).numpy()
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """sqrt(||a - b||^2 + c^2) - c per sample (iCT, §3.3)."""
    return ((a - b).flatten(1).pow(2).sum(1) + c * c).sqrt() - c


class Pair(NamedTuple):
    """Adjacent grid points per sample: (t_{n+1}, sigma_{n+1}) and (t_n, sigma_n), sigma_n < sigma_{n+1}."""
    t_hi: torch.Tensor
    s_hi: torch.Tensor
    t_lo: torch.Tensor
    s_lo: torch.Tensor


def teacher_step(teacher_x0, y: torch.Tensor, pair: Pair, solver: str = "heun") -> torch.Tensor:
    """One step of the probability-flow ODE dy/dsigma = (y - D(y; sigma)) / sigma from sigma_{n+1}
    down to sigma_n (> 0): Euler (= DDIM) or Heun (EDM Algorithm 1's step, ``samplers.edm.heun_step``).
    ``teacher_x0(y, t, sigma)`` is the teacher's denoiser D with one timestep per sample."""
    shape = (-1, *([1] * (y.ndim - 1)))
    x0 = teacher_x0(y, pair.t_hi, pair.s_hi)
    correct = None if solver == "ddim" else (lambda y_next: teacher_x0(y_next, pair.t_lo, pair.s_lo))
    return heun_step(y, x0, pair.s_hi.view(shape), pair.s_lo.view(shape), correct)


def pair_states(x0: torch.Tensor, z: torch.Tensor, pair: Pair, teacher_x0=None, solver: str = "heun"):
    """(y_{n+1}, y_n) in float64: y_{n+1} = x0 + sigma_{n+1} z, and y_n either the teacher's ODE step
    from it (distillation) or x0 + sigma_n z with the same z (consistency training, no teacher)."""
    shape = (-1, *([1] * (x0.ndim - 1)))
    y_hi = x0.double() + pair.s_hi.view(shape) * z.double()
    with torch.no_grad():
        if teacher_x0 is None:
            y_lo = x0.double() + pair.s_lo.view(shape) * z.double()
        else:
            y_lo = teacher_step(teacher_x0, y_hi, pair, solver)
    return y_hi, y_lo


def consistency_loss(student, target, y_hi, y_lo, pair: Pair, weight: torch.Tensor, loss: str = "huber",
                     huber_c: float = 0.0) -> torch.Tensor:
    """lambda d(f_theta(y_{n+1}, t_{n+1}), f_theta-(y_n, t_n)), averaged over the batch; the target
    side carries no gradient."""
    with torch.no_grad():
        goal = target(x_from_y(y_lo, pair.s_lo).float(), pair.t_lo)
    pred = student(x_from_y(y_hi, pair.s_hi).float(), pair.t_hi)
    if loss == "l2":
        dist = (pred - goal).flatten(1).pow(2).mean(1)
    else:
        dist = pseudo_huber(pred, goal, huber_c)
    return (weight.to(dist.dtype) * dist).mean()


def with_x0_head(net: torch.nn.Module) -> torch.nn.Module:
    """The same U-Net with twice the output channels: the first half keeps its weights, the second
    (the direct x0 prediction) starts at exactly zero."""
    config = {"arch": "unet", **net.config()}
    c = config["out_channels"]
    wide = build_net(dict(config, out_channels=2 * c))
    state = net.state_dict()
    last = [name for name, m in net.out.named_children() if isinstance(m, torch.nn.Conv2d)][-1]
    for k in (f"out.{last}.weight", f"out.{last}.bias"):
        state[k] = torch.cat([state[k], torch.zeros_like(state[k])])
    wide.load_state_dict(state)
    return wide


class Distiller(Trainer):
    """A consistency distillation (or training) run in folder ``out``; see the module docstring.
    Resumes like a training run; the model file holds the EMA consistency function."""

    Config = DistillConfig

    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.ct_total is None:  # fixed when the run starts, so that --resume with more steps keeps it
            cfg.ct_total = cfg.steps
        teacher = load_model(cfg.teacher, device=self.device)
        if teacher.config["net"].get("arch") != "unet":
            raise ValueError(f"teacher {cfg.teacher!r} is not a DDPM noise predictor (arch "
                             f"{teacher.config['net'].get('arch')!r})")
        self.teacher, self.schedule = teacher, teacher.schedule
        dataset = teacher.config["data"]["dataset"]
        self.data = load_dataset(dataset, cfg.data_dir, download=cfg.download)
        if tuple(self.data.shape) != tuple(teacher.shape):
            raise ValueError(f"data set {dataset} has shape {self.data.shape}; the teacher makes {teacher.shape}")
        if cfg.eval_every and dataset not in FEATURE_NET_FOR:
            raise ValueError(f"--eval-every needs a shipped feature network, and data set {dataset!r} has none (those "
                             f"with one: {', '.join(FEATURE_NET_FOR)}); give --eval-every 0")
        if cfg.init == "scratch":  # the teacher's architecture, fresh weights from the seed
            with torch.random.fork_rng(devices=self._rng_devices()):
                torch.manual_seed(step_seed(cfg.seed, 0, "init"))
                student = build_net(teacher.config["net"]).to(self.device)
        else:
            student = copy.deepcopy(teacher.net).requires_grad_(True)
        if cfg.x0_head:
            student = with_x0_head(student).to(self.device)
        if cfg.dropout is not None:  # a training-time setting only: the saved network's shape is the same
            for m in student.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = cfg.dropout
        self.net = ConsistencyFunction(student, self.schedule, prediction=teacher.prediction,
                                       sigma_data=cfg.sigma_data, x0_head=cfg.x0_head).to(self.device)
        if cfg.init_from is not None:  # continue an earlier distillation (same student shape)
            self._warm_start(cfg.init_from)
        self.ema = copy.deepcopy(self.net)
        self.target = copy.deepcopy(self.net).eval().requires_grad_(False)
        ict_c = 0.00054 * math.sqrt(math.prod(teacher.shape))
        self.huber_c = cfg.huber_c if cfg.huber_c is not None else 0.0 if cfg.method == "ect" else ict_c
        self._scales = {}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.net, "ema": self.ema, "target": self.target}

    def config(self) -> dict:
        return {
            "net": {"arch": "consistency", **self.net.config()},
            "schedule": self.schedule.to_config(),
            "prediction": "x0",  # the consistency function f is an x0 estimate
            "data": dict(self.teacher.config["data"], range=list(DATA_RANGE)),
            "ema": {"decay": self.cfg.ema_decay},
            "step": self.step,
            "wall_time_s": round(self.wall, 1),
            "train": dataclasses.asdict(self.cfg),
            "teacher": {"path": str(self.teacher.path), "step": self.teacher.config.get("step"),
                        "command": self.teacher.config.get("command")},
            "command": self.command,
        }

    # -- the grids -----------------------------------------------------------------------------
    def scales(self, step: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
        """(ascending timesteps, their sigmas, interval probabilities or None for uniform) at a step."""
        cfg = self.cfg
        n = cfg.num_scales if cfg.method == "cd" else ict_num_scales(step - 1, cfg.ct_total, cfg.ct_s0, cfg.ct_s1)
        if n not in self._scales:
            ts = torch.as_tensor(karras_timesteps(self.schedule, n), dtype=torch.float64)
            sig = sigma_from_abar(abar_tensor(self.schedule, ts))
            probs = ict_index_probs(sig.numpy()) if cfg.method == "ct" else None
            self._scales[n] = (ts, sig, probs)
        return self._scales[n]

    # -- one step ------------------------------------------------------------------------------
    def teacher_x0(self, y: torch.Tensor, t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The teacher's denoiser D(y; sigma) at one timestep per sample."""
        x_t = x_from_y(y, sigma).float()
        return x0_from_output(self.teacher.net(x_t, t), x_t, abar_from_sigma(sigma), self.teacher.prediction).double()

    def ect_pair(self, n: int, step: int, g: torch.Generator) -> Pair:
        """ECT's (t, r) for a batch (``ddpmkit.ect``), as fractional timesteps and their sigmas."""
        cfg = self.cfg
        t, r = ect_levels(n, self.net.sigma_min, self.schedule.sigma_max, stage_at(step, cfg.ect_double),
                          q=cfg.ect_q, k=cfg.ect_k, b=cfg.ect_b, p_mean=cfg.p_mean, p_std=cfg.p_std, g=g)
        ts = [torch.from_numpy(np.atleast_1d(self.schedule.t_at_sigma(s.numpy()))) for s in (t, r)]
        return Pair(*(v.to(self.device) for v in (ts[0], t, ts[1], r)))

    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.method == "ect":
            return self.ect_step(step)
        cfg = self.cfg
        x0, g = self.data_batch(step)
        ts, sig, probs = self.scales(step)
        if probs is None:
            n = torch.randint(0, len(ts) - 1, (len(x0),), generator=g)
        else:
            n = torch.multinomial(torch.as_tensor(probs), len(x0), replacement=True, generator=g)
        z = torch.randn(x0.shape, generator=g).to(self.device)
        pair = Pair(*(v.to(self.device) for v in (ts[n + 1], sig[n + 1], ts[n], sig[n])))
        teacher = self.teacher_x0 if cfg.method == "cd" else None
        with autocast(self.device, cfg.precision):
            y_hi, y_lo = pair_states(x0, z, pair, teacher, cfg.solver)
        weight = torch.ones_like(pair.s_lo) if cfg.method == "cd" else 1.0 / (pair.s_hi - pair.s_lo)
        out = self.optimise(step, lambda: consistency_loss(self.net, self.target, y_hi, y_lo, pair, weight,
                                                           cfg.loss, self.huber_c))
        with torch.no_grad():  # theta- <- mu theta- + (1 - mu) theta (Algorithm 2); mu = 0: a copy
            torch._foreach_lerp_(list(self.target.parameters()), list(self.net.parameters()), 1 - cfg.mu)
        return out

    def ect_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One ECT step: the pair's target is the network itself, without gradient and with the
        student's dropout mask (both calls draw it first after the step's dropout seed)."""
        cfg = self.cfg
        x0, g = self.data_batch(step)
        pair = self.ect_pair(len(x0), step, g)
        z = torch.randn(x0.shape, generator=g).to(self.device)
        y_hi, y_lo = pair_states(x0, z, pair)
        target = shared_dropout(self.net, step_seed(cfg.seed, step, "dropout"), self._rng_devices())
        return self.optimise(step, lambda: consistency_loss(self.net, target, y_hi, y_lo, pair,
                                                            1.0 / (pair.s_hi - pair.s_lo), cfg.loss, self.huber_c))

    @functools.cached_property
    def reference(self):
        """The shipped feature network and statistics of the data, loaded at the first evaluation."""
        from .measure.reference import load_reference

        return load_reference(FEATURE_NET_FOR[self.teacher.config["data"]["dataset"]])

    def evaluate(self) -> dict:
        """FID of 1- and 2-step ``cm`` samples of the EMA model (default grids) on seeds 0..eval_num-1,
        by the shipped feature network of the data: the progress of a run on one fixed seed set."""
        from .measure.score import score

        cfg, ref = self.cfg, self.reference
        out = {}
        for steps in (1, 2):
            x = sample(self.ema, self.schedule, sampler="cm", steps=steps, prediction="x0",
                       shape=(cfg.eval_num, *self.data.shape), seeds=range(cfg.eval_num), device=self.device)
            out[f"fid_{steps}"] = score(to_levels(x, ref.levels, DATA_RANGE), ref, precision_recall=False)["fid"]
        return out

    def sample_grid(self, path, n: int = 16) -> None:
        rows, labels = [], []
        for steps in (1, 2, 4):
            rows.append(sample(self.ema, self.schedule, sampler="cm", steps=steps, prediction="x0",
                               shape=(n, *self.data.shape), seeds=range(n), device=self.device))
            labels.append(f"cm {steps}")
        save_image(labelled_grid(rows, labels, scale=grid_scale(self.data.shape[1])), path)


def distill(out, options: dict | None = None, **kw):
    """Distil (or with resume=True continue) a run in ``out``; returns the path of its model file."""
    return Distiller(out, options, **kw).run()
