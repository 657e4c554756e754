"""Scores of one set of reconstructions: image metrics, the mean-image baseline and target accuracy."""

from __future__ import annotations

import torch

from cemsplit.shared.defenses.transmit import TransmitTransform
from cemsplit.shared.metrics import per_image_mse, score_reconstructions
from cemsplit.shared.vgg import ClientNet, ServerNet


@torch.no_grad()
def target_accuracy(
    encoder: ClientNet,
    server: ServerNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: TransmitTransform,
    seed: int,
    batch_size: int = 500,
) -> float:
    """Return the top-1 accuracy of the target model (client encoder, defence, server half) on images.

    The model runs as the client evaluates it: both halves in eval mode and the client's
    transmit transform on the features (seeded, so repeated calls agree).

    Args:
        images: [N, C, H, W] in [0, 1]; labels: [N] true classes.
    """
    encoder.eval()
    server.eval()
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    for start in range(0, len(images), batch_size):
        features = transform.apply(encoder(images[start:start + batch_size]), generator)
        correct += int((server(features).argmax(1) == labels[start:start + batch_size]).sum())
    return correct / len(images)


def evaluate_reconstructions(
    reconstructions: torch.Tensor,
    originals: torch.Tensor,
    labels: torch.Tensor,
    mean_image: torch.Tensor,
    encoder: ClientNet | None,
    server: ServerNet | None,
    transform: TransmitTransform,
    seed: int,
    accuracy_images: int,
) -> dict[str, object]:
    """Score reconstructions [N, C, H, W] against the true images [N, C, H, W].

    Returns a dict with these keys:
    - mse, psnr, ssim: means of per-image values.
    - psnr_batch: PSNR of the mean MSE of each batch of 256 images, averaged over batches,
      as the CEM reference code reports it.
    - mean_image_mse: MSE of guessing `mean_image` [C, H, W] for every image, the baseline
      an attack has to beat.
    - images_scored.
    - target_accuracy, target_accuracy_originals: the target model's accuracy on the first
      `accuracy_images` reconstructions and on their originals, or None unless both halves
      are given; target_accuracy_images is that image count.
    """
    scores: dict[str, object] = dict(score_reconstructions(reconstructions, originals))
    baseline = mean_image.unsqueeze(0).expand_as(originals)
    scores["mean_image_mse"] = float(per_image_mse(baseline, originals).mean())
    scores["images_scored"] = len(originals)

    if encoder is not None and server is not None:
        count = min(accuracy_images, len(originals))
        scores["target_accuracy"] = target_accuracy(encoder, server, reconstructions[:count], labels[:count], transform, seed)
        scores["target_accuracy_originals"] = target_accuracy(encoder, server, originals[:count], labels[:count], transform, seed)
        scores["target_accuracy_images"] = count
    else:
        scores["target_accuracy"] = None
        scores["target_accuracy_originals"] = None
        scores["target_accuracy_images"] = 0
    return scores
