"""Client-side defences applied to the features before they are transmitted."""

from __future__ import annotations

import torch

from cemsplit.shared.config import DefenseConfig


class NoiseDefense:
    """Gaussian noise: transmit z + sigma * eps with eps ~ N(0, I); sigma = 0 transmits z.

    The noise is additive, so the gradient the server returns for the transmitted features is
    also the gradient for z.
    """

    def __init__(self, config: DefenseConfig, seed: int) -> None:
        self.config = config
        self.noise_std = config.noise_std
        self._generator = torch.Generator().manual_seed(seed)

    def transmit(self, features: torch.Tensor) -> torch.Tensor:
        """Return the features to send, [B, C, H, W]; keeps the autograd graph to features."""
        if self.noise_std == 0:
            return features
        noise = torch.randn(features.shape, generator=self._generator, dtype=features.dtype)
        return features + self.noise_std * noise.to(features.device)

    def describe(self) -> dict[str, object]:
        """Return the defence name and settings for the run report."""
        return {"name": self.config.defense, "noise_std": self.noise_std}


def build_defense(config: DefenseConfig, seed: int) -> NoiseDefense:
    """Return the defence named in the config."""
    return NoiseDefense(config, seed)
