"""White-box, noise-aware inversion: the attack used to evaluate CEM and ResSFL.

The attacker holds the trained client encoder and auxiliary data from the same distribution.
It trains a decoder from transformed encoder features to images (the client's transmit
transform: its noise, dropout or top-k pruning), then applies the decoder to the recorded
traffic.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from cemsplit.shared.config import AttackConfig
from cemsplit.shared.decoder import InversionDecoder
from cemsplit.shared.defenses.transmit import TransmitTransform
from cemsplit.shared.vgg import ClientNet

log = logging.getLogger(__name__)


@dataclass
class DecoderResult:
    decoder: InversionDecoder
    final_loss: float
    seconds: float


@torch.no_grad()
def encode_images(encoder: ClientNet, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Return encoder features (eval mode, no noise) for float images [N, C, H, W]."""
    encoder.eval()
    return torch.cat([encoder(images[start:start + batch_size]) for start in range(0, len(images), batch_size)])


def train_decoder(
    features: torch.Tensor,
    images: torch.Tensor,
    transform: TransmitTransform | float,
    config: AttackConfig,
    seed: int,
    device: torch.device = torch.device("cpu"),
) -> DecoderResult:
    """Train an inversion decoder on (transformed features, image) pairs.

    Args:
        features: clean encoder features [N, C, H, W].
        images: the matching images [N, C_x, H_x, W_x] in [0, 1].
        transform: the client's transmit transform, drawn anew at every step; a float is the
            sigma of Gaussian noise alone.
        config: decoder epochs, batch size, learning rate and weight decay.
        seed: seed of initialisation, shuffling and noise.
        device: where the decoder trains; the returned decoder is on the CPU.
    """
    if not isinstance(transform, TransmitTransform):
        transform = TransmitTransform.gaussian(float(transform))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    decoder = InversionDecoder(tuple(features.shape[1:]), tuple(images.shape[1:]), blocks=config.decoder_blocks).to(device)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=config.decoder_lr, weight_decay=config.decoder_weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.decoder_epochs, eta_min=1e-5)
    interactive = sys.stderr.isatty()
    started = time.monotonic()
    steps_per_epoch = math.ceil(len(features) / config.decoder_batch_size)
    loss_value = float("nan")

    decoder.train()
    for epoch in range(1, config.decoder_epochs + 1):
        order = torch.randperm(len(features), generator=generator)
        total = 0.0
        for index, start in enumerate(range(0, len(features), config.decoder_batch_size), start=1):
            batch = order[start:start + config.decoder_batch_size]
            inputs = features[batch]
            if not transform.is_identity:
                inputs = transform.apply(inputs, generator)
            loss = nn.functional.mse_loss(decoder(inputs.to(device)), images[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            if interactive:
                print(f"\rdecoder epoch {epoch}/{config.decoder_epochs} step {index}/{steps_per_epoch}", end="", file=sys.stderr, flush=True)
        scheduler.step()
        loss_value = total / len(features)
        if interactive:
            print(file=sys.stderr)
        log.info("decoder epoch %d/%d: train MSE %.5f", epoch, config.decoder_epochs, loss_value)
    decoder.eval()
    return DecoderResult(decoder.cpu(), loss_value, time.monotonic() - started)


@torch.no_grad()
def reconstruct(decoder: InversionDecoder, features: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Return the decoder's images for transmitted features [N, C, H, W]."""
    decoder.eval()
    return torch.cat([decoder(features[start:start + batch_size]) for start in range(0, len(features), batch_size)])


def load_encoder(path) -> ClientNet:
    """Load a client encoder checkpoint (keys "encoder" and "spec") written by the client."""
    from cemsplit.shared.checkpoint import load_checkpoint, load_state_strict
    from cemsplit.shared.vgg import SplitSpec

    state = load_checkpoint(path, required_keys=("encoder", "spec"))
    spec_fields = dict(state["spec"])
    spec_fields["input_shape"] = tuple(spec_fields["input_shape"])
    encoder = ClientNet(SplitSpec(**spec_fields))
    load_state_strict(encoder, state["encoder"], path)
    encoder.eval()
    return encoder
