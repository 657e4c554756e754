"""The reference split model: VGG11 with batch norm, cut after the first convolution layers.

The client half is the first `cut_layer` convolution blocks (conv3x3-BN-ReLU, each followed by
its max pool), a 3x3 bottleneck convolution to a few channels without ReLU, and a sigmoid.
The server half mirrors the bottleneck with a 3x3 convolution back to the cut layer's width,
runs the rest of VGG11 and an MLP head. Pools use ceil_mode, so 28x28 inputs shrink
28 -> 14 -> 7 -> 4 -> 2 -> 1 and 32x32 inputs 32 -> 16 -> 8 -> 4 -> 2 -> 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# VGG11 convolution widths; "M" is a 2x2 max pool.
VGG11_LAYERS: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG11_CONV_COUNT = sum(1 for item in VGG11_LAYERS if item != "M")


@dataclass(frozen=True)
class SplitSpec:
    """Shape of a split: what the client receives, what it sends and what the server predicts."""

    input_shape: tuple[int, int, int]
    num_classes: int
    cut_layer: int = 2
    bottleneck_channels: int = 8
    client_sigmoid: bool = True
    arch: str = "vgg11_bn"

    def __post_init__(self) -> None:
        if self.arch != "vgg11_bn":
            raise ValueError(f"unknown architecture {self.arch!r}; the supported one is 'vgg11_bn'")
        if not 1 <= self.cut_layer < VGG11_CONV_COUNT:
            raise ValueError(f"cut_layer {self.cut_layer} is out of range; use 1 to {VGG11_CONV_COUNT - 1}")
        channels, height, width = self.input_shape
        if channels < 1 or height < 2 or width < 2:
            raise ValueError(f"input shape {list(self.input_shape)} is invalid; expected C H W with C >= 1 and H, W >= 2")

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Shape [C, H, W] of the activations the client sends for one sample."""
        _, height, width = self.input_shape
        channels = self.input_shape[0]
        for item in _client_layers(self.cut_layer):
            if item == "M":
                height, width = math.ceil(height / 2), math.ceil(width / 2)
            else:
                channels = int(item)
        if self.bottleneck_channels:
            channels = self.bottleneck_channels
        return channels, height, width


def _client_layers(cut_layer: int) -> list[int | str]:
    """VGG11 items on the client: the first cut_layer convolutions and the pools that follow them."""
    items: list[int | str] = []
    convs = 0
    for item in VGG11_LAYERS:
        if item != "M":
            if convs == cut_layer:
                break
            convs += 1
        # A pool right after the last client convolution is appended here, so it belongs to the client.
        items.append(item)
    return items


def _conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def _make_layers(items: list[int | str], in_channels: int) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    for item in items:
        if item == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            layers += _conv_block(in_channels, int(item))
            in_channels = int(item)
    return layers, in_channels


class ClientNet(nn.Module):
    """Client half: image [B, C, H, W] -> features [B, *spec.feature_shape], in (0, 1) with a sigmoid."""

    def __init__(self, spec: SplitSpec) -> None:
        super().__init__()
        self.spec = spec
        layers, channels = _make_layers(_client_layers(spec.cut_layer), spec.input_shape[0])
        if spec.bottleneck_channels:
            layers.append(nn.Conv2d(channels, spec.bottleneck_channels, 3, padding=1))
        if spec.client_sigmoid:
            layers.append(nn.Sigmoid())
        self.features = nn.Sequential(*layers)
        _init_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


class ServerNet(nn.Module):
    """Server half: features [B, *spec.feature_shape] -> class logits [B, num_classes]."""

    def __init__(self, spec: SplitSpec) -> None:
        super().__init__()
        self.spec = spec
        client_items = _client_layers(spec.cut_layer)
        cut_channels = [int(item) for item in client_items if item != "M"][-1]
        layers: list[nn.Module] = []
        if spec.bottleneck_channels:
            layers += _conv_block(spec.bottleneck_channels, cut_channels)
        rest, channels = _make_layers(list(VGG11_LAYERS[len(client_items):]), cut_channels)
        layers += rest
        self.features = nn.Sequential(*layers)
        # Identity for 28x28 and 32x32 inputs, whose maps are already 1x1 here.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(channels, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, spec.num_classes),
        )
        _init_weights(self)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.pool(self.features(features))
        return self.classifier(torch.flatten(hidden, 1))


def _init_weights(module: nn.Module) -> None:
    """He initialisation for convolutions; linear layers keep PyTorch's default initialisation."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
