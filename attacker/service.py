"""Attacker servicer: records mirrored traffic to a traffic log and runs attacks on request."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Iterator

import grpc

from cemsplit.attacker.attack import numeric_metrics, run_attack
from cemsplit.attacker.inputs import AttackInputError, AttackInputs, check_inputs
from cemsplit.attacker.transmit import transmit_transform
from cemsplit.shared.config import RunConfig
from cemsplit.shared.datasets import DataSplits
from cemsplit.shared.traffic_log import TrafficLogWriter
from cemsplit.v1 import attacker_pb2, attacker_pb2_grpc

log = logging.getLogger(__name__)

# Name of each input in the errors of the Attack call.
REQUEST_FIELD_NAMES = {
    "traffic_dir": "the attacker's traffic log",
    "manifest": "manifest",
    "encoder": "encoder_checkpoint",
    "server_snapshot": "server_snapshot",
}


class AttackerService(attacker_pb2_grpc.AttackerServicer):
    """Appends every received TrafficRecord to a traffic log; attacks read that log back.

    Args:
        config: data, attack and traffic log settings.
        splits: the dataset; the auxiliary split trains the attacks, all splits score them.
        traffic_dir: the traffic log directory.
    """

    def __init__(self, config: RunConfig, splits: DataSplits, traffic_dir: Path) -> None:
        self.config = config
        self.splits = splits
        self.traffic_dir = Path(traffic_dir)
        self.writer = TrafficLogWriter.from_config(self.traffic_dir, config.traffic)
        self.received = 0
        self.rejected = 0
        self._lock = threading.Lock()
        self._attack_lock = threading.Lock()

    def Record(self, request_iterator: Iterator[attacker_pb2.TrafficRecord], context: grpc.ServicerContext) -> attacker_pb2.RecordSummary:
        received = 0
        peer = context.peer()
        for record in request_iterator:
            if not record.session_id or record.WhichOneof("body") is None:
                with self._lock:
                    self.rejected += 1
                log.warning("rejected a record from %s without session id or body", peer)
                continue
            self.writer.append(record)
            received += 1
            with self._lock:
                self.received += 1
        log.debug("stream from %s ended after %d records", peer, received)
        return attacker_pb2.RecordSummary(received=received)

    def GetStats(self, request: attacker_pb2.StatsRequest, context: grpc.ServicerContext) -> attacker_pb2.RecorderStats:
        with self._lock:
            return attacker_pb2.RecorderStats(received=self.received, rejected=self.rejected, bytes=self.writer.bytes_written)

    def Attack(self, request: attacker_pb2.AttackRequest, context: grpc.ServicerContext) -> attacker_pb2.AttackReply:
        inputs = AttackInputs(
            traffic_dir=self.traffic_dir,
            manifest=Path(request.manifest) if request.manifest else None,
            encoder=Path(request.encoder_checkpoint) if request.encoder_checkpoint else None,
            server_snapshot=Path(request.server_snapshot) if request.server_snapshot else None,
            session_id=request.session_id,
            epoch=request.epoch,
        )
        session = request.session_id or "(latest)"
        try:
            inputs.transform = transmit_transform(request)
        except ValueError as error:
            log.warning("%s attack on session %s rejected: %s", request.threat, session, error)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if not request.out_dir:
            log.warning("%s attack on session %s rejected: out_dir is missing", request.threat, session)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "out_dir is missing; give a directory as the attacker sees it")
        try:
            check_inputs(request.threat, inputs, REQUEST_FIELD_NAMES)
        except AttackInputError as error:
            code = grpc.StatusCode.FAILED_PRECONDITION if error.files_not_found else grpc.StatusCode.INVALID_ARGUMENT
            log.warning("%s attack on session %s rejected: %s", request.threat, session, error)
            context.abort(code, str(error))

        with self._attack_lock:
            inputs.traffic_end = self.writer.flush()
            log.info("running the %s attack on session %s", request.threat, session)
            try:
                result = run_attack(request.threat, self.config, self.splits, inputs, Path(request.out_dir))
            except (ValueError, KeyError, FileNotFoundError) as error:
                log.error("%s attack on session %s failed: %s", request.threat, session, error)
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{request.threat} attack failed: {error}")

        return attacker_pb2.AttackReply(
            threat=request.threat,
            metrics=numeric_metrics(result),
            images_scored=int(result["images_scored"]),
            grid_path=str(result["grid"]),
            seconds=float(result["seconds"]),
            result_json=json.dumps(result),
        )

    def close(self) -> None:
        self.writer.close()
