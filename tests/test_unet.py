"""The DDPM U-Net: shapes at awkward sizes, timestep and class conditioning, batch independence,
config round trip, presets, argument checks, trainability and gradient coverage."""

import json

import pytest
import torch

from ddpmkit.nets import PRESETS, UNet, build_unet, count_parameters


pytestmark = pytest.mark.usefixtures("one_thread")  # these nets are tiny (conftest.py)


def perturbed(net: UNet, seed: int = 0) -> UNet:
    """Give every all-zero parameter (the zero-initialised output convs and projections, GroupNorm
    shifts) small random values, so the net's output depends on all of its inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return net


def make(**kw) -> UNet:
    torch.manual_seed(0)
    return build_unet("tiny", **kw)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 9, 28, 32])
def test_tiny_shapes(channels, size):
    net = make(in_channels=channels, image_size=size)
    x = torch.randn(2, channels, size, size)
    out = net(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    assert not out.any()  # zero-initialised output conv: the untrained net predicts 0


@pytest.mark.parametrize("size", [10, 28, 30, 64])
def test_three_levels_with_attention_at_odd_sizes(size):
    # 28 -> 14 -> 7, 30 -> 15 -> 8, 10 -> 5 -> 3: upsampling resizes to each skip's exact size
    mid = -(-size // 2)
    torch.manual_seed(0)
    net = perturbed(UNet(in_channels=3, out_channels=2, image_size=size, base_channels=8,
                         channel_mults=(1, 2, 2), num_res_blocks=1, attn_resolutions=(mid,), num_heads=2))
    out = net(torch.randn(2, 3, size, size), torch.tensor([3, 500]))
    assert out.shape == (2, 2, size, size) and torch.isfinite(out).all()


def test_int_and_float_timesteps_agree_and_broadcast():
    net = perturbed(make()).eval()
    x = torch.randn(3, 1, 9, 9)
    ti = torch.tensor([0, 17, 999])
    with torch.no_grad():
        out = net(x, ti)
        assert torch.equal(out, net(x, ti.to(torch.float32)))
        full = net(x, torch.full((3,), 250))
        for t in (250, 250.0, torch.tensor(250), torch.tensor(250.0)):
            assert torch.equal(net(x, t), full)


def test_different_timesteps_give_different_outputs():
    net = perturbed(make()).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        outs = [net(x, torch.full((2,), t)) for t in (500, 500.5, 501, 10)]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert (outs[i] - outs[j]).abs().max() > 1e-4, (i, j)


def test_batch_independence():
    net = perturbed(make(num_classes=3)).eval()
    x, t, y = torch.randn(5, 1, 9, 9), torch.tensor([0, 10, 100, 500, 999]), torch.tensor([0, 1, 2, 3, 1])
    with torch.no_grad():
        together = net(x, t, y)
        for i in range(5):
            alone = net(x[i : i + 1], t[i : i + 1], y[i : i + 1])
            torch.testing.assert_close(alone, together[i : i + 1], atol=1e-5, rtol=0)


def test_class_conditioning():
    net = perturbed(make(num_classes=10)).eval()
    assert net.class_emb.num_embeddings == 11  # the last index means "no label"
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([100, 100])
    with torch.no_grad():
        a, b = net(x, t, torch.tensor([3, 3])), net(x, t, torch.tensor([7, 7]))
        uncond = net(x, t)
        assert (a - b).abs().max() > 1e-4 and (a - uncond).abs().max() > 1e-4
        assert torch.equal(uncond, net(x, t, torch.tensor([10, 10])))  # y=None is the null label
    with pytest.raises(ValueError, match="num_classes=None"):
        make()(x, t, torch.tensor([1, 2]))


def test_config_round_trip():
    net = perturbed(make(in_channels=3, num_classes=4, attn_resolutions=(4,), image_size=8, dropout=0.1)).eval()
    cfg = json.loads(json.dumps(net.config()))
    assert cfg == net.config()
    twin = UNet(**cfg).eval()
    twin.load_state_dict(net.state_dict(), strict=True)
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([5, 6]), torch.tensor([0, 4])
    with torch.no_grad():
        assert torch.equal(net(x, t, y), twin(x, t, y))
    assert build_unet(cfg).config() == cfg
    assert build_unet(cfg, dropout=0.0).config()["dropout"] == 0.0


def test_preset_sizes():
    counts = {name: count_parameters(build_unet(name)) for name in PRESETS}
    assert counts["tiny"] < 200_000
    assert 1_000_000 <= counts["small"] <= 3_000_000
    assert 500_000 <= counts["digits"] <= 3_000_000
    for name, size in (("small", 28), ("digits", 8)):
        assert build_unet(name)(torch.randn(1, 1, size, size), 1).shape == (1, 1, size, size)


def test_presets_move_attention_with_image_size():
    assert build_unet("small").config()["attn_resolutions"] == [14]  # 28 -> 14 -> 7
    assert build_unet("small", image_size=32, in_channels=3).config()["attn_resolutions"] == [16]
    assert build_unet("small", image_size=9).config()["attn_resolutions"] == [5]  # 9 -> 5 -> 3
    assert build_unet("digits", image_size=6).config()["attn_resolutions"] == [3]
    assert build_unet("tiny", image_size=64).config()["attn_resolutions"] == []  # middle block only
    with pytest.raises(ValueError, match=r"does not occur for image_size=32; the levels are \[32, 16, 8\]"):
        build_unet("small", image_size=32, attn_resolutions=(14,))  # explicit sizes are taken literally


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(base_channels=12), "divisible by groups"),
        (dict(base_channels=16, channel_mults=(1, 3), groups=32), "divisible by groups"),
        (dict(num_heads=3), "num_heads=3"),
        (dict(attn_resolutions=(14,), image_size=8), r"does not occur.*\[8, 4\]"),
        (dict(channel_mults=()), "channel_mults"),
        (dict(num_res_blocks=0), "num_res_blocks"),
        (dict(dropout=1.0), "dropout"),
        (dict(num_classes=0), "num_classes"),
        (dict(in_channels=0), "in_channels"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_unet("tiny", **kwargs)


def test_build_errors():
    with pytest.raises(ValueError, match="unknown UNet preset 'huge'; valid: tiny, small, digits"):
        build_unet("huge")
    with pytest.raises(ValueError, match="unknown UNet argument 'width'; valid: in_channels, .*groups"):
        build_unet("tiny", width=3)
    with pytest.raises(ValueError, match="shape"):
        make()(torch.randn(2, 1, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="expected x"):
        make()(torch.randn(2, 3, 8, 8), 1)


def test_overfits_a_batch():
    net = make(image_size=8)
    torch.manual_seed(1)
    x, t, eps = torch.randn(8, 1, 8, 8), torch.randint(0, 1000, (8,)), torch.randn(8, 1, 8, 8)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(20):
        loss = (net(x, t) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses  # 0.89 -> 0.11 here


def test_every_parameter_gets_a_gradient():
    net = make(num_classes=3, attn_resolutions=(8,), image_size=8, dropout=0.1)
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 2, 3])
    net(x, t, y).pow(2).mean().backward()  # at initialisation: every parameter is in the graph (DDP)
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    perturbed(net)(x, t, y).pow(2).mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead, dead
