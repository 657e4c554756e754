"""rMLE: regularised maximum-likelihood inversion by optimising images against the encoder.

With the client encoder's weights f and a recorded feature z~, find the image

    x* = argmin over x in [0, 1]^(C x H x W) of  mean((f(x) - z~)^2) + tv_weight * TV(x)

where TV(x) is the mean absolute difference between vertically and horizontally adjacent
pixels (anisotropic total variation), a prior for piecewise-smooth images. The search starts
from a uniform grey image, takes Adam steps on the pixels and projects them back into [0, 1]
after each step. Images are independent: the encoder runs in eval mode, so batch norm uses
its running statistics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from cemsplit.shared.progress import Progress
from cemsplit.shared.vgg import ClientNet

log = logging.getLogger(__name__)

# Grey level the optimisation starts from.
INITIAL_PIXEL = 0.5


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Return the anisotropic total variation of each image, [B], for images [B, C, H, W]."""
    vertical = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().flatten(1).mean(1)
    horizontal = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().flatten(1).mean(1)
    return vertical + horizontal


@dataclass
class InversionResult:
    """Reconstructed images [N, C, H, W] in [0, 1] and the final per-image feature MSE, mean over images."""

    images: torch.Tensor
    feature_mse: float
    seconds: float


def invert_features(
    encoder: ClientNet,
    features: torch.Tensor,
    image_shape: tuple[int, int, int],
    steps: int,
    lr: float,
    tv_weight: float,
    batch_size: int = 256,
) -> InversionResult:
    """Optimise one image per recorded feature map, see the module docstring.

    Args:
        encoder: the client encoder; its weights are not changed.
        features: recorded features [N, C_z, H_z, W_z] as transmitted.
        image_shape: [C, H, W] of the images to find.
        steps: Adam steps per batch of images.
        lr: Adam learning rate on pixel values.
        tv_weight: weight of the total-variation prior.
        batch_size: images optimised together (they do not interact).
    """
    encoder.eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    started = time.monotonic()
    progress = Progress("rMLE step", steps * ((len(features) + batch_size - 1) // batch_size), log)
    done = 0
    results, losses = [], []

    for start in range(0, len(features), batch_size):
        target = features[start:start + batch_size]
        images = torch.full((len(target), *image_shape), INITIAL_PIXEL, requires_grad=True)
        optimizer = torch.optim.Adam([images], lr=lr)
        for _ in range(steps):
            feature_loss = (encoder(images) - target).pow(2).flatten(1).mean(1)
            loss = (feature_loss + tv_weight * total_variation(images)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                images.clamp_(0.0, 1.0)
            done += 1
            progress.update(done, f"feature MSE {float(feature_loss.detach().mean()):.5f}")

        with torch.no_grad():
            losses.append((encoder(images) - target).pow(2).flatten(1).mean(1))
        results.append(images.detach())

    return InversionResult(torch.cat(results), float(torch.cat(losses).mean()), time.monotonic() - started)
