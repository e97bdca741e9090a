"""Train the shipped feature networks and compute the shipped reference statistics.

    .venv/bin/python tools/train_feature_nets.py [--data-dir ../shared/data/mnist] [--stats-only]

Writes src/ddpmkit/assets/{mnist,digits}_classifier.safetensors, {mnist,digits}_stats.safetensors
(feature mean and covariance of the reference set, with the data floor of every metric) and the
model card FEATURE_NETS.md. Deterministic for a given seed on one machine.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch
from safetensors.torch import save_file

from ddpmkit.data import load_dataset
from ddpmkit.files import atomic_path, write_text
from ddpmkit.machine import describe_machine
from ddpmkit.measure import metrics
from ddpmkit.measure.features import ASSETS, accuracy, load_feature_net, predict, save_feature_net, train_classifier
from ddpmkit.measure.report import table

ROOT = pathlib.Path(__file__).resolve().parents[1]


def floor(net, reference, other) -> dict:
    """Every metric between two real sets of the same size: what a perfect generator would score."""
    f_ref, p_ref = predict(net, reference)
    f_oth, p_oth = predict(net, other)
    mu1, s1 = metrics.feature_statistics(f_ref)
    mu2, s2 = metrics.feature_statistics(f_oth)
    kid = metrics.kernel_inception_distance(f_oth, f_ref)
    precision, recall = metrics.precision_recall(f_ref, f_oth)
    return {"fid": metrics.frechet_distance(mu2, s2, mu1, s1), "kid": kid[0], "kid_std": kid[1],
            "precision": precision, "recall": recall, "is": metrics.inception_score(p_oth.numpy())[0],
            "is_reference": metrics.inception_score(p_ref.numpy())[0], "n": len(other)}


FLOOR_POINTS = 2000  # real images whose features and class probabilities ship for floors at small N


def save_stats(net, reference, other, path, info: dict) -> None:
    """Mean and covariance (float64) of the reference set's features, and the features themselves
    (float16, for KID and precision/recall, which need points rather than moments); and, where the
    floor's other real set lies outside the reference set, the features and class probabilities of up
    to FLOOR_POINTS of its images, so that an evaluation of N samples can be put beside the floor at
    the same N (``measure.floor_at``). ``other=None``: no such images (digits, whose reference is all
    of its data: a floor from images inside the reference would be biased low)."""
    feats, _ = predict(net, reference)
    mu, sigma = metrics.feature_statistics(feats)
    tensors = {"mu": torch.as_tensor(mu), "sigma": torch.as_tensor(sigma), "features": feats.to(torch.float16)}
    if other is not None:
        f_oth, p_oth = predict(net, other[:FLOOR_POINTS])
        tensors |= {"floor_features": f_oth.to(torch.float16), "floor_probs": p_oth.to(torch.float32)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"info": json.dumps(info)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats-only", action="store_true",
                   help="keep the shipped networks and cards; recompute only the statistics files")
    args = p.parse_args(argv)
    machine = describe_machine()
    command = "python tools/train_feature_nets.py " + " ".join(sys.argv[1:] if argv is None else argv)
    cards = {}

    def ship(name, train_images, train_labels, held_images, held_labels, data, epochs, batch_size,
             floor_sets, reference, reference_text, levels, floor_outside_reference=True):
        """Train one network, measure it, and write its weights, statistics and card."""
        floor_points = floor_sets[1] if floor_outside_reference else None
        if args.stats_only:
            net, card = load_feature_net(name)
            save_stats(net, reference, floor_points, ASSETS / f"{name}_stats.safetensors",
                       {"reference": reference_text, "levels": levels, "floor": card["floor"]})
            return
        start = time.perf_counter()
        net = train_classifier(train_images, train_labels, epochs=epochs, batch_size=batch_size, seed=args.seed)
        seconds = time.perf_counter() - start
        acc = accuracy(net, held_images, held_labels)
        fl = floor(net, *floor_sets)
        card = {"data": data, "test_accuracy": acc, "epochs": epochs, "train_seconds": round(seconds, 1),
                "machine": machine, "command": command, "floor": fl}
        save_feature_net(net, ASSETS / f"{name}_classifier.safetensors", card)
        save_stats(net, reference, floor_points, ASSETS / f"{name}_stats.safetensors",
                   {"reference": reference_text, "levels": levels, "floor": fl})
        cards[name] = card
        print(f"{name}: held-out accuracy {acc:.4f}, {seconds:.0f} s; floor {fl}")

    # MNIST: train on the 60k training images, test on the 10k test images (the reference set); the
    # floor compares a seeded 10k training subset with the test set
    train, test = load_dataset("mnist", args.data_dir), load_dataset("mnist", args.data_dir, split="test")
    subset = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[: len(test)]
    ship("mnist", train.to_float(), train.labels, test.to_float(), test.labels, "MNIST train (60000) / test (10000)",
         args.epochs, 128, (test.to_float(), train.batch(subset)), test.to_float(), "MNIST test set, 10000 images", 255)

    # digits: 1797 images; train on a seeded 1500, report accuracy on the other 297; the floor
    # compares two halves; statistics of all, so no real image lies outside the reference for floors at N
    digits = load_dataset("digits")
    perm = torch.randperm(len(digits), generator=torch.Generator().manual_seed(args.seed))
    tr, te, half = perm[:1500], perm[1500:], len(digits) // 2
    ship("digits", digits.batch(tr), digits.labels[tr], digits.batch(te), digits.labels[te],
         "scikit-learn digits, 1500 train / 297 held out", 30, 64,
         (digits.batch(perm[:half]), digits.batch(perm[half : 2 * half])), digits.to_float(), "all 1797 digits", 16,
         floor_outside_reference=False)
    if args.stats_only:
        return 0

    lines = ["# Shipped feature networks\n",
             "Small CNN classifiers (`ddpmkit.nets.classifier.FeatureClassifier`: two conv blocks, a 128-d "
             "feature layer, the logits). Their 128-d features feed FID, KID and precision/recall, their "
             "softmax IS. They replace InceptionV3 where it does not apply or cannot be downloaded: numbers "
             "made with them compare with each other, never with published Inception FIDs.\n",
             f"Made by `{command.strip()}` on {machine}.\n",
             table(["network", "data", "held-out accuracy", "epochs", "train time (s)"],
                   [[name, c["data"], f"{100 * c['test_accuracy']:.2f}%", c["epochs"], c["train_seconds"]]
                    for name, c in cards.items()]),
             "\n## Data floor: the metrics between two real sets of the same size\n"]
    sets = {"mnist": "10k train subset vs test", "digits": "two halves (898 each)"}
    floors = [(name, c["floor"]) for name, c in cards.items()]
    lines.append(table(["network", "sets", "FID", "KID", "precision", "recall", "IS"],
                       [[name, sets[name], f"{f['fid']:.3f}", f"{f['kid']:.5f}", f"{f['precision']:.3f}",
                         f"{f['recall']:.3f}", f"{f['is']:.2f}"] for name, f in floors]))
    write_text(ASSETS / "FEATURE_NETS.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
