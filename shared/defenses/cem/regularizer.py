"""CEM as a client loss: per-epoch clustering and the per-step loss with its coefficient."""

from __future__ import annotations

import logging
import time

import torch

from cemsplit.shared.config import DefenseConfig
from cemsplit.shared.defenses.base import ClientLoss, EncodeTrainingData, StepTensors
from cemsplit.shared.defenses.cem.clustering import fit_class_clusters
from cemsplit.shared.defenses.cem.clusters import ClassClusters, log_det_diagnostic
from cemsplit.shared.defenses.cem.loss import cem_loss, separate_scale

log = logging.getLogger(__name__)

# Clusters per class when the client does not end in a sigmoid and num_clusters is unset;
# unbounded features spread out more.
CLUSTERS_WITHOUT_SIGMOID = 15
CLUSTERS_WITH_SIGMOID = 5


class CEMLoss(ClientLoss):
    """Conditional entropy maximisation on the client's features.

    Inactive (loss() returns None) until the first end_epoch has clustered the training data.
    The coefficient is lambda * s(lr) in "separate" mode and lambda in "fused" mode. The
    reference runs "separate" as two backward passes: the CEM loss alone, then the task loss,
    then it adds the scaled CEM gradient to the encoder's. One backward pass of
    task + coefficient * loss gives the same gradient, because gradients add linearly and the
    CEM loss reaches only client weights.

    Args:
        config: the defence settings (noise_std, cem_weight, var_threshold, num_clusters, ...).
        num_classes: classes of the task, C.
        client_sigmoid: whether the client ends in a sigmoid (sets the default K).
        seed: seed of the k-means++ draws; epoch e uses seed + e.
    """

    name = "cem"

    def __init__(self, config: DefenseConfig, num_classes: int, client_sigmoid: bool, seed: int) -> None:
        if config.noise_std <= 0:
            raise ValueError(
                f"CEM needs noise_std > 0, got {config.noise_std}, because it shrinks clusters relative to the noise "
                "variance; set --noise-std, for example 0.025"
            )
        self.noise_std = config.noise_std
        self.weight = config.cem_weight
        self.var_threshold = config.var_threshold
        self.combine = config.combine
        self.mode = config.cem_mode
        self.method = config.cem_clustering
        self.max_iter = config.cem_max_iter
        default_clusters = CLUSTERS_WITH_SIGMOID if client_sigmoid else CLUSTERS_WITHOUT_SIGMOID
        self.num_clusters = config.num_clusters or default_clusters
        self.num_classes = num_classes
        self.seed = seed
        self.clusters: ClassClusters | None = None

    def loss(self, step: StepTensors) -> torch.Tensor | None:
        if self.clusters is None:
            return None
        return cem_loss(step.features, step.labels, self.clusters, self.noise_std, self.var_threshold, self.mode)

    def coefficient(self, lr: float) -> float:
        if self.combine == "separate":
            return self.weight * separate_scale(lr)
        return self.weight

    def end_epoch(self, epoch: int, encode: EncodeTrainingData) -> dict[str, float]:
        """Encode the training data and recluster each class, warm-starting from last epoch."""
        started = time.monotonic()
        features, labels = encode()
        encoded = time.monotonic()
        clusters, stats = fit_class_clusters(
            features, labels, self.num_classes, self.num_clusters, self.method, self.max_iter, self.seed + epoch, self.clusters
        )
        finished = time.monotonic()
        self.clusters = clusters

        diagnostic = log_det_diagnostic(clusters, self.noise_std)
        log.info(
            "epoch %d: clustered %d samples into %d %s clusters per class in %.2f s (encoding %.2f s); log-det %.4f",
            epoch, len(labels), self.num_clusters, self.method, finished - encoded, encoded - started, diagnostic,
        )
        if stats.unconverged_classes:
            log.info("epoch %d: %d classes reached cem_max_iter=%d before converging", epoch, stats.unconverged_classes, self.max_iter)
        return {
            "cem_logdet": diagnostic,
            "cem_cluster_seconds": finished - encoded,
            "cem_encode_seconds": encoded - started,
            "cem_cluster_iterations": stats.max_iterations,
            "cem_unconverged_classes": stats.unconverged_classes,
        }

    def state_dict(self) -> dict[str, object]:
        return {"clusters": None if self.clusters is None else self.clusters.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        clusters = state.get("clusters")
        self.clusters = None if clusters is None else ClassClusters.from_state_dict(clusters)  # type: ignore[arg-type]

    def describe(self) -> dict[str, object]:
        return {
            "noise_std": self.noise_std,
            "cem_weight": self.weight,
            "var_threshold": self.var_threshold,
            "num_clusters": self.num_clusters,
            "cem_combine": self.combine,
            "cem_mode": self.mode,
            "cem_clustering": self.method,
            "cem_max_iter": self.max_iter,
        }
