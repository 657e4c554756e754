"""Additive noise on the transmitted features: Gaussian and Laplacian.

Both draw from an explicit torch.Generator so that a client run, and the attacker's copy of the
transform, are reproducible from a seed. The noise is made on the generator's device and moved
to the features' device.
"""

from __future__ import annotations

import math

import torch


def gaussian_noise(features: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Return features + std * eps with eps ~ N(0, I), same shape as features; keeps autograd."""
    noise = torch.randn(features.shape, generator=generator, dtype=features.dtype, device=generator.device)
    return features + std * noise.to(features.device)


def laplace_noise(features: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Return features plus Laplacian noise of standard deviation std (scale b = std / sqrt(2)).

    A Laplace(0, b) sample is b times the difference of two Exp(1) samples.
    """
    scale = std / math.sqrt(2.0)
    shape, dtype, device = features.shape, features.dtype, generator.device
    first = torch.empty(shape, dtype=dtype, device=device).exponential_(1.0, generator=generator)
    second = torch.empty(shape, dtype=dtype, device=device).exponential_(1.0, generator=generator)
    return features + scale * (first - second).to(features.device)
