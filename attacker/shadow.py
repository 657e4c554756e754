"""Query-free shadow model: a stand-in client encoder trained through the frozen server half.

An honest-but-curious server has its own half of the model and can collect labelled data
from the same distribution as the client's, but it has no copy of the client encoder and
cannot query it. It trains a stand-in encoder of the announced architecture so that the frozen
server half classifies the stand-in's (noisy) features correctly. Because the server half was
trained on the real client's features, this pulls the stand-in's feature space towards the
real one. A decoder trained to invert the stand-in is then applied to the recorded traffic.

NOTE: the classification loss ties the stand-in's features to the client's only loosely.
On mnist5k test runs its per-sample features differ from the real ones by an MSE of about
0.09 on (0, 1) features, and the attack beats the mean-image baseline by 15-45% in MSE
depending on decoder size. Pulling the stand-in's features towards the distribution of the
recorded traffic (for example with a discriminator) is not implemented.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from cemsplit.shared.config import AttackConfig
from cemsplit.shared.defenses.transmit import TransmitTransform
from cemsplit.shared.progress import Progress
from cemsplit.shared.vgg import ClientNet, ServerNet, SplitSpec

log = logging.getLogger(__name__)


@dataclass
class StandInResult:
    """The trained stand-in encoder (eval mode) and its final training loss and accuracy."""

    encoder: ClientNet
    final_loss: float
    final_accuracy: float
    seconds: float


def train_stand_in(
    server: ServerNet,
    spec: SplitSpec,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: TransmitTransform,
    config: AttackConfig,
    seed: int,
) -> StandInResult:
    """Train a stand-in client encoder through a frozen server half.

    Args:
        server: the server half in eval mode with frozen weights (batch norm uses its running
            statistics and dropout is off, so only the stand-in changes).
        spec: the split the session announced; the stand-in has its client architecture.
        images: labelled auxiliary images [N, C, H, W] in [0, 1].
        labels: their classes [N].
        transform: the client's transmit transform, applied to the stand-in's features as the client does.
        config: shadow_epochs, shadow_lr and decoder_batch_size (the batch size) are used.
        seed: seed of initialisation, shuffling and noise.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    encoder = ClientNet(spec)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.shadow_lr)
    batch_size = config.decoder_batch_size
    progress = Progress("stand-in encoder epoch", config.shadow_epochs, log)
    started = time.monotonic()
    server.eval()
    loss_value, accuracy = float("nan"), float("nan")

    for epoch in range(1, config.shadow_epochs + 1):
        encoder.train()
        order = torch.randperm(len(images), generator=generator)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(images), batch_size):
            batch = order[start:start + batch_size]
            if len(batch) < 2:
                continue  # batch norm cannot train on one sample
            features = transform.apply(encoder(images[batch]), generator)
            logits = server(features)
            loss = nn.functional.cross_entropy(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(1) == labels[batch]).sum())
        loss_value = loss_sum / len(images)
        accuracy = correct / len(images)
        progress.update(epoch, f"loss {loss_value:.4f}, accuracy {accuracy:.3f}")

    encoder.eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    return StandInResult(encoder, loss_value, accuracy, time.monotonic() - started)
