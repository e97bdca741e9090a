"""The ``ddpmkit`` command, run the way a user runs it."""

import json
import subprocess
import sys

import numpy as np
import pytest

from ddpmkit.cli import main
from ddpmkit.sampling import MICRO_BATCH


def run(*args):
    return subprocess.run([sys.executable, "-m", "ddpmkit", *args], capture_output=True, text=True, timeout=600)


def test_samplers_lists_every_sampler_with_defaults(capsys):
    assert main(["samplers"]) == 0
    out = capsys.readouterr().out
    assert "ddpm             variance='small'" in out and "ddim             eta=0.0" in out and "Algorithm 2" in out
    assert "heun             s_churn=0.0, s_tmin=0.0, s_tmax=inf, s_noise=1.0" in out


def test_exact_demo_writes_grid_and_table(tmp_path):
    out = tmp_path / "d.png"
    r = run("demo", "--exact", "--out", str(out), "--num", "6", "--quiet")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "d.md").read_text()
    assert table.count("\n| ") == 11 and "| ddpm 1000 small | 1000 |" in table and "| unipc 10 logsnr | 10 |" in table
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


@pytest.mark.parametrize(
    "args,message",
    [
        (["demo", "--out", "x.jpg"], "--out x.jpg must name a .png file"),
        (["demo", "--num", "many"], "--num: 'many' is not an integer >= 1"),
        (["demo", "--num", "0"], "--num: '0' is not an integer >= 1"),
        (["sample", "--model", "mnist-xl", "--out", "x.png"], "checkpoint mnist-xl does not exist (shipped models: mnist"),
        (["sample"], "the following arguments are required: --out"),
    ],
)
def test_cli_errors_are_one_line(cli_error, args, message):
    assert message in cli_error(*args)


def test_the_exact_demo_refuses_a_device_it_would_not_use(tmp_path):
    import argparse

    from ddpmkit.cli import demo

    args = argparse.Namespace(out=str(tmp_path / "d.png"), num=2, exact=True, quiet=True, device="cuda")
    with pytest.raises(ValueError, match="--device cuda: --exact runs its float64 denoiser on the CPU"):
        demo.run(args)
    assert not list(tmp_path.iterdir())


def test_unknown_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bogus"])
    assert e.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err


def test_help_shows_defaults():
    r = run("demo", "--help")
    assert r.returncode == 0 and "out/demo.png)" in r.stdout and "(default: 200)" in r.stdout


def demo_module():
    try:
        from ddpmkit.measure import demo  # where the measuring code is moving
    except ImportError:
        from ddpmkit import demo
    return demo


def demo_counting_network_calls(tmp_path, monkeypatch, capsys, num):
    """``ddpmkit demo --num NUM`` in-process; returns its table's rows after checking its NFE column
    against the network calls counted on the models it loads (a forward hook, outside the sampler's
    own bookkeeping): per row, the samples evaluated before that row is scored / the samples drawn
    (NUM, at most one batch of the demo, padded to whole micro-batches)."""
    demo = demo_module()
    real_load, real_score, hooks, evaluated, counted = demo.load_model, demo.score, [], [0], []

    def count(module, inputs, output):
        evaluated[0] += len(inputs[0])

    def load_model(*args, **kwargs):
        m = real_load(*args, **kwargs)
        hooks.append(m.net.register_forward_hook(count))
        return m

    def score(levels, *args, **kwargs):  # once per row, after its sampling
        # the network sees whole micro-batches on the CPU: the samples drawn, padded up to them
        counted.append(evaluated[0] / (-(-len(levels) // MICRO_BATCH) * MICRO_BATCH))
        evaluated[0] = 0
        return real_score(levels, *args, **kwargs)

    monkeypatch.setattr(demo, "load_model", load_model)
    monkeypatch.setattr(demo, "score", score)
    out = tmp_path / "m.png"
    try:
        assert main(["demo", "--out", str(out), "--num", str(num), "--quiet"]) == 0
    finally:
        for hook in hooks:
            hook.remove()
    capsys.readouterr()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "m.md").read_text().splitlines()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("| ")][1:]
    assert rows[-1][0] == "real MNIST (data floor)"
    assert [r[0].split(" (tuned t = ")[0] for r in rows[:-1]] == [row[0] for row in demo.ROWS]
    # one network evaluation per step for each sampler the demo runs (DDIM, DDPM, the multistep
    # UniPC and DPM-Solver++ 2M SDE, consistency steps), as counted; and the table says so
    assert counted == [float(row[3]) for row in demo.ROWS]
    assert [int(r[1]) for r in rows[:-1]] == counted
    return rows


def test_demo_reports_the_network_calls_it_makes(tmp_path, monkeypatch, capsys):
    """The demo's code paths on two short rows: both shipped models, a spacing and a tuned grid,
    a row with shipped 10k results and one without."""
    demo = demo_module()
    monkeypatch.setattr(demo, "ROWS", [("ddim 2", "mnist", "ddim", 2, {}, "trailing"),
                                       ("cm 1", "mnist-cm", "cm", 1, {}, None)])
    rows = demo_counting_network_calls(tmp_path, monkeypatch, capsys, num=4)
    assert rows[0][4] == "—" and rows[1][4] != "—"  # no 10k result ships for 'ddim 2'


@pytest.mark.slow
def test_main_job_samples_the_shipped_models(tmp_path, monkeypatch, capsys):
    demo_counting_network_calls(tmp_path, monkeypatch, capsys, num=12)


def test_bad_input_stops_before_any_work_in_one_line(tmp_path, capsys):
    """Each bad value is refused up front: exit status 2, one line on stderr that names the value,
    and nothing written (the shipped model is loaded, but nothing is sampled or trained)."""
    from safetensors.numpy import save_file

    from ddpmkit.checkpoint import CONFIG_KEY

    listed = tmp_path / "listed.safetensors"
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(listed), metadata={CONFIG_KEY: "[1, 2]"})
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    (tmp_path / "d.png").mkdir()
    noise = tmp_path / "noise.npy"
    np.save(noise, np.full((2, 1, 28, 28), np.nan, dtype=np.float32))
    huge = tmp_path / "huge.safetensors"  # a crafted header: a billion timesteps
    save_file({"ema.w": np.zeros(2, dtype=np.float32)}, str(huge), metadata={CONFIG_KEY: json.dumps(
        {"format": "ddpmkit-checkpoint", "version": 1, "net": {"arch": "unet"}, "schedule": {"name": "linear", "T": 10**9},
         "prediction": "eps", "data": {"shape": [1, 28, 28]}})})
    wide = tmp_path / "wide.safetensors"  # a crafted header: a U-Net of about 10^14 weights (400 TB)
    save_file({"ema.conv_in.weight": np.zeros((32, 1, 3, 3), dtype=np.float32)}, str(wide), metadata={
        CONFIG_KEY: json.dumps({"format": "ddpmkit-checkpoint", "version": 1, "schedule": {"name": "linear", "T": 1000},
                                "net": {"arch": "unet", "base_channels": 2**22, "attn_resolutions": []},
                                "prediction": "eps", "data": {"shape": [1, 28, 28]}})})
    out = tmp_path / "new"
    cases = [
        (["sample", "--model", huge, "--out", out], "T=1000000000 is not a valid number of diffusion steps"),
        (["sample", "--model", wide, "--out", out], "tensor 'conv_in.weight' has shape (32, 1, 3, 3), the network "
                                                    "expects (4194304, 1, 3, 3)"),
        (["eval", "--num", "3", "--out", tmp_path / "e.json"], "--num 3 is too few: precision and recall need"),
        (["bench", "--num", "2", "--out", out], "--num 2 is too few"),
        (["sample", "--guidance", "-1", "--out", out], "guidance=-1.0 is not valid; need a finite number >= 0"),
        (["sample", "--class", "x", "--out", out], "'x' is not a class label"),
        (["bench", "--samplers", "ddim:guidance_interval=1", "--out", out], "is not two noise levels LO/HI"),
        (["sample", "--device", "cuda:99", "--out", out], "'cuda:99' is not a device this machine has; valid here: cpu"),
        (["sample", "--timesteps", "999,500", "--spacing", "karras", "--out", out], "--spacing karras and --timesteps"),
        (["sample", "--timesteps", "999,,500", "--out", out], "'999,,500' is not a comma-separated list"),
        (["sample", "--timesteps", "500,999", "--out", out], "strictly descending (noisiest first); got 500,999"),
        (["sample", "--spacing", "even", "--out", out], "unknown spacing 'even'; valid: leading, trailing, linspace, "
                                                        "karras, logsnr, tuned"),
        (["sample", "--out", tmp_path / "d.png"], "is a folder; give a file name"),
        (["sample", "--out", tmp_path / "a.txt"], "or a folder name without an extension"),
        (["sample", "--init-noise", noise, "--out", out], "holds 1568 NaN or infinite values"),
        (["sample", "--model", listed, "--out", out], "invalid config: a JSON list, not an object"),
        (["sample", "--sampler", "ddpm", "--variance", "optimal", "--model", "mnist-cm", "--out", out],
         "`ddpmkit moments --model MODEL"),
        (["eval", "--num", "1", "--out", tmp_path / "e.json"], "--num 1 is too few"),
        (["eval", "--cache", a_file, "--out", tmp_path / "e.json"], f"--cache {a_file} cannot be a folder"),
        (["eval", "--inception-data", tmp_path, "--out", tmp_path / "e.json"], "apply only with --inception"),
        (["bench", "--samplers", "", "--out", out], "--samplers '' lists no sampler"),
        (["bench", "--samplers", "ddim:clip=maybe", "--out", out], "clip='maybe' is not true or false"),
        (["bench", "--samplers", "ddim:eta=abc", "--out", out], "eta='abc' is not a number"),
        (["bench", "--samplers", "ddim,ddim:eta=5", "--nfe", "5,1000", "--out", out],
         "sampler spec 'ddim:eta=5' at 5 NFE: eta=5.0 is outside [0, 1]"),
        (["bench", "--samplers", "ddpm@even", "--out", out], "sampler spec 'ddpm@even' at 10 NFE: unknown spacing"),
        (["demo", "--num", "2001", "--out", tmp_path / "demo.png"], "--num 2001 is more than the 2000"),
        (["moments", "--model", "mnist", "--timesteps", "1001", "--out", tmp_path / "m.safetensors"],
         "--timesteps 1001 exceeds the model's 1000"),
        (["moments", "--model", "mnist"], "--model mnist is a shipped model, which is not rewritten; give --out FILE"),
        (["tune", "--model", "mnist-cm", "--steps", "1"], "--model mnist-cm is a shipped model, which is not rewritten"),
        (["tune", "--model", "mnist-cm", "--out", tmp_path / "cm.pt"], "ending in .safetensors"),
        (["train", "--dataset", "digits", "--data-dir", tmp_path, "--out", out], "data folder"),
        (["train", "--dataset", "digits", "--out", a_file / "run"], f"{a_file} is a file"),
        (["train", "--dataset", "digits", "--lr", "nan", "--out", out], "lr=nan must be a finite number > 0"),
        (["distill", "--teacher", "mnist", "--out", a_file], f"--out {a_file} cannot be a folder"),
    ]
    for args, message in cases:
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's errors
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, (args, err)
        assert err.startswith(f"ddpmkit {args[0]}: error: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "d.png", "huge.safetensors", "listed.safetensors",
                                                          "noise.npy", "wide.safetensors"]
