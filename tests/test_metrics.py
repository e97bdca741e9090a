import numpy as np
import pytest
import scipy.linalg
import torch

from ddpmkit.measure.metrics import (
    RunningStatistics,
    feature_statistics,
    fid_difference_standard_error,
    fid_standard_error,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)


def random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


def fid_sqrtm(mu1, s1, mu2, s2):
    """Independent oracle: the textbook formula with scipy's general (non-symmetric) sqrtm."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


# ---------------------------------------------------------------- statistics


def test_feature_statistics_matches_numpy_and_accepts_torch():
    x = np.random.default_rng(0).standard_normal((50, 6)) * 3 + 1
    mu, cov = feature_statistics(x)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-12)
    mu_t, cov_t = feature_statistics(torch.from_numpy(x).float())
    assert mu_t.dtype == cov_t.dtype == np.float64
    np.testing.assert_allclose(cov_t, np.cov(x.astype(np.float32).astype(np.float64), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError):
        feature_statistics(x[:1])


def test_running_statistics_equals_batch_statistics():
    x = np.random.default_rng(1).standard_normal((1000, 8)) * 0.5 + 100  # large mean: cancellation-prone
    rs = RunningStatistics()
    for lo, hi in [(0, 1), (1, 1), (1, 38), (38, 500), (500, 501), (501, 1000)]:
        rs.update(torch.from_numpy(x[lo:hi]) if lo % 2 else x[lo:hi])
    mu, cov = feature_statistics(x)
    assert rs.count == 1000
    np.testing.assert_allclose(rs.mean, mu, rtol=0, atol=1e-10)
    np.testing.assert_allclose(rs.cov, cov, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="shape"):
        rs.update(np.zeros((3, 7)))


# ---------------------------------------------------------------- FID


def test_fid_self_is_zero_and_symmetric():
    rng = np.random.default_rng(2)
    mu1, s1 = feature_statistics(rng.standard_normal((400, 16)))
    mu2, s2 = feature_statistics(rng.standard_normal((400, 16)) * 1.3 + 0.2)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-6
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_fid_matches_scipy_sqrtm_oracle():
    rng = np.random.default_rng(3)
    for d in (1, 5, 32):
        mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), random_spd(rng, d), random_spd(rng, d)
        got = frechet_distance(torch.from_numpy(mu1), torch.from_numpy(s1), mu2, s2)
        assert got == pytest.approx(fid_sqrtm(mu1, s1, mu2, s2), rel=1e-6)


def test_fid_diagonal_closed_form():
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0.1, 3, 10), rng.uniform(0.1, 3, 10)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fid_from_samples_converges_to_closed_form():
    # S2 = c S1 commute, so (S1 S2)^{1/2} = sqrt(c) S1 and d^2 = ||dmu||^2 + tr(S1) (1 - sqrt(c))^2.
    rng = np.random.default_rng(5)
    d, c = 4, 4.0
    s1 = random_spd(rng, d)
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    exact = np.sum((mu1 - mu2) ** 2) + np.trace(s1) * (1 - np.sqrt(c)) ** 2
    errors = []
    for n in (1_000, 200_000):
        x = rng.multivariate_normal(mu1, s1, size=n)
        y = rng.multivariate_normal(mu2, c * s1, size=n)
        errors.append(abs(frechet_distance(*feature_statistics(x), *feature_statistics(y)) - exact))
    assert errors[1] < 0.01 * exact
    assert errors[1] < errors[0]


def test_fid_standard_error_matches_the_spread_over_independent_sample_sets():
    # Oracle: the standard deviation of FID over many independent sample sets of the same size,
    # against the exact reference; the bootstrap sees one set at a time.
    rng = np.random.default_rng(11)
    d, n = 8, 400
    s_ref = random_spd(rng, d)
    mu_ref, mu_gen, s_gen = np.zeros(d), np.full(d, 0.3), 1.5 * s_ref
    fids = [frechet_distance(*feature_statistics(rng.multivariate_normal(mu_gen, s_gen, size=n)), mu_ref, s_ref)
            for _ in range(400)]
    true_se = np.std(fids, ddof=1)
    estimates = [fid_standard_error(rng.multivariate_normal(mu_gen, s_gen, size=n), mu_ref, s_ref, seed=i)
                 for i in range(20)]
    # (the bootstrap runs about 8% high here over other seeds of this setup: on the safe side)
    assert 0.8 < np.mean(estimates) / true_se < 1.3
    # a set 4x larger: the error halves
    big = [fid_standard_error(rng.multivariate_normal(mu_gen, s_gen, size=4 * n), mu_ref, s_ref, seed=i)
           for i in range(6)]
    assert 0.4 < np.mean(big) / np.mean(estimates) < 0.6


def test_paired_fid_difference_error_matches_the_spread_over_independent_pairs():
    # Two "samplers" on the same seeds: y is x moved a little, so their FIDs share most of their
    # noise. Oracle: the spread of FID(x) - FID(y) over many independent pairs of sets.
    rng = np.random.default_rng(21)
    d, n = 8, 400
    s_ref = random_spd(rng, d)
    mu_ref, mu_gen, s_gen = np.zeros(d), np.full(d, 0.3), 1.5 * s_ref

    def pair():
        x = rng.multivariate_normal(mu_gen, s_gen, size=n)
        return x, x + 0.5 * rng.standard_normal((n, d)) + 0.2

    def fid(x):
        return frechet_distance(*feature_statistics(x), mu_ref, s_ref)

    true_se = np.std([fid(x) - fid(y) for x, y in (pair() for _ in range(400))], ddof=1)
    paired, unpaired = [], []
    for i in range(20):
        x, y = pair()
        paired.append(fid_difference_standard_error(x, y, mu_ref, s_ref, seed=i))
        unpaired.append(np.hypot(fid_standard_error(x, mu_ref, s_ref, seed=i),
                                 fid_standard_error(y, mu_ref, s_ref, seed=i)))
    assert 0.8 < np.mean(paired) / true_se < 1.25
    assert np.mean(unpaired) > 3 * true_se  # what pairing buys here: the shared noise cancels
    assert fid_difference_standard_error(x, x, mu_ref, s_ref) == 0
    with pytest.raises(ValueError, match=r"same shape, got \(400, 8\) and \(399, 8\)"):
        fid_difference_standard_error(x, y[1:], mu_ref, s_ref)


def test_fid_standard_error_equals_the_spread_over_explicit_resamples():
    # The multiplicity shortcut against resampling the rows themselves, with the same draws.
    rng = np.random.default_rng(2)
    x, s_ref = rng.standard_normal((50, 3)), random_spd(rng, 3)
    draws = np.random.default_rng(7)
    fids = []
    for _ in range(20):
        fids.append(frechet_distance(*feature_statistics(x[draws.integers(0, 50, 50)]), np.ones(3), s_ref))
    assert fid_standard_error(x, np.ones(3), s_ref, resamples=20, seed=7) == pytest.approx(np.std(fids, ddof=1),
                                                                                            rel=1e-9)
    with pytest.raises(ValueError, match="resamples=1"):
        fid_standard_error(x, np.ones(3), s_ref, resamples=1)


def test_fid_rejects_bad_shapes_and_non_finite():
    mu, s = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        frechet_distance(mu, np.eye(4), mu, s)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        frechet_distance(mu, s, np.zeros(2), s)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(mu, s, np.array([0, np.nan, 0]), s)
    bad = np.eye(3)
    bad[0, 1] = np.inf
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(mu, s, mu, bad)


# ---------------------------------------------------------------- Inception score


def test_inception_score_uniform_and_one_hot():
    c, splits = 7, 5
    mean, std = inception_score(np.full((70, c), 1 / c), splits=splits)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.eye(c).repeat(3 * splits, 1)  # every split holds each class 3 times, in order
    mean, std = inception_score(one_hot, splits=splits)
    assert mean == pytest.approx(c, abs=1e-6) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_matches_direct_formula_and_splits_in_order():
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.full(4, 0.3), size=60)
    part_scores = []
    for part in np.split(p, 3):  # contiguous, in order, as in the original code
        py = part.mean(0)
        part_scores.append(np.exp(np.mean([np.sum(q * np.log(q / py)) for q in part])))
    mean, std = inception_score(p, splits=3)
    assert mean == pytest.approx(np.mean(part_scores), rel=1e-12)
    assert std == pytest.approx(np.std(part_scores), rel=1e-10)


@pytest.mark.parametrize("probs", [
    np.full((10, 4), 0.3),                                  # rows sum to 1.2
    np.tile([[1.2, -0.2, 0.0, 0.0]], (10, 1)),               # negative entry
    np.tile([[0.5, 0.5, np.nan, 0.0]], (10, 1)),
    np.full(10, 0.1),                                       # not 2-D
])
def test_inception_score_rejects_invalid_probs(probs):
    with pytest.raises(ValueError):
        inception_score(probs, splits=2)


# ---------------------------------------------------------------- KID


def mmd2_unbiased_brute_force(x, y):
    m, d = len(x), len(x[0])
    k = lambda a, b: (sum(a[i] * b[i] for i in range(d)) / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_brute_force_on_tiny_example():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)) + 0.5
    mean, std = kernel_inception_distance(x, torch.from_numpy(y), subsets=3, subset_size=100)
    # every subset is a permutation of the whole set, and MMD^2 does not depend on the order
    assert mean == pytest.approx(mmd2_unbiased_brute_force(x.tolist(), y.tolist()), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((600, 16)), rng.standard_normal((600, 16))
    mean, std = kernel_inception_distance(a, b, subsets=20, subset_size=200)
    assert abs(mean) < 3 * std or abs(mean) < 1e-3
    shifted_mean, shifted_std = kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=200)
    assert shifted_mean > 10 * shifted_std and shifted_mean > 10 * abs(mean)
    # seeded: same seed same answer
    assert kernel_inception_distance(a, b, subsets=5, subset_size=50, seed=3) == \
        kernel_inception_distance(a, b, subsets=5, subset_size=50, seed=3)
    with pytest.raises(ValueError, match="dimensions"):
        kernel_inception_distance(a, b[:, :5])


# ---------------------------------------------------------------- precision / recall


def test_precision_recall_identical_and_disjoint():
    x = np.random.default_rng(9).standard_normal((300, 5))
    assert precision_recall(x, torch.from_numpy(x)) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_precision_recall_half_coverage():
    rng = np.random.default_rng(10)
    centre = np.zeros(2), np.full(2, 50.0)
    real = np.concatenate([rng.standard_normal((500, 2)) + c for c in centre])
    # a subset of the real points: exact answer
    assert precision_recall(real, real[:500]) == (1.0, 0.5)
    # fresh samples from the first cluster only
    fake = rng.standard_normal((500, 2)) + centre[0]
    precision, recall = precision_recall(real, fake)
    assert precision > 0.9
    assert 0.45 < recall <= 0.5


def test_precision_recall_batching_invariant():
    rng = np.random.default_rng(11)
    real, fake = rng.standard_normal((257, 8)), rng.standard_normal((190, 8)) * 1.2 + 0.3
    full = precision_recall(real, fake, k=5, batch_size=10_000)
    assert 0 < full[0] < 1 and 0 < full[1] < 1
    assert precision_recall(real, fake, k=5, batch_size=7) == full
    with pytest.raises(ValueError):
        precision_recall(real, fake[:3], k=3)


def precision_recall_brute_force(real, fake, k):
    def inside(queries, centres):
        dc = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        radii = np.sort(dc, axis=1)[:, k]  # column 0 is the point itself
        dq = np.linalg.norm(queries[:, None] - centres[None], axis=-1)
        return np.mean([any(dq[i, j] <= radii[j] for j in range(len(centres))) for i in range(len(queries))])

    return inside(fake, real), inside(real, fake)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_precision_recall_matches_brute_force(k):
    rng = np.random.default_rng(12 + k)
    real, fake = rng.standard_normal((60, 3)), rng.standard_normal((45, 3)) * 0.8 + 0.4
    assert precision_recall(real, fake, k=k, batch_size=16) == pytest.approx(
        precision_recall_brute_force(real, fake, k), abs=1e-12)
    # hand-checked 1-D case, k = 1: radii of the real set [0, 1, 3] are [1, 1, 2]; 2 is inside B(3, 2),
    # 5 is on its boundary (which counts as inside), 5.5 is outside
    assert precision_recall([[0.0], [1.0], [3.0]], [[2.0], [5.0], [5.5]], k=1)[0] == pytest.approx(2 / 3)


def test_floor_at_small_sizes_is_biased_upwards():
    from ddpmkit.measure import floor_at, load_reference

    ref = load_reference("mnist")
    floors = [floor_at(ref, n) for n in (200, 500, 2000)]
    fids = [f["fid"] for f in floors]
    assert fids[0] > fids[1] > fids[2] > ref.info["floor"]["fid"]  # FID's small-sample bias
    assert 9.0 < floors[2]["is"] < 10.0
    with pytest.raises(ValueError, match="cannot give the floor at n=2001"):
        floor_at(ref, 2001)


def test_evaluations_read_against_the_floor_at_their_own_size():
    """eval and bench show the floor at their sample size where the shipped floor images reach
    (2000 for MNIST), with precision and recall; past that, the shipped 10k floor."""
    from ddpmkit.measure import floor_at, floor_for, load_reference

    ref = load_reference("mnist")
    small = floor_for(ref, 500)
    assert small["n"] == 500 and small["fid"] == pytest.approx(floor_at(ref, 500)["fid"])
    assert small["fid"] > ref.info["floor"]["fid"] and 0.5 < small["precision"] <= 1 and 0.5 < small["recall"] <= 1
    assert floor_for(ref, 5000) == floor_for(ref, 10000) == ref.info["floor"]
    # digits' reference is all of its images: none is left for a floor at n, so its shipped floor applies
    digits = load_reference("digits")
    assert floor_for(digits, 500) == digits.info["floor"] and digits.info["floor"]["n"] == 898
    with pytest.raises(ValueError, match="hold 0 real images outside the reference set; cannot give the floor at "
                                         "n=500"):
        floor_at(digits, 500)


def test_shipped_floor_images_lie_outside_the_reference_set():
    # A floor image inside the reference would be compared with itself (FID biased low, precision 1);
    # digits, which had 898 such images, ships none (above).
    from ddpmkit.measure import load_reference

    ref = load_reference("mnist")
    inside = {row.tobytes() for row in ref.features.astype(np.float16)}
    assert not any(row.tobytes() in inside for row in ref.floor_features.astype(np.float16))
