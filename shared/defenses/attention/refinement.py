"""Per-sample maps of the attention variants: the feature projection, CEM-enhanced's multi-scale
gate and its reconstruction MLP. Each maps [..., width] rows independently."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Feature sizes up to this many entries are attended as they are; larger ones are projected,
# so no attention weight matrix grows as D^2 on an unbottlenecked feature map.
MAX_DIRECT_WIDTH = 512
PROJECTED_WIDTH = 256


def attention_width(feature_dim: int, requested: int) -> int:
    """Return the attention width d: requested when set (> 0), else D up to 512, else 256."""
    if requested > 0:
        if requested > feature_dim:
            raise ValueError(f"attention width {requested} exceeds the feature size {feature_dim}; set it to at most {feature_dim} or 0")
        return requested
    return feature_dim if feature_dim <= MAX_DIRECT_WIDTH else PROJECTED_WIDTH


class FeatureProjection(nn.Module):
    """The identity when width == D, else a learned bias-free projection D -> width and a back map.

    The projection starts with orthonormal rows and the back map as its transpose, so back(project(z))
    starts as the orthogonal projection of z onto a width-dimensional subspace.

    Args:
        feature_dim: D.
        width: attention width d <= D.
        with_back: whether to build the back map width -> D (CEM-att's reconstructions need it).
    """

    def __init__(self, feature_dim: int, width: int, with_back: bool) -> None:
        super().__init__()
        self.identity = width == feature_dim
        self.down: nn.Linear | None = None
        self.up: nn.Linear | None = None
        if self.identity:
            return
        self.down = nn.Linear(feature_dim, width, bias=False)
        nn.init.orthogonal_(self.down.weight)
        if with_back:
            self.up = nn.Linear(width, feature_dim, bias=False)
            with torch.no_grad():
                self.up.weight.copy_(self.down.weight.T)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return features [..., D] in the attention space [..., d]."""
        return features if self.down is None else self.down(features)

    def back(self, values: torch.Tensor) -> torch.Tensor:
        """Return attention-space values [..., d] in feature units [..., D]."""
        if self.identity:
            return values
        if self.up is None:
            raise RuntimeError("this projection has no back map; build it with with_back=True")
        return self.up(values)


class MultiScaleGate(nn.Module):
    """CEM-enhanced's multi-scale gate on rows x [..., d].

    Scales: Linear(d, d/2) zero-padded back to d, Linear(d, 2d) truncated to d, and the
    identity. A gate MLP over the concatenation of the three scales and x (4d -> 2d -> d, GELU,
    Sigmoid) multiplies x elementwise.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.down = nn.Linear(dim, dim // 2)
        self.up = nn.Linear(dim, 2 * dim)
        self.gate = nn.Sequential(nn.Linear(4 * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse = F.pad(self.down(x), (0, self.dim - self.dim // 2))
        fine = self.up(x)[..., : self.dim]
        return x * self.gate(torch.cat([coarse, fine, x, x], dim=-1))


class ReconstructionMLP(nn.Module):
    """CEM-enhanced's reconstruction MLP: Linear(d, 2d), GELU, Linear(2d, d), LayerNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
