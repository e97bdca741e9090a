"""Train the shipped feature networks and compute the shipped reference statistics.

    .venv/bin/python tools/train_feature_nets.py [--data-dir ../shared/data/mnist]

Writes src/ddpmkit/assets/{mnist,digits}_classifier.safetensors, {mnist,digits}_stats.safetensors
(feature mean and covariance of the reference set, with the data floor of every metric) and the
model card FEATURE_NETS.md. Deterministic for a given seed on one machine.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import torch
from safetensors.torch import save_file

from ddpmkit import metrics
from ddpmkit.data import load_dataset
from ddpmkit.feature_net import ASSETS, accuracy, predict, save_feature_net, train_classifier
from ddpmkit.files import atomic_path, write_text

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


def save_stats(net, reference, path, info: dict) -> None:
    """Mean and covariance (float64) of the reference set's features, and the features themselves
    (float16, for KID and precision/recall, which need points rather than moments)."""
    feats, _ = predict(net, reference)
    mu, sigma = metrics.feature_statistics(feats)
    tensors = {"mu": torch.as_tensor(mu), "sigma": torch.as_tensor(sigma), "features": feats.to(torch.float16)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"info": json.dumps(info)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    command = "python tools/train_feature_nets.py " + " ".join(sys.argv[1:] if argv is None else argv)
    cards = {}

    # MNIST: train on the 60k training images, test on the 10k test images (the reference set)
    train, test = load_dataset("mnist", args.data_dir), load_dataset("mnist", args.data_dir, split="test")
    start = time.perf_counter()
    net = train_classifier(train.to_float(), train.labels, epochs=args.epochs, seed=args.seed)
    seconds = time.perf_counter() - start
    acc = accuracy(net, test.to_float(), test.labels)
    subset = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[: len(test)]
    fl = floor(net, test.to_float(), train.batch(subset))
    card = {"data": "MNIST train (60000) / test (10000)", "test_accuracy": acc, "epochs": args.epochs,
            "train_seconds": round(seconds, 1), "machine": machine, "command": command, "floor": fl}
    save_feature_net(net, ASSETS / "mnist_classifier.safetensors", card)
    save_stats(net, test.to_float(), ASSETS / "mnist_stats.safetensors",
               {"reference": "MNIST test set, 10000 images", "levels": 255, "floor": fl})
    cards["mnist"] = card
    print(f"mnist: test accuracy {acc:.4f}, {seconds:.0f} s; floor {fl}")

    # digits: 1797 images; train on a seeded 1500, report accuracy on the other 297; statistics of all
    digits = load_dataset("digits")
    perm = torch.randperm(len(digits), generator=torch.Generator().manual_seed(args.seed))
    tr, te = perm[:1500], perm[1500:]
    start = time.perf_counter()
    net = train_classifier(digits.batch(tr), digits.labels[tr], epochs=30, batch_size=64, seed=args.seed)
    seconds = time.perf_counter() - start
    acc = accuracy(net, digits.batch(te), digits.labels[te])
    half = len(digits) // 2
    fl = floor(net, digits.batch(perm[:half]), digits.batch(perm[half : 2 * half]))
    card = {"data": "scikit-learn digits, 1500 train / 297 held out", "test_accuracy": acc, "epochs": 30,
            "train_seconds": round(seconds, 1), "machine": machine, "command": command, "floor": fl}
    save_feature_net(net, ASSETS / "digits_classifier.safetensors", card)
    save_stats(net, digits.to_float(), ASSETS / "digits_stats.safetensors",
               {"reference": "all 1797 digits", "levels": 16, "floor": fl})
    cards["digits"] = card
    print(f"digits: held-out accuracy {acc:.4f}, {seconds:.0f} s; floor {fl}")

    lines = ["# Shipped feature networks\n",
             "Small CNN classifiers (`ddpmkit.nets.classifier.FeatureClassifier`: two conv blocks, a 128-d "
             "feature layer, the logits). Their 128-d features feed FID, KID and precision/recall, their "
             "softmax IS. They replace InceptionV3 where it does not apply or cannot be downloaded: numbers "
             "made with them compare with each other, never with published Inception FIDs.\n",
             f"Made by `{command.strip()}` on {machine}.\n",
             "| network | data | held-out accuracy | epochs | train time (s) |", "|---|---|---|---|---|"]
    for name, c in cards.items():
        lines.append(f"| {name} | {c['data']} | {100 * c['test_accuracy']:.2f}% | {c['epochs']} | {c['train_seconds']} |")
    lines += ["\n## Data floor: the metrics between two real sets of the same size\n",
              "| network | sets | FID | KID | precision | recall | IS |", "|---|---|---|---|---|---|---|"]
    sets = {"mnist": "10k train subset vs test", "digits": "two halves (898 each)"}
    for name, c in cards.items():
        f = c["floor"]
        lines.append(f"| {name} | {sets[name]} | {f['fid']:.3f} | {f['kid']:.5f} | {f['precision']:.3f} | "
                     f"{f['recall']:.3f} | {f['is']:.2f} |")
    write_text(ASSETS / "FEATURE_NETS.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
