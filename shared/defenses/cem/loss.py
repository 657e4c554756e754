"""The CEM batch loss and the learning-rate scale of its "separate" gradient.

Symbols: sigma is noise_std, tau is var_threshold, gamma = 0.01, mu, pi and vbar are the
per-class clusters of the last epoch (clusters.py). For each sample i of class y_i, k(i) is the
nearest centroid of its own class (no gradient through this choice). For each class y and
cluster k present in the batch:

    vhat  = mean over the batch members of (y, k) and over the D dimensions of (z - mu_{y,k})^2
    alpha = min(0.99, 10 * n_batch(y, k) / (pi_{y,k} * N / C))
    v     = alpha * vhat + (1 - alpha) * vbar_{y,k}
    term  = pi_{y,k} * relu(log(v + gamma) - log(tau * sigma^2 + gamma))     ("hinge")
          = pi_{y,k} * (v + 0.001)                                           ("plain")

and the loss is the sum of the terms divided by the number of classes in the batch. N is the
number of samples clustered and C the number of classes. Only vhat carries a gradient.
Minimising the hinge shrinks each cluster until its variance is below tau * sigma^2, the scale
at which the noise hides what is left.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from cemsplit.shared.defenses.cem.clusters import ClassClusters

CEMMode = Literal["hinge", "plain"]

# gamma: keeps the hinge's logarithms finite for clusters of zero variance.
HINGE_OFFSET = 0.01
# Added to the variance in the plain mode.
PLAIN_OFFSET = 0.001
# alpha, the share of the batch estimate in v, is capped here so that last epoch's vbar
# always contributes.
MAX_BATCH_SHARE = 0.99
# alpha = BATCH_SHARE_GAIN * (batch members of a cluster) / (expected cluster size).
BATCH_SHARE_GAIN = 10.0
# Below this learning rate the separate-mode scale s(lr) is 1 instead of 0.001 / lr.
SCALE_MIN_LR = 4.1e-4


def separate_scale(lr: float) -> float:
    """Return s(lr), the factor of the CEM gradient in "separate" mode besides lambda.

    s(lr) = 0.001 / lr while lr >= 4.1e-4, else 1, so that lambda * s(lr) * lr, the CEM step
    size, stays at 0.001 * lambda while the task's learning rate is large.
    """
    if lr <= 0:
        raise ValueError(f"learning rate {lr} must be > 0")
    return 0.001 / lr if lr >= SCALE_MIN_LR else 1.0


def cem_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    clusters: ClassClusters,
    noise_std: float,
    var_threshold: float,
    mode: CEMMode = "hinge",
) -> torch.Tensor | None:
    """Return the CEM loss of a batch, a scalar with autograd to features.

    Args:
        features: client features z before noise [B, ...], flattened to [B, D].
        labels: class indices [B].
        clusters: last epoch's per-class clusters, with D-dimensional centroids.
        noise_std: sigma > 0 (hinge mode).
        var_threshold: tau > 0.
        mode: "hinge" or "plain".

    Returns:
        The loss, or None when no sample of the batch belongs to a clustered class.
    """
    z = features.flatten(1)
    batch, dim = z.shape
    num_classes, num_clusters, centroid_dim = clusters.centroids.shape
    if dim != centroid_dim:
        raise ValueError(f"features have {dim} dimensions but the clusters {centroid_dim}; recluster after changing the split")
    if mode == "hinge" and noise_std <= 0:
        raise ValueError(f"the CEM hinge needs noise_std > 0, got {noise_std}; its floor is var_threshold * noise_std^2")

    # Last epoch's clusters are constants of this loss.
    centroids = clusters.centroids.detach().to(z.device, z.dtype)
    weights = clusters.weights.detach().to(z.device, z.dtype)
    variances = clusters.variances.detach().to(z.device, z.dtype)
    clustered = (clusters.class_counts.to(z.device) > 0)[labels]
    if not bool(clustered.all()):
        if not bool(clustered.any()):
            return None
        z, labels = z[clustered], labels[clustered]

    # Nearest centroid of the sample's own class; empty clusters (pi = 0) are never chosen.
    # One [B, C*K] matmul, then each sample's K columns, is cheaper than gathering [B, K, D].
    cells = num_classes * num_clusters
    flat_centroids = centroids.reshape(cells, dim)
    with torch.no_grad():
        own_cells = labels[:, None] * num_clusters + torch.arange(num_clusters, device=z.device)
        cross = (z @ flat_centroids.T).gather(1, own_cells)
        distances = flat_centroids.pow(2).sum(dim=1)[own_cells] - 2.0 * cross
        distances = distances.masked_fill(weights.flatten()[own_cells] == 0, math.inf)
        nearest = distances.argmin(dim=1)
    cluster_index = labels * num_clusters + nearest

    # vhat per (class, cluster) from the per-sample mean squared distance to the centroid.
    squared = (z - flat_centroids[cluster_index]).pow(2).mean(dim=1)
    members = torch.bincount(cluster_index, minlength=cells).to(z.dtype)
    sums = torch.zeros(cells, dtype=z.dtype, device=z.device).index_add(0, cluster_index, squared)
    return blended_cluster_loss(members, sums, members > 0, labels, clusters.samples, weights, variances, noise_std, var_threshold, mode)


def blended_cluster_loss(
    members: torch.Tensor,
    sums: torch.Tensor,
    present: torch.Tensor,
    labels: torch.Tensor,
    samples: int,
    weights: torch.Tensor,
    variances: torch.Tensor,
    noise_std: float,
    var_threshold: float,
    mode: CEMMode,
) -> torch.Tensor:
    """Return the CEM loss from the batch's statistics per (class, cluster) cell.

    Args:
        members: batch members of each cell [C * K]: counts, or soft counts.
        sums: the members' summed per-sample mean squared residuals [C * K], with autograd.
        present: the cells that enter the loss [C * K], bool; each needs members > 0.
        labels: class indices of the batch [B], to count its classes.
        samples: N, the samples of last epoch's clustering.
        weights: pi [C, K] of last epoch's clusters.
        variances: vbar [C, K] of last epoch's clusters.
        noise_std: sigma > 0 (hinge mode).
        var_threshold: tau > 0.
        mode: "hinge" or "plain".
    """
    num_classes = weights.shape[0]
    pi = weights.flatten()[present]
    batch_variance = sums[present] / members[present]

    # NOTE: pi * N / C, the reference's expected cluster size, is exact only for balanced
    # classes. On skewed data alpha over- or underweights the batch estimate.
    expected_size = pi * samples / num_classes
    alpha = (BATCH_SHARE_GAIN * members[present] / expected_size).clamp(max=MAX_BATCH_SHARE)
    blended = alpha * batch_variance + (1.0 - alpha) * variances.flatten()[present]

    if mode == "hinge":
        floor = math.log(var_threshold * noise_std**2 + HINGE_OFFSET)
        terms = pi * torch.relu(torch.log(blended + HINGE_OFFSET) - floor)
    elif mode == "plain":
        terms = pi * (blended + PLAIN_OFFSET)
    else:
        raise ValueError(f"CEM mode {mode!r} is unknown; use hinge or plain")

    classes_in_batch = int((torch.bincount(labels, minlength=num_classes) > 0).sum())
    return terms.sum() / classes_in_batch
