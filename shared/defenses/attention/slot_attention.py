"""Slot attention over the set of one class's samples, for every class of a batch at once.

Inputs are padded per class: samples [G, N, d] with a mask [G, N], slots [G, K, d] with a
mask [G, K] (False for slots of empty clusters). In every iteration the slots compete for each
sample (softmax over the slots), and each slot moves to the attention-weighted mean of the
values over its class's samples. Sizes: d is the attention width, K the slots per class.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from cemsplit.shared.defenses.attention.grouping import ClassGroups

# Pseudo-count of a slot's previous position in its weighted mean, so that a slot that no sample
# attends to stays where it was instead of collapsing to zero.
SLOT_PRIOR_MASS = 1e-3


def seeded_dropout(values: torch.Tensor, rate: float, generator: torch.Generator | None, training: bool) -> torch.Tensor:
    """Return inverted dropout of values with masks drawn from generator (no dropout outside training)."""
    if not training or rate == 0:
        return values
    keep = torch.rand(values.shape, generator=generator, device=values.device) >= rate
    return values * keep / (1.0 - rate)


def competitive_update(
    values: torch.Tensor, keys: torch.Tensor, queries: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor, slot_mask: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one slot attention step; returns the weighted means [G, K, d] and attention [G, N, K].

    The attention of sample n to slot k is a softmax over the slots of keys[n] . queries[k] /
    (sqrt(d) * temperature). Each slot's update is the mean of values [G, N, d] weighted by that
    attention over the real samples, with its previous position added at SLOT_PRIOR_MASS.
    """
    scale = 1.0 / (math.sqrt(keys.shape[-1]) * temperature)
    logits = torch.einsum("gnd,gkd->gnk", keys, queries) * scale
    logits = logits.masked_fill(~slot_mask[:, None, :], -math.inf)
    attention = torch.softmax(logits, dim=-1) * mask[..., None]

    mass = attention.sum(dim=1)[..., None] + SLOT_PRIOR_MASS
    weighted = torch.einsum("gnk,gnd->gkd", attention, values) + SLOT_PRIOR_MASS * slots
    return weighted / mass, attention


class SlotAttention(nn.Module):
    """Slot attention with bias-free q, k, v maps and a residual MLP update (CEM-att).

    The value map starts as the identity and the MLP's output layer near zero. An untrained
    module thus runs nearly soft k-means in the input space, where each iteration moves each
    slot to the mean of the samples weighted by their softmax responsibilities.

    Args:
        dim: attention width d.
        iterations: slot updates per call.
    """

    def __init__(self, dim: int, iterations: int) -> None:
        super().__init__()
        self.iterations = iterations
        self.norm_inputs = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        with torch.no_grad():
            self.to_v.weight.copy_(torch.eye(dim))
            # Small rather than zero, so that the MLP's first layer gets a gradient from the start.
            nn.init.normal_(self.mlp[-1].weight, std=1e-3)
            self.mlp[-1].bias.zero_()

    def forward(
        self, inputs: torch.Tensor, groups: ClassGroups, slots: torch.Tensor, slot_mask: torch.Tensor,
        carried: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the refined slots [G, K, d] for samples [B, d] in groups and initial slots [G, K, d].

        carried: optional (other [G, N, D'], start [G, K, D']), another representation of the
        samples and the slots' start in it. The same attention moves those slots to weighted
        means of `other`, in closed form; they are returned second (None without carried).
        """
        # The per-sample maps run on the real rows only, then the results are padded per class.
        keys = groups.pad(self.to_k(self.norm_inputs(inputs)))
        values = groups.pad(self.to_v(inputs))
        mask = groups.mask
        means = None if carried is None else carried[1]
        for _ in range(self.iterations):
            queries = self.to_q(self.norm_slots(slots))
            updates, attention = competitive_update(values, keys, queries, slots, mask, slot_mask, 1.0)
            slots = updates + self.mlp(updates)
            if carried is not None:
                mass = attention.sum(dim=1)[..., None] + SLOT_PRIOR_MASS
                means = (torch.einsum("gnk,gnd->gkd", attention, carried[0]) + SLOT_PRIOR_MASS * means) / mass
        return slots, means


class EnhancedSlotAttentionLayer(nn.Module):
    """One layer of CEM-enhanced slot attention: annealed temperature, GELU MLP, slot competition.

    Iteration t divides the attention logits by temperature_decay^t, so the assignment sharpens.
    After each update the slots get a residual GELU MLP with dropout, then the slot competition
    rescales slot k by K * softmax_k(rms(slot_k) / competition_temperature). The RMS norm (not
    the L2 norm) keeps that softmax independent of the width d.
    """

    def __init__(self, dim: int, iterations: int, temperature_decay: float, competition_temperature: float, dropout: float) -> None:
        super().__init__()
        self.iterations = iterations
        self.temperature_decay = temperature_decay
        self.competition_temperature = competition_temperature
        self.dropout = dropout
        self.norm_inputs = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.norm_mlp = nn.LayerNorm(dim)
        self.hidden = nn.Linear(dim, 2 * dim)
        self.output = nn.Linear(2 * dim, dim)
        with torch.no_grad():
            self.to_v.weight.copy_(torch.eye(dim))

    def forward(
        self, inputs: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor, slot_mask: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        keys = self.to_k(self.norm_inputs(inputs))
        values = self.to_v(inputs)
        for iteration in range(self.iterations):
            queries = self.to_q(self.norm_slots(slots))
            temperature = self.temperature_decay**iteration
            slots, _ = competitive_update(values, keys, queries, slots, mask, slot_mask, temperature)

            hidden = seeded_dropout(F.gelu(self.hidden(self.norm_mlp(slots))), self.dropout, generator, self.training)
            slots = slots + self.output(hidden)

            rms = slots.pow(2).mean(dim=-1).add(1e-12).sqrt()
            logits = (rms / self.competition_temperature).masked_fill(~slot_mask, -math.inf)
            share = torch.softmax(logits, dim=-1) * slot_mask.sum(dim=-1, keepdim=True)
            slots = slots * share[..., None]
        return slots


class EnhancedSlotAttention(nn.Module):
    """Stacked EnhancedSlotAttentionLayer modules; each refines the slots of the previous one."""

    def __init__(
        self, dim: int, iterations: int, layers: int, temperature_decay: float, competition_temperature: float, dropout: float
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EnhancedSlotAttentionLayer(dim, iterations, temperature_decay, competition_temperature, dropout) for _ in range(layers)
        )

    def forward(
        self, inputs: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor, slot_mask: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Return the refined slots [G, K, d] for samples [G, N, d] and initial slots [G, K, d]."""
        for layer in self.layers:
            slots = layer(inputs, mask, slots, slot_mask, generator)
        return slots
