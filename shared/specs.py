"""Conversions between the run config, the split description and its wire messages."""

from __future__ import annotations

from cemsplit.shared.config import RunConfig, TrainConfig
from cemsplit.shared.datasets import dataset_info
from cemsplit.shared.vgg import SplitSpec
from cemsplit.v1 import split_pb2


def split_spec(config: RunConfig) -> SplitSpec:
    """Return the split described by the config; shapes and classes default to the dataset's."""
    input_shape, num_classes = (None, None)
    if config.model.input_shape is None or config.model.num_classes is None:
        input_shape, num_classes = dataset_info(config.data)
    return SplitSpec(
        input_shape=tuple(config.model.input_shape or input_shape),
        num_classes=config.model.num_classes or num_classes,
        cut_layer=config.model.cut_layer,
        bottleneck_channels=config.model.bottleneck_channels,
        client_sigmoid=config.model.client_sigmoid,
        arch=config.model.arch,
    )


def model_spec_message(spec: SplitSpec) -> split_pb2.ModelSpec:
    """Return the ModelSpec message that describes the client half of a split."""
    return split_pb2.ModelSpec(
        architecture=spec.arch,
        cut_layer=spec.cut_layer,
        bottleneck_channels=spec.bottleneck_channels,
        input_shape=list(spec.input_shape),
        feature_shape=list(spec.feature_shape),
        num_classes=spec.num_classes,
    )


def model_spec_mismatches(expected: SplitSpec, received: split_pb2.ModelSpec) -> list[str]:
    """Return one message per field where a client's ModelSpec differs from this server's split."""
    wanted = model_spec_message(expected)
    problems = []
    for field in ("architecture", "cut_layer", "bottleneck_channels", "input_shape", "feature_shape", "num_classes"):
        got, want = getattr(received, field), getattr(wanted, field)
        if field.endswith("shape"):
            got, want = list(got), list(want)
        if got != want:
            problems.append(f"model.{field} is {got!r} but the server's split has {want!r}")
    return problems


def training_spec_message(train: TrainConfig) -> split_pb2.TrainingSpec:
    """Return the optimiser recipe the client proposes to the server."""
    return split_pb2.TrainingSpec(
        optimizer="sgd",
        learning_rate=train.lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        lr_milestones=list(train.lr_milestones),
        lr_gamma=train.lr_gamma,
        epochs=train.epochs,
        seed=train.seed,
    )
