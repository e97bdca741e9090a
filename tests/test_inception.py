"""The FID Inception network, exercised with random weights (the real file is not available here)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ddpmkit.measure.inception import FIDInceptionV3, inception_features, load_fid_inception
from ddpmkit.measure.metrics import feature_statistics, frechet_distance


class _NotATensor:
    """Something weights_only unpickling must refuse to build."""


def _random_net(seed: int = 0) -> FIDInceptionV3:
    """Random weights that keep activations of order one through all 94 conv layers (PyTorch's
    default init makes the pool3 features vanish, ~1e-8, which would make comparisons vacuous)."""
    g = torch.Generator().manual_seed(seed)
    net = FIDInceptionV3()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return net.eval().requires_grad_(False)


def _images(n: int, c: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random net saved both ways, and its features on three images."""
    folder = tmp_path_factory.mktemp("fid_inception")
    net = _random_net()
    sd = net.state_dict()
    torch.save(sd, folder / "w.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "w.safetensors"))
    with torch.no_grad():
        feats, probs = net(_images(3), with_logits=True)
    return {"folder": folder, "net": net, "feats": feats, "probs": probs}


def _conv_bn_params(c_in, c_out, kh, kw=None):
    return c_in * c_out * kh * (kh if kw is None else kw) + 2 * c_out  # conv (no bias) + BN scale, shift


def _expected_parameter_count() -> int:
    """Counted from the layer shapes of Szegedy et al.'s Inception-v3, written out independently."""
    stem = (_conv_bn_params(3, 32, 3) + _conv_bn_params(32, 32, 3) + _conv_bn_params(32, 64, 3)
            + _conv_bn_params(64, 80, 1) + _conv_bn_params(80, 192, 3))

    def mixed35(c, pool):
        return (_conv_bn_params(c, 64, 1) + _conv_bn_params(c, 48, 1) + _conv_bn_params(48, 64, 5)
                + _conv_bn_params(c, 64, 1) + _conv_bn_params(64, 96, 3) + _conv_bn_params(96, 96, 3)
                + _conv_bn_params(c, pool, 1))

    def mixed17(c7):
        return (2 * _conv_bn_params(768, 192, 1) + 2 * _conv_bn_params(768, c7, 1)
                + 4 * _conv_bn_params(c7, c7, 1, 7) + 2 * _conv_bn_params(c7, 192, 1, 7))

    def mixed8(c):
        return (_conv_bn_params(c, 320, 1) + _conv_bn_params(c, 384, 1) + 4 * _conv_bn_params(384, 384, 1, 3)
                + _conv_bn_params(c, 448, 1) + _conv_bn_params(448, 384, 3) + _conv_bn_params(c, 192, 1))

    reduce35 = (_conv_bn_params(288, 384, 3) + _conv_bn_params(288, 64, 1) + _conv_bn_params(64, 96, 3)
                + _conv_bn_params(96, 96, 3))
    reduce17 = (2 * _conv_bn_params(768, 192, 1) + _conv_bn_params(192, 320, 3)
                + 2 * _conv_bn_params(192, 192, 1, 7) + _conv_bn_params(192, 192, 3))
    fc = 2048 * 1008 + 1008
    return (stem + mixed35(192, 32) + mixed35(256, 64) + mixed35(288, 64) + reduce35
            + mixed17(128) + 2 * mixed17(160) + mixed17(192) + reduce17 + mixed8(1280) + mixed8(2048) + fc)


def test_state_dict_layout_and_parameter_count():
    sd = FIDInceptionV3().state_dict()
    assert tuple(sd["Conv2d_1a_3x3.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(sd["Conv2d_4a_3x3.conv.weight"].shape) == (192, 80, 3, 3)
    assert tuple(sd["Mixed_5b.branch_pool.conv.weight"].shape) == (32, 192, 1, 1)
    assert tuple(sd["Mixed_6e.branch7x7dbl_5.conv.weight"].shape) == (192, 192, 1, 7)
    assert tuple(sd["Mixed_7a.branch7x7x3_3.conv.weight"].shape) == (192, 192, 7, 1)
    assert tuple(sd["Mixed_7c.branch_pool.conv.weight"].shape) == (192, 2048, 1, 1)
    assert tuple(sd["fc.weight"].shape) == (1008, 2048) and tuple(sd["fc.bias"].shape) == (1008,)
    assert not any(k.endswith("conv.bias") for k in sd)
    # 94 conv+BN units (conv weight; BN weight, bias, running mean/var, num_batches_tracked) and fc
    assert len(sd) == 94 * 6 + 2
    prefixes = {k.split(".")[0] for k in sd}
    assert prefixes == {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                        "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                        "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc"}
    assert all(m.eps == 1e-3 for m in FIDInceptionV3().modules() if isinstance(m, torch.nn.BatchNorm2d))
    count = sum(p.numel() for p in FIDInceptionV3().parameters())
    assert count == _expected_parameter_count() == 23_850_960
    # Cross-check: torchvision documents 27,161,264 parameters for its Inception-v3 (1000 classes, with
    # the auxiliary classifier of 98,560 + 2,459,136 + 769,000); without it and with 1008 classes:
    assert 27_161_264 - (98_560 + 2_459_136 + 769_000) + 8 * 2049 == count


def test_pool_branches_are_the_fid_variants():
    """Mixed_5b/6b/7b average over valid pixels only; Mixed_7c max-pools (the TF graph's quirks)."""
    net = _random_net()
    with torch.no_grad():
        for name, c_in, c_pool, pool in [("Mixed_5b", 192, 32, "avg"), ("Mixed_6b", 768, 192, "avg"),
                                         ("Mixed_7b", 1280, 192, "avg"), ("Mixed_7c", 2048, 192, "max")]:
            block = getattr(net, name)
            x = torch.rand(1, c_in, 5, 5, generator=torch.Generator().manual_seed(3))
            if pool == "avg":
                pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
            else:
                pooled = F.max_pool2d(x, 3, stride=1, padding=1)
            torch.testing.assert_close(block(x)[:, -c_pool:], block.branch_pool(pooled))


def test_pth_and_safetensors_load_to_the_same_features(weights):
    x = _images(3)
    got = []
    for name in ("w.pth", "w.safetensors"):
        net = load_fid_inception(weights["folder"] / name)
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        feats, probs = inception_features(net, x[:2], batch_size=2)
        assert feats.dtype == np.float64 and feats.shape == (2, 2048) and probs.shape == (2, 1008)
        # the fixture ran a batch of 3: another batch size may take other conv kernels (round-off)
        np.testing.assert_allclose(feats, weights["feats"][:2].double().numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        got.append(feats)
    np.testing.assert_array_equal(got[0], got[1])  # the same weights from either file, bit for bit
    assert weights["feats"].std() > 0.1  # the random weights give non-degenerate features


def test_bn_counters_may_be_absent(weights, tmp_path):
    sd = {k: v for k, v in weights["net"].state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth")
    net = load_fid_inception(tmp_path / "old.pth")
    torch.testing.assert_close(net.fc.weight, weights["net"].fc.weight, rtol=0, atol=0)


def test_foreign_files_are_refused_with_one_line_errors(weights, tmp_path):
    sd = weights["net"].state_dict()
    missing = {k: v for k, v in sd.items() if k != "Mixed_6c.branch1x1.bn.running_var"}
    torch.save(missing, tmp_path / "missing.pth")
    wrong = dict(sd, **{"fc.weight": torch.zeros(1000, 2048)})
    save_file({k: v.contiguous() for k, v in wrong.items()}, str(tmp_path / "wrong.safetensors"))
    torch.save(dict(sd, extra=torch.zeros(1)), tmp_path / "extra.pth")
    torch.save({"weights": sd, "note": _NotATensor()}, tmp_path / "pickled.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    cases = {"missing.pth": "Mixed_6c.branch1x1.bn.running_var", "wrong.safetensors": "(1000, 2048)",
             "extra.pth": "'extra'", "pickled.pth": "_NotATensor", "junk.pth": "not a readable"}
    for name, needle in cases.items():
        with pytest.raises(ValueError) as info:
            load_fid_inception(tmp_path / name)
        msg = str(info.value)
        assert name in msg and needle in msg and "\n" not in msg, msg
    with pytest.raises(FileNotFoundError):
        load_fid_inception(tmp_path / "absent.pth")


def test_grey_input_and_batch_independence(weights):
    net = weights["net"]
    grey = _images(2, c=1, size=28, seed=5)
    feats, _ = inception_features(net, grey)
    assert feats.shape == (2, 2048)
    np.testing.assert_allclose(feats, inception_features(net, grey.expand(-1, 3, -1, -1))[0], atol=0)
    one_at_a_time, _ = inception_features(net, _images(3)[:2], batch_size=1)
    np.testing.assert_allclose(one_at_a_time, weights["feats"][:2].double().numpy(), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        net(torch.zeros(1, 2, 8, 8))


def test_fid_of_identical_feature_sets_is_zero(weights):
    feats = weights["feats"].double().numpy()
    mu, sigma = feature_statistics(feats)
    scale = np.trace(sigma) + mu @ mu
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * scale
    # sanity on a few dimensions (cheap): a pure shift of the mean costs exactly |shift|^2
    mu, sigma = feature_statistics(feats[:, :64])
    mu2, sigma2 = feature_statistics(feats[::-1, :64] + 0.1)
    assert frechet_distance(mu, sigma, mu2, sigma2) == pytest.approx(64 * 0.01, rel=1e-4)
