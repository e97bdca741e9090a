"""eps / x0 / v conversions and the Denoiser."""

import math

import pytest
import torch

from ddpmkit import Denoiser, NoiseSchedule
from ddpmkit.prediction import dynamic_threshold, to_eps_x0, training_target

G = torch.Generator().manual_seed(0)
X0, EPS = torch.randn(3, 2, 4, 4, generator=G, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=G, dtype=torch.float64)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("abar", [0.9999, 0.5, 1e-4])
def test_target_then_conversion_is_identity(prediction, abar):
    x_t = math.sqrt(abar) * X0 + math.sqrt(1 - abar) * EPS
    eps, x0 = to_eps_x0(training_target(X0, EPS, abar, prediction), x_t, abar, prediction)
    torch.testing.assert_close(eps, EPS, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(x0, X0, rtol=1e-8, atol=1e-8)


def test_v_definition_and_per_sample_abar():
    abar = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64).view(3, 1, 1, 1)
    v = training_target(X0, EPS, abar, "v")
    torch.testing.assert_close(v, abar.sqrt() * EPS - (1 - abar).sqrt() * X0)  # Salimans & Ho 2022


def test_zero_snr_needs_v_or_x0():
    x_t = EPS
    with pytest.raises(ValueError, match="cannot give x0 where abar = 0"):
        to_eps_x0(EPS, x_t, 0.0, "eps")
    eps, x0 = to_eps_x0(training_target(X0, EPS, 0.0, "v"), x_t, 0.0, "v")
    torch.testing.assert_close(x0, X0)
    torch.testing.assert_close(eps, EPS)


def test_denoiser_clip_keeps_pair_consistent_and_counts_calls():
    sched = NoiseSchedule("linear", 1000)
    seen = []

    def model(x, t):
        seen.append(t)
        return 3 * torch.ones_like(x)  # x0 prediction far outside [-1, 1]

    den = Denoiser(model, sched, "x0", clip=True)
    x_t = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    eps, x0 = den(x_t, 250)
    assert torch.all(x0 == 1.0) and den.nfe == 1
    ab = sched.alphas_cumprod[250]
    torch.testing.assert_close(x_t, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps)
    assert seen[0].dtype == torch.int64 and seen[0].tolist() == [250, 250]


def test_dynamic_threshold():
    x = torch.tensor([[0.5, -0.2, 0.1, 0.0], [2.0, -4.0, 1.0, 0.5]])
    out = dynamic_threshold(x, ratio=1.0)
    torch.testing.assert_close(out[0], x[0])  # s = max(quantile, 1) = 1: inside the range, untouched
    torch.testing.assert_close(out[1], x[1] / 4.0)  # s = 4: rescaled into [-1, 1]
    assert dynamic_threshold(x, ratio=1.0, max_value=2.0)[1].abs().max() == 1.0
    # on data in [0, 1] the same rule works about the range's centre
    y = torch.tensor([[0.2, 0.9, 0.5, 0.1]])
    torch.testing.assert_close(dynamic_threshold(y, 1.0, data_range=(0.0, 1.0)), y)


def test_denoiser_errors():
    sched = NoiseSchedule("linear", 1000)
    with pytest.raises(ValueError, match="unknown prediction type 'noise'"):
        Denoiser(lambda x, t: x, sched, "noise")
    assert Denoiser(lambda x, t: x, sched, "v_prediction").prediction == "v"  # diffusers' names accepted
    with pytest.raises(ValueError, match="threshold_max=0.5"):
        Denoiser(lambda x, t: x, sched, threshold=0.99, threshold_max=0.5)
