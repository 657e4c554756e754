"""Per-epoch clustering of each class's client features, by batched k-means or a diagonal GMM.

Every epoch the client encodes its training data (eval mode, no noise) and clusters each
class's features into K clusters. The result is a ClassClusters (clusters.py).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional as F

from cemsplit.shared.defenses.cem.clusters import ClassClusters, ClusteringStats
from cemsplit.shared.defenses.cem.gmm import fit_diagonal_gmm
from cemsplit.shared.defenses.cem.kmeans import kmeans_plus_plus, lloyd

ClusteringMethod = Literal["kmeans", "gmm"]


def group_by_class(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad each class's features into a batch for the batched k-means.

    Returns points [G, N_max, D], a mask [G, N_max] of real points and the class index [G] of
    each group, for the G classes that have at least one sample.
    """
    counts = torch.bincount(labels, minlength=num_classes)
    classes = (counts > 0).nonzero().flatten()
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(len(labels), device=labels.device) - starts[sorted_labels]
    group_of_class = torch.full((num_classes,), -1, dtype=torch.long, device=labels.device)
    group_of_class[classes] = torch.arange(len(classes), device=labels.device)

    longest = int(counts.max())
    points = features.new_zeros(len(classes), longest, features.shape[1])
    mask = torch.zeros(len(classes), longest, dtype=torch.bool, device=features.device)
    points[group_of_class[sorted_labels], position] = features[order]
    mask[group_of_class[sorted_labels], position] = True
    return points, mask, classes


def fit_kmeans_clusters(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    num_clusters: int,
    max_iter: int,
    generator: torch.Generator,
    previous: ClassClusters | None = None,
) -> tuple[ClassClusters, ClusteringStats]:
    """Cluster each class's features [N, D] with k-means, all classes in one batched run.

    Classes that had samples in `previous` start from its centroids (warm start); the others
    start from k-means++. labels [N] are class indices below num_classes.
    """
    points, mask, classes = group_by_class(features, labels, num_classes)
    if previous is not None and previous.num_clusters == num_clusters:
        initial = previous.centroids.to(features.device, features.dtype)[classes].clone()
        fresh = previous.class_counts.to(features.device)[classes] == 0
        if bool(fresh.any()):
            initial[fresh] = kmeans_plus_plus(points[fresh], mask[fresh], num_clusters, generator)
    else:
        initial = kmeans_plus_plus(points, mask, num_clusters, generator)
    result = lloyd(points, mask, initial, max_iter)

    members = F.one_hot(result.assignments.clamp_min(0), num_clusters).to(features.dtype) * mask[..., None]
    counts = members.sum(dim=1)
    assigned = torch.einsum("gnk,gkd->gnd", members, result.centroids)
    squared = (points - assigned).pow(2).mean(dim=-1) * mask
    variances = torch.einsum("gnk,gn->gk", members, squared) / counts.clamp_min(1.0)
    class_counts = mask.sum(dim=1)

    dim = features.shape[1]
    clusters = ClassClusters(
        centroids=features.new_zeros(num_classes, num_clusters, dim).index_copy(0, classes, result.centroids),
        weights=features.new_zeros(num_classes, num_clusters).index_copy(0, classes, counts / class_counts[:, None]),
        variances=features.new_zeros(num_classes, num_clusters).index_copy(0, classes, variances),
        class_counts=torch.zeros(num_classes, dtype=torch.long, device=features.device).index_copy(0, classes, class_counts),
    )
    stats = ClusteringStats(int(result.iterations.max()), int((~result.converged).sum()))
    return clusters, stats


def fit_class_clusters(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    num_clusters: int,
    method: ClusteringMethod,
    max_iter: int,
    seed: int,
    previous: ClassClusters | None = None,
) -> tuple[ClassClusters, ClusteringStats]:
    """Cluster each class's features [N, ...] (flattened to [N, D]) with k-means or a diagonal GMM.

    Either method warm-starts from `previous` where it has the class. seed fixes the
    k-means++ draws (k-means) or scikit-learn's random_state (gmm).
    """
    if len(features) != len(labels):
        raise ValueError(f"features have {len(features)} samples but labels {len(labels)}; pass matching tensors")
    if len(labels) == 0:
        raise ValueError("no samples to cluster; the client-training split is empty")
    if int(labels.max()) >= num_classes or int(labels.min()) < 0:
        raise ValueError(f"labels range over [{int(labels.min())}, {int(labels.max())}] but there are {num_classes} classes")
    flat = features.detach().flatten(1)

    if method == "kmeans":
        generator = torch.Generator(device=flat.device).manual_seed(seed)
        return fit_kmeans_clusters(flat, labels, num_classes, num_clusters, max_iter, generator, previous)
    if method == "gmm":
        return fit_diagonal_gmm(flat, labels, num_classes, num_clusters, max_iter, seed, previous)
    raise ValueError(f"clustering method {method!r} is unknown; use kmeans or gmm")
