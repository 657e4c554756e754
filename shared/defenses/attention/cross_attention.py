"""Multi-head cross attention from each sample (query) to the slots of its class (keys, values).

Slots come padded per class as in slot_attention.py: slots [G, K, d] and a slot mask [G, K].
All samples and classes run in one batched product, without a loop over samples.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from cemsplit.shared.defenses.attention.grouping import ClassGroups
from cemsplit.shared.defenses.attention.slot_attention import seeded_dropout


def check_heads(dim: int, heads: int, flag: str) -> None:
    """Raise ValueError unless heads divides the attention width dim."""
    if dim % heads:
        raise ValueError(f"{heads} attention heads do not divide the attention width {dim}; set {flag} to a divisor of {dim}")


def multi_head_attention(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slot_mask: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the attended values [G, N, d] and the attention [G, H, N, K] (softmax over the K slots)."""
    groups, samples, dim = queries.shape
    slots = keys.shape[1]
    head_dim = dim // heads
    q = queries.view(groups, samples, heads, head_dim).transpose(1, 2)
    k = keys.view(groups, slots, heads, head_dim).transpose(1, 2)
    v = values.view(groups, slots, heads, head_dim).transpose(1, 2)

    logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_dim)
    logits = logits.masked_fill(~slot_mask[:, None, None, :], -math.inf)
    attention = torch.softmax(logits, dim=-1)
    attended = torch.matmul(attention, v).transpose(1, 2).reshape(groups, samples, dim)
    return attended, attention


class CrossAttention(nn.Module):
    """CEM-att's cross attention: queries from the samples, keys and values from the slots.

    The value and output maps start as the identity, so an untrained module returns, for each
    sample, a mixture of its class's slots weighted by the per-head attention.

    Args:
        dim: attention width d.
        heads: attention heads H; must divide d.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        check_heads(dim, heads, "--att-heads")
        self.heads = heads
        self.norm_queries = nn.LayerNorm(dim)
        self.norm_keys = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.to_v.weight.copy_(torch.eye(dim))
            self.out.weight.copy_(torch.eye(dim))

    def forward(
        self, queries: torch.Tensor, groups: ClassGroups, slots: torch.Tensor, slot_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return reconstructions [B, d] and responsibilities [B, K] of queries [B, d].

        The responsibilities are the attention averaged over heads. The per-sample maps run
        on the B real rows and only the attention itself on the padded [G, N_max] layout.
        """
        padded = groups.pad(self.to_q(self.norm_queries(queries)))
        attended, attention = multi_head_attention(padded, self.to_k(self.norm_keys(slots)), self.to_v(slots), slot_mask, self.heads)
        return self.out(groups.unpad(attended)), groups.unpad(attention.mean(dim=1))


class EnhancedCrossAttention(nn.Module):
    """CEM-enhanced's cross attention: LayerNorm on query, key and value inputs, an output GELU MLP
    with dropout, and a residual connection to the query.

    Args:
        dim: attention width d.
        heads: attention heads H; must divide d.
        dropout: dropout probability inside the output MLP.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        check_heads(dim, heads, "--enhanced-heads")
        self.heads = heads
        self.dropout = dropout
        self.norm_queries = nn.LayerNorm(dim)
        self.norm_keys = nn.LayerNorm(dim)
        self.norm_values = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.hidden = nn.Linear(dim, 2 * dim)
        self.output = nn.Linear(2 * dim, dim)

    def forward(
        self, queries: torch.Tensor, slots: torch.Tensor, slot_mask: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Return queries + MLP(attention output), [G, N, d]."""
        attended, _ = multi_head_attention(
            self.to_q(self.norm_queries(queries)), self.to_k(self.norm_keys(slots)), self.to_v(self.norm_values(slots)), slot_mask, self.heads
        )
        hidden = seeded_dropout(F.gelu(self.hidden(attended)), self.dropout, generator, self.training)
        return queries + self.output(hidden)
