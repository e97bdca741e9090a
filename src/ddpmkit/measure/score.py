"""Scoring samples against a reference: grey levels -> features -> FID, IS, KID, precision/recall."""

from __future__ import annotations

import numpy as np
import torch

from .. import distributed
from ..images import from_levels, to_levels
from . import metrics
from .features import predict
from .reference import Reference, feature_net_for, load_reference


def features_of(levels: np.ndarray, ref: Reference, statistics: bool = False):
    """The reference's feature network on samples given as grey levels 0..ref.levels: (features,
    class probabilities), float64; with ``statistics`` also their mean and covariance for the FID.
    Under torchrun each process takes an equal share of the samples, the features are gathered on
    every process and the statistics are pooled from every process's float64 sums
    (``pooled_statistics``); in one process they are ``metrics.feature_statistics``."""
    n, world = len(levels), distributed.world_size()
    share = -(-n // world)  # one contiguous batch per process
    mine = distributed.shard_batches(range(n), share)[0] if world > 1 else range(n)
    rows = slice(mine[0], mine[-1] + 1) if len(mine) else slice(0, 0)
    feats, probs = predict(ref.net, from_levels(levels[rows], ref.levels))
    stats = pooled_statistics(feats) if statistics and world > 1 else None
    if world > 1:
        feats, probs = (distributed.gather_rows(v, range(n), share) for v in (feats, probs))
    if statistics:
        return feats, probs, stats or metrics.feature_statistics(feats)
    return feats, probs


def pooled_statistics(local: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the features of all processes, from each process's ``local`` ones:
    the count, sum and sum of outer products (about a shift that every process shares: rank 0's
    first feature vector, against cancellation) summed over the processes in float64."""
    x = local.to(torch.float64)
    shift = distributed.broadcast(x[0] if len(x) else torch.zeros(x.shape[1], dtype=torch.float64))
    y = x - shift
    sums = distributed.all_sum(torch.cat([torch.tensor([float(len(y))], dtype=torch.float64), y.sum(0),
                                          (y.T @ y).flatten()]))
    d = x.shape[1]
    count, total, outer = sums[0].item(), sums[1 : d + 1], sums[d + 1 :].reshape(d, d)
    if count < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {int(count)}")
    mu = shift + total / count
    cov = (outer - torch.outer(total, total) / count) / (count - 1)
    return mu.numpy(), cov.numpy()


def score(levels: np.ndarray, ref: Reference, num_classes: int = 10, precision_recall: bool = True,
          standard_error: bool = True, labels=None) -> dict:
    """FID with its bootstrap standard error, IS, KID, precision/recall against the reference, and
    the class frequencies, of samples given as grey levels; with ``labels`` (the class each sample
    was asked for, in the feature network's classes) the class accuracy too (``class_accuracy``).
    ``precision_recall`` (the reference's k-NN radii cost seconds on a CPU) and ``standard_error``
    (100 resampled FIDs, a fraction of a second) can be turned off where only the FID is read, as
    in ``ddpmkit tune``'s search."""
    feats, probs, stats = features_of(levels, ref, statistics=True)
    return score_features(feats, probs, ref, num_classes, precision_recall, standard_error, labels, stats)


def asked_classes(model, plan, seed: int, num: int) -> list[int] | None:
    """The class that samples seed .. seed+num-1 were asked for, where the shipped feature network
    classifies the model's own classes (a conditional model of its data set); else None."""
    if plan.classes is None or feature_net_for(model) is None:
        return None
    return plan.labels(range(seed, seed + num))


def class_accuracy(probs: torch.Tensor, labels, num_classes: int) -> dict:
    """How often the feature network's classifier assigns a sample to the class it was asked for:
    ``accuracy`` over all samples and ``per_class`` (None for a class not asked for)."""
    predicted, asked = probs.argmax(1).numpy(), np.asarray(labels)
    hit = predicted == asked
    per_class = [float(hit[asked == c].mean()) if (asked == c).any() else None for c in range(num_classes)]
    return {"accuracy": float(hit.mean()), "per_class": per_class}


def score_features(feats: torch.Tensor, probs: torch.Tensor, ref: Reference, num_classes: int = 10,
                   precision_recall: bool = True, standard_error: bool = True, labels=None,
                   statistics: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """``score`` from the feature network's features and class probabilities of the samples; the
    FID from ``statistics`` (mean, covariance) where given (``features_of``), else from ``feats``."""
    mu, sigma = statistics if statistics is not None else metrics.feature_statistics(feats)
    is_mean, is_std = metrics.inception_score(probs.numpy(), splits=min(10, len(feats)))
    kid, kid_std = metrics.kernel_inception_distance(feats, ref.features)
    freq = np.bincount(probs.argmax(1).numpy(), minlength=num_classes) / len(feats)
    out = {"fid": metrics.frechet_distance(mu, sigma, ref.mu, ref.sigma),
           "fid_se": metrics.fid_standard_error(feats, ref.mu, ref.sigma) if standard_error else None,
           "is": is_mean, "is_std": is_std,
           "kid": kid, "kid_std": kid_std, "class_frequencies": freq.tolist()}
    if precision_recall:
        out["precision"], out["recall"] = metrics.precision_recall(ref.features, feats)
    if labels is not None:
        out["class_accuracy"] = class_accuracy(probs, labels, num_classes)
    return out


def score_samples(x: torch.Tensor, reference: str = "mnist", data_range=(-1.0, 1.0)) -> dict:
    """All metrics for an array of samples (N, C, H, W) in ``data_range``: quantised to the
    reference data's grey levels, then ``score`` against the shipped reference ``mnist`` or ``digits``."""
    ref = load_reference(reference)
    return score(to_levels(torch.as_tensor(x), ref.levels, data_range), ref)


def compare_to_best(rows: list[dict], features: list, ref: Reference) -> None:
    """Every row's FID minus the lowest FID of the table, with the paired bootstrap error of that
    difference (``metrics.fid_difference_standard_error``): all rows sample the same seeds, so the
    noise that the seeds share cancels, and a difference is real when it is several errors wide.
    Adds ``fid_vs_best`` and ``fid_vs_best_se`` to each row (0 and None for the best row);
    ``features[i]`` are row i's sample features."""
    if not rows:
        return
    best = min(range(len(rows)), key=lambda i: rows[i]["fid"])
    for i, row in enumerate(rows):
        row["fid_vs_best"] = row["fid"] - rows[best]["fid"]
        row["fid_vs_best_se"] = None if i == best else metrics.fid_difference_standard_error(
            features[i], features[best], ref.mu, ref.sigma)
