"""Per-class clusters refitted after every epoch: the persistent state of the attention variants."""

from __future__ import annotations

import torch

from cemsplit.shared.defenses.cem.clustering import ClusteringMethod, fit_class_clusters
from cemsplit.shared.defenses.cem.clusters import ClassClusters, ClusteringStats


class EpochClusters:
    """One per-class clustering with K clusters, warm-started from the previous epoch's.

    Args:
        num_classes: C.
        num_clusters: K.
        method: "kmeans" or "gmm".
        max_iter: Lloyd or EM iterations per fit.
        seed: epoch e fits with seed + e.
    """

    def __init__(self, num_classes: int, num_clusters: int, method: ClusteringMethod, max_iter: int, seed: int) -> None:
        self.num_classes = num_classes
        self.num_clusters = num_clusters
        self.method = method
        self.max_iter = max_iter
        self.seed = seed
        self.clusters: ClassClusters | None = None

    def refit(self, features: torch.Tensor, labels: torch.Tensor, epoch: int) -> ClusteringStats:
        """Cluster each class's features [N, ...] again; returns the iteration counts."""
        clusters, stats = fit_class_clusters(
            features, labels, self.num_classes, self.num_clusters, self.method, self.max_iter, self.seed + epoch, self.clusters
        )
        self.clusters = clusters
        return stats

    def slot_mask(self, device: torch.device) -> torch.Tensor:
        """Return which clusters are non-empty [C, K]; attention never uses an empty one."""
        if self.clusters is None:
            raise RuntimeError("no clusters yet; call refit after the first epoch")
        return self.clusters.weights.to(device) > 0

    def state_dict(self) -> dict[str, object]:
        return {"clusters": None if self.clusters is None else self.clusters.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        clusters = state.get("clusters")
        self.clusters = None if clusters is None else ClassClusters.from_state_dict(clusters)  # type: ignore[arg-type]
