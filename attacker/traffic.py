"""Recorded traffic of one session, read from a traffic log and joined with a client manifest."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from cemsplit.shared import codec
from cemsplit.shared.traffic_log import read_records
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

    def select_epoch(self, epoch: int) -> "SessionTraffic":
        """Return only the records of one epoch."""
        keep = [i for i, e in enumerate(self.epochs) if e == epoch]
        return SessionTraffic(
            self.session_id,
            self.start,
            [self.steps[i] for i in keep],
            [self.epochs[i] for i in keep],
            [self.activations[i] for i in keep],
            [self.labels[i] for i in keep],
        )


def load_session_traffic(directory: Path, session_id: str = "") -> SessionTraffic:
    """Read the training records of one session; an empty id takes the last session opened.

    A step recorded twice (a retried step) keeps its last record.
    """
    starts: dict[str, attacker_pb2.SessionStart] = {}
    order: list[str] = []
    by_step: dict[str, dict[int, attacker_pb2.ActivationRecord]] = {}
    for record in read_records(directory):
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
