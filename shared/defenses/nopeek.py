"""NoPeek: penalise the distance correlation between the client's inputs and its features.

Vepakomma et al., "NoPeek: Information leakage reduction to share activations in distributed
deep learning" (2020) add alpha * dCor(x, z) to the client loss. dCor is the sample distance
correlation of Szekely, Rizzo and Bakirov (2007), computed per batch.
"""

from __future__ import annotations

import torch

from cemsplit.shared.defenses.base import ClientLoss, StepTensors

# Floor of squared distances and variances before a square root, which keeps gradients finite.
_EPSILON = 1e-12


def _centred_distances(samples: torch.Tensor) -> torch.Tensor:
    """Return the double-centred Euclidean distance matrix of samples [B, P] as [B, B]."""
    norms = samples.pow(2).sum(dim=1)
    squared = norms[:, None] + norms[None, :] - 2.0 * samples @ samples.T
    distances = squared.clamp_min(_EPSILON).sqrt()
    off_diagonal = 1.0 - torch.eye(len(samples), dtype=samples.dtype, device=samples.device)
    distances = distances * off_diagonal

    row_means = distances.mean(dim=1, keepdim=True)
    column_means = distances.mean(dim=0, keepdim=True)
    return distances - row_means - column_means + distances.mean()


def distance_correlation(inputs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Return the sample distance correlation dCor(inputs, features) in [0, 1], a scalar.

    inputs [B, ...] and features [B, ...] are flattened per sample. dCor is 0 for independent
    samples (in the limit of many samples) and 1 when one is a scaled, rotated, shifted copy of
    the other. Needs B >= 2.
    """
    if len(inputs) != len(features):
        raise ValueError(f"inputs have {len(inputs)} samples but features {len(features)}; pass matching batches")
    if len(inputs) < 2:
        raise ValueError("distance correlation needs at least 2 samples in the batch")
    a = _centred_distances(inputs.flatten(1).to(features.dtype))
    b = _centred_distances(features.flatten(1))

    covariance = (a * b).mean()
    variance_inputs = (a * a).mean()
    variance_features = (b * b).mean()
    correlation_squared = covariance / (variance_inputs * variance_features).clamp_min(_EPSILON).sqrt()
    return correlation_squared.clamp_min(_EPSILON).sqrt()


class NoPeekLoss(ClientLoss):
    """alpha * dCor(images, features), added to the client loss at every step.

    Args:
        weight: alpha, the factor of the distance correlation in the client loss.
    """

    name = "nopeek"

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def loss(self, step: StepTensors) -> torch.Tensor | None:
        return distance_correlation(step.images, step.features)

    def coefficient(self, lr: float) -> float:
        return self.weight

    def describe(self) -> dict[str, object]:
        return {"nopeek_weight": self.weight}
