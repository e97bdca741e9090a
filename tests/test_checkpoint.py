"""Checkpoint files: round trip, atomic writes, and clear errors for bad files."""

import json
import os
import re

import pytest
import torch
from safetensors.torch import save_file

from ddpmkit.checkpoint import CheckpointError, load_into, load_tensors, read_config, save_checkpoint
from ddpmkit.files import atomic_path

CONFIG = {"net": {"arch": "unet"}, "schedule": {"name": "linear", "T": 1000}, "prediction": "eps",
          "data": {"shape": [1, 8, 8], "range": [-1, 1]}}


def test_round_trip(tmp_path):
    p = tmp_path / "c.safetensors"
    tensors = {"ema.w": torch.randn(3, 4), "model.w": torch.randn(3, 4), "optim.0.step": torch.tensor(5.0)}
    save_checkpoint(p, tensors, {**CONFIG, "step": 7})
    back, config = load_tensors(p)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert config["step"] == 7 and config["format"] == "ddpmkit-checkpoint" and read_config(p) == config
    ema, _ = load_tensors(p, "ema.")
    assert list(ema) == ["w"]
    # the file is plain safetensors with a JSON header: no pickle involved
    assert p.read_bytes()[8:9] == b"{"


def test_overwrite_is_atomic(tmp_path):
    p = tmp_path / "c.safetensors"
    save_checkpoint(p, {"ema.w": torch.zeros(2)}, CONFIG)
    before = p.read_bytes()

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"half a file")
            raise Boom
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["c.safetensors"]  # the temp file is gone


def test_bad_files_give_one_line_errors(tmp_path):
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, {"ema.w": torch.randn(100)}, CONFIG)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-50])
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a checkpoint")
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"ddpmkit_config": json.dumps({"format": "x"})})
    newer = tmp_path / "newer.safetensors"
    save_file({"w": torch.zeros(2)}, str(newer), metadata={"ddpmkit_config": json.dumps({"format": "ddpmkit-checkpoint", "version": 99})})
    cases = [
        (tmp_path / "missing.safetensors", "does not exist"),
        (truncated, "not a readable safetensors checkpoint (truncated or foreign?)"),
        (text, "not a readable safetensors checkpoint"),
        (foreign, "without a ddpmkit config"),
        (other, "not a ddpmkit checkpoint (format 'x')"),
        (newer, "version 99"),
    ]
    for path, message in cases:
        with pytest.raises(CheckpointError, match=re.escape(message)) as e:
            read_config(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_load_into_names_the_bad_tensor():
    net = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match=r"tensor 'weight' has shape \(2, 4\), the network expects \(2, 3\)"):
        load_into(net, {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, "x")
    with pytest.raises(CheckpointError, match="tensor 'bias' is missing"):
        load_into(net, {"weight": torch.zeros(2, 3)}, "x")
    with pytest.raises(CheckpointError, match="tensor 'extra' does not belong"):
        load_into(net, {"weight": torch.zeros(2, 3), "bias": torch.zeros(2), "extra": torch.zeros(1)}, "x")


def test_save_requires_the_sampling_config(tmp_path):
    with pytest.raises(ValueError, match="lacks 'prediction'"):
        save_checkpoint(tmp_path / "c.safetensors", {"w": torch.zeros(1)}, {"net": {}, "schedule": {}, "data": {}})
    assert not os.listdir(tmp_path)


def test_atomic_path_needs_existing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        with atomic_path(tmp_path / "nope" / "x.bin"):
            pass


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import stat

    p = tmp_path / "new.txt"
    from ddpmkit.files import write_text

    write_text(p, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
    p.chmod(0o640)
    write_text(p, "y")  # replacing a file keeps its mode
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
