"""Sample-quality metrics computed on feature arrays (the feature networks live in ``measure.features``).

Every function accepts numpy arrays or torch tensors and works in float64 throughout.

- FID: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
  Equilibrium" (the Frechet distance between Gaussians fitted to the features).
- FID's standard error: Efron's bootstrap (Efron & Tibshirani 1993, Ch. 6) over the samples.
- IS: Salimans et al. 2016, "Improved Techniques for Training GANs", Sec. 4.
- KID: Binkowski et al. 2018, "Demystifying MMD GANs" (unbiased MMD^2 of Gretton et al. 2012, cubic kernel).
- Precision / recall: Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
  Generative Models", Eqs. (1)-(2).
"""

from __future__ import annotations

import numpy as np
import torch


def _f64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _features(x, name: str = "features") -> np.ndarray:
    x = _f64(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, d), got {x.shape}")
    return x


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of ``features`` (N, d), rows are samples (rowvar=False)."""
    x = _features(features)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got shape {x.shape}")
    mu = x.mean(axis=0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


class RunningStatistics:
    """Exact streaming version of :func:`feature_statistics`: keeps the count, the sum and the sum of
    outer products in float64, so statistics over 50k samples never need all features at once.

    The data are shifted by the first batch's mean before summing (an exact change of variables that
    avoids cancellation in ``sum(x x^T) - n mu mu^T`` when the mean is large relative to the spread).
    """

    def __init__(self):
        self.count = 0
        self._shift = self._sum = self._outer = None

    def update(self, batch) -> "RunningStatistics":
        x = _features(batch, "batch")
        if x.shape[0] == 0:
            return self
        if self._shift is None:
            d = x.shape[1]
            self._shift, self._sum, self._outer = x.mean(axis=0), np.zeros(d), np.zeros((d, d))
        elif x.shape[1] != self._shift.shape[0]:
            raise ValueError(f"batch has shape {x.shape}, expected (N, {self._shift.shape[0]})")
        y = x - self._shift
        self._sum += y.sum(axis=0)
        self._outer += y.T @ y
        self.count += x.shape[0]
        return self

    @property
    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no samples seen yet")
        return self._shift + self._sum / self.count

    @property
    def cov(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"need at least 2 samples for a covariance, have {self.count}")
        return (self._outer - np.outer(self._sum, self._sum) / self.count) / (self.count - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, S1) and N(mu2, S2) (Heusel et al. 2017; FID on features):

        d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}).

    S1 S2 is not symmetric, but it is similar to the symmetric PSD M = S1^{1/2} S2 S1^{1/2}, so
    tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(M)); S1^{1/2} comes from ``eigh`` and tiny negative
    eigenvalues (rounding) are clamped to 0. No complex sqrtm, no eps added to the diagonal.
    """
    mu1, mu2, s1, s2 = _f64(mu1), _f64(mu2), _f64(sigma1), _f64(sigma2)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.ndim != 1 or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"expected mu1, mu2 of shape (d,) and sigma1, sigma2 of shape (d, d); got mu1 {mu1.shape}, "
            f"sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise ValueError("frechet_distance: inputs contain NaN or inf")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w, v = np.linalg.eigh(s1)
    s1_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = s1_half @ s2 @ s1_half
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _bootstrap_fids(feature_sets: list[np.ndarray], mu_ref, sigma_ref, resamples: int, seed: int) -> np.ndarray:
    """FIDs of ``resamples`` bootstrap resamples (rows drawn with replacement by
    ``numpy.random.default_rng(seed)``), shape (resamples, len(feature_sets)). All sets are resampled
    with the same row indices, so that rows i of every set (the same seed through other samplers) stay
    together. Each resample's mean and covariance come from the rows' multiplicities, so no resampled
    copy of the features is made."""
    n = feature_sets[0].shape[0]
    if n < 2 or resamples < 2:
        raise ValueError(f"need at least 2 samples and 2 resamples, got {n} samples and resamples={resamples}")
    rng = np.random.default_rng(seed)
    fids = np.empty((resamples, len(feature_sets)))
    for r in range(resamples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        for j, x in enumerate(feature_sets):
            mu = counts @ x / n
            xc = x - mu
            fids[r, j] = frechet_distance(mu, (xc.T * counts) @ xc / (n - 1), mu_ref, sigma_ref)
    return fids


def fid_standard_error(features, mu_ref, sigma_ref, resamples: int = 100, seed: int = 0) -> float:
    """Bootstrap standard error of the FID of ``features`` (N, d) against a fixed reference
    N(mu_ref, sigma_ref) (Efron & Tibshirani 1993, Ch. 6: the standard deviation, ddof=1, of the
    statistic over ``resamples`` resamples of the N rows with replacement).

    The reference is held fixed because rows of one table share it: its own noise shifts every row
    alike. A resample repeats rows, which biases FID upwards, so only the spread is used, never the
    resampled values."""
    return float(np.std(_bootstrap_fids([_features(features)], mu_ref, sigma_ref, resamples, seed), ddof=1))


def fid_difference_standard_error(features_a, features_b, mu_ref, sigma_ref, resamples: int = 100,
                                  seed: int = 0) -> float:
    """Paired bootstrap standard error of FID(a) - FID(b) against a fixed reference, for two sample
    sets whose row i comes from the same seed (two samplers on the same starting noise): both are
    resampled with the same rows, so what the seeds share cancels in the difference."""
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape != b.shape:
        raise ValueError(f"paired sets must have the same shape, got {a.shape} and {b.shape}")
    fids = _bootstrap_fids([a, b], mu_ref, sigma_ref, resamples, seed)
    return float(np.std(fids[:, 0] - fids[:, 1], ddof=1))


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """Inception score (Salimans et al. 2016): IS = exp(E_x KL(p(y|x) || p(y))), p(y) the marginal over
    the part. As in the original code, the N samples are split in order into ``splits`` contiguous
    parts; returns (mean, std) of the per-part scores (numpy std, ddof=0). ``probs``: (N, classes)."""
    p = _features(probs, "probs")
    n = p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits={splits} must be between 1 and the number of samples {n}")
    if not np.isfinite(p).all() or (p < 0).any() or (np.abs(p.sum(axis=1) - 1) > 1e-3).any():
        raise ValueError("probs must be finite, non-negative, with rows summing to 1 (within 1e-3)")
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        py = part.mean(axis=0, keepdims=True)
        pos = part > 0  # 0 log 0 = 0; where p(y|x) > 0 also p(y) > 0
        kl = np.where(pos, part * (np.log(np.where(pos, part, 1)) - np.log(np.where(pos, py, 1))), 0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, Lemma 6) with k(a, b) = (a.b / d + 1)^3:
    sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1)) - 2 sum_{i,j} k(x_i,y_j)/m^2."""
    m, d = x.shape
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2 * kxy.sum() / m**2)


def kernel_inception_distance(feats1, feats2, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel, averaged over
    ``subsets`` random subsets (without replacement, ``numpy.random.default_rng(seed)``) of size
    m = min(subset_size, n1, n2) from each set. Returns (mean, std) over the subsets."""
    x, y = _features(feats1, "feats1"), _features(feats2, "feats2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: feats1 {x.shape}, feats2 {y.shape}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2 or subsets < 1:
        raise ValueError(f"need subsets >= 1 and subsets of size >= 2 (got subsets={subsets}, size {m})")
    rng = np.random.default_rng(seed)
    mmds = [_mmd2_unbiased(x[rng.choice(x.shape[0], m, replace=False)],
                           y[rng.choice(y.shape[0], m, replace=False)]) for _ in range(subsets)]
    return float(np.mean(mmds)), float(np.std(mmds))


def _knn_radii(x: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest neighbour in x, excluding the point itself."""
    return torch.cat([torch.kthvalue(torch.cdist(b, x), k + 1, dim=1).values for b in x.split(batch_size)])


def _coverage(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch_size: int) -> float:
    """Fraction of queries inside the union of balls B(centres_i, radii_i) (boundary included)."""
    inside = [(torch.cdist(b, centres) <= radii).any(dim=1) for b in queries.split(batch_size)]
    return float(torch.cat(inside).to(torch.float64).mean())


def precision_recall(real_feats, fake_feats, k: int = 3, batch_size: int = 1000) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Eqs. 1-2). The manifold of a set is the
    union of balls around its points with radius the distance to the point's k-th nearest neighbour in
    the set; precision = fraction of fake samples in the real manifold, recall = fraction of real
    samples in the fake manifold. Distances come from ``torch.cdist`` in float64, ``batch_size`` query
    rows at a time (memory batch_size x N instead of N x N)."""
    real = torch.from_numpy(_features(real_feats, "real_feats"))
    fake = torch.from_numpy(_features(fake_feats, "fake_feats"))
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {tuple(real.shape)}, fake {tuple(fake.shape)}")
    if not 1 <= k < min(real.shape[0], fake.shape[0]) or batch_size < 1:
        raise ValueError(f"need 1 <= k < number of samples in each set and batch_size >= 1 "
                         f"(k={k}, real {tuple(real.shape)}, fake {tuple(fake.shape)}, batch_size={batch_size})")
    precision = _coverage(fake, real, _knn_radii(real, k, batch_size), batch_size)
    recall = _coverage(real, fake, _knn_radii(fake, k, batch_size), batch_size)
    return precision, recall
