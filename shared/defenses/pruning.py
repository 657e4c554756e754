"""Top-k pruning: each sample keeps only its largest-magnitude feature entries."""

from __future__ import annotations

import torch


def kept_entries(entries_per_sample: int, ratio: float) -> int:
    """Return k, the number of entries top-k pruning keeps: round(ratio * D), at least 1."""
    return max(1, min(entries_per_sample, round(ratio * entries_per_sample)))


def topk_prune(features: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero all but the k = round(ratio * D) largest-magnitude entries of each sample [B, ...].

    Ties at the k-th magnitude are broken by torch.topk. Autograd flows through the kept entries.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"top-k ratio {ratio} is out of range; use 0 < ratio <= 1")
    flat = features.flatten(1)
    entries = flat.shape[1]
    k = kept_entries(entries, ratio)
    if k == entries:
        return features

    index = flat.detach().abs().topk(k, dim=1).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, index, True)
    return (flat * mask).view_as(features)
