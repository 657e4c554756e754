"""What the three attention variants share as client losses: settings, per-epoch clustering,
the log-det diagnostic, the learned module's parameters and checkpoint state."""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from cemsplit.shared.config import DefenseConfig
from cemsplit.shared.defenses.attention.epoch_clusters import EpochClusters
from cemsplit.shared.defenses.base import ClientLoss, EncodeTrainingData
from cemsplit.shared.defenses.cem.clusters import log_det_diagnostic
from cemsplit.shared.defenses.cem.loss import separate_scale
from cemsplit.shared.defenses.cem.regularizer import CLUSTERS_WITH_SIGMOID, CLUSTERS_WITHOUT_SIGMOID

log = logging.getLogger(__name__)


def build_module(seed: int, factory) -> nn.Module:
    """Call factory() with the global torch generator seeded by seed, then restore that generator.

    nn.Linear draws its initial weights from the global generator; seeding it here makes the
    module the same for the same seed without changing the draws of the caller (the encoder).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


class AttentionCEMLoss(ClientLoss):
    """Base of CEM-att, CEM-mix and CEM-enhanced as client losses.

    Subclasses set self.module (every learned parameter), add their clusterings to
    self.clusterings and implement loss(). The reference clustering (K = num_clusters) always
    runs, so that the log-det diagnostic is the same measurement for every variant.

    Args:
        config: the defence settings.
        num_classes: classes of the task, C.
        client_sigmoid: whether the client ends in a sigmoid (sets the default K).
        feature_dim: D, entries per sample of the features z.
        seed: seed of the module weights, the clustering and the random draws of the loss.
    """

    name = "cem"

    def __init__(self, config: DefenseConfig, num_classes: int, client_sigmoid: bool, feature_dim: int, seed: int) -> None:
        if config.noise_std <= 0:
            raise ValueError(
                f"{config.cem_variant} needs noise_std > 0, got {config.noise_std}, because its hinge compares cluster "
                "variances with the noise variance; set --noise-std, for example 0.025"
            )
        self.config = config
        self.noise_std = config.noise_std
        self.weight = config.cem_weight
        self.var_threshold = config.var_threshold
        self.combine = config.combine
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.seed = seed
        default_clusters = CLUSTERS_WITH_SIGMOID if client_sigmoid else CLUSTERS_WITHOUT_SIGMOID
        self.num_clusters = config.num_clusters or default_clusters
        self.reference = self.make_clustering(self.num_clusters, seed)
        self.clusterings: dict[str, EpochClusters] = {"reference": self.reference}
        self.generator = torch.Generator().manual_seed(seed)
        self.module: nn.Module = nn.Module()

    def make_clustering(self, num_clusters: int, seed: int) -> EpochClusters:
        return EpochClusters(self.num_classes, num_clusters, self.config.cem_clustering, self.config.cem_max_iter, seed)

    def clustering_for(self, num_clusters: int) -> EpochClusters:
        """Return the reference clustering when it has num_clusters, else a new one (registered)."""
        if num_clusters == self.num_clusters:
            return self.reference
        clustering = self.make_clustering(num_clusters, self.seed + 7919)
        self.clusterings[f"k{num_clusters}"] = clustering
        return clustering

    def coefficient(self, lr: float) -> float:
        if self.combine == "separate":
            return self.weight * separate_scale(lr)
        return self.weight

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.module.parameters())

    def to(self, device: torch.device) -> None:
        self.module.to(device)

    def end_epoch(self, epoch: int, encode: EncodeTrainingData) -> dict[str, float]:
        """Encode the training data and refit every per-class clustering, warm-started."""
        started = time.monotonic()
        features, labels = encode()
        encoded = time.monotonic()
        iterations, unconverged = 0, 0
        for clustering in self.clusterings.values():
            stats = clustering.refit(features, labels, epoch)
            iterations = max(iterations, stats.max_iterations)
            unconverged += stats.unconverged_classes
        finished = time.monotonic()

        diagnostic = log_det_diagnostic(self.reference.clusters, self.noise_std)
        log.info(
            "epoch %d: %s refitted %s clusters per class on %d samples in %.2f s (encoding %.2f s); log-det %.4f",
            epoch, self.config.cem_variant, [c.num_clusters for c in self.clusterings.values()], len(labels),
            finished - encoded, encoded - started, diagnostic,
        )
        return {
            "cem_logdet": diagnostic,
            "cem_cluster_seconds": finished - encoded,
            "cem_encode_seconds": encoded - started,
            "cem_cluster_iterations": iterations,
            "cem_unconverged_classes": unconverged,
        }

    def clustered_batch(self, features: torch.Tensor, labels: torch.Tensor, clustering: EpochClusters) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Return z [B', D] and labels [B'] of the samples whose class was clustered, or None if none was."""
        if clustering.clusters is None:
            return None
        z = features.flatten(1)
        if z.shape[1] != self.feature_dim:
            raise ValueError(f"features have {z.shape[1]} entries per sample but {self.config.cem_variant} was built for {self.feature_dim}")
        clustered = (clustering.clusters.class_counts.to(z.device) > 0)[labels]
        if not bool(clustered.any()):
            return None
        return z[clustered], labels[clustered]

    def state_dict(self) -> dict[str, object]:
        return {
            "module": self.module.state_dict(),
            "generator": self.generator.get_state(),
            "clusterings": {name: clustering.state_dict() for name, clustering in self.clusterings.items()},
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        if "module" in state:
            self.module.load_state_dict(state["module"])  # type: ignore[arg-type]
        if "generator" in state:
            self.generator.set_state(state["generator"])  # type: ignore[arg-type]
        saved = state.get("clusterings", {})
        for name, clustering in self.clusterings.items():
            clustering.load_state_dict(saved.get(name, {}))  # type: ignore[union-attr]

    def describe(self) -> dict[str, object]:
        return {
            "noise_std": self.noise_std,
            "cem_weight": self.weight,
            "var_threshold": self.var_threshold,
            "num_clusters": self.num_clusters,
            "cem_combine": self.combine,
            "cem_clustering": self.config.cem_clustering,
            "cem_max_iter": self.config.cem_max_iter,
            "parameters": sum(parameter.numel() for parameter in self.module.parameters()),
        }
