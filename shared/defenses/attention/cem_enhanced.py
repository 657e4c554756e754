"""CEM-enhanced: a multi-scale attention pipeline assigns samples to clusters; the hinge measures z.

Where the pipeline sits: it only produces assignments. It is not in the transmitted path, so
the client sends z + noise exactly as CEM does, the attacker's copy of the encoder needs no
extra part, and the variance in the hinge is measured on z. In the transmitted path it would
have been part of the encoder, and its final LayerNorm would have changed the units of what is
sent relative to the noise sigma.

Per batch, for all classes at once (padded):
1. Project z to width d (learned bias-free map when D != d) and apply the multi-scale gate.
2. Slots start from the class's enhanced_slots per-epoch k-means centroids, mapped the same
   way, and pass through the stacked enhanced slot attention over the class's samples.
3. The samples and the class's stored loss centroids (the K = num_clusters per-epoch k-means
   centroids, mapped the same way) both pass through the enhanced cross attention (queries),
   a residual LayerNorm and the reconstruction MLP. Samples and centroids thus meet in one
   refined space, produced by one map.
4. Distance in that space: beta * (mean squared Euclidean) + (1 - beta) * (cosine distance),
   beta = sigmoid(mean over dimensions of the batch variance of the refined samples); or
   either alone. Soft assignment a_ik = softmax_k(-dist_ik / (T * mean_k dist_ik)), T =
   enhanced_assign_temperature, over the class's non-empty clusters.
5. Improved clustering loss on z: per (class, cluster), n = sum_i a_ik and
   v = sum_i a_ik * mean_D (z_i - mu_k)^2 / n around the stored centroid mu_k (z units).
   term = relu(log(v + gamma) - log(tau * sigma^2 + gamma)) (floor "noise", the default), or
   relu(log(v + f) - log f) with f = 0.001 * (1 + mean feature variance of z) (floor
   "adaptive", which no longer depends on sigma). The loss is sum n * term / sum n.
The pipeline decides only the assignments a_ik. Shrinking its outputs leaves v in z units,
and the normalised temperature and the cosine distance do not change with that scale.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from cemsplit.shared.config import DefenseConfig
from cemsplit.shared.defenses.attention.cross_attention import EnhancedCrossAttention
from cemsplit.shared.defenses.attention.grouping import group_by_class
from cemsplit.shared.defenses.attention.refinement import FeatureProjection, MultiScaleGate, ReconstructionMLP
from cemsplit.shared.defenses.attention.slot_attention import EnhancedSlotAttention
from cemsplit.shared.defenses.attention.variant_base import AttentionCEMLoss, build_module
from cemsplit.shared.defenses.base import StepTensors
from cemsplit.shared.defenses.cem.clusters import ClassClusters
from cemsplit.shared.defenses.cem.loss import HINGE_OFFSET

# The adaptive floor is ADAPTIVE_FLOOR_SCALE * (1 + mean feature variance).
ADAPTIVE_FLOOR_SCALE = 0.001


class EnhancedPipeline(nn.Module):
    """The refinement pipeline of CEM-enhanced (steps 1 to 3 of the module docstring)."""

    def __init__(self, config: DefenseConfig, feature_dim: int) -> None:
        super().__init__()
        width = min(config.enhanced_dim, feature_dim)
        self.width = width
        self.projection = FeatureProjection(feature_dim, width, with_back=False)
        self.gate = MultiScaleGate(width)
        self.slot_attention = EnhancedSlotAttention(
            width, config.enhanced_iterations, config.enhanced_layers, config.enhanced_temperature_decay,
            config.enhanced_competition_temperature, config.enhanced_dropout,
        )
        self.cross_attention = EnhancedCrossAttention(width, config.enhanced_heads, config.enhanced_dropout)
        self.norm = nn.LayerNorm(width)
        self.reconstruction = ReconstructionMLP(width)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Return the per-sample part of the pipeline for features [..., D], [..., d]."""
        return self.gate(self.projection(features))

    def forward(
        self, z: torch.Tensor, labels: torch.Tensor, slot_centroids: torch.Tensor, slot_mask: torch.Tensor,
        loss_centroids: torch.Tensor, generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return refined samples [B, d] and the refined loss centroids of each sample's class [B, K, d].

        Args:
            z: features [B, D].
            labels: class indices [B].
            slot_centroids: per-class initial slots [C, S, D] in feature units.
            slot_mask: non-empty slots [C, S].
            loss_centroids: the stored centroids mu [C, K, D] of the loss.
            generator: source of the dropout masks.
        """
        groups = group_by_class(labels, slot_centroids.shape[0])
        inputs = groups.pad(self.embed(z))
        samples = inputs.shape[1]
        masks = slot_mask[groups.classes]
        slots = self.slot_attention(inputs, groups.mask, self.embed(slot_centroids[groups.classes].detach()), masks, generator)

        queries = torch.cat([inputs, self.embed(loss_centroids[groups.classes].detach())], dim=1)
        attended = self.cross_attention(queries, slots, masks, generator)
        refined = self.reconstruction(self.norm(attended))
        return groups.unpad(refined[:, :samples]), refined[:, samples:][groups.group]


def assignment_distances(refined: torch.Tensor, refined_centroids: torch.Tensor, kind: str) -> torch.Tensor:
    """Return distances [B, K] of refined samples [B, d] to their refined centroids [B, K, d]."""
    euclidean = (refined[:, None, :] - refined_centroids).pow(2).mean(dim=-1)
    cosine = 1.0 - F.cosine_similarity(refined[:, None, :], refined_centroids, dim=-1)
    if kind == "euclidean":
        return euclidean
    if kind == "cosine":
        return cosine
    if kind != "blend":
        raise ValueError(f"distance {kind!r} is unknown; use blend, euclidean or cosine")
    beta = torch.sigmoid(refined.var(dim=0, unbiased=False).mean())
    return beta * euclidean + (1.0 - beta) * cosine


def soft_assignments(distances: torch.Tensor, cluster_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return a softmax over the non-empty clusters [B, K] of -distance / (temperature * mean distance)."""
    valid = cluster_mask.to(distances.dtype)
    mean_distance = (distances * valid).sum(dim=1, keepdim=True) / valid.sum(dim=1, keepdim=True)
    logits = -distances / (temperature * mean_distance.detach() + 1e-12)
    return torch.softmax(logits.masked_fill(~cluster_mask, -math.inf), dim=1)


def improved_clustering_loss(
    z: torch.Tensor, labels: torch.Tensor, assignments: torch.Tensor, clusters: ClassClusters,
    noise_std: float, var_threshold: float, floor: str,
) -> torch.Tensor:
    """Return the improved clustering loss (step 5 of the module docstring), a scalar with autograd to z.

    Args:
        z: features [B, D] of clustered classes.
        labels: class indices [B].
        assignments: a_ik [B, K] over the sample's own class's clusters.
        clusters: the stored per-class clusters; only their centroids are read.
        noise_std: sigma > 0.
        var_threshold: tau.
        floor: "noise" or "adaptive".
    """
    centroids = clusters.centroids.detach().to(z.device, z.dtype)[labels]
    squared = (z[:, None, :] - centroids).pow(2).mean(dim=-1)

    num_classes, num_clusters = clusters.weights.shape
    cells = num_classes * num_clusters
    cell_index = (labels[:, None] * num_clusters + torch.arange(num_clusters, device=z.device)).flatten()
    members = torch.zeros(cells, dtype=z.dtype, device=z.device).index_add(0, cell_index, assignments.flatten())
    sums = torch.zeros(cells, dtype=z.dtype, device=z.device).index_add(0, cell_index, (assignments * squared).flatten())
    present = members > 0
    counts = members[present]
    variance = sums[present] / counts

    if floor == "noise":
        if noise_std <= 0:
            raise ValueError(f"the noise floor needs noise_std > 0, got {noise_std}")
        offset = HINGE_OFFSET
        log_floor = math.log(var_threshold * noise_std**2 + HINGE_OFFSET)
    elif floor == "adaptive":
        offset = ADAPTIVE_FLOOR_SCALE * (1.0 + float(z.detach().var(dim=0, unbiased=False).mean()))
        log_floor = math.log(offset)
    else:
        raise ValueError(f"floor {floor!r} is unknown; use noise or adaptive")
    terms = torch.relu(torch.log(variance + offset) - log_floor)
    return (counts * terms).sum() / counts.sum()


class CEMEnhancedLoss(AttentionCEMLoss):
    """CEM-enhanced as a client loss; inactive until the first per-epoch clustering."""

    def __init__(self, config: DefenseConfig, num_classes: int, client_sigmoid: bool, feature_dim: int, seed: int) -> None:
        super().__init__(config, num_classes, client_sigmoid, feature_dim, seed)
        self.slots = self.clustering_for(config.enhanced_slots)
        self.module = build_module(seed, lambda: EnhancedPipeline(config, feature_dim))

    def loss(self, step: StepTensors) -> torch.Tensor | None:
        batch = self.clustered_batch(step.features, step.labels, self.reference)
        if batch is None:
            return None
        z, labels = batch
        stored = self.reference.clusters
        self.module.train()
        refined, refined_centroids = self.module(
            z, labels, self.slots.clusters.centroids.to(z.device, z.dtype), self.slots.slot_mask(z.device),
            stored.centroids.to(z.device, z.dtype), self.generator,
        )
        distances = assignment_distances(refined, refined_centroids, self.config.enhanced_distance)
        assignments = soft_assignments(distances, self.reference.slot_mask(z.device)[labels], self.config.enhanced_assign_temperature)
        return improved_clustering_loss(z, labels, assignments, stored, self.noise_std, self.var_threshold, self.config.enhanced_floor)

    def describe(self) -> dict[str, object]:
        description = super().describe()
        config = self.config
        description.update(
            enhanced_slots=config.enhanced_slots,
            enhanced_iterations=config.enhanced_iterations,
            enhanced_layers=config.enhanced_layers,
            enhanced_heads=config.enhanced_heads,
            enhanced_dim=self.module.width,
            enhanced_temperature_decay=config.enhanced_temperature_decay,
            enhanced_competition_temperature=config.enhanced_competition_temperature,
            enhanced_dropout=config.enhanced_dropout,
            enhanced_distance=config.enhanced_distance,
            enhanced_assign_temperature=config.enhanced_assign_temperature,
            enhanced_floor=config.enhanced_floor,
        )
        return description
