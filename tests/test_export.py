"""``ddpmkit export --to diffusers``: the exported UNet2DModel computes our network's function (to
float32 round-off; to float64 round-off in float64, so the mapping itself is exact), the exported
DDPMScheduler has our schedule, models without a faithful equivalent are refused in one line, and
the folder appears whole or not at all."""

import json
import pathlib

import numpy as np
import pytest
import torch

import ddpmkit.export as export
from ddpmkit.checkpoint import save_checkpoint
from ddpmkit.cli import main
from ddpmkit.models import load_model
from ddpmkit.models.loaded import LoadedModel
from ddpmkit.nets import build_unet
from ddpmkit.schedule import NoiseSchedule

from conftest import diffusers  # the tests marked needs_diffusers skip without it (see conftest.py)

TIMESTEPS = (0, 999, 17.5, 998.75)  # integer and fractional
REL_TOL = 1e-5  # of the output's scale; measured: 7e-7 (mnist) to 2.4e-6 (random "small")
# a small net that maps: 3 levels, attention at 4x4 and in the middle (both 32 channels, 2 heads of 16)
SMALL = dict(image_size=8, base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,),
             num_heads=2, groups=4, in_channels=3)


def random_model(config: dict, shape, schedule=None, prediction="eps") -> LoadedModel:
    """A LoadedModel whose every weight is random: the zero-initialised convs of a fresh net would hide
    a wrong mapping of the layers behind them."""
    net = build_unet(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return LoadedModel(net, schedule or NoiseSchedule("linear", 1000), prediction, tuple(shape), (-1.0, 1.0),
                       {"net": {"arch": "unet", **net.config()}}, pathlib.Path("random"))


def worst_difference(net, unet, shape, dtype=torch.float32) -> tuple[float, float]:
    """max |ours - theirs| and max |ours| over random inputs at TIMESTEPS."""
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    worst = scale = 0.0
    with torch.no_grad():
        for t in TIMESTEPS:
            t = torch.full((2,), t, dtype=torch.long if isinstance(t, int) else dtype)
            ours, theirs = net(x, t), unet(x, t).sample
            worst, scale = max(worst, (ours - theirs).abs().max().item()), max(scale, ours.abs().max().item())
    return worst, scale


@pytest.mark.needs_diffusers
def test_shipped_mnist_loads_in_ddpm_pipeline_and_matches(tmp_path, capsys):
    out = tmp_path / "mnist-diffusers"
    assert main(["export", "--model", "mnist", "--to", "diffusers", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    model = load_model("mnist")
    ours = export.unet_state_dict(model.net)
    assert set(pipe.unet.state_dict()) == set(ours)  # every tensor of theirs comes from ours, none left over
    worst, scale = worst_difference(model.net, pipe.unet, model.shape)
    assert worst <= REL_TOL * scale, (worst, scale)
    # ddpmkit's own reader of diffusers folders agrees with this writer
    back = load_model(out)
    assert back.prediction == model.prediction and back.shape == model.shape
    np.testing.assert_allclose(back.schedule.alphas_cumprod, model.schedule.alphas_cumprod, rtol=1e-12)
    with pytest.raises(ValueError, match="read from a diffusers folder"):
        export.export_diffusers(back, tmp_path / "again")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=1, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 28, 28, 1) and np.isfinite(images).all()


@pytest.mark.needs_diffusers
def test_random_small_net_maps_exactly(tmp_path):
    model = random_model(SMALL, (3, 8, 8))
    out = export.export_diffusers(model, tmp_path / "small")
    unet = diffusers.UNet2DModel(**{k: v for k, v in json.loads((out / "unet" / "config.json").read_text()).items()
                                    if not k.startswith("_")}).eval()
    from safetensors.torch import load_file

    unet.load_state_dict(load_file(out / "unet" / "diffusion_pytorch_model.safetensors"), strict=True)
    worst, scale = worst_difference(model.net, unet, model.shape)
    assert worst <= REL_TOL * scale, (worst, scale)
    # in float64 only the mapping can differ, and it does not
    worst64, _ = worst_difference(model.net.double(), unet.double(), model.shape, torch.float64)
    assert worst64 < 1e-12, worst64


@pytest.mark.needs_diffusers
@pytest.mark.parametrize("name, T, kw, prediction", [
    ("linear", 1000, {}, "eps"), ("linear", 200, {}, "x0"), ("scaled_linear", 1000, {}, "eps"),
    ("cosine", 1000, {}, "eps"), ("cosine", 1000, {"s": 0.02}, "eps"),  # not diffusers' cosine: trained_betas
    ("sigmoid", 1000, {}, "v"),  # Chen 2023's, not diffusers' "sigmoid": trained_betas
    ("linear", 1000, {"zero_terminal_snr": True}, "v"), ("sigmoid", 500, {"zero_terminal_snr": True}, "x0"),
])
def test_scheduler_config_gives_our_alphas_cumprod(name, T, kw, prediction):
    ours = NoiseSchedule(name, T, **kw)
    config = json.loads(json.dumps(export.scheduler_config(ours, prediction)))  # as written to the folder
    theirs = diffusers.DDPMScheduler.from_config(config)
    # float32 tables: 1e-6 absolute; relative 1.3e-5 where abar ~ 1e-9 (measured)
    np.testing.assert_allclose(theirs.alphas_cumprod.double().numpy(), ours.alphas_cumprod, rtol=3e-5, atol=1e-6)
    assert theirs.config.prediction_type == export.THEIR_PREDICTION[prediction]
    assert theirs.config.timestep_spacing == "trailing" and not theirs.config.clip_sample


def write_model(path, config: dict, shape=(1, 8, 8)) -> pathlib.Path:
    net = build_unet(config)
    save_checkpoint(path, {f"ema.{k}": v for k, v in net.state_dict().items()},
                    {"net": {"arch": "unet", **net.config()}, "schedule": {"name": "linear", "T": 1000},
                     "prediction": "eps", "data": {"shape": list(shape), "range": [-1, 1]}})
    return path


TINY = dict(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(), groups=4)


@pytest.mark.parametrize("config, shape, message", [
    (dict(TINY, num_classes=10), (1, 8, 8), "class-conditional (num_classes=10)"),
    (dict(TINY, channel_mults=(2, 2)), (1, 8, 8), "channel_mults[0]=2"),
    (dict(TINY, attn_resolutions=(8,), num_heads=2), (1, 8, 8), "attention at widths [8, 16] with num_heads=2"),
    (dict(TINY, image_size=9), (1, 9, 9), "data size 9x9 is not divisible by 2"),
])
def test_unsupported_configs_say_why_not(tmp_path, cli_error, config, shape, message):
    file = write_model(tmp_path / "m.safetensors", config, shape)
    err = cli_error("export", "--model", file, "--to", "diffusers", "--out", tmp_path / "out")
    assert "cannot be exported to diffusers faithfully" in err and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # nothing written


def test_consistency_model_says_why_not(tmp_path, cli_error):
    err = cli_error("export", "--model", "mnist-cm", "--to", "diffusers", "--out", tmp_path / "cm")
    assert "consistency model" in err and "UNet2DModel" in err, err
    assert not any(tmp_path.iterdir())


def test_only_known_targets_and_pipelines(tmp_path, cli_error):
    assert "invalid choice: 'onnx'" in cli_error("export", "--to", "onnx", "--out", tmp_path / "x")
    with pytest.raises(ValueError, match="unknown pipeline 'ddim'; valid: ddpm"):
        export.export_diffusers(random_model(TINY, (1, 8, 8)), tmp_path / "x", pipeline="ddim")


def test_existing_folder_is_refused_and_left_alone(tmp_path, cli_error):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    err = cli_error("export", "--model", "mnist", "--to", "diffusers", "--out", out)
    assert f"{out} already exists and is not an empty folder" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (out / "mine.txt").unlink()  # an empty folder is filled
    export.export_diffusers(random_model(TINY, (1, 8, 8)), out)
    assert sorted(p.name for p in out.iterdir()) == ["ddpmkit.safetensors", "model_index.json", "scheduler", "unet"]


def test_failed_write_leaves_no_partial_folder(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "save_file", fail)  # after the JSON files, before the weights
    with pytest.raises(OSError, match="disk full"):
        export.export_diffusers(random_model(TINY, (1, 8, 8)), tmp_path / "deep" / "out")
    assert not any(tmp_path.iterdir())  # neither the temporary folder nor the parent made for it
