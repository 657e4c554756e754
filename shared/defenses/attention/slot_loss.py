"""The CEM loss with soft responsibilities and per-sample reconstructions (CEM-att's loss).

Symbols as in cem/loss.py: sigma is noise_std, tau var_threshold, gamma = 0.01, and pi, vbar
and N come from the per-epoch clustering of each class into K clusters. Each sample i of class
y_i has responsibilities r_ik over its class's K slots (each row sums to 1) and a
reconstruction c_i in the units of the features z. For each class y and slot k:

    n     = sum over the batch members i of class y of r_ik              (soft count)
    vhat  = sum_i r_ik * mean over the D dimensions of (z_i - c_i)^2 / n
    alpha = min(0.99, 10 * n / (pi_{y,k} * N / C))
    v     = alpha * vhat + (1 - alpha) * vbar_{y,k}
    term  = pi_{y,k} * relu(log(v + gamma) - log(tau * sigma^2 + gamma))

and the loss is the sum of the terms divided by the number of classes in the batch. With
one-hot responsibilities r_ik = [k = k(i)] and reconstructions c_i = mu_{y_i, k(i)} this is
the reference CEM loss exactly; with K = 1 and c_i = mu_{y_i} it is the per-class variance term.
The variance is measured on z, against the real noise variance, whatever produced r and c.
"""

from __future__ import annotations

import torch

from cemsplit.shared.defenses.cem.clusters import ClassClusters
from cemsplit.shared.defenses.cem.loss import CEMMode, blended_cluster_loss


def responsibility_cem_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    reconstructions: torch.Tensor,
    responsibilities: torch.Tensor,
    clusters: ClassClusters,
    noise_std: float,
    var_threshold: float,
    mode: CEMMode = "hinge",
) -> torch.Tensor | None:
    """Return the CEM loss of a batch from responsibilities and reconstructions, with autograd.

    Args:
        features: client features z before noise [B, ...], flattened to [B, D].
        labels: class indices [B].
        reconstructions: c_i [B, D], in the units of z.
        responsibilities: r_ik [B, K] over the K clusters of the sample's own class.
        clusters: the per-epoch clusters that give pi, vbar and N; K clusters per class.
        noise_std: sigma > 0 (hinge mode).
        var_threshold: tau > 0.
        mode: "hinge" or "plain" (pi * (v + 0.001)).

    Returns:
        The loss, or None when no sample of the batch belongs to a clustered class.
    """
    z = features.flatten(1)
    num_classes, num_clusters = clusters.weights.shape
    if reconstructions.shape != z.shape:
        raise ValueError(f"reconstructions have shape {list(reconstructions.shape)} but the features {list(z.shape)}; pass one per sample")
    if responsibilities.shape != (len(z), num_clusters):
        raise ValueError(f"responsibilities have shape {list(responsibilities.shape)}; expected [{len(z)}, {num_clusters}], one per cluster")
    if mode == "hinge" and noise_std <= 0:
        raise ValueError(f"the CEM hinge needs noise_std > 0, got {noise_std}; its floor is var_threshold * noise_std^2")

    weights = clusters.weights.detach().to(z.device, z.dtype)
    variances = clusters.variances.detach().to(z.device, z.dtype)
    clustered = (clusters.class_counts.to(z.device) > 0)[labels]
    if not bool(clustered.any()):
        return None
    if not bool(clustered.all()):
        z, labels = z[clustered], labels[clustered]
        reconstructions, responsibilities = reconstructions[clustered], responsibilities[clustered]

    # Soft counts and responsibility-weighted squared residuals per (class, cluster) cell.
    cells = num_classes * num_clusters
    cell_index = (labels[:, None] * num_clusters + torch.arange(num_clusters, device=z.device)).flatten()
    squared = (z - reconstructions).pow(2).mean(dim=1)
    members = torch.zeros(cells, dtype=z.dtype, device=z.device).index_add(0, cell_index, responsibilities.flatten())
    sums = torch.zeros(cells, dtype=z.dtype, device=z.device).index_add(0, cell_index, (responsibilities * squared[:, None]).flatten())

    # Clusters with pi = 0 are empty in the per-epoch clustering; their terms would be 0.
    present = (members > 0) & (weights.flatten() > 0)
    return blended_cluster_loss(members, sums, present, labels, clusters.samples, weights, variances, noise_std, var_threshold, mode)
