"""The VP conversions: abar <-> sigma <-> log SNR and eps <-> x0 <-> v, in every form, at the edges."""

import math

import numpy as np
import pytest
import torch

from ddpmkit import NoiseSchedule, vp

ABARS = [1e-12, 1e-4, 0.1, 0.5, 0.9, 0.9999, 1 - 1e-12]
FORMS = {
    "float": lambda v: v,
    "numpy": lambda v: np.float64(v),
    "array": lambda v: np.array([v, v]),
    "tensor": lambda v: torch.tensor([v, v], dtype=torch.float64),
}


def value(out) -> float:
    return float(np.asarray(out).ravel()[0]) if not isinstance(out, torch.Tensor) else float(out[0])


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("abar", ABARS)
def test_noise_levels_match_their_closed_forms_and_round_trip(form, abar):
    make = FORMS[form]
    sigma, log_snr = math.sqrt((1 - abar) / abar), math.log(abar / (1 - abar))
    assert math.isclose(value(vp.sigma_from_abar(make(abar))), sigma, rel_tol=1e-12)
    assert math.isclose(value(vp.abar_from_sigma(make(sigma))), abar, rel_tol=1e-9)
    if form != "tensor":  # the log SNR forms the code needs: float and NumPy
        assert math.isclose(value(vp.log_snr_from_abar(make(abar))), log_snr, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(value(vp.log_snr_from_sigma(make(sigma))), log_snr, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(value(vp.sigma_from_log_snr(make(log_snr))), sigma, rel_tol=1e-9)
    assert math.isclose(value(vp.abar_from_log_snr(make(log_snr))), abar, rel_tol=1e-9)


@pytest.mark.parametrize("form", list(FORMS))
def test_the_kind_that_goes_in_comes_out(form):
    out = vp.sigma_from_abar(FORMS[form](0.5))
    expected = {"float": float, "numpy": np.floating, "array": np.ndarray, "tensor": torch.Tensor}[form]
    assert isinstance(out, expected)
    if form == "float":
        assert type(out) is float


@pytest.mark.parametrize("form", list(FORMS))
def test_edges_pure_noise_and_clean_data(form, recwarn):
    make = FORMS[form]
    assert value(vp.sigma_from_abar(make(0.0))) == math.inf  # zero terminal SNR
    assert value(vp.sigma_from_abar(make(1.0))) == 0.0
    assert value(vp.abar_from_sigma(make(math.inf))) == 0.0
    assert value(vp.abar_from_sigma(make(0.0))) == 1.0
    assert value(vp.abar_from_log_snr(make(-math.inf))) == 0.0
    assert value(vp.abar_from_log_snr(make(math.inf))) == 1.0
    if form != "tensor":
        assert value(vp.log_snr_from_abar(make(0.0))) == -math.inf
        assert value(vp.log_snr_from_abar(make(1.0))) == math.inf
        assert value(vp.log_snr_from_sigma(make(math.inf))) == -math.inf
        assert value(vp.log_snr_from_sigma(make(0.0))) == math.inf
        assert value(vp.sigma_from_log_snr(make(-math.inf))) == math.inf
        assert value(vp.sigma_from_log_snr(make(-2000.0))) == math.inf  # beyond the largest float
        assert value(vp.abar_from_log_snr(make(-2000.0))) == 0.0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_alpha_sigma_lambda_is_dpm_solvers_half_log_snr():
    for abar in ABARS:
        alpha, sigma, lam = vp.alpha_sigma_lambda(abar)
        assert alpha == math.sqrt(abar) and sigma == math.sqrt(1 - abar)
        assert math.isclose(lam, vp.log_snr_from_abar(abar) / 2, rel_tol=1e-9, abs_tol=1e-9)
    assert vp.alpha_sigma_lambda(0.0) == (0.0, 1.0, -math.inf)
    assert vp.alpha_sigma_lambda(1.0) == (1.0, 0.0, math.inf)


def test_the_schedule_tables_are_the_vp_conversions():
    for sched in (NoiseSchedule("cosine", 1000), NoiseSchedule("linear", 1000, zero_terminal_snr=True)):
        ab = sched.alphas_cumprod
        np.testing.assert_array_equal(sched.sigmas, vp.sigma_from_abar(ab))
        np.testing.assert_array_equal(sched.log_snr, vp.log_snr_from_abar(ab))
    assert NoiseSchedule("linear", 1000, zero_terminal_snr=True).sigmas[-1] == math.inf


def test_x_and_y_are_one_state_in_two_scalings():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.01, 1.0, 80.0], dtype=torch.float64)
    y = vp.y_from_x(x, sigma)
    abar = vp.abar_from_sigma(sigma).view(-1, 1, 1)
    torch.testing.assert_close(y, x / abar.sqrt(), rtol=1e-12, atol=0)  # y = x_t / sqrt(abar)
    torch.testing.assert_close(vp.x_from_y(y, sigma), x, rtol=1e-12, atol=0)
    torch.testing.assert_close(vp.x_from_y(vp.y_from_x(x, 3.0), 3.0), x, rtol=1e-12, atol=0)  # float sigma


G = torch.Generator().manual_seed(1)
X0, EPS = (torch.randn(3, 2, 4, generator=G, dtype=torch.float64) for _ in range(2))


@pytest.mark.parametrize("abar", [1e-4, 0.3, 0.9999])
def test_eps_x0_v_against_their_closed_forms(abar):
    a, b = math.sqrt(abar), math.sqrt(1 - abar)
    x_t = a * X0 + b * EPS
    v = a * EPS - b * X0  # Salimans & Ho 2022, §4
    torch.testing.assert_close(vp.training_target(X0, EPS, abar, "v"), v, rtol=0, atol=0)
    assert vp.training_target(X0, EPS, abar, "eps") is EPS and vp.training_target(X0, EPS, abar, "x0") is X0
    torch.testing.assert_close(vp.eps_from_x0(x_t, X0, abar), EPS, rtol=1e-9, atol=1e-9)
    for prediction, output in (("eps", EPS), ("x0", X0), ("v", v)):
        eps, x0 = vp.to_eps_x0(output, x_t, abar, prediction)
        torch.testing.assert_close(eps, EPS, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(x0, X0, rtol=1e-8, atol=1e-8)
        per_sample = torch.full((3,), abar, dtype=torch.float64)
        torch.testing.assert_close(vp.x0_from_output(output, x_t, per_sample, prediction), x0, rtol=1e-12, atol=1e-12)


def test_per_sample_noise_levels():
    abar = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    a, b = abar.sqrt().view(-1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1)
    x_t = a * X0 + b * EPS
    v = vp.training_target(X0, EPS, abar, "v")
    torch.testing.assert_close(v, a * EPS - b * X0, rtol=0, atol=0)
    torch.testing.assert_close(vp.training_target(X0, EPS, abar.view(-1, 1, 1), "v"), v, rtol=0, atol=0)
    torch.testing.assert_close(vp.eps_from_x0(x_t, X0, abar), EPS, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(vp.x0_from_output(v, x_t, abar, "v"), X0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(vp.x0_from_output(EPS, x_t, abar, "eps"), X0, rtol=1e-9, atol=1e-9)


def test_conversion_edges_and_errors():
    x_t = EPS  # abar = 0: pure noise
    with pytest.raises(ValueError, match="cannot give x0 where abar = 0"):
        vp.to_eps_x0(EPS, x_t, 0.0, "eps")
    eps, x0 = vp.to_eps_x0(vp.training_target(X0, EPS, 0.0, "v"), x_t, 0.0, "v")  # v works there
    torch.testing.assert_close(x0, X0)
    torch.testing.assert_close(eps, EPS)
    for prediction in ("eps", "v"):  # abar = 1, clean data: x0 = x_t, and eps (or v = eps) as given
        eps, x0 = vp.to_eps_x0(EPS, X0, 1.0, prediction)
        assert torch.equal(x0, X0) and torch.equal(eps, EPS)
    for fn, args in ((vp.to_eps_x0, (EPS, x_t, 0.5)), (vp.training_target, (X0, EPS, 0.5)),
                     (vp.x0_from_output, (EPS, x_t, torch.full((3,), 0.5)))):
        with pytest.raises(ValueError, match="unknown prediction type 'noise'; valid: eps, x0, v"):
            fn(*args, "noise")
