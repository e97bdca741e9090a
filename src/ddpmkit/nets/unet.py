"""The DDPM noise-prediction U-Net (Ho et al. 2020, "Denoising Diffusion Probabilistic Models",
Appendix B), written in the style of improved-/guided-diffusion (Nichol & Dhariwal 2021,
"Improved Denoising Diffusion Probabilistic Models").

- Timesteps: sinusoidal embedding (Vaswani et al. 2017, "Attention Is All You Need", §3.5; as in
  DDPM) of width ``base_channels``, then Linear-SiLU-Linear to ``4 * base_channels``.
- Residual blocks: GroupNorm-SiLU-conv3x3, the time embedding projected in as a scale and shift of
  the second GroupNorm (FiLM; Nichol & Dhariwal 2021's ``use_scale_shift_norm``), SiLU, dropout,
  a zero-initialised conv3x3, and a 1x1 conv on the skip path when the channel count changes.
- Self-attention (multi-head, GroupNorm first, residual, zero-initialised output projection;
  multi-head as in Nichol & Dhariwal 2021) at the spatial sizes in ``attn_resolutions`` and always
  in the middle block.
- Down: stride-2 conv3x3; up: nearest-neighbour resize + conv3x3; every block output of the down
  path is concatenated into the up path, which has ``num_res_blocks + 1`` blocks per level (DDPM).
- Odd sizes: a stride-2 conv maps n -> ceil(n / 2), and every upsampling resizes to the exact size
  of the skip tensor it meets (``F.interpolate(size=...)``), so any size works without padding or
  cropping (28 -> 14 -> 7 -> 14 -> 28, 9 -> 5 -> 9). ``image_size`` only places the attention
  blocks; the net is fully convolutional and runs on other sizes too.
- Class conditioning: ``nn.Embedding(num_classes + 1, 4 * base_channels)`` added to the time
  embedding; index ``num_classes`` means "no label" (used for ``y=None``, and by classifier-free
  guidance training, Ho & Salimans 2022, which replaces dropped labels by it).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

PRESETS: dict[str, dict] = {
    # for tests; attention only in the middle block (the lowest resolution), so it fits any size
    "tiny": dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=()),
    # 28x28 data (MNIST-like) on a CPU: 28 -> 14 -> 7, attention at 14x14 and in the middle (7x7)
    "small": dict(image_size=28, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2,
                  attn_resolutions=(14,), dropout=0.1),
    # scikit-learn's 8x8 digits (1797 images): 8 -> 4, attention at 4x4; base 32 keeps it ~1M
    # parameters (base 64 would be 4.3M, ~3x slower per step on a CPU, for a tiny data set)
    "digits": dict(image_size=8, base_channels=32, channel_mults=(1, 2), num_res_blocks=2,
                   attn_resolutions=(4,), dropout=0.1),
}


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t w_i), sin(t w_i)], w_i = max_period^(-i / (dim/2)) (Vaswani et
    al. 2017, §3.5). Computed in float32, so int64 and float32 timesteps of equal value agree."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def level_sizes(image_size: int, levels: int) -> list[int]:
    """Spatial size at each level: a stride-2 conv (kernel 3, padding 1) maps n -> ceil(n / 2)."""
    sizes = [image_size]
    for _ in range(levels - 1):
        sizes.append(-(-sizes[-1] // 2))
    return sizes


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)  # -> (scale, shift) of norm2
        self.norm2, self.drop = nn.GroupNorm(groups, cout), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.drop(F.silu(h)))


class AttnBlock(nn.Module):
    def __init__(self, ch: int, num_heads: int, groups: int):
        super().__init__()
        self.heads, self.norm = num_heads, nn.GroupNorm(groups, ch)
        self.qkv, self.proj = nn.Conv2d(ch, 3 * ch, 1), _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        # each (B, heads, HW, C / heads) and contiguous: a strided last dimension sends
        # scaled_dot_product_attention to its unfused "math" kernel (5-6x slower on a CPU at 14x14)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class Block(nn.Module):
    """A residual block, followed by self-attention at the listed resolutions."""

    def __init__(self, cin, cout, emb_dim, dropout, groups, attn_heads: int | None):
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim, dropout, groups)
        self.attn = AttnBlock(cout, attn_heads, groups) if attn_heads else None

    def forward(self, x, emb):
        h = self.res(x, emb)
        return self.attn(h) if self.attn is not None else h


class Downsample(nn.Conv2d):
    def __init__(self, ch: int):
        super().__init__(ch, ch, 3, stride=2, padding=1)  # n -> ceil(n / 2)

    def forward(self, x, emb=None):
        return super().forward(x)


class Upsample(nn.Conv2d):
    def __init__(self, ch: int):
        super().__init__(ch, ch, 3, padding=1)

    def forward(self, x, size):
        return super().forward(F.interpolate(x, size=tuple(size), mode="nearest"))


class UNet(nn.Module):
    """DDPM noise predictor ``net(x, t, y=None) -> output`` of x's shape (see the module docstring).

    ``t``: timesteps, a 1-D tensor of batch size (int64 or float32, fractional values allowed), or
    a 0-d tensor / python number broadcast over the batch. ``y``: class labels (int64, batch size)
    in 0..num_classes, where num_classes means "no label"; None means unconditional.
    """

    def __init__(self, *, in_channels: int = 1, out_channels: int | None = None, image_size: int = 28,
                 base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions: tuple[int, ...] = (14,),
                 num_heads: int = 4, dropout: float = 0.0, num_classes: int | None = None,
                 groups: int = 8):
        super().__init__()
        channel_mults, attn_resolutions = tuple(channel_mults), tuple(attn_resolutions)
        out_channels = in_channels if out_channels is None else out_channels
        self._config = dict(in_channels=in_channels, out_channels=out_channels, image_size=image_size,
                            base_channels=base_channels, channel_mults=list(channel_mults),
                            num_res_blocks=num_res_blocks, attn_resolutions=list(attn_resolutions),
                            num_heads=num_heads, dropout=dropout, num_classes=num_classes, groups=groups)
        for name in ("in_channels", "out_channels", "image_size", "base_channels", "num_res_blocks",
                     "num_heads", "groups"):
            if not isinstance(self._config[name], int) or isinstance(self._config[name], bool) or self._config[name] < 1:
                raise ValueError(f"{name} must be a positive int, got {self._config[name]!r}")
        if not channel_mults or not all(isinstance(m, int) and m >= 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty tuple of positive ints, got {channel_mults}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be None or a positive int, got {num_classes!r}")
        chans = [base_channels * m for m in channel_mults]
        if any(c % groups for c in chans):
            raise ValueError(f"channel counts {chans} (base_channels * channel_mults) must be divisible by groups={groups}")
        resolutions = level_sizes(image_size, len(channel_mults))
        for r in attn_resolutions:
            if r not in resolutions:
                raise ValueError(f"attention resolution {r} does not occur for image_size={image_size}; "
                                 f"the levels are {resolutions}")
        attn_at = [(chans[-1], "the middle block")]
        attn_at += [(c, f"{r}x{r}") for c, r in zip(chans, resolutions) if r in attn_resolutions]
        for c, where in attn_at:
            if c % num_heads:
                raise ValueError(f"{c} channels (attention at {where}) are not divisible by num_heads={num_heads}")

        emb_dim, self.base_channels, self.num_classes = 4 * base_channels, base_channels, num_classes
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        def block(cin, cout, res):
            return Block(cin, cout, emb_dim, dropout, groups, num_heads if res in attn_resolutions else None)

        ch, skips, self.down = base_channels, [base_channels], nn.ModuleList()
        for lvl, (cout, res) in enumerate(zip(chans, resolutions)):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, cout, res))
                ch = cout
                skips.append(ch)
            if lvl < len(chans) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
        self.mid1 = Block(ch, ch, emb_dim, dropout, groups, num_heads)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout, groups)
        self.up = nn.ModuleList()
        for lvl in reversed(range(len(chans))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(ch + skips.pop(), chans[lvl], resolutions[lvl]))
                ch = chans[lvl]
            if lvl > 0:
                self.up.append(Upsample(ch))
        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), _zero(nn.Conv2d(ch, out_channels, 3, padding=1)))
        # channels-last conv weights make every activation channels-last: oneDNN's convolutions are
        # faster in that layout (1.1-1.2x for the whole "small" net on a CPU); the output is made plain again
        self.to(memory_format=torch.channels_last)

    @property
    def null_label(self) -> int | None:
        """The label that means "no label" (classifier-free guidance's unconditional half), or None
        for an unconditional network."""
        return self.num_classes

    def config(self) -> dict:
        """JSON-serialisable kwargs that rebuild this architecture: ``UNet(**net.config())``."""
        return dict(self._config, channel_mults=list(self._config["channel_mults"]),
                    attn_resolutions=list(self._config["attn_resolutions"]))

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self._config["in_channels"]:
            raise ValueError(f"expected x of shape (B, {self._config['in_channels']}, H, W), got {tuple(x.shape)}")
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must be a scalar or have shape ({B},), got {tuple(t.shape)}")
        emb = self.time_mlp(timestep_embedding(t, self.base_channels).to(self.time_mlp[0].weight.dtype))
        if self.class_emb is not None:
            if y is None:
                y = torch.full((B,), self.num_classes, dtype=torch.long, device=x.device)
            elif y.shape != (B,):
                raise ValueError(f"y must have shape ({B},), got {tuple(y.shape)}")
            emb = emb + self.class_emb(y)
        elif y is not None:
            raise ValueError("class labels y were given to a UNet built with num_classes=None")

        h = self.conv_in(x)
        hs = [h]
        for m in self.down:
            h = m(h, emb)
            hs.append(h)
        h = self.mid2(self.mid1(h, emb), emb)
        for m in self.up:
            h = m(h, hs[-1].shape[-2:]) if isinstance(m, Upsample) else m(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h).contiguous()


def build_unet(preset_or_config: str | dict, **overrides) -> UNet:
    """A UNet from a preset name (``PRESETS[name] | overrides``) or a config dict (``dict | overrides``).

    A preset's attention belongs to its levels, not to its sizes: when ``image_size`` is overridden
    and ``attn_resolutions`` is not, the preset's attention moves to the same levels of the new size
    (``build_unet("small", image_size=32)`` attends at 16x16 where the 28x28 net attends at 14x14).
    """
    params = inspect.signature(UNet.__init__).parameters
    valid = list(params)[1:]
    if isinstance(preset_or_config, str):
        if preset_or_config not in PRESETS:
            raise ValueError(f"unknown UNet preset {preset_or_config!r}; valid: {', '.join(PRESETS)}")
        kwargs = dict(PRESETS[preset_or_config], **overrides)
        if "image_size" in overrides and "attn_resolutions" not in overrides:
            preset = {k: params[k].default for k in valid} | PRESETS[preset_or_config]
            old = level_sizes(preset["image_size"], len(preset["channel_mults"]))
            new = level_sizes(overrides["image_size"], len(kwargs.get("channel_mults", preset["channel_mults"])))
            kwargs["attn_resolutions"] = tuple(new[i] for i, r in enumerate(old)
                                               if r in preset["attn_resolutions"] and i < len(new))
    elif isinstance(preset_or_config, dict):
        kwargs = dict(preset_or_config, **overrides)
    else:
        raise TypeError(f"expected a preset name or a config dict, got {type(preset_or_config).__name__}")
    for key in kwargs:
        if key not in valid:
            raise ValueError(f"unknown UNet argument {key!r}; valid: {', '.join(valid)}")
    return UNet(**kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
