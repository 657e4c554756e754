"""Run configuration: pydantic models, YAML loading and command-line overrides.

One YAML file configures every role; each role reads the sections it needs. Unknown keys and
out-of-range values are errors that name the key. Command-line flags are generated from the
fields below, so `--help` and the config file always describe the same settings.
"""

from __future__ import annotations

import argparse
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cemsplit.shared.wire import DEFAULT_ATTACKER_PORT, DEFAULT_MAX_MESSAGE_MB, DEFAULT_SERVER_PORT

ThreatName = Literal["white-box", "shadow", "rmle"]
FsyncPolicyName = Literal["always", "interval", "never"]
DatasetName = Literal["mnist5k", "sklearn-digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "image-folder"]
WireDType = Literal["float32", "float16", "bfloat16"]


class ConfigError(ValueError):
    """An invalid configuration; the message names the file or flag, the key and the fix."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors and assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    dataset: DatasetName = Field("mnist5k", description="dataset name; mnist5k and sklearn-digits ship inside dependencies")
    root: Optional[Path] = Field(None, description="directory holding an on-disk dataset (not needed for the embedded ones)")
    image_size: Optional[int] = Field(None, ge=8, le=512, description="side in pixels that image-folder images are resized to")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="share of an embedded dataset held out for testing")
    aux_fraction: float = Field(0.2, gt=0, lt=1, description="share of the training images given to the attacker as auxiliary data, never to the client")
    train_limit: Optional[int] = Field(None, ge=1, description="use at most this many client-training images (smoke tests)")
    test_limit: Optional[int] = Field(None, ge=1, description="use at most this many test images")
    aux_limit: Optional[int] = Field(None, ge=1, description="use at most this many auxiliary images")
    augment: bool = Field(False, description="random crop (and horizontal flip for natural images) during client training")
    split_seed: int = Field(0, ge=0, description="seed of the train/test/auxiliary split")

    @model_validator(mode="after")
    def _check_fractions(self) -> "DataConfig":
        if self.test_fraction + self.aux_fraction >= 0.9:
            raise ValueError(
                f"test_fraction {self.test_fraction} + aux_fraction {self.aux_fraction} leave under 10% "
                "of the images for client training; lower one of them"
            )
        return self


class ModelConfig(Section):
    arch: Literal["vgg11_bn"] = Field("vgg11_bn", description="split architecture")
    cut_layer: int = Field(2, ge=1, le=7, description="convolution layers on the client before the bottleneck")
    bottleneck_channels: int = Field(8, ge=0, le=512, description="channels of the 3x3 bottleneck conv at the cut; 0 sends the cut layer's output as it is")
    client_sigmoid: bool = Field(True, description="end the client with a sigmoid so features lie in (0, 1)")
    num_classes: Optional[int] = Field(None, ge=2, description="number of classes; default: the dataset's")
    input_shape: Optional[list[int]] = Field(None, min_length=3, max_length=3, description="input shape C H W; default: the dataset's")


class TrainConfig(Section):
    epochs: int = Field(5, ge=1, le=10_000, description="training epochs")
    batch_size: int = Field(128, ge=1, le=65_536, description="training batch size in samples")
    eval_batch_size: int = Field(500, ge=1, le=65_536, description="evaluation batch size in samples")
    lr: float = Field(0.05, gt=0, le=10, description="SGD learning rate of both halves")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, lt=1, description="SGD weight decay (L2 penalty)")
    lr_milestones: list[int] = Field(default_factory=lambda: [3, 4], description="epochs after which the learning rate is multiplied by lr_gamma")
    lr_gamma: float = Field(0.2, gt=0, le=1, description="learning-rate factor at each milestone")
    seed: int = Field(125, ge=0, description="seed of weights, shuffling and noise")
    checkpoint_every: int = Field(
        50, ge=0, le=10_000_000, description="steps between checkpoints of both halves, on top of one at every epoch end; 0 checkpoints at epoch ends only"
    )


# Parts a defence is built from; `defense` joins them with "+", for example "nopeek+cem".
# The order here is the canonical order of a defence name.
DEFENSE_COMPONENTS: tuple[str, ...] = ("nopeek", "dropout", "topk", "noise", "laplace", "cem", "cem-att", "cem-mix", "cem-enhanced")

# The CEM family: each adds Gaussian noise of noise_std and a CEM loss; a defence uses at most one.
CEM_VARIANTS: tuple[str, ...] = ("cem", "cem-att", "cem-mix", "cem-enhanced")

DEFENSE_HELP = (
    "client defence: none, or parts joined by '+' from: noise (Gaussian, sigma = noise_std), "
    "laplace (Laplacian noise with standard deviation noise_std), dropout (dropout_rate), "
    "topk (top-k pruning, topk_ratio), nopeek (distance-correlation loss, nopeek_weight), "
    "cem (CEM loss, cem_weight, with Gaussian noise), cem-att (CEM with slot and cross attention, att_*), "
    "cem-mix (CEM and CEM-att blended by a weight network, mix_*), cem-enhanced (CEM with a multi-scale "
    "attention pipeline that assigns samples to clusters, enhanced_*). A CEM variant combines with "
    "nopeek, dropout and topk, for example nopeek+cem"
)


def parse_defense_name(name: str) -> tuple[str, ...]:
    """Split a defence name into its parts in canonical order; "none" has no parts.

    Every CEM variant includes Gaussian noise, so "noise+cem" is the same defence as "cem".

    Raises:
        ValueError: an unknown part, a repeated part, two CEM variants or "none" combined with a part.
    """
    text = name.strip().lower()
    if text == "none":
        return ()
    parts = [part.strip() for part in text.split("+")]
    unknown = [part for part in parts if part not in DEFENSE_COMPONENTS]
    if unknown:
        raise ValueError(
            f"defense {name!r} has unknown part(s) {unknown}; use none or parts joined by '+' from {list(DEFENSE_COMPONENTS)}"
        )
    if len(set(parts)) != len(parts):
        raise ValueError(f"defense {name!r} repeats a part; name each part once")
    chosen = set(parts)
    variants = sorted(chosen & set(CEM_VARIANTS))
    if len(variants) > 1:
        raise ValueError(f"defense {name!r} combines the CEM variants {variants}; choose one of them")
    if variants:
        chosen.discard("noise")
    return tuple(part for part in DEFENSE_COMPONENTS if part in chosen)


class DefenseConfig(Section):
    """Client defence. Symbols: noise_std is sigma, cem_weight lambda, var_threshold tau, num_clusters K."""

    defense: str = Field("none", description=DEFENSE_HELP)
    noise_std: float = Field(
        0.0, ge=0, le=10,
        description="standard deviation sigma of the noise added to the transmitted features (same units as the features); "
        "needed by noise, laplace and cem, 0 otherwise",
    )
    dropout_rate: float = Field(0.2, gt=0, lt=1, description="probability that dropout zeroes a transmitted feature entry; kept entries are scaled by 1/(1 - rate)")
    topk_ratio: float = Field(0.5, gt=0, lt=1, description="share of feature entries per sample that top-k pruning keeps (largest magnitudes); the rest are sent as 0")
    nopeek_weight: float = Field(1.0, gt=0, le=1000, description="weight alpha of the NoPeek distance correlation between images and features in the client loss")
    cem_weight: float = Field(
        16.0, ge=0, le=1000,
        description="weight lambda of the CEM loss; 0 keeps the per-epoch clustering and its log-det diagnostic but adds no loss",
    )
    var_threshold: float = Field(
        0.125, gt=0, le=100,
        description="CEM hinge threshold tau: a cluster stops shrinking once its variance is below tau * noise_std^2",
    )
    num_clusters: Optional[int] = Field(
        None, ge=1, le=256, description="CEM clusters K per class; default 5 when the client ends in a sigmoid, else 15",
    )
    cem_combine: Optional[Literal["separate", "fused"]] = Field(
        None,
        description="how the CEM loss joins the task loss: separate scales its gradient by lambda * s(lr) with "
        "s(lr) = 0.001/lr for lr >= 4.1e-4, else 1; fused adds lambda * CEM loss; not set: fused for cem-enhanced, "
        "separate for the others",
    )
    cem_mode: Literal["hinge", "plain"] = Field(
        "hinge", description="CEM loss per cluster: hinge = pi * relu(log(v + 0.01) - log(tau * sigma^2 + 0.01)); plain = pi * (v + 0.001)",
    )
    cem_clustering: Literal["kmeans", "gmm"] = Field(
        "kmeans", description="per-class clustering: kmeans (isotropic variance per cluster) or gmm (scikit-learn diagonal Gaussian mixture)",
    )
    cem_max_iter: int = Field(50, ge=1, le=10_000, description="maximum Lloyd (kmeans) or EM (gmm) iterations of each per-epoch clustering")
    att_slots: int = Field(8, ge=1, le=64, description="cem-att and cem-mix: slots per class, initialised from that many per-class k-means centroids")
    att_iterations: int = Field(3, ge=1, le=20, description="cem-att and cem-mix: slot attention iterations per batch")
    att_heads: int = Field(4, ge=1, le=64, description="cem-att and cem-mix: heads of the cross attention; must divide the attention width")
    att_dim: int = Field(
        0, ge=0, le=512,
        description="cem-att and cem-mix: attention width in feature dimensions; 0 uses the feature size D when D <= 512, "
        "else a learned projection to 256",
    )
    att_init_std: float = Field(
        0.01, gt=0, le=1, description="cem-att and cem-mix: initial standard deviation of the learned Gaussian draw added to each slot's centroid, in feature units"
    )
    mix_prior_weight: float = Field(
        1.0, gt=0, le=1000,
        description="cem-mix: weight rho of the KL divergence that pulls the blend weights towards 0.5, in units of the normalised branch losses",
    )
    mix_ema_decay: float = Field(
        0.99, ge=0, lt=1, description="cem-mix: decay of the running means that normalise each branch loss for the weight network"
    )
    enhanced_slots: int = Field(12, ge=1, le=64, description="cem-enhanced: slots per class, initialised from that many per-class k-means centroids")
    enhanced_iterations: int = Field(4, ge=1, le=20, description="cem-enhanced: slot attention iterations per layer")
    enhanced_layers: int = Field(2, ge=1, le=8, description="cem-enhanced: stacked slot attention layers")
    enhanced_heads: int = Field(8, ge=1, le=64, description="cem-enhanced: heads of the cross attention; must divide enhanced_dim")
    enhanced_dim: int = Field(
        256, ge=8, le=256, description="cem-enhanced: width of the refinement pipeline; features are projected to it by a learned linear map when D differs"
    )
    enhanced_temperature_decay: float = Field(
        0.9, gt=0, le=1, description="cem-enhanced: slot attention temperature at iteration t is decay^t (dimensionless)"
    )
    enhanced_competition_temperature: float = Field(
        0.1, gt=0, le=100, description="cem-enhanced: temperature of the softmax over slot RMS norms that rescales the slots"
    )
    enhanced_dropout: float = Field(0.1, ge=0, lt=1, description="cem-enhanced: dropout probability in the slot and cross attention MLPs")
    enhanced_distance: Literal["blend", "euclidean", "cosine"] = Field(
        "blend",
        description="cem-enhanced: distance that assigns samples to centroids in the refined space; blend weighs Euclidean by "
        "sigmoid(mean feature variance) and cosine by the rest",
    )
    enhanced_assign_temperature: float = Field(
        0.1, gt=0, le=100, description="cem-enhanced: softmax temperature of the soft assignment, relative to each sample's mean distance to its centroids"
    )
    enhanced_floor: Literal["noise", "adaptive"] = Field(
        "noise",
        description="cem-enhanced: hinge floor; noise = log(tau * sigma^2 + 0.01) as in CEM; adaptive = 0.001 * (1 + mean feature variance), "
        "which ignores the noise",
    )

    @field_validator("defense")
    @classmethod
    def _normalise_defense(cls, value: str) -> str:
        parts = parse_defense_name(value)
        return "+".join(parts) if parts else "none"

    @property
    def components(self) -> tuple[str, ...]:
        """Parts of the defence in canonical order; () for none."""
        return parse_defense_name(self.defense)

    @property
    def cem_variant(self) -> str | None:
        """The CEM variant of the defence ("cem", "cem-att", "cem-mix" or "cem-enhanced"), or None."""
        variants = [part for part in self.components if part in CEM_VARIANTS]
        return variants[0] if variants else None

    @property
    def combine(self) -> Literal["separate", "fused"]:
        """cem_combine, or its default for the CEM variant: fused for cem-enhanced, else separate."""
        if self.cem_combine is not None:
            return self.cem_combine
        return "fused" if self.cem_variant == "cem-enhanced" else "separate"

    @property
    def gaussian_noise(self) -> bool:
        """Whether Gaussian noise of noise_std is added to the transmitted features."""
        return "noise" in self.components or self.cem_variant is not None

    @model_validator(mode="after")
    def _check_combination(self) -> "DefenseConfig":
        parts = set(self.components)
        if {"noise", "laplace"} <= parts:
            raise ValueError(f"defense {self.defense!r} adds two kinds of noise; choose noise or laplace")
        if {"dropout", "topk"} <= parts:
            raise ValueError(f"defense {self.defense!r} masks the features twice; choose dropout or topk")
        variant = self.cem_variant
        if "laplace" in parts and variant is not None:
            raise ValueError(
                f"defense {self.defense!r} is invalid: CEM's bound and hinge assume Gaussian noise, and {variant} adds it; "
                f"drop laplace or {variant}"
            )
        if variant is not None and self.noise_std == 0:
            raise ValueError(
                f"defense {self.defense!r} needs noise_std > 0 because CEM shrinks each class's clusters relative to the "
                "noise variance sigma^2 (its hinge stops at var_threshold * sigma^2), and without noise nothing hides "
                "what is left; set --noise-std, for example 0.025"
            )
        for part, kind in (("noise", "Gaussian"), ("laplace", "Laplacian")):
            if part in parts and self.noise_std == 0:
                raise ValueError(f"defense {self.defense!r} needs noise_std > 0 to add {kind} noise; set --noise-std, for example 0.025")
        if self.noise_std > 0 and not parts & {"noise", "laplace", *CEM_VARIANTS}:
            raise ValueError(
                f"noise_std {self.noise_std} is set but defense {self.defense!r} adds no noise; "
                "add noise, laplace or cem to --defense, or set --noise-std 0"
            )
        return self


class TransportConfig(Section):
    wire_dtype: WireDType = Field("float32", description="float type that activations and gradients travel in; set on the client, and the server replies in the same type")
    compress: bool = Field(False, description="zlib-compress tensors on the wire; set on the client, and the server compresses its replies alike")
    train_call: Literal["unary", "stream"] = Field(
        "stream",
        description=(
            "how the client sends training steps: one TrainStep call per step (unary), or one TrainStream stream per "
            "epoch (stream); client only, the server accepts both"
        ),
    )
    max_message_mb: int = Field(DEFAULT_MAX_MESSAGE_MB, ge=1, le=2047, description="largest gRPC message either side sends or accepts, in MiB")
    rpc_timeout_s: float = Field(120.0, gt=0, le=86_400, description="deadline of each training or evaluation call, in seconds")
    connect_timeout_s: float = Field(60.0, gt=0, le=86_400, description="how long a role waits for its peer to become ready, in seconds")
    retry_initial_backoff_s: float = Field(0.5, gt=0, le=3600, description="wait before the first retry of an unavailable or timed-out call, in seconds; doubles per retry")
    retry_max_backoff_s: float = Field(10.0, gt=0, le=3600, description="longest wait between retries, in seconds")
    retry_max_elapsed_s: float = Field(300.0, ge=0, le=604_800, description="give up retrying a call after this long, in seconds")
    tls_cert: Optional[Path] = Field(None, description="PEM certificate this role serves with; enables TLS on server and attacker")
    tls_key: Optional[Path] = Field(None, description="PEM private key of tls_cert")
    tls_ca: Optional[Path] = Field(None, description="PEM CA bundle that verifies peers; enables TLS when connecting")
    tls_client_cert: Optional[Path] = Field(None, description="PEM certificate this role presents when it connects (mutual TLS)")
    tls_client_key: Optional[Path] = Field(None, description="PEM private key of tls_client_cert")
    tls_server_name: Optional[str] = Field(None, description="name expected in the server's certificate; default: the host of the address")
    require_client_cert: bool = Field(False, description="servers reject clients without a certificate signed by tls_ca (mutual TLS)")
    token_file: Optional[Path] = Field(None, description="file holding a bearer token that servers require and clients send")
    insecure: bool = Field(False, description="allow plaintext to or from non-loopback addresses")

    @model_validator(mode="after")
    def _check_tls_pairs(self) -> "TransportConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise ValueError("tls_client_cert and tls_client_key must be given together")
        if self.require_client_cert and (self.tls_cert is None or self.tls_ca is None):
            raise ValueError("require_client_cert needs tls_cert, tls_key and tls_ca (the CA that signs client certificates)")
        if self.tls_client_cert is not None and self.tls_ca is None:
            raise ValueError("tls_client_cert needs tls_ca, because client certificates are only sent over TLS")
        return self


class ServerConfig(Section):
    listen: str = Field(f"127.0.0.1:{DEFAULT_SERVER_PORT}", description="host:port the server binds; port 0 picks a free port")
    attacker: Optional[str] = Field(None, description="host:port of an attacker to mirror received activations to")
    mirror_queue: int = Field(
        1024, ge=1, le=1_000_000, description="records queued for the attacker mirror and for the traffic log, each, before new ones are dropped"
    )
    traffic_log: Optional[Path] = Field(
        None, description="directory of a traffic log that the server writes itself, from a background thread; not set writes none"
    )
    snapshots: bool = Field(True, description="save weights-only snapshots of the server half to <run-dir>/snapshots for the shadow-model attack")
    snapshot_every: int = Field(
        0, ge=0, le=10_000, description="epochs between snapshots of the server half; 0 saves one snapshot only when the session closes"
    )
    keep_checkpoints: int = Field(3, ge=2, le=1000, description="checkpoints kept per session, newest first")
    max_abs_activation: float = Field(1e4, ge=0, description="largest absolute activation value accepted; 0 accepts any finite value")
    update_after_reply: bool = Field(
        True,
        description="reply with the feature gradient before the server half's optimizer step, which then runs while the client "
        "works; results are unchanged because the next call on the session waits for it",
    )
    port_file: Optional[Path] = Field(None, description="file to write the bound port to once serving")


class ClientConfig(Section):
    server: str = Field(f"127.0.0.1:{DEFAULT_SERVER_PORT}", description="host:port of the split-learning server")
    name: str = Field("client", min_length=1, max_length=128, description="client name sent to the server")
    keep_checkpoints: int = Field(3, ge=1, le=1000, description="client checkpoints kept in <run-dir>/checkpoints, newest first")
    resume: bool = Field(
        True, description="continue the run whose checkpoints are in <run-dir>/checkpoints; false makes the client exit with an error while any are there"
    )


class AttackConfig(Section):
    listen: str = Field(f"127.0.0.1:{DEFAULT_ATTACKER_PORT}", description="host:port the attacker binds; port 0 picks a free port")
    port_file: Optional[Path] = Field(None, description="file to write the bound port to once serving")
    decoder_epochs: int = Field(30, ge=1, le=10_000, description="epochs of inversion-decoder training")
    decoder_batch_size: int = Field(128, ge=1, le=65_536, description="decoder training batch size in samples")
    decoder_lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate of the decoder, annealed by cosine to 1e-5")
    decoder_weight_decay: float = Field(1e-4, ge=0, lt=1, description="Adam weight decay of the decoder")
    decoder_blocks: int = Field(8, ge=0, le=64, description="residual blocks at 64 channels in the decoder")
    grid_images: int = Field(16, ge=1, le=256, description="reconstructions shown in the PNG grid")
    attack_timeout_s: float = Field(3600.0, gt=0, le=604_800, description="deadline of each attack call, in seconds")
    threats: list[ThreatName] = Field(
        default_factory=lambda: ["white-box"], min_length=1, description="threat models the demo attacks the recorded traffic with, in order"
    )
    accuracy_images: int = Field(
        1000, ge=1, le=10_000_000, description="reconstructions (the first ones) on which the target model's accuracy is measured, per evaluation"
    )
    inference_time_fraction: float = Field(
        0.9, gt=0, lt=1, description="share of the test split that trains the white-box decoder of the inference-time regime; the rest tests it"
    )
    shadow_epochs: int = Field(
        10, ge=1, le=10_000, description="epochs of stand-in encoder training through the frozen server half, in batches of decoder_batch_size"
    )
    shadow_lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate of the stand-in encoder")
    rmle_images: int = Field(256, ge=1, le=1_000_000, description="recorded images the rMLE attack reconstructs (the first ones of the attacked epoch)")
    rmle_steps: int = Field(300, ge=1, le=100_000, description="Adam steps of the rMLE image optimisation")
    rmle_lr: float = Field(0.05, gt=0, le=10, description="Adam learning rate of the rMLE image optimisation, on pixel values in [0, 1]")
    rmle_tv_weight: float = Field(
        0.1, ge=0, le=1_000, description="weight of the total-variation prior relative to the feature MSE in the rMLE objective"
    )

    @model_validator(mode="after")
    def _check_threats(self) -> "AttackConfig":
        repeated = sorted({name for name in self.threats if self.threats.count(name) > 1})
        if repeated:
            raise ValueError(f"threats lists {repeated} more than once; name each threat model once")
        return self


class TrafficLogConfig(Section):
    segment_mb: int = Field(256, ge=1, le=1_048_576, description="size in MiB at which a traffic log segment file is closed and the next begins")
    fsync: FsyncPolicyName = Field(
        "interval", description="when traffic log writes are forced to disk: after every record, at most every fsync_interval_s, or only when a segment closes"
    )
    fsync_interval_s: float = Field(1.0, gt=0, le=3600, description="seconds between forced writes of the traffic log under fsync 'interval'")


class RuntimeConfig(Section):
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="where a role computes: auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N"
    )


class RunConfig(Section):
    """Every setting of a run; each role reads the sections it needs."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    defense: DefenseConfig = Field(default_factory=DefenseConfig)
    transport: TransportConfig = Field(default_factory=TransportConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    client: ClientConfig = Field(default_factory=ClientConfig)
    attacker: AttackConfig = Field(default_factory=AttackConfig)
    traffic: TrafficLogConfig = Field(default_factory=TrafficLogConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)


ROLE_SECTIONS: dict[str, tuple[str, ...]] = {
    "server": ("data", "model", "transport", "server", "traffic", "runtime"),
    "client": ("data", "model", "train", "defense", "transport", "client", "runtime"),
    "attacker": ("data", "model", "transport", "attacker", "traffic", "runtime"),
    "demo": ("data", "model", "train", "defense", "transport", "attacker", "traffic", "runtime"),
    "attack": ("data", "model", "defense", "attacker", "runtime"),
    "report": ("data", "model", "train", "defense", "transport", "attacker"),
    "health": ("transport",),
}


# Settings a role decides itself: the demo picks free ports, so it offers no listen flags.
HIDDEN_FLAGS = {
    ("demo", "attacker", "listen"),
    ("demo", "attacker", "port_file"),
    # Offline attacks take --threat and run in this process: no listen address, port or deadline.
    ("attack", "attacker", "listen"),
    ("attack", "attacker", "port_file"),
    ("attack", "attacker", "attack_timeout_s"),
    ("attack", "attacker", "threats"),
}


def _suggestion(location: tuple[Any, ...]) -> str:
    """Return " (did you mean 'section.key'?)" for the valid key closest to an unknown one, or ""."""
    *parents, name = (str(part) for part in location)
    if not parents:
        known = list(RunConfig.model_fields)
    elif len(parents) == 1 and parents[0] in RunConfig.model_fields:
        known = list(RunConfig.model_fields[parents[0]].annotation.model_fields)
    else:
        return ""
    matches = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {'.'.join([*parents, matches[0]])!r}?)" if matches else ""


def format_validation_error(error: ValidationError, source: str, sources: dict[tuple[str, ...], str] | None = None) -> str:
    """Render a pydantic error as one line per key: 'source: section.key: problem (got value)'.

    sources maps (section, key) to where that value was set (a flag, --set, an environment
    variable); other keys are blamed on `source`.
    """
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        origin = (sources or {}).get(tuple(str(part) for part in item["loc"][:2]), source)
        problem = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            problem = "unknown key" + _suggestion(item["loc"]) + "; configs/demo.yaml lists every key"
        # A whole section as input adds nothing to the key named, so only single values are quoted.
        quoted = "input" in item and item["type"] != "extra_forbidden" and not isinstance(item["input"], dict)
        got = f" (got {item['input']!r})" if quoted else ""
        lines.append(f"{origin}: {key}: {problem}{got}")
    return "\n".join(lines)


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with errors that name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass an existing file to --config") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not a {type(data).__name__}")
    return data


def build_config(values: dict[str, Any], source: str, sources: dict[tuple[str, ...], str] | None = None) -> RunConfig:
    """Validate a nested dict into a RunConfig; errors name the source and each key."""
    try:
        return RunConfig.model_validate(values)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source, sources)) from None


def save_config(config: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML that load_config reads back unchanged."""
    data = config.model_dump(mode="json")
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Command-line flags generated from the fields


def _field_names() -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for section, info in RunConfig.model_fields.items():
        for field in info.annotation.model_fields:
            names.setdefault(field, []).append(section)
    return names


def flag_name(section: str, field: str) -> str:
    """Return the command-line flag of a config field, for example "--noise-std".

    A field name used in more than one section gets the section as a prefix
    ("--server-listen", "--attacker-listen").
    """
    shared = len(_field_names()[field]) > 1
    name = f"{section}_{field}" if shared else field
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return annotation


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_flags(parser: argparse.ArgumentParser, role: str) -> None:
    """Add --config, --set and one flag per field of the role's sections to a parser."""
    parser.add_argument("--config", type=Path, help="YAML config file; flags override its values (default: none, built-in defaults)")
    parser.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="override any config key, for example --set train.lr_milestones=[2,3]; VALUE is YAML; repeatable (default: none)",
    )
    for section in ROLE_SECTIONS[role]:
        model = RunConfig.model_fields[section].annotation
        group = parser.add_argument_group(f"{section} settings (config section '{section}')")
        for field, info in model.model_fields.items():
            if (role, section, field) in HIDDEN_FLAGS:
                continue
            base = _base_type(info.annotation)
            default = info.get_default(call_default_factory=True)
            help_text = f"{info.description} (default: {'not set' if default is None else default})"
            kwargs: dict[str, Any] = {"dest": f"{section}.{field}", "default": None, "help": help_text, "metavar": field.upper()}
            if base is bool:
                kwargs.update(type=_parse_bool, metavar="BOOL")
            elif typing.get_origin(base) is Literal:
                choices = list(typing.get_args(base))
                kwargs.update(choices=choices, help=f"{info.description}: {', '.join(choices)} (default: {default})")
            elif typing.get_origin(base) is list:
                item = typing.get_args(base)[0]
                if typing.get_origin(item) is Literal:
                    choices = list(typing.get_args(item))
                    kwargs.update(choices=choices, nargs="+", help=f"{info.description}: {', '.join(choices)} (default: {default})")
                else:
                    kwargs.update(type=item, nargs="*")
            elif base in (int, float, str, Path):
                kwargs.update(type=base)
            group.add_argument(flag_name(section, field), **kwargs)


def _set_value(values: dict[str, Any], sources: dict[tuple[str, ...], str], section: str, field: str, value: Any, origin: str) -> None:
    if not isinstance(values.setdefault(section, {}), dict):
        raise ConfigError(f"{origin}: config section {section!r} is not a mapping")
    values[section][field] = value
    sources[(section, field)] = origin


def _env_overrides(values: dict[str, Any], sources: dict[tuple[str, ...], str]) -> None:
    """Apply CEMSPLIT_<SECTION>__<KEY>=VALUE environment variables (VALUE is YAML)."""
    for key, text in os.environ.items():
        if not key.startswith("CEMSPLIT_") or "__" not in key:
            continue
        section, _, field = key[len("CEMSPLIT_"):].lower().partition("__")
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError as error:
            raise ConfigError(f"environment variable {key}: value is not valid YAML ({error})") from None
        _set_value(values, sources, section, field, value, f"environment variable {key}")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Build the run config: the --config file, then CEMSPLIT_* variables, then --set and flags.

    Errors name where each bad value came from: the file, the variable, --set or the flag.
    """
    values: dict[str, Any] = load_yaml(args.config) if args.config else {}
    source = f"config file {args.config}" if args.config else "defaults"
    sources: dict[tuple[str, ...], str] = {}
    _env_overrides(values, sources)

    for assignment in args.set:
        key, sep, text = assignment.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {assignment!r} must look like SECTION.KEY=VALUE, for example train.epochs=3")
        section, _, field = key.partition(".")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {assignment!r}: value is not valid YAML ({error})") from None
        _set_value(values, sources, section, field, value, f"--set {assignment}")

    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, field = dest.split(".", 1)
            _set_value(values, sources, section, field, value, f"flag {flag_name(section, field)}")
    return build_config(values, source, sources)
