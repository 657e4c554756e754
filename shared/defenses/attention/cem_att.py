"""CEM-att: slot and cross attention decide soft clusters of each class; the CEM hinge measures them on z.

Per batch and class y (all classes at once, padded):
1. Slots start from the class's K = att_slots per-epoch k-means centroids (the persistent
   per-class state), plus a draw from a learned Gaussian (per-dimension mean and log-std).
2. Slot attention over the set of the class's samples refines the slots: the slots compete
   for each sample (softmax over slots) and move to attention-weighted means over the samples.
3. Cross attention (queries from the samples, keys and values from the slots, H heads)
   gives each sample a reconstruction c_i and responsibilities r_ik, the attention averaged
   over heads.
4. The loss is slot_loss.responsibility_cem_loss: the reference hinge and weights applied to
   responsibility-weighted variances of the residuals z_i - c_i.

The variance is measured on the transmitted features z (before noise), in z's units. The module
cannot lower it by shrinking its outputs: shrinking c_i leaves the residual z_i - c_i near z_i.
Its value and output maps start as the identity, so the untrained module is about soft k-means
in z. Features of more than 512 entries are attended in a learned 256-dim projection, and there
c_i is the responsibility-weighted mix of the slots' positions in z plus the learned part of
the attention output mapped back to z.

NOTE: the module minimises the same loss as the encoder, so with 8 slots and about 13 samples
per class in a batch of 128 it can fit slots to single samples, which lowers the residuals
without tightening z. The per-epoch vbar in the blend limits that, but no test bounds it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cemsplit.shared.config import DefenseConfig
from cemsplit.shared.defenses.attention.cross_attention import CrossAttention
from cemsplit.shared.defenses.attention.grouping import group_by_class
from cemsplit.shared.defenses.attention.refinement import FeatureProjection, attention_width
from cemsplit.shared.defenses.attention.slot_attention import SlotAttention
from cemsplit.shared.defenses.attention.slot_loss import responsibility_cem_loss
from cemsplit.shared.defenses.attention.variant_base import AttentionCEMLoss, build_module
from cemsplit.shared.defenses.base import StepTensors


class CEMAttention(nn.Module):
    """The learned part of CEM-att: projection, learned slot Gaussian, slot and cross attention.

    Args:
        feature_dim: D.
        width: attention width d (D, or the projected width).
        iterations: slot attention iterations.
        heads: cross attention heads.
        init_std: initial standard deviation of the slot draw, in feature units.
    """

    def __init__(self, feature_dim: int, width: int, iterations: int, heads: int, init_std: float) -> None:
        super().__init__()
        self.projection = FeatureProjection(feature_dim, width, with_back=True)
        self.slot_mean = nn.Parameter(torch.zeros(width))
        self.slot_log_std = nn.Parameter(torch.full((width,), math.log(init_std)))
        self.slot_attention = SlotAttention(width, iterations)
        self.cross_attention = CrossAttention(width, heads)

    def forward(
        self, z: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, slot_mask: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return reconstructions c [B, D] and responsibilities r [B, K].

        Args:
            z: features [B, D]; every sample's class must have a non-empty slot.
            labels: class indices [B].
            centroids: per-class initial slots [C, K, D] in feature units.
            slot_mask: non-empty slots [C, K].
            generator: source of the slot draw; None starts each slot at centroid + mean.
        """
        groups = group_by_class(labels, centroids.shape[0])
        inputs = self.projection(z)
        masks = slot_mask[groups.classes]
        start = centroids[groups.classes].detach()

        slots = self.projection(start) + self.slot_mean
        if generator is not None:
            draw = torch.randn(slots.shape, generator=generator).to(slots.device, slots.dtype)
            slots = slots + self.slot_log_std.exp() * draw
        if self.projection.identity:
            slots, _ = self.slot_attention(inputs, groups, slots, masks)
            return self.cross_attention(inputs, groups, slots, masks)

        # Projected features: the slots' positions in feature units follow the same attention in
        # closed form, and the back map adds only the learned part of the reconstruction. So the
        # residual measures the spread around the slots, not how much of z the projection loses.
        slots, feature_slots = self.slot_attention(inputs, groups, slots, masks, carried=(groups.pad(z), start))
        reconstructions, responsibilities = self.cross_attention(inputs, groups, slots, masks)
        mixture = torch.einsum("bk,bkd->bd", responsibilities, slots[groups.group])
        feature_mixture = torch.einsum("bk,bkd->bd", responsibilities, feature_slots[groups.group])
        return feature_mixture + self.projection.back(reconstructions - mixture), responsibilities


def build_cem_attention(config: DefenseConfig, feature_dim: int, seed: int) -> CEMAttention:
    """Return the CEM-att module for features of feature_dim entries, its weights drawn from seed."""
    width = attention_width(feature_dim, config.att_dim)
    return build_module(seed, lambda: CEMAttention(feature_dim, width, config.att_iterations, config.att_heads, config.att_init_std))


class CEMAttLoss(AttentionCEMLoss):
    """CEM-att as a client loss; inactive until the first per-epoch clustering."""

    def __init__(self, config: DefenseConfig, num_classes: int, client_sigmoid: bool, feature_dim: int, seed: int) -> None:
        super().__init__(config, num_classes, client_sigmoid, feature_dim, seed)
        self.slots = self.clustering_for(config.att_slots)
        self.module = build_cem_attention(config, feature_dim, seed)

    def attention_loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """Return the CEM-att loss of features [B, ...] with labels [B], or None before clustering."""
        batch = self.clustered_batch(features, labels, self.slots)
        if batch is None:
            return None
        z, labels = batch
        clusters = self.slots.clusters
        centroids = clusters.centroids.to(z.device, z.dtype)
        self.module.train()
        reconstructions, responsibilities = self.module(z, labels, centroids, self.slots.slot_mask(z.device), self.generator)
        return responsibility_cem_loss(
            z, labels, reconstructions, responsibilities, clusters, self.noise_std, self.var_threshold, self.config.cem_mode
        )

    def loss(self, step: StepTensors) -> torch.Tensor | None:
        return self.attention_loss(step.features, step.labels)

    def describe(self) -> dict[str, object]:
        description = super().describe()
        description.update(
            cem_mode=self.config.cem_mode,
            att_slots=self.config.att_slots,
            att_iterations=self.config.att_iterations,
            att_heads=self.config.att_heads,
            att_dim=attention_width(self.feature_dim, self.config.att_dim),
            att_init_std=self.config.att_init_std,
        )
        return description
