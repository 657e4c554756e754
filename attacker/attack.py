"""Runs a threat model end to end: load the traffic, reconstruct it, score it, save a grid.

The same function serves the live attacker (the Attack call) and `cemsplit attack` on a
copied traffic log, so both write the same results and images. Every threat reconstructs
the recorded training traffic of one epoch (the last by default), joined to the true images
through the client's manifest:

- white-box: the trained client encoder and the auxiliary split; a decoder learns noisy
  features -> images. It is also scored in the two regimes of the CEM evaluation protocol.
  Train-time: the decoder is trained on the auxiliary split (the attacker has no client
  training data, so the auxiliary split takes its place) and tested on the test split.
  Inference-time: a second decoder is trained on the first `inference_time_fraction` of
  the test split and tested on the rest.
- shadow: a server-half snapshot and the labelled auxiliary split; a stand-in encoder is
  trained through the frozen server half and a decoder learns to invert the stand-in.
- rmle: the encoder's weights; images are optimised to match the recorded features under a
  total-variation prior. Only the first `rmle_images` records are reconstructed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cemsplit.attacker.evaluation import evaluate_reconstructions
from cemsplit.attacker.inputs import THREATS, AttackInputError, AttackInputs, check_inputs, report_key
from cemsplit.attacker.rmle import invert_features
from cemsplit.attacker.scoring import ImageLookup, JoinedTraffic, join_with_manifest, save_grid
from cemsplit.attacker.shadow import train_stand_in
from cemsplit.attacker.traffic import SessionTraffic, TrafficError, load_session_traffic
from cemsplit.attacker.white_box import encode_images, load_encoder, reconstruct, train_decoder
from cemsplit.shared.config import RunConfig
from cemsplit.shared.datasets import DataSplits, ImageSet
from cemsplit.shared.defenses.transmit import TransmitTransform
from cemsplit.shared.device import resolve_device
from cemsplit.shared.manifest import read_manifest
from cemsplit.shared.snapshots import find_snapshot, load_server_half
from cemsplit.shared.vgg import ClientNet, ServerNet, SplitSpec

log = logging.getLogger(__name__)

__all__ = ["THREATS", "AttackTarget", "load_target", "run_attack", "numeric_metrics"]

# Offsets of the seed for each random stream, so that streams never share a sequence.
_SEED_REGIME_NOISE = 1
_SEED_INFERENCE_DECODER = 2
_SEED_TARGET = 3


@dataclass
class AttackTarget:
    """The traffic under attack with what is known about it.

    traffic: the session's records of the attacked epoch.
    joined: those records paired with the true images.
    spec: the split the session announced.
    encoder, server: the two halves of the target model, or None where not given.
    mean_image: [C, H, W] mean of the auxiliary images.
    """

    traffic: SessionTraffic
    joined: JoinedTraffic
    spec: SplitSpec
    encoder: ClientNet | None
    server: ServerNet | None
    mean_image: torch.Tensor


def load_target(config: RunConfig, splits: DataSplits, inputs: AttackInputs) -> AttackTarget:
    """Read the traffic, the manifest and the given model halves, and check that they fit together."""
    traffic = load_session_traffic(inputs.traffic_dir, inputs.session_id, inputs.traffic_end).select_epoch(inputs.epoch)
    spec = traffic.split_spec(config.model.client_sigmoid)
    if tuple(spec.input_shape) != tuple(splits.input_shape):
        raise TrafficError(
            f"session {traffic.session_id} trained on images {list(spec.input_shape)} but the configured dataset "
            f"{splits.name} has {list(splits.input_shape)}; pass the data settings of the recorded run (its config.yaml)"
        )
    joined = join_with_manifest(traffic, read_manifest(inputs.manifest), ImageLookup(splits))
    recorded_shape = tuple(joined.features.shape[1:])

    encoder = None
    if inputs.encoder is not None:
        encoder = load_encoder(inputs.encoder)
        if tuple(encoder.spec.feature_shape) != recorded_shape:
            raise TrafficError(
                f"encoder {inputs.encoder} produces features {list(encoder.spec.feature_shape)} but the traffic carries "
                f"{list(recorded_shape)}; use the encoder of the recorded session"
            )
    server = None
    if inputs.server_snapshot is not None:
        snapshot = find_snapshot(inputs.server_snapshot, traffic.session_id)
        log.info("using server snapshot %s", snapshot)
        server = load_server_half(snapshot, spec)

    return AttackTarget(traffic, joined, spec, encoder, server, splits.aux.floats().mean(0))


def _transmitted(features: torch.Tensor, transform: TransmitTransform, seed: int) -> torch.Tensor:
    """Return the features as the client's defence would send them, with seeded randomness."""
    return transform.apply(features, torch.Generator().manual_seed(seed))


# Each threat function returns (reconstructions [N, C, H, W], the records they reconstruct, details).
ThreatOutput = tuple[torch.Tensor, JoinedTraffic, dict]


def _white_box(config: RunConfig, splits: DataSplits, target: AttackTarget, transform: TransmitTransform, seed: int) -> ThreatOutput:
    encoder = target.encoder
    test = splits.test
    cut = math.floor(config.attacker.inference_time_fraction * len(test))
    if cut < 1 or cut >= len(test):
        raise AttackInputError(
            f"inference_time_fraction {config.attacker.inference_time_fraction} of {len(test)} test images leaves no images "
            "to train or to test on; use more test images or another fraction"
        )

    aux_images = splits.aux.floats()
    log.info("training the white-box decoder on %d auxiliary images under %s", len(aux_images), transform.describe())
    device = resolve_device(config.runtime.device)
    trained = train_decoder(encode_images(encoder, aux_images), aux_images, transform, config.attacker, seed, device)
    reconstructions = reconstruct(trained.decoder, target.joined.features)

    def score_regime(decoder, images: ImageSet) -> dict[str, object]:
        originals = images.floats()
        features = _transmitted(encode_images(encoder, originals), transform, seed + _SEED_REGIME_NOISE)
        return evaluate_reconstructions(
            reconstruct(decoder, features), originals, images.labels, target.mean_image,
            encoder, target.server, transform, seed + _SEED_TARGET, config.attacker.accuracy_images,
        )

    train_time = {"trained_on": "aux", "train_images": len(aux_images), "tested_on": "test", **score_regime(trained.decoder, splits.test)}

    first, rest = test.subset(torch.arange(cut)), test.subset(torch.arange(cut, len(test)))
    log.info("training the inference-time decoder on the first %d of %d test images", cut, len(test))
    first_images = first.floats()
    inference_decoder = train_decoder(
        encode_images(encoder, first_images), first_images, transform, config.attacker, seed + _SEED_INFERENCE_DECODER, device
    )
    inference_time = {
        "trained_on": f"test[0:{cut}]",
        "train_images": cut,
        "tested_on": f"test[{cut}:{len(test)}]",
        "decoder_train_mse": inference_decoder.final_loss,
        **score_regime(inference_decoder.decoder, rest),
    }

    details = {
        "aux_images": len(aux_images),
        "decoder_train_mse": trained.final_loss,
        "decoder_seconds": trained.seconds,
        "train_time": train_time,
        "inference_time": inference_time,
    }
    return reconstructions, target.joined, details


def _shadow(config: RunConfig, splits: DataSplits, target: AttackTarget, transform: TransmitTransform, seed: int) -> ThreatOutput:
    aux_images = splits.aux.floats()
    log.info("training a stand-in encoder through the frozen server half on %d labelled auxiliary images", len(aux_images))
    stand_in = train_stand_in(target.server, target.spec, aux_images, splits.aux.labels, transform, config.attacker, seed)
    log.info("training the decoder on the stand-in encoder's features under %s", transform.describe())
    device = resolve_device(config.runtime.device)
    trained = train_decoder(encode_images(stand_in.encoder, aux_images), aux_images, transform, config.attacker, seed, device)
    details = {
        "aux_images": len(aux_images),
        "stand_in_train_loss": stand_in.final_loss,
        "stand_in_train_accuracy": stand_in.final_accuracy,
        "stand_in_seconds": stand_in.seconds,
        "decoder_train_mse": trained.final_loss,
        "decoder_seconds": trained.seconds,
    }
    return reconstruct(trained.decoder, target.joined.features), target.joined, details


def _rmle(config: RunConfig, splits: DataSplits, target: AttackTarget, transform: TransmitTransform, seed: int) -> ThreatOutput:
    settings = config.attacker
    joined = target.joined.head(settings.rmle_images)
    log.info(
        "optimising %d images against the encoder (%d Adam steps, lr %g, TV weight %g)",
        len(joined.features), settings.rmle_steps, settings.rmle_lr, settings.rmle_tv_weight,
    )
    result = invert_features(
        target.encoder, joined.features, tuple(splits.input_shape), settings.rmle_steps, settings.rmle_lr, settings.rmle_tv_weight
    )
    details = {
        "steps": settings.rmle_steps,
        "lr": settings.rmle_lr,
        "tv_weight": settings.rmle_tv_weight,
        "feature_mse": result.feature_mse,
        "optimisation_seconds": result.seconds,
    }
    return result.images, joined, details


_THREAT_FUNCTIONS = {"white-box": _white_box, "shadow": _shadow, "rmle": _rmle}


def run_attack(
    threat: str,
    config: RunConfig,
    splits: DataSplits,
    inputs: AttackInputs,
    out_dir: Path,
    target: AttackTarget | None = None,
) -> dict[str, object]:
    """Run one threat model on the recorded traffic and score it.

    Writes <key>.png (originals above reconstructions) and <key>.json to out_dir, where key is
    the threat with underscores, and returns the results: the scores of
    evaluate_reconstructions on the recorded traffic, the threat's own details, and the
    attacked session, epoch and noise. `target` reuses an already loaded target (it must come
    from the same inputs).

    Raises:
        AttackInputError: a required input is missing or a file does not exist.
        TrafficError, ManifestError, CheckpointError, TrafficLogError: an input cannot be used.
    """
    check_inputs(threat, inputs)
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = target or load_target(config, splits, inputs)
    seed = config.train.seed
    log.info(
        "running the %s attack on %d recorded images of session %s, epoch %d",
        threat, len(target.joined.features), target.traffic.session_id, target.traffic.epochs[0],
    )

    reconstructions, joined, details = _THREAT_FUNCTIONS[threat](config, splits, target, inputs.transform, seed)
    scores = evaluate_reconstructions(
        reconstructions, joined.images, joined.labels, target.mean_image, target.encoder, target.server,
        inputs.transform, seed + _SEED_TARGET, config.attacker.accuracy_images,
    )
    key = report_key(threat)
    grid = save_grid(joined.images, reconstructions, out_dir / f"{key}.png", config.attacker.grid_images)

    result: dict[str, object] = {
        "threat": threat,
        **scores,
        "scored_epoch": target.traffic.epochs[0],
        "unmatched_steps": joined.unmatched,
        "noise_std": inputs.transform.noise_std,
        "transmit": inputs.transform.describe(),
        "session_id": target.traffic.session_id,
        **details,
        "grid": str(grid),
        "seconds": time.monotonic() - started,
    }
    (out_dir / f"{key}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    log.info(
        "%s attack on %d images of epoch %d: MSE %.5f (mean-image baseline %.5f), PSNR %.2f dB, SSIM %.3f",
        threat, scores["images_scored"], target.traffic.epochs[0], scores["mse"], scores["mean_image_mse"], scores["psnr"], scores["ssim"],
    )
    return result


def numeric_metrics(result: dict[str, object]) -> dict[str, float]:
    """Return the numeric results as one flat map; nested sections become prefixes ("train_time_mse")."""
    flat: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            for inner, inner_value in numeric_metrics(value).items():
                flat[f"{key}_{inner}"] = inner_value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = float(value)
    return flat
