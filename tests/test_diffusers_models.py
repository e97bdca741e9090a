"""Models in diffusers' format: the scheduler config read as the model's schedule and defaults
(closed forms without diffusers; diffusers' own tables and signatures with it), the folder layouts,
the refusals, class labels, and the CLI on such a folder."""

import inspect
import json
import pickle

import numpy as np
import pytest
import torch

from ddpmkit.cli import main
from ddpmkit.models import load_model, store_tuned_grids
from ddpmkit.models.scheduler_config import (FAMILY, MODEL_KEYS, SOLVER_KEYS, SchedulerConfigError, _CLASS_DEFAULTS,
                                             _DEFAULTS, _ONLY_DEFAULT, read_scheduler_config)

from conftest import diffusers

# diffusers' k-diffusion schedulers call np.log on tensors, which NumPy 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

# -- the scheduler config, without diffusers ---------------------------------------------------------


def test_linear_and_cosine_are_the_named_schedules_with_diffusers_endpoints():
    s = read_scheduler_config({"beta_schedule": "linear", "beta_start": 0.001, "beta_end": 0.03,
                               "num_train_timesteps": 200})
    np.testing.assert_allclose(s.schedule.betas, np.linspace(0.001, 0.03, 200), rtol=1e-15)
    cos = read_scheduler_config({"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"})
    assert (cos.schedule.name, cos.prediction) == ("cosine", "v")


def test_diffusers_sigmoid_is_geodiffs_beta_curve_not_ours():
    s = read_scheduler_config({"beta_schedule": "sigmoid", "beta_start": 1e-4, "beta_end": 0.02,
                               "num_train_timesteps": 50})
    u = np.linspace(-6, 6, 50)
    np.testing.assert_allclose(s.schedule.betas, 1e-4 + (0.02 - 1e-4) / (1 + np.exp(-u)), rtol=1e-14)
    assert s.schedule.to_config()["label"] == "diffusers sigmoid (GeoDiff)"


def test_trained_betas_and_zero_snr_rescale():
    betas = np.linspace(1e-4, 0.02, 100)
    s = read_scheduler_config({"trained_betas": betas.tolist(), "num_train_timesteps": 100,
                               "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"})
    assert s.schedule.alphas_cumprod[-1] == 0.0 and s.schedule.zero_terminal_snr
    np.testing.assert_allclose(s.schedule.alphas_cumprod[0], 1 - 1e-4, rtol=1e-12)  # abar_0 keeps its value
    with pytest.raises(SchedulerConfigError, match="trained_betas holds 100 values; num_train_timesteps is 1000"):
        read_scheduler_config({"trained_betas": betas.tolist()})


def test_a_missing_key_means_the_class_default():
    ddpm = read_scheduler_config({"_class_name": "DDPMScheduler"})
    assert ddpm.defaults == {"spacing": "leading", "clip": True, "variance": "small"}
    euler = read_scheduler_config({"_class_name": "EulerDiscreteScheduler"})
    assert euler.defaults == {"spacing": "linspace"}
    heun = read_scheduler_config({"_class_name": "HeunDiscreteScheduler", "beta_schedule": "scaled_linear"})
    assert heun.schedule.params == {"beta_start": 0.00085, "beta_end": 0.012}


def test_defaults_of_grid_clipping_thresholding_and_variance():
    s = read_scheduler_config({"timestep_spacing": "leading", "steps_offset": 1, "clip_sample": True,
                               "clip_sample_range": 2.0, "variance_type": "fixed_large"})
    assert s.defaults == {"spacing": "leading", "offset": 1, "clip": True, "clip_range": 2.0, "variance": "large"}
    t = read_scheduler_config({"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5,
                               "clip_sample": True, "use_karras_sigmas": True, "steps_offset": 1})
    # diffusers: thresholding wins over clipping; no _class_name means DDPMScheduler, whose variance is fixed_small
    assert t.defaults == {"spacing": "karras", "threshold": 0.9, "threshold_max": 1.5, "variance": "small"}


@pytest.mark.parametrize("config, message", [
    ({"_class_name": "ScoreSdeVeScheduler"}, "ScoreSdeVeScheduler is not a DDPM-family scheduler"),
    ({"beta_schedule": "exp"}, "beta_schedule='exp' is not supported; valid: linear, scaled_linear"),
    ({"prediction_type": "flow"}, "prediction_type='flow' is not supported; valid: epsilon, v_prediction, sample"),
    ({"variance_type": "learned_range"}, "variance_type='learned_range' is not supported"),
    ({"timestep_type": "continuous"}, "timestep_type='continuous' is not supported"),
    ({"use_beta_sigmas": True}, "use_beta_sigmas=True is not supported"),
    ({"timestep_spacing": "fancy"}, "timestep_spacing='fancy' is not supported; valid: leading, trailing, linspace"),
    ({"brand_new_key": 3}, "key 'brand_new_key' \\(= 3\\) is not one ddpmkit knows"),
    ({"num_train_timesteps": 10.5}, "num_train_timesteps=10.5 is not an integer"),
])
def test_what_cannot_be_honoured_is_refused_by_name(config, message):
    with pytest.raises(SchedulerConfigError, match=message):
        read_scheduler_config(config, "cfg.json")


# -- against diffusers' own schedulers ---------------------------------------------------------------
@pytest.mark.needs_diffusers
@pytest.mark.parametrize("name", [n for n in FAMILY if n != "DPMSolverSDEScheduler"])  # that one needs torchsde
def test_every_family_scheduler_is_read_with_its_own_tables(name):
    cls = getattr(diffusers, name)
    sched = cls(beta_schedule="squaredcos_cap_v2")
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    known = set(MODEL_KEYS) | set(SOLVER_KEYS) | set(_ONLY_DEFAULT)
    assert sorted(set(params) - known) == []  # every key of every family scheduler is classified
    for k, v in {**_DEFAULTS, **_CLASS_DEFAULTS.get(name, {})}.items():  # and our defaults are its defaults
        if k in params and k != "variance_type":
            assert inspect.signature(cls.__init__).parameters[k].default == v, (name, k)
    s = read_scheduler_config(dict(sched.config))
    np.testing.assert_allclose(s.schedule.alphas_cumprod, sched.alphas_cumprod.double().numpy(), rtol=2e-5)


# -- folders ------------------------------------------------------------------------------------------
def tiny_unet(**kw):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, **kw)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers-models")
    sched = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                                    timestep_spacing="trailing")
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=sched).save_pretrained(root / "pipe")
    tiny_unet().save_pretrained(root / "bare")
    tiny_unet().save_pretrained(root / "old", safe_serialization=False)  # a .bin, as google/ddpm-* ship
    sched.save_config(root / "old")
    tiny_unet(num_class_embeds=3).save_pretrained(root / "cond")
    sched.save_config(root / "cond")
    return root


@pytest.mark.needs_diffusers
def test_the_three_layouts_give_the_same_samples(folders):
    pipe = load_model(folders / "pipe")
    old = load_model(folders / "old")
    bare = load_model(folders / "bare", scheduler_config=json.loads((folders / "old" / "scheduler_config.json")
                                                                    .read_text()))
    assert (pipe.prediction, pipe.shape, pipe.defaults) == ("v", (1, 8, 8), {"spacing": "trailing", "clip": True,
                                                                             "variance": "small"})
    x = [m.sample(sampler="dpmpp-2m", steps=4, seeds=[5, 6]) for m in (pipe, old, bare)]
    torch.testing.assert_close(x[0], x[1], rtol=0, atol=0)
    torch.testing.assert_close(x[0], x[2], rtol=0, atol=0)
    assert pipe.fingerprint() != load_model(folders / "cond").fingerprint()  # a cache key per model
    assert pipe.plan(steps=4).describe() == "ddim, clip=True, 4 steps (trailing), 4 NFE per sample"


@pytest.mark.needs_diffusers
def test_a_unet_without_a_schedule_or_with_a_pickle_is_refused(folders, tmp_path):
    with pytest.raises(ValueError, match="has no scheduler_config.json.*--scheduler-config"):
        load_model(folders / "bare")
    bad = tmp_path / "evil"
    bad.mkdir()
    (bad / "config.json").write_text((folders / "bare" / "config.json").read_text())
    (bad / "scheduler_config.json").write_text("{}")
    # code, not tensors (protocol 2, torch.save's, so that torch warns of no other protocol)
    (bad / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(print, protocol=2))
    with pytest.raises(ValueError, match="is refused: torch.load\\(weights_only=True\\) cannot read it"):
        load_model(bad)


def test_without_diffusers_a_folder_names_the_extra(tmp_path, monkeypatch):
    import sys

    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 8}))
    (tmp_path / "scheduler_config.json").write_text("{}")
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(ValueError, match=r"reading it needs diffusers: pip install 'ddpmkit\[diffusers\]'"):
        load_model(tmp_path)


@pytest.mark.needs_diffusers
def test_class_labels_follow_the_seed(folders):
    model = load_model(folders / "cond")
    assert model.conditional and model.num_classes == 3
    assert model.plan(steps=2).classes == (0, 1, 2)  # every class in turn by default
    both = model.sample(sampler="ddim", steps=3, seeds=range(4), classes=[2, 0])
    one = model.sample(sampler="ddim", steps=3, seeds=[1, 3], classes=[2, 0], batch_size=1)
    # seed s gets classes[s % 2], in any batch (to float round-off: the network's kernels vary with batch size)
    torch.testing.assert_close(both[[1, 3]], one, rtol=0, atol=1e-5)
    assert not torch.equal(model.sample(sampler="ddim", steps=3, seeds=[1], classes=[1]), one[:1])
    with pytest.raises(ValueError, match="class 3 is not valid for cond; valid: 0..2"):
        model.plan(classes=[3])
    with pytest.raises(ValueError, match="cond has no null label .*, so it cannot be sampled with classifier-free"):
        model.plan(guidance=2.0)
    with pytest.raises(ValueError, match="is not class-conditional"):
        load_model(folders / "pipe").plan(classes=[1])
    from ddpmkit.analytic import eps_moment_of_model

    with pytest.raises(ValueError, match="cond is class-conditional: ddpmkit estimates Analytic-DPM's eps moments"):
        eps_moment_of_model(model, "digits")  # before any data is read


@pytest.mark.needs_diffusers
def test_cli_sample_tune_and_out_on_a_diffusers_folder(folders, tmp_path, cli_error):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(folders / "pipe", model)
    files = {p: p.read_bytes() for p in model.rglob("*") if p.is_file()}
    assert main(["sample", "--model", str(model), "--sampler", "unipc", "--steps", "3", "--num", "2",
                 "--out", str(tmp_path / "x.npz"), "--quiet"]) in (0, None)
    with np.load(tmp_path / "x.npz") as data:
        assert data["samples"].shape == (2, 1, 8, 8)
    store_tuned_grids(model, "ddim", {2: {"timesteps": [999, 400]}})
    assert load_model(model).plan(sampler="ddim", steps=2).grid == (999.0, 400.0)
    from ddpmkit.ems import EMS, ems_grid
    from ddpmkit.models import store_ems
    from ddpmkit.vp import alpha_sigma_lambda

    loaded = load_model(model)
    lam = [alpha_sigma_lambda(loaded.schedule.abar_at(t))[2] for t in ems_grid(loaded.schedule, 8)]
    store_ems(model, EMS.degenerate(lam, loaded.shape))  # beside diffusers' files, with the tuned grids kept
    again = load_model(model)
    assert again.extras["ems"].l.shape == (8, 1, 8, 8) and again.plan(sampler="ddim", steps=2).grid == (999.0, 400.0)
    assert again.sample(sampler="dpm-solver-v3", steps=3, seeds=range(2)).shape == (2, 1, 8, 8)
    assert all(p.read_bytes() == b for p, b in files.items())  # diffusers' own files are untouched
    err = cli_error("moments", "--model", model, "--out", tmp_path / "m.safetensors")
    assert "is a diffusers folder, whose files are not rewritten" in err
    err = cli_error("sample", "--model", model, "--class", "1", "--out", tmp_path / "y.npz")
    assert "is not class-conditional" in err


@pytest.mark.needs_diffusers
def test_cli_eval_says_what_it_needs_then_measures(folders, tmp_path, cli_error):
    err = cli_error("eval", "--model", folders / "pipe", "--out", tmp_path / "e.json", "--cache", tmp_path / "c")
    assert "makes 1x8x8 images of an unknown data set, for which ddpmkit ships no feature network" in err
    assert not (tmp_path / "c").exists()  # refused before any sampling
    assert main(["eval", "--model", str(folders / "pipe"), "--feature-net", "digits", "--sampler", "ddim",
                 "--steps", "2", "--num", "8", "--out", str(tmp_path / "e.json"), "--cache", str(tmp_path / "c"),
                 "--quiet"]) in (0, None)
    assert json.loads((tmp_path / "e.json").read_text())["nfe"] == 2


@pytest.mark.needs_diffusers
def test_cli_eval_by_inception_alone_on_a_model_of_unknown_data(folders, tmp_path, cli_error):
    """With random weights in the FID Inception's format (the real file cannot be had offline)."""
    from PIL import Image

    from ddpmkit.measure.inception import FIDInceptionV3

    weights, real, out = tmp_path / "inception.pth", tmp_path / "real", tmp_path / "e.json"
    torch.save(FIDInceptionV3().state_dict(), weights)
    assert "or --inception WEIGHTS (with --inception-data FOLDER" in cli_error(
        "eval", "--model", folders / "pipe", "--out", out)
    assert "does not name its data set, so the Inception FID needs its real images: give --inception-data" in \
        cli_error("eval", "--model", folders / "pipe", "--out", out, "--inception", weights)
    real.mkdir()
    for i in range(3):  # 10x10 RGB files, fitted to the model's 1x8x8
        Image.fromarray(np.full((10, 10, 3), 60 * i, np.uint8)).save(real / f"{i}.png")
    argv = ["eval", "--model", str(folders / "pipe"), "--sampler", "ddim", "--steps", "2", "--num", "4", "--out",
            str(out), "--cache", str(tmp_path / "c"), "--inception", str(weights), "--inception-data", str(real),
            "--quiet"]
    assert main(argv) in (0, None)
    report = json.loads(out.read_text())
    assert "fid" not in report and report["nfe"] == 2 and report["num"] == 4
    assert report["inception"]["reference"] == f"{real}, 3 images"
    assert report["inception"]["fid"] >= 0 and 1.0 <= report["inception"]["is"] <= 1008
