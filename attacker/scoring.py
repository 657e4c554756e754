"""Scoring of reconstructions against the true images, joined through the client's manifest."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cemsplit.attacker.traffic import SessionTraffic, TrafficError
from cemsplit.shared.datasets import DataSplits

log = logging.getLogger(__name__)


class ImageLookup:
    """True images by dataset sample id, across the train, test and auxiliary splits."""

    def __init__(self, splits: DataSplits) -> None:
        parts = [splits.train, splits.test, splits.aux]
        self._images = torch.cat([p.images for p in parts])
        ids = torch.cat([p.ids for p in parts])
        self._position = {int(sample_id): index for index, sample_id in enumerate(ids.tolist())}

    def images(self, ids: list[int]) -> torch.Tensor:
        """Return float images in [0, 1], [len(ids), C, H, W]; raises TrafficError for unknown ids."""
        try:
            index = torch.tensor([self._position[i] for i in ids], dtype=torch.long)
        except KeyError as error:
            raise TrafficError(
                f"sample id {error.args[0]} of the manifest is not in the configured dataset; pass the data settings "
                "of the recorded run (its config.yaml)"
            ) from None
        return self._images[index].float().div_(255.0)


@dataclass
class JoinedTraffic:
    """Recorded activations paired with the true images they came from.

    features: [N, C, H, W] as transmitted; images: [N, C_x, H_x, W_x] in [0, 1];
    labels: [N] as transmitted; ids: [N] dataset sample ids; unmatched: records without a
    manifest entry, which are skipped.
    """

    features: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor
    unmatched: int

    def head(self, count: int) -> "JoinedTraffic":
        """Return the first `count` samples."""
        return JoinedTraffic(self.features[:count], self.images[:count], self.labels[:count], self.ids[:count], self.unmatched)


def join_with_manifest(traffic: SessionTraffic, manifest: dict[tuple[str, int], list[int]], lookup: ImageLookup) -> JoinedTraffic:
    """Pair each recorded activation with its true image through the client's manifest."""
    features, images, labels, ids = [], [], [], []
    missing = 0
    for step, batch, batch_labels in zip(traffic.steps, traffic.activations, traffic.labels):
        step_ids = manifest.get((traffic.session_id, step))
        if step_ids is None or len(step_ids) != len(batch):
            missing += 1
            continue
        features.append(batch)
        images.append(lookup.images(step_ids))
        labels.append(batch_labels)
        ids.append(torch.tensor(step_ids, dtype=torch.long))
    if not features:
        raise ValueError(f"no recorded step of session {traffic.session_id} is in the manifest; is it the client's manifest of that run?")
    if missing:
        log.warning("%d recorded steps of session %s have no matching manifest entry and are not scored", missing, traffic.session_id)
    return JoinedTraffic(torch.cat(features), torch.cat(images), torch.cat(labels), torch.cat(ids), missing)


def save_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: Path, count: int, scale: int = 0) -> Path:
    """Save a PNG with originals in the top row and their reconstructions below.

    Images are [B, C, H, W] in [0, 1]; small images are enlarged by nearest-neighbour `scale`
    (0 picks a scale that makes each tile at least 64 pixels).
    """
    count = min(count, len(originals))
    channels, height, width = originals.shape[1:]
    scale = scale or max(1, 64 // height)
    rows = []
    for batch in (originals[:count], reconstructions[:count]):
        tiles = batch.clamp(0, 1).mul(255).round().byte()
        if channels == 1:
            tiles = tiles.expand(-1, 3, -1, -1)
        padded = torch.nn.functional.pad(tiles, (1, 1, 1, 1), value=255)
        rows.append(torch.cat(list(padded), dim=2))
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    grid = np.kron(grid, np.ones((scale, scale, 1), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
