"""Export a model to a diffusers pipeline folder (``DDPMPipeline.from_pretrained(out_dir)``).

Our U-Net (nets/unet.py) is, block for block, a diffusers ``UNet2DModel`` with
``resnet_time_scale_shift="scale_shift"``, ``flip_sin_to_cos=True``, ``freq_shift=0``, conv
down/upsampling and the attention GroupNorm kept in the middle block (``attn_norm_num_groups``);
converting it is a relabelling of the state dict, plus splitting the attention's 1x1 qkv conv into
the to_q/to_k/to_v linears. The outputs agree to float32 round-off (docs/diffusers.md gives the
measured differences). Where the two differ the export is refused with the reason (``why_not``):
a consistency model, class labels, a stem narrower than the first level, per-level attention head
widths, sizes that do not halve evenly, a data range other than [-1, 1] (and a model read from a
diffusers folder, which is one already).

The folder is written without diffusers (its JSON configs written here): into a temporary sibling,
renamed into place at the end, so an error leaves nothing behind. Weights go through safetensors.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile

import torch
from safetensors.torch import save_file

from .checkpoint import save_checkpoint
from .files import _umask, remove_stale_temps
from .models.diffusers_folder import SIDECAR, sidecar_base
from .nets.unet import UNet, level_sizes
from .schedule import NoiseSchedule

# the diffusers version the mapping was measured against (written into the configs, as diffusers does)
DIFFUSERS_VERSION = "0.42.1"
PIPELINES = ("ddpm",)
THEIR_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
_RES = {"norm1": "norm1", "conv1": "conv1", "emb": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
        "skip": "conv_shortcut"}


def why_not(model) -> str | None:
    """The one-sentence reason ``model`` has no faithful diffusers DDPMPipeline equivalent, or None."""
    if model.config.get("format") == "diffusers":
        return f"it was read from a diffusers folder ({model.path}), so it is a UNet2DModel already; copy that folder"
    arch = model.config.get("net", {}).get("arch")
    if arch == "consistency":
        return ("it is a consistency model (net arch 'consistency'): its network is c_skip(t) x + c_out(t) F(x, t) "
                "around a U-Net and is sampled by consistency steps, for which diffusers' UNet2DModel and "
                "DDPMPipeline have no counterpart; export the DDPM it was distilled from instead")
    if arch != "unet" or not isinstance(model.net, UNet):
        return f"its network arch {arch!r} has no UNet2DModel counterpart; only arch 'unet' can be exported"
    cfg = model.net.config()
    chans = [cfg["base_channels"] * m for m in cfg["channel_mults"]]
    if cfg["num_classes"] is not None:
        return (f"it is class-conditional (num_classes={cfg['num_classes']}): DDPMPipeline passes no class labels, "
                "where ours reads a missing label as 'no label'; only unconditional models can be exported")
    if cfg["channel_mults"][0] != 1:
        return (f"channel_mults[0]={cfg['channel_mults'][0]}: our stem is base_channels={cfg['base_channels']} wide "
                f"and the first level {chans[0]}, while UNet2DModel's stem is as wide as its first level")
    widths = sorted(set(_attended(cfg).values()))
    if cfg["num_heads"] > 1 and len(widths) > 1:
        return (f"attention at widths {widths} with num_heads={cfg['num_heads']} has per-level head widths, while "
                "UNet2DModel has one attention_head_dim for all levels (num_heads=1 or equal widths would map)")
    if cfg["out_channels"] != cfg["in_channels"]:
        return (f"out_channels={cfg['out_channels']} differs from in_channels={cfg['in_channels']}, "
                "and DDPMPipeline needs one prediction per input channel")
    factor = 2 ** (len(chans) - 1)
    if any(s % factor for s in model.shape[1:]):
        return (f"the data size {'x'.join(map(str, model.shape[1:]))} is not divisible by {factor} "
                f"({len(chans)} levels): our up path resizes to each skip's odd size, UNet2DModel always doubles")
    if tuple(model.data_range) != (-1.0, 1.0):
        return f"the data range {tuple(model.data_range)} is not [-1, 1], the range DDPMPipeline maps to images"
    return None


def _attended(cfg: dict) -> dict[int, int]:
    """{level: channels} of the levels with attention; level -1 stands for the middle block."""
    chans = [cfg["base_channels"] * m for m in cfg["channel_mults"]]
    sizes = level_sizes(cfg["image_size"], len(chans))
    found = {lvl: c for lvl, (c, s) in enumerate(zip(chans, sizes)) if s in cfg["attn_resolutions"]}
    return {**found, -1: chans[-1]}


def unet_config(model) -> dict:
    """The diffusers ``UNet2DModel`` config of the model's U-Net (see the module docstring)."""
    cfg = model.net.config()
    L, attn = len(cfg["channel_mults"]), _attended(cfg)
    H, W = model.shape[1:]
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": H if H == W else [H, W], "in_channels": cfg["in_channels"], "out_channels": cfg["out_channels"],
        "center_input_sample": False, "time_embedding_type": "positional", "time_embedding_dim": None,
        "freq_shift": 0, "flip_sin_to_cos": True,  # our [cos, sin] with w_i = 10000^(-i / half)
        "down_block_types": ["AttnDownBlock2D" if lvl in attn else "DownBlock2D" for lvl in range(L)],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if lvl in attn else "UpBlock2D" for lvl in reversed(range(L))],
        "block_out_channels": [cfg["base_channels"] * m for m in cfg["channel_mults"]],
        "layers_per_block": cfg["num_res_blocks"], "mid_block_scale_factor": 1, "downsample_padding": 1,
        "downsample_type": "conv", "upsample_type": "conv", "dropout": cfg["dropout"], "act_fn": "silu",
        # None = one head as wide as its block; else heads = width / head_dim, equal widths checked by why_not
        "attention_head_dim": None if cfg["num_heads"] == 1 else attn[-1] // cfg["num_heads"],
        "norm_num_groups": cfg["groups"],
        # with scale_shift, diffusers drops the middle attention's GroupNorm unless this is given
        "attn_norm_num_groups": cfg["groups"],
        "norm_eps": 1e-5, "resnet_time_scale_shift": "scale_shift", "add_attention": True,
        "class_embed_type": None, "num_class_embeds": None, "num_train_timesteps": None,
    }


def scheduler_config(schedule: NoiseSchedule, prediction: str) -> dict:
    """diffusers' ``DDPMScheduler`` config for our schedule: a named schedule where diffusers computes
    the same betas (linear, scaled_linear, cosine with s = 0.008 as squaredcos_cap_v2), else our
    betas as ``trained_betas`` (diffusers' "sigmoid" is GeoDiff's, not Chen 2023's); zero terminal
    SNR as diffusers' own rescale of those betas. Steps: trailing, no clipping, fixed_small variance
    (our DDPM sampler's defaults)."""
    p = schedule.params
    named = {"linear": "linear", "scaled_linear": "scaled_linear"}.get(schedule.name)
    if schedule.name == "cosine" and p["s"] == 0.008:
        named = "squaredcos_cap_v2"
    betas = {"beta_schedule": named, "trained_betas": None}
    if named is None:  # the betas before any zero-SNR rescale, which diffusers applies itself
        base = NoiseSchedule(schedule.name, schedule.T, **p)
        betas = {"beta_schedule": "linear", "trained_betas": base.betas.tolist()}
    return {
        "_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": schedule.T,
        "beta_start": p.get("beta_start", 0.0001), "beta_end": p.get("beta_end", 0.02),  # read by the linear names only
        **betas, "variance_type": "fixed_small", "clip_sample": False, "prediction_type": THEIR_PREDICTION[prediction],
        "thresholding": False, "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0,
        "timestep_spacing": "trailing", "steps_offset": 0, "rescale_betas_zero_snr": schedule.zero_terminal_snr,
    }


def unet_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our U-Net's weights under UNet2DModel's names (the qkv 1x1 conv split into to_q/to_k/to_v
    linears, the output projection made a linear)."""
    cfg = net.config()
    L, n = len(cfg["channel_mults"]), cfg["num_res_blocks"]
    names = {"time_mlp.0": "time_embedding.linear_1", "time_mlp.2": "time_embedding.linear_2", "conv_in": "conv_in",
             "out.0": "conv_norm_out", "out.2": "conv_out"}

    def block(ours: str, theirs: str, j: int) -> None:  # one Block: res (+ attn) -> resnets.j (+ attentions.j)
        names.update({f"{ours}.res.{a}": f"{theirs}.resnets.{j}.{b}" for a, b in _RES.items()})
        attn = f"{theirs}.attentions.{j}"
        names.update({f"{ours}.attn.norm": f"{attn}.group_norm", f"{ours}.attn.qkv": f"{attn}.qkv",
                      f"{ours}.attn.proj": f"{attn}.to_out.0"})

    i = 0
    for lvl in range(L):  # down: n blocks per level, then a stride-2 conv (not after the last)
        for j in range(n):
            block(f"down.{i}", f"down_blocks.{lvl}", j)
            i += 1
        if lvl < L - 1:
            names[f"down.{i}"], i = f"down_blocks.{lvl}.downsamplers.0.conv", i + 1
    block("mid1", "mid_block", 0)
    names.update({f"mid2.{a}": f"mid_block.resnets.1.{b}" for a, b in _RES.items()})
    i = 0
    for k, lvl in enumerate(reversed(range(L))):  # up: n + 1 blocks per level, then resize + conv
        for j in range(n + 1):
            block(f"up.{i}", f"up_blocks.{k}", j)
            i += 1
        if lvl > 0:
            names[f"up.{i}"], i = f"up_blocks.{k}.upsamplers.0.conv", i + 1

    out = {}
    for key, value in net.state_dict().items():
        module, param = key.rsplit(".", 1)
        if module not in names:
            raise ValueError(f"tensor {key!r} of this network has no UNet2DModel counterpart")
        value, theirs = value.detach().to("cpu", torch.float32).contiguous(), names[module]
        if module.endswith((".attn.qkv", ".attn.proj")) and value.ndim == 4:  # 1x1 conv (O, I, 1, 1) -> linear (O, I)
            value = value.flatten(1)
        if module.endswith(".attn.qkv"):  # output channels [q | k | v], each head-major as in diffusers
            for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                out[f"{theirs[:-3]}{name}.{param}"] = part.clone()
        else:
            out[f"{theirs}.{param}"] = value.clone()
    return out


def export_diffusers(model, out_dir: str | os.PathLike, *, pipeline: str = "ddpm") -> pathlib.Path:
    """Write ``model`` (a LoadedModel) as a diffusers pipeline folder at ``out_dir``: model_index.json,
    unet/ (config.json, diffusion_pytorch_model.safetensors) and scheduler/scheduler_config.json,
    and ddpmkit's ``ddpmkit.safetensors`` naming the model's data set (diffusers ignores it).
    Raises ValueError for a model without a faithful equivalent (``why_not``), an unknown pipeline,
    or an ``out_dir`` that exists and is not an empty folder."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; valid: {', '.join(PIPELINES)}")
    out = pathlib.Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder; give a new folder to export into")
    reason = why_not(model)
    if reason is not None:
        raise ValueError(f"{model.path} cannot be exported to diffusers faithfully: {reason}")
    files = {
        "model_index.json": {"_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
                             "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]},
        "unet/config.json": unet_config(model),
        "scheduler/scheduler_config.json": scheduler_config(model.schedule, model.prediction),
    }
    weights = unet_state_dict(model.net)
    made = [d for d in out.parents if not d.exists()]  # the missing parents, removed again on failure
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent)  # what a killed export left
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        for name, config in files.items():
            (tmp / name).parent.mkdir(exist_ok=True)
            (tmp / name).write_text(json.dumps(config, indent=2) + "\n")
        save_file(weights, str(tmp / "unet" / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        # ddpmkit's own file beside diffusers': the data set, so eval and bench find its feature network
        dataset = model.config.get("data", {}).get("dataset")
        save_checkpoint(tmp / SIDECAR, {}, sidecar_base({"dataset": dataset} if dataset else {}))
        for f in tmp.rglob("*"):  # on disk before the rename makes the folder visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                os.chmod(f, 0o666 & ~_umask())
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private (0700)
        os.replace(tmp, out)  # replaces an empty folder too; fails if one appeared with contents meanwhile
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
        for d in made:  # innermost first; one that something else filled meanwhile stays
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return out
