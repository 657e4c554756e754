"""Time our vectorised CEM loss against a per-class-loop version of the reference's loss.

The loop version follows the structure of the reference implementation (github.com/xiasong0501/CEM).
It loops in Python over the classes in the batch and copies each class's nearest-centroid
search to the host. Then it loops over the clusters found, each with its own boolean indexing
and Python-float arithmetic. It computes the same value as cemsplit's cem_loss (checked below)
and exists only in this benchmark. Both are timed forward plus backward on client features of
real mnist5k digits, with clusters fitted on the whole client-training split.

Target: ours >= 5x faster at batch 128.

Usage: python benchmarks/cem_loss_speed.py [--repeats N] [--threads N] [--result FILE]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import git_revision, write_result  # noqa: E402
from cemsplit.shared.config import DataConfig  # noqa: E402
from cemsplit.shared.datasets import load_splits  # noqa: E402
from cemsplit.shared.defenses.cem.clustering import fit_class_clusters  # noqa: E402
from cemsplit.shared.defenses.cem.clusters import ClassClusters  # noqa: E402
from cemsplit.shared.defenses.cem.loss import cem_loss  # noqa: E402
from cemsplit.shared.vgg import ClientNet, SplitSpec  # noqa: E402

TARGET_SPEEDUP = 5.0
NOISE_STD = 0.025
VAR_THRESHOLD = 0.125


def loop_loss(features: torch.Tensor, labels: torch.Tensor, clusters: ClassClusters, noise_std: float, var_threshold: float) -> torch.Tensor:
    """CEM hinge loss computed class by class and cluster by cluster, as the reference does."""
    num_classes = clusters.num_classes
    samples_per_class = clusters.samples / num_classes
    floor = math.log(var_threshold * noise_std**2 + 0.01)
    labels_host = labels.cpu().numpy()
    classes = np.unique(labels_host)
    total = None
    for label in classes:
        class_features = features[torch.from_numpy(labels_host == label)].flatten(1)
        centroids = clusters.centroids[label]
        distances = torch.cdist(class_features, centroids).detach().cpu().numpy()
        distances[:, clusters.weights[label].numpy() == 0] = np.inf
        assignments = np.argmin(distances, axis=1)
        for cluster in np.unique(assignments):
            members = class_features[torch.from_numpy(assignments == cluster)]
            weight = float(clusters.weights[label, cluster])
            batch_variance = ((members - centroids[cluster]) ** 2).mean()
            alpha = min(0.99, 10 * len(members) / (weight * samples_per_class))
            blended = alpha * batch_variance + (1 - alpha) * float(clusters.variances[label, cluster])
            term = weight * F.relu(torch.log(blended + 0.01) - floor)
            total = term if total is None else total + term
    return total / len(classes)


def time_loss(function, features: torch.Tensor, labels: torch.Tensor, clusters: ClassClusters) -> float:
    """Seconds for one forward and backward pass of the loss."""
    leaf = features.detach().clone().requires_grad_(True)
    started = time.perf_counter()
    loss = function(leaf, labels, clusters, NOISE_STD, VAR_THRESHOLD)
    loss.backward()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200, help="timed forward+backward passes per loss and batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512], help="batch sizes to time")
    parser.add_argument("--result", type=Path, default=Path("runs/bench/cem_loss_speed.json"), help="JSON result file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    splits = load_splits(DataConfig())
    torch.manual_seed(125)
    encoder = ClientNet(SplitSpec(input_shape=splits.input_shape, num_classes=splits.num_classes)).eval()
    with torch.no_grad():
        features = torch.cat([encoder(splits.train.floats(slice(start, start + 500))) for start in range(0, len(splits.train), 500)])
    labels = splits.train.labels
    clusters, _ = fit_class_clusters(features, labels, splits.num_classes, 5, "kmeans", 50, seed=0)
    generator = torch.Generator().manual_seed(0)

    rows = []
    for batch_size in args.batch_sizes:
        ours_times, loop_times, differences = [], [], []
        for _ in range(args.repeats):
            index = torch.randperm(len(labels), generator=generator)[:batch_size]
            batch, batch_labels = features[index], labels[index]
            differences.append(abs(float(cem_loss(batch, batch_labels, clusters, NOISE_STD, VAR_THRESHOLD)) - float(loop_loss(batch, batch_labels, clusters, NOISE_STD, VAR_THRESHOLD))))
            # Alternate the two so that load from other processes hits both alike.
            ours_times.append(time_loss(cem_loss, batch, batch_labels, clusters))
            loop_times.append(time_loss(loop_loss, batch, batch_labels, clusters))
        ours, loop = statistics.median(ours_times), statistics.median(loop_times)
        rows.append({"batch_size": batch_size, "ours_ms": ours * 1e3, "loop_ms": loop * 1e3, "speedup": loop / ours, "max_abs_difference": max(differences)})
        print(f"batch {batch_size}: ours {ours * 1e3:.3f} ms, loop {loop * 1e3:.3f} ms, speedup {loop / ours:.1f}x (values differ by <= {max(differences):.2e})")

    at_128 = next((row for row in rows if row["batch_size"] == 128), None)
    passed = at_128 is not None and at_128["speedup"] >= TARGET_SPEEDUP
    write_result(
        args.result,
        {"revision": git_revision(), "threads": args.threads, "repeats": args.repeats, "feature_shape": list(features.shape[1:]),
         "num_clusters": 5, "rows": rows, "target_speedup_at_128": TARGET_SPEEDUP, "passed": passed},
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
