"""The ``ddpmkit`` command, run the way a user runs it."""

import subprocess
import sys

import pytest

from ddpmkit.cli import main


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


def test_unknown_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bogus"])
    assert e.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err


def test_help_shows_defaults():
    r = run("demo", "--help")
    assert r.returncode == 0 and "out/demo.png)" in r.stdout and "(default: 200)" in r.stdout


def test_main_job_samples_the_shipped_models(tmp_path):
    out = tmp_path / "m.png"
    r = run("demo", "--out", str(out), "--num", "12", "--quiet")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "m.md").read_text()
    assert "| unipc 20 | 20 |" in table and "| ddpm 20 | 20 |" in table and "| real MNIST (data floor) |" in table
    assert "| dpmpp-2m-sde 20 | 20 |" in table
    assert "15.56" in table  # the shipped 10k FID of UniPC at 20 NFE, beside the one measured now
