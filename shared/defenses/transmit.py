"""The transmit transform: what the client does to its features before they leave it.

Noise comes first (Gaussian or Laplacian), then dropout or top-k pruning of the noisy features.
That order keeps the pruned entries exactly zero on the wire. Masking is post-processing of the
noisy features, so it cannot add information about them, and CEM's bound on what the noisy
features reveal also holds for what is sent. The same transform, rebuilt from its
TransmitTransform message, lets a defence-aware attacker train its decoder on matching inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from cemsplit.shared.config import DefenseConfig
from cemsplit.shared.defenses.dropout import dropout_entries
from cemsplit.shared.defenses.noise import gaussian_noise, laplace_noise
from cemsplit.shared.defenses.pruning import topk_prune
from cemsplit.v1 import defense_pb2

NoiseKind = Literal["none", "gaussian", "laplace"]

_NOISE_TO_MESSAGE = {"none": defense_pb2.NOISE_NONE, "gaussian": defense_pb2.NOISE_GAUSSIAN, "laplace": defense_pb2.NOISE_LAPLACE}
_NOISE_FROM_MESSAGE = {value: key for key, value in _NOISE_TO_MESSAGE.items()}


@dataclass(frozen=True)
class TransmitTransform:
    """Settings of the transform; apply() runs it. A rate or ratio of 0 disables that step.

    Attributes:
        noise: "none", "gaussian" or "laplace".
        noise_std: standard deviation sigma of the noise, in feature units.
        dropout_rate: probability that an entry is zeroed.
        topk_ratio: share of entries per sample that top-k pruning keeps.
        defense: name of the whole defence, for reports.
    """

    noise: NoiseKind = "none"
    noise_std: float = 0.0
    dropout_rate: float = 0.0
    topk_ratio: float = 0.0
    defense: str = "none"

    def __post_init__(self) -> None:
        if self.noise not in _NOISE_TO_MESSAGE:
            raise ValueError(f"noise kind {self.noise!r} is unknown; use one of {list(_NOISE_TO_MESSAGE)}")
        if not math.isfinite(self.noise_std) or self.noise_std < 0:
            raise ValueError(f"noise_std {self.noise_std} is invalid; use a finite value >= 0")
        if (self.noise == "none") != (self.noise_std == 0):
            raise ValueError(f"noise {self.noise!r} with noise_std {self.noise_std} is inconsistent; noise 'none' goes with noise_std 0")
        if not 0 <= self.dropout_rate < 1:
            raise ValueError(f"dropout_rate {self.dropout_rate} is out of range; use 0 <= rate < 1 (0 disables dropout)")
        if not 0 <= self.topk_ratio <= 1:
            raise ValueError(f"topk_ratio {self.topk_ratio} is out of range; use 0 <= ratio <= 1 (0 disables pruning)")
        if self.dropout_rate > 0 and self.topk_ratio > 0:
            raise ValueError("dropout and top-k pruning are both enabled; set one of dropout_rate and topk_ratio to 0")

    @classmethod
    def from_config(cls, config: DefenseConfig) -> "TransmitTransform":
        """Return the transform of a client defence configuration."""
        parts = config.components
        noise: NoiseKind = "none"
        if config.gaussian_noise:
            noise = "gaussian"
        elif "laplace" in parts:
            noise = "laplace"
        return cls(
            noise=noise,
            noise_std=config.noise_std if noise != "none" else 0.0,
            dropout_rate=config.dropout_rate if "dropout" in parts else 0.0,
            topk_ratio=config.topk_ratio if "topk" in parts else 0.0,
            defense=config.defense,
        )

    @classmethod
    def from_message(cls, message: defense_pb2.TransmitTransform) -> "TransmitTransform":
        """Return the transform a TransmitTransform message describes.

        Raises:
            ValueError: an unknown noise kind or an out-of-range setting, named in the message.
        """
        if message.noise not in _NOISE_FROM_MESSAGE:
            raise ValueError(f"transmit.noise {message.noise} is not a known NoiseKind; use NOISE_NONE, NOISE_GAUSSIAN or NOISE_LAPLACE")
        return cls(
            noise=_NOISE_FROM_MESSAGE[message.noise],
            noise_std=message.noise_std,
            dropout_rate=message.dropout_rate,
            topk_ratio=message.topk_ratio,
            defense=message.defense or "unnamed",
        )

    @classmethod
    def gaussian(cls, noise_std: float) -> "TransmitTransform":
        """Return Gaussian noise of standard deviation noise_std alone; 0 returns the identity."""
        if noise_std == 0:
            return cls()
        return cls(noise="gaussian", noise_std=noise_std, defense="noise")

    def to_message(self) -> defense_pb2.TransmitTransform:
        """Return the wire description of this transform."""
        return defense_pb2.TransmitTransform(
            defense=self.defense,
            noise=_NOISE_TO_MESSAGE[self.noise],
            noise_std=self.noise_std,
            dropout_rate=self.dropout_rate,
            topk_ratio=self.topk_ratio,
        )

    @property
    def is_identity(self) -> bool:
        """Whether apply() returns the features unchanged."""
        return self.noise == "none" and self.dropout_rate == 0 and self.topk_ratio in (0, 1)

    def apply(self, features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return the features to send, [B, ...] like features; keeps the autograd graph.

        Noise and dropout draw from generator, which may live on another device than features.
        """
        sent = features
        if self.noise == "gaussian":
            sent = gaussian_noise(sent, self.noise_std, generator)
        elif self.noise == "laplace":
            sent = laplace_noise(sent, self.noise_std, generator)

        if self.dropout_rate > 0:
            sent = dropout_entries(sent, self.dropout_rate, generator)
        if 0 < self.topk_ratio < 1:
            sent = topk_prune(sent, self.topk_ratio)
        return sent

    def describe(self) -> dict[str, object]:
        """Return the enabled steps and their settings, for logs and result files."""
        description: dict[str, object] = {"defense": self.defense, "noise": self.noise}
        if self.noise != "none":
            description["noise_std"] = self.noise_std
        if self.dropout_rate > 0:
            description["dropout_rate"] = self.dropout_rate
        if self.topk_ratio > 0:
            description["topk_ratio"] = self.topk_ratio
        return description
