"""Dropout of transmitted feature entries, applied in training, evaluation and by the attacker."""

from __future__ import annotations

import torch


def dropout_entries(features: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Zero each entry with probability rate and scale the kept ones by 1 / (1 - rate).

    Unlike torch's dropout layer this runs in evaluation too, because the defence is part of
    what the client sends, not a training-time regulariser. Shape is kept; autograd flows
    through the kept entries.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"dropout rate {rate} is out of range; use 0 <= rate < 1")
    keep = torch.rand(features.shape, generator=generator, device=generator.device) >= rate
    return features * keep.to(features.device, features.dtype) / (1.0 - rate)
