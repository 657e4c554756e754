"""Per-class clusters of client features: the state CEM's loss reads, and its diagnostic.

Per cluster CEM keeps the centroid mu_{y,k}, the weight
pi_{y,k} = n_{y,k} / n_y and an isotropic variance vbar_{y,k}, the mean over the cluster's
members and the D feature dimensions of (z - mu)^2. Arrays are [C, K, ...] for all C classes,
so an empty cluster or a class without samples keeps every other entry in place with weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClassClusters:
    """Clusters of each class's features.

    Attributes:
        centroids: mu [C, K, D].
        weights: pi [C, K]; each row sums to 1, or is all 0 for a class without samples.
        variances: isotropic vbar [C, K], in squared feature units.
        class_counts: n_y [C], the samples of each class that were clustered.
        covariances: diagonal covariances [C, K, D] of a Gaussian mixture; None for k-means,
            whose covariance is vbar * I.
    """

    centroids: torch.Tensor
    weights: torch.Tensor
    variances: torch.Tensor
    class_counts: torch.Tensor
    covariances: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def samples(self) -> int:
        """Number of samples clustered, N."""
        return int(self.class_counts.sum())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the tensors to checkpoint."""
        state = {"centroids": self.centroids, "weights": self.weights, "variances": self.variances, "class_counts": self.class_counts}
        if self.covariances is not None:
            state["covariances"] = self.covariances
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "ClassClusters":
        """Rebuild clusters from state_dict()."""
        return cls(state["centroids"], state["weights"], state["variances"], state["class_counts"], state.get("covariances"))


@dataclass
class ClusteringStats:
    """Iteration and convergence counts of one clustering run, across the classes."""

    max_iterations: int
    unconverged_classes: int


def log_det_diagnostic(clusters: ClassClusters, noise_std: float) -> float:
    """Return the mean over classes of sum_k pi_k (1/D) log det(Sigma_k + sigma^2 I).

    Sigma_k is vbar_k * I for k-means and the fitted diagonal covariance for a GMM. Lower
    values mean tighter clusters relative to the noise. Classes without samples are skipped.
    """
    if noise_std <= 0:
        raise ValueError(f"noise_std {noise_std} must be > 0 for the log-det diagnostic, whose log needs the noise variance")
    variance = noise_std**2
    if clusters.covariances is None:
        per_cluster = torch.log(clusters.variances + variance)
    else:
        per_cluster = torch.log(clusters.covariances + variance).mean(dim=-1)
    per_class = (clusters.weights * per_cluster).sum(dim=1)
    present = clusters.class_counts > 0
    return float(per_class[present].mean())
