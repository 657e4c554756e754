"""Padding a batch into per-class sets, with autograd, so attention runs over all classes at once."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClassGroups:
    """Where each sample of a batch sits in the padded per-class layout.

    Attributes:
        classes: the class of each group [G], the G classes present in the batch, ascending.
        group: the group of each sample [B].
        position: the sample's row inside its group [B].
        mask: real rows [G, N_max]; False marks padding.
    """

    classes: torch.Tensor
    group: torch.Tensor
    position: torch.Tensor
    mask: torch.Tensor

    def pad(self, values: torch.Tensor) -> torch.Tensor:
        """Scatter per-sample values [B, ...] into [G, N_max, ...], zeros at padding; keeps autograd."""
        groups, longest = self.mask.shape
        padded = values.new_zeros(groups, longest, *values.shape[1:])
        return padded.index_put((self.group, self.position), values)

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """Gather [G, N_max, ...] back to per-sample rows [B, ...] in batch order."""
        return padded[self.group, self.position]


def group_by_class(labels: torch.Tensor, num_classes: int) -> ClassGroups:
    """Return the padded per-class layout of labels [B]; every present class gets one group."""
    counts = torch.bincount(labels, minlength=num_classes)
    classes = (counts > 0).nonzero().flatten()
    group_of_class = torch.full((num_classes,), -1, dtype=torch.long, device=labels.device)
    group_of_class[classes] = torch.arange(len(classes), device=labels.device)

    # The rank of each sample among the samples of its class, in batch order.
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(len(labels), device=labels.device) - starts[labels[order]]
    position = torch.empty_like(labels).index_copy(0, order, rank_sorted)

    group = group_of_class[labels]
    mask = torch.zeros(len(classes), int(counts.max()), dtype=torch.bool, device=labels.device)
    mask[group, position] = True
    return ClassGroups(classes, group, position, mask)
