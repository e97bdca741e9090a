"""The bad-input campaign: every value-taking option of every subcommand, given values that it must
refuse, and how each refusal reached the user.

    .venv/bin/python benchmarks/bad_inputs.py [--only sample,eval]

For each option the values follow from its kind: a word, NaN, inf or a negative where a number is
expected; 0 or 1.5 for a count; a name no choice has; a missing file, a folder, a text file, a
truncated safetensors file, a config that is a JSON list, where a file is read; a path under a file
or in /proc where one is written. The rest of each command line is valid and small (the shipped
models, the digits data, a tiny digits teacher for ``distill``).

A case is **clean** when the command exits with status 2, writes exactly one line to stderr, that
line starts ``ddpmkit COMMAND: error:`` and names the bad value or the option, no network was called
(each command runs in this process with ``torch.nn.Module.__call__`` replaced by a tripwire: a bad
value must be refused before any work) and nothing new appeared in the scratch folder. Other
outcomes: **accepted** (the tripwire fired, or exit 0: the value was taken as valid), **unforeseen**
(exit 1, an exception no check expected), **unclear** (refused, but the line is not one line or does
not name the value), **left files**. Writes benchmarks/results/bad_inputs.json and bad_inputs.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pathlib
import shutil
import tempfile
import time

import torch

from ddpmkit.cli import build_parser, main
from ddpmkit.machine import describe_machine
from ddpmkit.measure.report import table, write_result

ROOT = pathlib.Path(__file__).resolve().parents[1]

# values no option of each kind accepts (by the option's argparse type, or by what it names)
WORDS = ["abc"]
FLOAT = ["abc", "nan", "inf", "-1"]
POSITIVE_INT = ["0", "-3", "1.5", "abc"]
NONNEG_INT = ["-1", "abc"]
INT = ["abc", "-1"]
CHOICE = ["bogus", ""]
DEVICE = ["gpu", "cuda:99", ""]
BOOL = ["maybe"]
TIMESTEPS = ["abc", "5000", "1,1"]
CLASSES = ["x", "10", "-1"]
INTERVAL = ["1", "a/b", "2/1"]
MODEL_FILES = ["missing", "folder", "text", "truncated"]
CONFIG_FILES = ["missing", "text", "list"]
DATA_DIRS = ["missing", "text"]
OUT_PATHS = ["under-a-file", "proc"]
FILE_VALUES = {*MODEL_FILES, *CONFIG_FILES, *DATA_DIRS, *OUT_PATHS, "text-file", "list"}

# where one of those values is valid for an option (so not a bad input), or not a value at all
VALID = {"--p-mean": {"-1"}, "--ect-b": {"-1"}, "--s-tmax": {"inf"}, "--restart-k": set(), "--T": set()}
NO_VALUES = {"--help"}
SAMPLER_FOR = {"--eta": "ddim", "--s-churn": "heun", "--s-tmin": "heun", "--s-tmax": "heun", "--s-noise": "heun",
               "--order": "unipc", "--variant": "unipc", "--corrector": "unipc", "--restart-tmin": "restart",
               "--restart-tmax": "restart", "--restart-k": "restart", "--restart-steps": "restart", "--variance": "ddpm",
               "--predictor": "dpm-solver-v3", "--corrector-order": "dpm-solver-v3"}

KIND_OF_DEST = {  # options whose type is a plain str or none, by what they name
    "model": MODEL_FILES, "teacher": MODEL_FILES, "init_from": MODEL_FILES, "feature_net": MODEL_FILES,
    "init_noise": ["missing", "text", "folder"], "scheduler_config": CONFIG_FILES, "data_dir": DATA_DIRS,
    "inception_data": DATA_DIRS, "out": OUT_PATHS, "cache": ["text-file"],
    "nfe": ["abc", "0", "1.5"], "steps": ["abc", "0", "1.5"], "candidates": TIMESTEPS,
    "samplers": ["bogus", ""], "inception": ["bogus"],
}


def values_for(action: argparse.Action) -> list[str]:
    flag, dest = action.option_strings[-1], action.dest
    kind = getattr(action.type, "__name__", None)
    if dest in KIND_OF_DEST and kind not in ("positive_int",):
        values = KIND_OF_DEST[dest]
    elif action.choices is not None:
        values = CHOICE
    else:
        values = {"float": FLOAT, "positive_int": POSITIVE_INT, "nonneg_int": NONNEG_INT, "int": INT,
                  "device_arg": DEVICE, "parse_bool": BOOL, "timestep_list": TIMESTEPS, "class_list": CLASSES,
                  "interval_arg": INTERVAL, "scheduler_config_arg": CONFIG_FILES,
                  "micro_batch_arg": ["0", "1.5", "none", "-16"], "at_least_int": ["1", "0", "1.5", "abc"]}.get(kind, CHOICE)
    return [v for v in values if v not in VALID.get(flag, set())]


class Scratch:
    """The files the cases point at, in one folder; ``path(name)`` turns a value's name into one."""

    def __init__(self, root: pathlib.Path, teacher: pathlib.Path):
        self.root, self.teacher = root, teacher
        (root / "folder").mkdir()
        (root / "text.safetensors").write_text("not a safetensors file\n")
        (root / "text.json").write_text("not json\n")
        (root / "list.json").write_text("[1, 2]\n")
        good = (ROOT / "src/ddpmkit/assets/models/mnist.safetensors").read_bytes()
        (root / "truncated.safetensors").write_bytes(good[: len(good) // 2])
        (root / "a-file").write_text("x")

    def path(self, name: str, dest: str, base: list[str]) -> str:
        suffix = ".json" if dest == "scheduler_config" else ".safetensors"
        if dest == "out":  # the kind of path the command writes (a file with its suffix, or a folder)
            suffix = pathlib.Path(base[base.index("--out") + 1]).suffix
        return str({"missing": self.root / "missing" / f"nope{suffix}", "folder": self.root / "folder",
                    "text": self.root / f"text{suffix}", "truncated": self.root / "truncated.safetensors",
                    "list": self.root / "list.json", "text-file": self.root / "a-file",
                    "under-a-file": self.root / "a-file" / f"x{suffix}", "proc": f"/proc/ddpmkit-nope/x{suffix}"}[name])

    def base(self, command: str) -> list[str]:
        """A valid, small command line (the cases replace one option of it or add one)."""
        out = self.root / "out"
        return {"train": ["--dataset", "digits", "--net", "tiny", "--out", str(out)],
                "distill": ["--teacher", str(self.teacher), "--out", str(out)],
                "sample": ["--out", str(out / "s.png"), "--num", "2"],
                "eval": ["--out", str(out / "e.json"), "--cache", str(self.root / "cache")],
                "bench": ["--out", str(out), "--cache", str(self.root / "cache")],
                "tune": ["--model", "mnist-cm", "--out", str(out / "t.safetensors"), "--cache", str(self.root / "cache")],
                "moments": ["--model", "mnist", "--out", str(out / "m.safetensors")],
                "ems": ["--model", "mnist", "--out", str(out / "v.safetensors")],
                "export": ["--model", "mnist", "--to", "diffusers", "--out", str(out / "x")],
                "demo": ["--out", str(out / "d.png")]}[command]

    def listing(self) -> set[str]:
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*")}


class WorkStarted(BaseException):
    """Raised by the tripwire: a network was called, so the command took the value and began work."""


def tripwire(self, *args, **kwargs):
    raise WorkStarted(type(self).__name__)


def with_value(base: list[str], flag: str, value: str) -> list[str]:
    argv = list(base)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def run_case(command: str, flag: str, value: str, argv: list[str], scratch: Scratch) -> dict:
    before = scratch.listing()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([command, *argv])
        except SystemExit as e:
            code = e.code
        except WorkStarted:
            code = "work"
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    new = sorted(scratch.listing() - before)
    for p in new:  # undo for the next case: what this one left is recorded
        q = scratch.root / p
        if q.is_dir():
            shutil.rmtree(q, ignore_errors=True)
        elif q.exists():
            q.unlink()
    named = bool(lines) and any(token in lines[0] for token in (value or repr(value), flag, flag.lstrip("-")))
    if code == "work" or code == 0:
        outcome = "accepted"
    elif code == 1:
        outcome = "unforeseen"
    elif code != 2 or len(lines) != 1 or not lines[0].startswith(f"ddpmkit {command}: error:") or not named:
        outcome = "unclear"
    elif new:
        outcome = "left files"
    else:
        outcome = "clean"
    return {"command": command, "option": flag, "value": value, "argv": argv, "exit": code, "outcome": outcome,
            "stderr": lines[:3], "new_files": new}


def tiny_teacher(folder: pathlib.Path) -> pathlib.Path:
    from ddpmkit.train import train

    return train(folder, {"dataset": "digits", "net": "tiny", "steps": 2, "batch_size": 8, "sample_every": 100},
                 quiet=True)


def campaign(only: set[str] = frozenset()) -> list[dict]:
    """Every case (of the subcommands in ``only``, or all), run in this process; a dict each."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        (root / "scratch").mkdir()
        scratch = Scratch(root / "scratch", tiny_teacher(root / "teacher"))
        call = torch.nn.Module.__call__
        torch.nn.Module.__call__ = tripwire
        try:
            for command, p in sub.choices.items():
                if only and command not in only:
                    continue
                base = scratch.base(command) if command != "samplers" else []
                for action in p._actions:
                    if not action.option_strings or action.nargs == 0 or action.option_strings[-1] in NO_VALUES:
                        continue
                    flag, argv = action.option_strings[-1], base
                    if flag in SAMPLER_FOR and command in ("sample", "eval"):  # a sampler that has the option
                        argv = with_value(base, "--sampler", SAMPLER_FOR[flag])
                    for value in values_for(action):
                        arg = scratch.path(value, action.dest, argv) if value in FILE_VALUES else value
                        cases.append(run_case(command, flag, value, with_value(argv, flag, arg), scratch))
        finally:
            torch.nn.Module.__call__ = call
    return cases


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated subcommands (default: all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"), help="folder for bad_inputs.json and .md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    cases = campaign({c for c in args.only.split(",") if c})
    seconds = time.perf_counter() - start
    counts: dict[str, int] = {}
    for c in cases:
        counts[c["outcome"]] = counts.get(c["outcome"], 0) + 1
    machine = describe_machine()
    kept = [{k: v for k, v in c.items() if k != "argv"} for c in cases]  # argv: this run's temporary paths
    by_command = {}
    for c in cases:
        row = by_command.setdefault(c["command"], {"cases": 0, "clean": 0})
        row["cases"] += 1
        row["clean"] += c["outcome"] == "clean"
    rows = [[cmd, r["cases"], r["clean"]] for cmd, r in by_command.items()]
    rows.append(["all", len(cases), counts.get("clean", 0)])
    md = [f"# Bad inputs: {counts.get('clean', 0)} of {len(cases)} refused cleanly", "",
          f"`.venv/bin/python benchmarks/bad_inputs.py` on {machine}, {seconds:.0f} s. A clean refusal: exit 2, one "
          "line naming the value or option, before any network call, no file left.", "",
          table(["command", "bad inputs", "clean"], rows)]
    others = [c for c in cases if c["outcome"] != "clean"]
    if others:
        md += ["", "Not clean:", "", table(["command", "option", "value", "outcome", "stderr"],
                                           [[c["command"], c["option"], repr(c["value"]), c["outcome"],
                                             (c["stderr"] or [""])[0][:160]] for c in others])]
    write_result(pathlib.Path(args.out) / "bad_inputs",
                 {"machine": machine, "seconds": seconds, "counts": counts, "cases": kept}, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main_()
