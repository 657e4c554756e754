"""Runs a threat model end to end: decoder training, reconstruction of the traffic, scoring."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from cemsplit.attacker.scoring import ImageLookup, join_with_manifest, save_grid
from cemsplit.attacker.traffic import load_session_traffic
from cemsplit.attacker.white_box import encode_images, load_encoder, reconstruct, train_decoder
from cemsplit.shared.config import RunConfig
from cemsplit.shared.datasets import DataSplits
from cemsplit.shared.defenses.transmit import TransmitTransform
from cemsplit.shared.manifest import read_manifest
from cemsplit.shared.metrics import score_reconstructions

log = logging.getLogger(__name__)

THREATS = ("white-box",)


def run_white_box(
    config: RunConfig,
    splits: DataSplits,
    traffic_dir: Path,
    encoder_path: Path,
    manifest_path: Path,
    transform: TransmitTransform,
    out_dir: Path,
    session_id: str = "",
) -> dict[str, object]:
    """Attack the last recorded epoch of a session with the white-box, defence-aware decoder.

    The decoder is trained on the auxiliary split (train-time regime) and scored on the
    recorded training traffic of the final epoch, the one closest to the released encoder.
    Writes white_box.png and white_box.json to out_dir and returns the results.
    """
    started = time.monotonic()
    traffic = load_session_traffic(traffic_dir, session_id)
    final_epoch = max(traffic.epochs)
    traffic = traffic.select_epoch(final_epoch)
    manifest = read_manifest(manifest_path)
    features, originals, unmatched = join_with_manifest(traffic, manifest, ImageLookup(splits))

    encoder = load_encoder(encoder_path)
    aux_images = splits.aux.floats()
    aux_features = encode_images(encoder, aux_images)
    if tuple(aux_features.shape[1:]) != tuple(features.shape[1:]):
        raise ValueError(
            f"encoder {encoder_path} produces features {list(aux_features.shape[1:])} but the traffic carries "
            f"{list(features.shape[1:])}; use the encoder of the recorded session"
        )
    log.info("training the white-box decoder on %d auxiliary images under %s", len(aux_images), transform.describe())
    trained = train_decoder(aux_features, aux_images, transform, config.attacker, config.train.seed)

    reconstructions = reconstruct(trained.decoder, features)
    scores = score_reconstructions(reconstructions, originals)
    grid = save_grid(originals, reconstructions, Path(out_dir) / "white_box.png", config.attacker.grid_images)

    result: dict[str, object] = {
        **scores,
        "images_scored": len(originals),
        "scored_epoch": final_epoch,
        "unmatched_steps": unmatched,
        "aux_images": len(aux_images),
        "decoder_train_mse": trained.final_loss,
        "decoder_seconds": trained.seconds,
        "transmit": transform.describe(),
        "session_id": traffic.session_id,
        "grid": str(grid),
        "seconds": time.monotonic() - started,
    }
    (Path(out_dir) / "white_box.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    log.info(
        "white-box attack on %d images of epoch %d: MSE %.5f, PSNR %.2f dB, SSIM %.3f",
        len(originals), final_epoch, scores["mse"], scores["psnr"], scores["ssim"],
    )
    return result
