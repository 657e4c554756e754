"""Inversion decoder: features [B, C_z, H_z, W_z] -> images [B, C_x, H_x, W_x] in [0, 1].

The architecture of the model-inversion attack used to evaluate CEM and ResSFL: a residual block
from C_z to 64 channels, `blocks` residual blocks at 64 channels, one stride-2 transposed
convolution (with BN and ReLU) per doubling from H_z to H_x, a residual block to C_x channels
and a sigmoid.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class ResidualBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus a 1x1 convolution shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        )
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


def upsampling_steps(feature_size: int, image_size: int) -> int:
    """Return how many 2x upsamplings take feature_size closest to image_size without passing it."""
    if feature_size < 1 or image_size < feature_size:
        raise ValueError(f"feature size {feature_size} must be between 1 and the image size {image_size}")
    return int(math.floor(math.log2(image_size / feature_size) + 1e-9))


class InversionDecoder(nn.Module):
    """Decoder from client features to images.

    When H_x / H_z is not a power of two the last map is resized bilinearly to the image size.
    """

    def __init__(self, feature_shape: tuple[int, int, int], image_shape: tuple[int, int, int], blocks: int = 8, width: int = 64) -> None:
        super().__init__()
        feature_channels, feature_height, _ = feature_shape
        image_channels, image_height, image_width = image_shape
        self.image_size = (image_height, image_width)

        layers: list[nn.Module] = [ResidualBlock(feature_channels, width)]
        layers += [ResidualBlock(width, width) for _ in range(blocks)]
        for _ in range(upsampling_steps(feature_height, image_height)):
            layers += [
                nn.ConvTranspose2d(width, width, 3, stride=2, padding=1, output_padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*layers)
        self.head = ResidualBlock(width, image_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.body(features)
        if tuple(hidden.shape[-2:]) != self.image_size:
            hidden = F.interpolate(hidden, size=self.image_size, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.head(hidden))
