"""The shipped feature networks and reference statistics."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ddpmkit.measure import metrics
from ddpmkit.data import load_dataset
from ddpmkit.measure.features import ASSETS, accuracy, load_feature_net, predict, quantize, train_classifier


def test_quantize_matches_how_real_images_are_stored():
    x = torch.linspace(-1.2, 1.2, 1001)
    q = quantize(x)
    levels = torch.round((q + 1) / 2 * 255)
    torch.testing.assert_close((q + 1) / 2 * 255, levels, rtol=0, atol=1e-4)  # on the 256-level grid
    assert torch.equal(quantize(q), q) and q.min() == -1 and q.max() == 1
    digits = load_dataset("digits")
    real = digits.batch(torch.arange(50))
    torch.testing.assert_close(quantize(real, levels=16), real, rtol=0, atol=1e-6)  # real digits are fixed points


def test_train_classifier_learns_a_toy_problem():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (256,), generator=g)
    images = torch.randn(256, 1, 8, 8, generator=g) * 0.3 + (labels.float() * 2 - 1)[:, None, None, None] * 0.5
    net = train_classifier(images, labels, epochs=3, batch_size=32, log=lambda *a: None)
    assert accuracy(net, images, labels) > 0.95
    feats, probs = predict(net, images[:10])
    assert feats.shape == (10, 128) and torch.allclose(probs.sum(1), torch.ones(10, dtype=torch.float64))


@pytest.mark.parametrize("name,levels", [("mnist", 255), ("digits", 16)])
def test_shipped_networks_and_statistics_load(name, levels):
    net, card = load_feature_net(name)
    assert card["test_accuracy"] >= (0.99 if name == "mnist" else 0.95)
    with safe_open(str(ASSETS / f"{name}_stats.safetensors"), "pt") as f:
        mu, sigma = f.get_tensor("mu"), f.get_tensor("sigma")
        info = json.loads(f.metadata()["info"])
    assert mu.shape == (128,) and sigma.shape == (128, 128) and mu.dtype == torch.float64
    assert torch.allclose(sigma, sigma.T) and torch.linalg.eigvalsh(sigma).min() > -1e-9
    assert info["levels"] == levels and {"fid", "kid", "precision", "recall", "is"} <= set(info["floor"])


def test_unknown_feature_net():
    with pytest.raises(ValueError, match="no feature network 'inception'; shipped: digits, mnist"):
        load_feature_net("inception")


def test_mnist_classifier_accuracy_and_reference_statistics(mnist_dir):
    """At least 99% on the 10k MNIST test images, and the shipped statistics are those of that set."""
    test = load_dataset("mnist", mnist_dir, split="test")
    net, _ = load_feature_net("mnist")
    assert accuracy(net, test.to_float(), test.labels) >= 0.99
    feats, _ = predict(net, test.to_float())
    mu, sigma = metrics.feature_statistics(feats)
    with safe_open(str(ASSETS / "mnist_stats.safetensors"), "pt") as f:
        mu0, sigma0 = f.get_tensor("mu").numpy(), f.get_tensor("sigma").numpy()
    # The features are float32 network outputs, and another CPU's kernels round them differently
    # (CI: covariance entries 4e-7 off, 3e-5 relatively, on a scale of 20), so the statistics agree
    # to float32's precision relative to their own scale, and their FID to each other is nil.
    np.testing.assert_allclose(mu0, mu, rtol=0, atol=1e-5 * np.abs(mu0).max())
    np.testing.assert_allclose(sigma0, sigma, rtol=0, atol=1e-5 * np.abs(sigma0).max())
    assert metrics.frechet_distance(mu0, sigma0, mu, sigma) < 1e-4


def test_real_digits_score_like_the_data():
    """The reference set itself as 'samples': FID 0, every class present, precision and recall
    high; uniform noise scores far off."""
    from ddpmkit.measure import score_samples

    digits = load_dataset("digits")
    real = score_samples(digits.to_float(), "digits")
    noise = score_samples(torch.rand(500, 1, 8, 8) * 2 - 1, "digits")
    assert abs(real["fid"]) < 1e-3 and noise["fid"] > 20  # the reference set itself: FID 0
    assert real["precision"] > 0.95 and real["recall"] > 0.95 and real["is"] > 9
    assert min(real["class_frequencies"]) > 0.08
