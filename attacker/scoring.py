"""Scoring of reconstructions against the true images, joined through the client's manifest."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cemsplit.attacker.traffic import SessionTraffic
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
        """Return float images in [0, 1], [len(ids), C, H, W]; raises KeyError for unknown ids."""
        try:
            index = torch.tensor([self._position[i] for i in ids], dtype=torch.long)
        except KeyError as error:
            raise KeyError(f"sample id {error.args[0]} is not in the dataset; manifest and dataset do not match") from None
        return self._images[index].float().div_(255.0)


def join_with_manifest(
    traffic: SessionTraffic, manifest: dict[tuple[str, int], list[int]], lookup: ImageLookup
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pair each recorded activation with its true image.

    Returns (activations [N, C, H, W], true images [N, C_x, H_x, W_x], records without a
    manifest entry, which are skipped).
    """
    features, images = [], []
    missing = 0
    for step, batch in zip(traffic.steps, traffic.activations):
        ids = manifest.get((traffic.session_id, step))
        if ids is None or len(ids) != len(batch):
            missing += 1
            continue
        features.append(batch)
        images.append(lookup.images(ids))
    if not features:
        raise ValueError(f"no recorded step of session {traffic.session_id} is in the manifest; is it the client's manifest of that run?")
    if missing:
        log.warning("%d recorded steps have no matching manifest entry and are not scored", missing)
    return torch.cat(features), torch.cat(images), missing


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
