"""Attention variants of CEM: CEM-att (cem_att.py), CEM-mix (cem_mix.py), CEM-enhanced (cem_enhanced.py).

Building blocks: grouping (per-class padding), slot_attention, cross_attention, refinement
(projection, multi-scale gate, reconstruction MLP), slot_loss (the CEM hinge on soft clusters),
epoch_clusters (the per-epoch clustering they start from) and variant_base (the shared client-loss
plumbing).
"""

from __future__ import annotations

from cemsplit.shared.config import DefenseConfig
from cemsplit.shared.defenses.attention.variant_base import AttentionCEMLoss


def build_attention_loss(
    variant: str, config: DefenseConfig, num_classes: int, client_sigmoid: bool, feature_dim: int, seed: int
) -> AttentionCEMLoss:
    """Return the client loss of a CEM attention variant: "cem-att", "cem-mix" or "cem-enhanced"."""
    from cemsplit.shared.defenses.attention.cem_att import CEMAttLoss
    from cemsplit.shared.defenses.attention.cem_enhanced import CEMEnhancedLoss
    from cemsplit.shared.defenses.attention.cem_mix import CEMMixLoss

    losses = {"cem-att": CEMAttLoss, "cem-mix": CEMMixLoss, "cem-enhanced": CEMEnhancedLoss}
    if variant not in losses:
        raise ValueError(f"CEM variant {variant!r} is unknown; use one of {list(losses)}")
    return losses[variant](config, num_classes, client_sigmoid, feature_dim, seed)
