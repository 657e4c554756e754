"""Recorded traffic of one session, read from a traffic log and joined with a client manifest."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from cemsplit.shared import codec
from cemsplit.shared.traffic_log import LogPosition, read_records
from cemsplit.shared.vgg import SplitSpec
from cemsplit.v1 import attacker_pb2

log = logging.getLogger(__name__)


class TrafficError(ValueError):
    """Recorded traffic that cannot be used; the message names the log and the session."""


@dataclass
class SessionTraffic:
    """The training activations of one session.

    steps, epochs: [R] per record; activations: one [B, C, H, W] float tensor per record.
    """

    session_id: str
    start: attacker_pb2.SessionStart
    steps: list[int]
    epochs: list[int]
    activations: list[torch.Tensor]
    labels: list[torch.Tensor]

    def split_spec(self, client_sigmoid: bool) -> SplitSpec:
        """Return the split the session announced; the sigmoid flag is not on the wire and comes from the caller."""
        model = self.start.model
        return SplitSpec(
            input_shape=tuple(int(n) for n in model.input_shape),
            num_classes=int(model.num_classes),
            cut_layer=int(model.cut_layer),
            bottleneck_channels=int(model.bottleneck_channels),
            client_sigmoid=client_sigmoid,
            arch=model.architecture,
        )

    def select_epoch(self, epoch: int = 0) -> "SessionTraffic":
        """Return only the records of one epoch; 0 selects the last recorded epoch.

        Raises:
            TrafficError: no record of that epoch.
        """
        if epoch == 0:
            epoch = max(self.epochs)
        keep = [i for i, e in enumerate(self.epochs) if e == epoch]
        if not keep:
            raise TrafficError(f"session {self.session_id} has no training records of epoch {epoch}; recorded epochs: {sorted(set(self.epochs))}")
        return SessionTraffic(
            self.session_id,
            self.start,
            [self.steps[i] for i in keep],
            [self.epochs[i] for i in keep],
            [self.activations[i] for i in keep],
            [self.labels[i] for i in keep],
        )


def load_session_traffic(directory: Path, session_id: str = "", end: LogPosition | None = None) -> SessionTraffic:
    """Read the training records of one session; an empty id takes the last session opened.

    A step recorded twice (a retried step) keeps its last record. `end` stops reading at a
    position returned by a live writer's flush.
    """
    starts: dict[str, attacker_pb2.SessionStart] = {}
    order: list[str] = []
    by_step: dict[str, dict[int, attacker_pb2.ActivationRecord]] = {}
    for record in read_records(directory, end):
        body = record.WhichOneof("body")
        if body == "session_start":
            starts[record.session_id] = record.session_start
            order.append(record.session_id)
        elif body == "activations" and record.activations.phase == attacker_pb2.TRAIN:
            by_step.setdefault(record.session_id, {})[record.activations.step] = record.activations

    if not order:
        raise TrafficError(f"traffic log {directory} holds no session; was the server mirroring to this attacker?")
    chosen = session_id or order[-1]
    if chosen not in starts:
        raise TrafficError(f"session {chosen!r} not found in traffic log {directory}; recorded sessions: {order}")
    records = [by_step.get(chosen, {})[step] for step in sorted(by_step.get(chosen, {}))]
    if not records:
        raise TrafficError(f"session {chosen} in traffic log {directory} has no training records")

    activations = [codec.decode(r.activations, "activations") for r in records]
    labels = [codec.decode(r.labels, "labels").long() for r in records]
    log.info("loaded %d training records of session %s from %s", len(records), chosen, directory)
    return SessionTraffic(chosen, starts[chosen], [r.step for r in records], [r.epoch for r in records], activations, labels)
