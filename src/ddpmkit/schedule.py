"""Noise schedules and step grids of the discrete-time variance-preserving diffusion.

Forward process (Ho et al. 2020, eq. 4): q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with
abar_t = prod_{s<=t} (1 - beta_s). Timesteps are indexed t = 0..T-1, t = 0 least noisy (the
papers count 1..T). All tables are float64 NumPy arrays; once a named schedule ships its
numbers never change (tests pin them to their closed forms).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from . import vp

SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")
BETAS = "betas"  # the name of a schedule given by its beta table (NoiseSchedule.from_betas)
SPACINGS = ("leading", "trailing", "linspace")  # integer grids, diffusers' semantics
CONTINUOUS_SPACINGS = ("karras", "logsnr")  # fractional timesteps placed by noise level
ALL_SPACINGS = SPACINGS + CONTINUOUS_SPACINGS
MAX_BETA = 0.999  # Nichol & Dhariwal 2021, §3.2: cap beta to avoid a singularity near t = T


def _choice_error(what: str, value, valid: Sequence[str]) -> ValueError:
    return ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def betas_from_alpha_bar(alpha_bar: Callable[[float], float], T: int, max_beta: float = MAX_BETA) -> np.ndarray:
    """Discretise a continuous abar(u), u in [0, 1], into T betas (Nichol & Dhariwal 2021, eq. 17):
    beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta)."""
    u = np.arange(T + 1, dtype=np.float64) / T
    ab = np.array([alpha_bar(x) for x in u], dtype=np.float64)
    return np.minimum(1.0 - ab[1:] / ab[:-1], max_beta)


def cosine_alpha_bar(u: float, s: float = 0.008) -> float:
    """f(u) = cos^2(((u + s) / (1 + s)) * pi / 2) of Nichol & Dhariwal 2021, eq. 17 (unnormalised)."""
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def sigmoid_alpha_bar(u: float, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> float:
    """The sigmoid schedule of Chen 2023, "On the Importance of Noise Scheduling for Diffusion
    Models", Algorithm 1: abar(u) = (sig(end/tau) - sig(((end-start) u + start)/tau)) /
    (sig(end/tau) - sig(start/tau)). (diffusers' "sigmoid" is a different, GeoDiff beta schedule.)"""

    def sig(z: float) -> float:
        return 1.0 / (1.0 + math.exp(-z))

    v_start, v_end = sig(start / tau), sig(end / tau)
    return (v_end - sig(((end - start) * u + start) / tau)) / (v_end - v_start)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps Are Flawed", Algorithm 1:
    shift and scale sqrt(abar) so that abar_{T-1} = 0 while abar_0 keeps its value."""
    sqrt_ab = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


# the most timesteps a schedule holds tables for (discrete DDPMs use 1000 to 4000): a crafted checkpoint
# header with T = 1e9 is refused before 16 GB of tables are built
MAX_T = 100_000

class NoiseSchedule:
    """A named beta schedule over T discrete timesteps, with its float64 tables.

    Names:
      - ``linear``: Ho et al. 2020, beta linear from 1e-4 to 0.02 at T = 1000. For other T the
        default endpoints scale by 1000/T (improved-diffusion's rule) so that abar_{T-1} stays near 0;
        explicit ``beta_start``/``beta_end`` are used as given.
      - ``scaled_linear``: Rombach et al. 2022 (Stable Diffusion): sqrt(beta) linear from
        sqrt(0.00085) to sqrt(0.012), defaults scaled by 1000/T like ``linear``.
      - ``cosine``: Nichol & Dhariwal 2021, eq. 17, offset ``s`` = 0.008, beta capped at 0.999
        (diffusers: ``squaredcos_cap_v2``).
      - ``sigmoid``: Chen 2023, Algorithm 1 (``start`` = -3, ``end`` = 3, ``tau`` = 1), discretised
        like the cosine schedule.

    ``zero_terminal_snr=True`` rescales any of them so that abar_{T-1} = 0 (Lin et al. 2023); the
    network must then predict ``v`` or ``x0``, since eps cannot give x0 where abar = 0.
    """

    _PARAMS = {
        "linear": {"beta_start": 1e-4, "beta_end": 0.02},
        "scaled_linear": {"beta_start": 0.00085, "beta_end": 0.012},
        "cosine": {"s": 0.008},
        "sigmoid": {"start": -3.0, "end": 3.0, "tau": 1.0},
    }

    def __init__(self, name: str = "linear", T: int = 1000, *, zero_terminal_snr: bool = False, **params: float):
        if name not in SCHEDULES:
            raise _choice_error("schedule", name, SCHEDULES)
        if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or not 2 <= T <= MAX_T:
            raise ValueError(f"T={T!r} is not a valid number of diffusion steps; need an integer in 2..{MAX_T}")
        defaults = self._PARAMS[name]
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise ValueError(
                f"unknown parameter {unknown[0]!r} for schedule {name!r}; valid: {', '.join(defaults)}"
            )
        resolved = {k: (float(params[k]) if params.get(k) is not None else None) for k in defaults}
        if name in ("linear", "scaled_linear"):
            for k in ("beta_start", "beta_end"):
                if resolved[k] is None:
                    resolved[k] = defaults[k] * 1000.0 / T
        else:
            resolved = {k: (defaults[k] if v is None else v) for k, v in resolved.items()}
        self.name, self.T, self.zero_terminal_snr, self.params = name, int(T), bool(zero_terminal_snr), resolved

        betas = self._make_betas()
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        if not (np.all(betas > 0) and np.all(betas <= 1)):
            raise ValueError(f"schedule {name!r} with {resolved} gives betas outside (0, 1]")
        if not zero_terminal_snr and np.any(betas >= 1):
            raise ValueError(f"schedule {name!r} with T={T} and {resolved} reaches beta = 1 (abar = 0); raise T, "
                             "lower beta_end, or ask for zero_terminal_snr=True")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        for table in (self.betas, self.alphas, self.alphas_cumprod):
            table.flags.writeable = False

    def _make_betas(self) -> np.ndarray:
        p, T = self.params, self.T
        if self.name == "linear":
            return np.linspace(p["beta_start"], p["beta_end"], T, dtype=np.float64)
        if self.name == "scaled_linear":
            return np.linspace(p["beta_start"] ** 0.5, p["beta_end"] ** 0.5, T, dtype=np.float64) ** 2
        if self.name == "cosine":
            return betas_from_alpha_bar(lambda u: cosine_alpha_bar(u, p["s"]), T)
        return betas_from_alpha_bar(lambda u: sigmoid_alpha_bar(u, p["start"], p["end"], p["tau"]), T)

    @classmethod
    def from_betas(cls, betas: Sequence[float], *, label: str = "given betas") -> NoiseSchedule:
        """A schedule given by its beta table (diffusers' ``trained_betas``, or a beta schedule that
        has no name here, such as diffusers' GeoDiff ``sigmoid``); ``label`` says where it came from.
        abar_{T-1} = 0 (beta = 1 at the end) is allowed: that is zero terminal SNR."""
        b = np.array(betas, dtype=np.float64).ravel()
        if b.size < 2:
            raise ValueError(f"a beta table needs at least 2 entries; got {b.size}")
        if not (np.all(np.isfinite(b)) and np.all(b > 0) and np.all(b <= 1)):
            raise ValueError(f"betas ({label}) must lie in (0, 1]; got {b.min():g}..{b.max():g}")
        if np.any(b[:-1] >= 1):
            raise ValueError(f"betas ({label}) reach 1 before the last timestep (abar = 0 inside the schedule)")
        self = cls.__new__(cls)
        self.name, self.T, self.zero_terminal_snr = BETAS, int(b.size), bool(b[-1] == 1)
        self.params = {"label": str(label)}
        self.betas = b
        self.alphas = 1.0 - b
        self.alphas_cumprod = np.cumprod(self.alphas)
        for table in (self.betas, self.alphas, self.alphas_cumprod):
            table.flags.writeable = False
        return self

    # -- configuration -------------------------------------------------------------------------
    def to_config(self) -> dict:
        if self.name == BETAS:
            return {"name": BETAS, "T": self.T, "label": self.params["label"], "betas": self.betas.tolist()}
        return {"name": self.name, "T": self.T, "zero_terminal_snr": self.zero_terminal_snr, **self.params}

    @classmethod
    def from_config(cls, config: dict) -> NoiseSchedule:
        config = dict(config)
        if config.get("name") == BETAS:
            betas = config["betas"]
            if len(betas) != config.get("T", len(betas)):
                raise ValueError(f"the schedule's T={config['T']} disagrees with its {len(betas)} betas")
            return cls.from_betas(betas, label=config.get("label", "given betas"))
        return cls(config.pop("name"), config.pop("T"), zero_terminal_snr=config.pop("zero_terminal_snr", False), **config)

    def __repr__(self) -> str:
        if self.name == BETAS:
            return f"NoiseSchedule.from_betas(T={self.T}, label={self.params['label']!r})"
        extra = ", zero_terminal_snr=True" if self.zero_terminal_snr else ""
        return f"NoiseSchedule({self.name!r}, T={self.T}{extra})"

    # -- derived quantities --------------------------------------------------------------------
    @property
    def sigmas(self) -> np.ndarray:
        """sigma_t = sqrt((1 - abar_t) / abar_t): the noise level of x_t / sqrt(abar_t) (EDM/VE view,
        ``vp.sigma_from_abar``); inf where abar_t = 0."""
        return vp.sigma_from_abar(self.alphas_cumprod)

    @property
    def log_snr(self) -> np.ndarray:
        """log SNR_t = log(abar_t / (1 - abar_t)) (Kingma et al. 2021, ``vp.log_snr_from_abar``); -inf
        where abar_t = 0. (DPM-Solver's lambda is half of it.)"""
        return vp.log_snr_from_abar(self.alphas_cumprod)

    def abar_at(self, t):
        """abar at integer or fractional timesteps t in [0, T-1].

        Between integer timesteps logSNR is interpolated linearly (equivalently log sigma, as in
        k-diffusion); abar itself is interpolated on a segment that touches abar = 0.
        Returns a float for a scalar t, else a float64 array.
        """
        if isinstance(t, (int, float)) and not isinstance(t, bool) and float(t).is_integer() and 0 <= t <= self.T - 1:
            # a grid point: the table's own entry, without numpy's per-call cost (samplers ask once a step)
            return float(self.alphas_cumprod[int(t)])
        tt = np.asarray(t, dtype=np.float64)
        if np.any(~np.isfinite(tt)) or np.any(tt < 0) or np.any(tt > self.T - 1):
            bad = tt[~((tt >= 0) & (tt <= self.T - 1))].ravel()[0]
            raise ValueError(f"timestep {bad:g} is outside [0, {self.T - 1}]")
        lo = np.floor(tt).astype(np.int64)
        hi = np.minimum(lo + 1, self.T - 1)
        w = tt - lo
        ab = self.alphas_cumprod
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = vp.log_snr_from_abar(ab[lo]) * (1 - w) + vp.log_snr_from_abar(ab[hi]) * w
            out = np.where(ab[hi] > 0, vp.abar_from_log_snr(lam), ab[lo] * (1 - w) + ab[hi] * w)
        out = np.where(w == 0, ab[lo], out)
        return float(out) if out.ndim == 0 else out

    def t_at_log_snr(self, lam):
        """The (fractional) timestep whose logSNR is ``lam``: the inverse of ``abar_at`` over the
        table's finite logSNR range, exact at its entries and linear in logSNR between them. A
        value outside that range (beyond round-off) is an error, never silently clipped."""
        table = self.log_snr  # decreasing in t
        finite = np.isfinite(table)
        lo, hi = table[finite][-1], table[finite][0]
        lam = np.asarray(lam, dtype=np.float64)
        slack = 1e-9 * max(abs(lo), abs(hi), 1.0)
        if np.any(~(lam >= lo - slack)) or np.any(~(lam <= hi + slack)):
            raise ValueError(f"logSNR outside the schedule's range [{lo:.4g}, {hi:.4g}] "
                             f"(sigma in [{vp.sigma_from_log_snr(hi):.4g}, {vp.sigma_from_log_snr(lo):.4g}])")
        out = np.interp(-np.clip(lam, lo, hi), -table[finite], np.arange(self.T, dtype=np.float64)[finite])
        return float(out) if out.ndim == 0 else out

    def t_at_sigma(self, sigma):
        """The timestep whose sigma = sqrt((1 - abar) / abar) is ``sigma`` (log sigma = -logSNR / 2)."""
        sigma = np.asarray(sigma, dtype=np.float64)
        if np.any(~(sigma > 0)):
            raise ValueError("sigma must be > 0 to have a timestep; sigma = 0 is clean data, after the grid")
        return self.t_at_log_snr(vp.log_snr_from_sigma(sigma))

    @property
    def sigma_max(self) -> float:
        """The largest finite sigma of the table (at t = T-1, or T-2 with zero terminal SNR)."""
        s = self.sigmas
        return float(s[np.isfinite(s)].max())

    def grid(self, steps: int, spacing: str = "trailing", *, rho: float = 7.0, offset: int = 0) -> np.ndarray:
        """A descending step grid of ``steps`` timesteps. Integer spacings as ``make_grid`` (with its
        ``offset``, for leading grids);
        ``karras``: sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho (Karras
        et al. 2022, eq. 5) between the schedule's sigma at t = T-1 and t = 0; ``logsnr``: uniform
        in logSNR over the same range (the DPM-Solver choice). Both start at t = T-1, end at t = 0,
        and are fractional in between, so they may have more than T steps; after the last point
        the sample goes to clean data."""
        if spacing in SPACINGS:
            return make_grid(self.T, steps, spacing, offset)
        if spacing not in CONTINUOUS_SPACINGS:
            raise _choice_error("spacing", spacing, ALL_SPACINGS)
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps={steps!r} is not valid; need an integer >= 1")
        lam_max, lam_min = self.log_snr[0], self.log_snr[-1]
        if not np.isfinite(lam_min):
            raise ValueError(f"the {spacing!r} spacing needs a finite terminal SNR; use trailing with zero_terminal_snr")
        if steps == 1:
            return np.array([float(self.T - 1)])
        u = np.linspace(0.0, 1.0, steps)
        if spacing == "karras":
            s_max, s_min = vp.sigma_from_log_snr(lam_min), vp.sigma_from_log_snr(lam_max)
            sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
            t = self.t_at_sigma(sig)
        else:
            t = self.t_at_log_snr(lam_min + u * (lam_max - lam_min))
        t[0], t[-1] = self.T - 1, 0.0  # exact ends, free of round-off
        return t

    def transitions(self, grid: Sequence[float]) -> list[tuple[float, float, float]]:
        """(t, abar_t, abar_next) for every step of a descending grid. After its last entry the
        sample goes to abar = 1 (clean data), never to abar_0."""
        ts = [float(t) for t in grid]
        abars = [self.abar_at(t) for t in ts] + [1.0]
        return [(ts[i], abars[i], abars[i + 1]) for i in range(len(ts))]


def make_grid(T: int, steps: int, spacing: str = "trailing", offset: int = 0) -> np.ndarray:
    """A descending grid of ``steps`` integer timesteps out of 0..T-1, with diffusers' spacings
    (Lin et al. 2023, Table 2):

      - ``leading``:  (T // steps) * [steps-1, ..., 1, 0] + offset
      - ``trailing``: round(T - i T/steps) - 1 for i = 0..steps-1, so the grid starts at T-1
        and the last jump to clean data is as long as the others
      - ``linspace``: round(linspace(0, T-1, steps)), reversed

    ``trailing`` computes each entry directly; diffusers builds it with a float ``np.arange`` and
    for some counts (e.g. T = 1000, steps = 61) returns one extra timestep -1 — otherwise equal.
    """
    if spacing not in SPACINGS:
        raise _choice_error("spacing", spacing, SPACINGS)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
        raise ValueError(f"steps={steps!r} is not valid; need an integer in [1, {T}]")
    if offset and spacing != "leading":
        raise ValueError(f"offset={offset} applies only to the 'leading' spacing, not {spacing!r}")
    if spacing == "leading":
        grid = np.arange(steps, dtype=np.int64)[::-1] * (T // steps) + int(offset)
    elif spacing == "trailing":
        # the step as np.arange(T, 0, -T/steps) effectively uses it, so that rounding agrees bit for bit
        delta = (T - T / steps) - T
        grid = np.round(T + np.arange(steps) * delta).astype(np.int64) - 1
    else:
        grid = np.round(np.linspace(0, T - 1, steps))[::-1].astype(np.int64)
    if grid.max() > T - 1 or grid.min() < 0:
        raise ValueError(f"offset={offset} moves the leading grid outside [0, {T - 1}]")
    return grid.copy()


def format_grid(grid) -> str:
    """A step grid for people: "775, 450"."""
    return ", ".join(f"{float(t):g}" for t in grid)


def check_grid(grid, T: int) -> np.ndarray:
    """Validate a user-supplied grid: strictly descending timesteps inside [0, T-1]."""
    g = np.asarray(grid, dtype=np.float64).ravel()
    if g.size == 0:
        raise ValueError("the step grid is empty; give at least one timestep")
    if np.any(~np.isfinite(g)) or g.min() < 0 or g.max() > T - 1:
        raise ValueError(f"grid timesteps must lie in [0, {T - 1}]; got {g.min():g}..{g.max():g}")
    if np.any(np.diff(g) >= 0):
        raise ValueError(f"grid timesteps must be strictly descending (noisiest first); got "
                         f"{','.join(f'{t:g}' for t in g)}")
    return g
