"""Attacker servicer: records mirrored traffic to a traffic log and runs attacks on request."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Iterator

import grpc

from cemsplit.attacker.attack import THREATS, run_white_box
from cemsplit.attacker.transmit import transmit_transform
from cemsplit.shared.config import RunConfig
from cemsplit.shared.datasets import DataSplits
from cemsplit.shared.traffic_log import TrafficLogWriter
from cemsplit.v1 import attacker_pb2, attacker_pb2_grpc

log = logging.getLogger(__name__)


class AttackerService(attacker_pb2_grpc.AttackerServicer):
    """Appends every received TrafficRecord to a traffic log; attacks read that log back.

    Args:
        config: data and attack settings.
        splits: the dataset; the auxiliary split trains decoders, all splits score them.
        traffic_dir: the traffic log directory.
    """

    def __init__(self, config: RunConfig, splits: DataSplits, traffic_dir: Path) -> None:
        self.config = config
        self.splits = splits
        self.traffic_dir = Path(traffic_dir)
        self.writer = TrafficLogWriter(self.traffic_dir)
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
        if request.threat not in THREATS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"threat {request.threat!r} is not supported; use one of {list(THREATS)}")
        for field in ("encoder_checkpoint", "manifest", "out_dir"):
            if not getattr(request, field):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field} is missing; give a path as the attacker sees it")
        try:
            transform = transmit_transform(request)
        except ValueError as error:
            log.warning("rejected a %s attack request: %s", request.threat, error)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

        with self._attack_lock:
            self.writer.flush()
            log.info("running the %s attack on session %s", request.threat, request.session_id or "(latest)")
            try:
                result = run_white_box(
                    self.config,
                    self.splits,
                    self.traffic_dir,
                    Path(request.encoder_checkpoint),
                    Path(request.manifest),
                    transform,
                    Path(request.out_dir),
                    request.session_id,
                )
            except (ValueError, KeyError, FileNotFoundError) as error:
                log.error("%s attack failed: %s", request.threat, error)
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{request.threat} attack failed: {error}")

        metrics = {key: float(value) for key, value in result.items() if key in ("mse", "psnr", "ssim", "psnr_batch", "decoder_train_mse")}
        return attacker_pb2.AttackReply(
            threat=request.threat,
            metrics=metrics,
            images_scored=int(result["images_scored"]),
            grid_path=str(result["grid"]),
            seconds=float(result["seconds"]),
        )

    def close(self) -> None:
        self.writer.close()
