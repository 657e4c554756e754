"""Interfaces between the client trainer and its defences.

A defence acts at three points of a client run:
- every step, on what is sent (TransmitTransform, in transmit.py);
- every step, as an extra client loss on the features before the transform (ClientLoss);
- after every epoch, as an update from the encoded training data (ClientLoss.end_epoch), for
  example CEM's per-class clustering.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch

# Encodes the client-training split with the encoder in eval mode and no defence applied.
# Returns features [N, C, H, W] and labels [N].
EncodeTrainingData = Callable[[], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class StepTensors:
    """Tensors of one client training step that defence losses read.

    Attributes:
        images: the client's inputs [B, C_x, H_x, W_x], float in [0, 1].
        labels: class indices [B].
        features: encoder output z before the transmit transform [B, C, H, W], with autograd.
        transmitted: what was sent, the transform of features [B, C, H, W], with autograd.
        server_gradient: gradient of the task loss with respect to transmitted [B, C, H, W].
        lr: the learning rate of this epoch.
    """

    images: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor
    transmitted: torch.Tensor
    server_gradient: torch.Tensor
    lr: float


class ClientLoss(ABC):
    """A loss on the client's features, added to the task loss with a coefficient.

    The client minimises task + sum of coefficient(lr) * loss(step) over its losses, in one
    backward pass. A loss may need state from the per-epoch update (end_epoch) and returns
    None from loss() until that state exists.
    """

    name: str

    @abstractmethod
    def loss(self, step: StepTensors) -> torch.Tensor | None:
        """Return the unweighted loss of a step (a scalar with autograd), or None when inactive."""

    @abstractmethod
    def coefficient(self, lr: float) -> float:
        """Return the factor of this loss in the client's total loss at learning rate lr."""

    def end_epoch(self, epoch: int, encode: EncodeTrainingData) -> dict[str, float]:
        """Update state from the encoded training data after an epoch; returns metrics."""
        return {}

    def parameters(self) -> list[torch.nn.Parameter]:
        """Return the learned parameters that the client's optimizer trains with the encoder."""
        return []

    def to(self, device: torch.device) -> None:
        """Move learned parameters to the device the encoder computes on."""

    def epoch_metrics(self) -> dict[str, float]:
        """Return means of this loss's own per-step values over the epoch, and reset them."""
        return {}

    def state_dict(self) -> dict[str, object]:
        """Return the state to checkpoint (tensors and plain values only)."""
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore the state returned by state_dict."""

    @abstractmethod
    def describe(self) -> dict[str, object]:
        """Return the settings for the run report."""
