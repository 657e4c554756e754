"""Entry point of the server role: `cemsplit server`."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cemsplit.server.mirror import AttackerMirror
from cemsplit.server.recorder import TrafficLogRecorder
from cemsplit.server.service import SplitLearningService
from cemsplit.shared.config import RunConfig
from cemsplit.shared.device import resolve_device
from cemsplit.shared.grpc_util import add_checked_servicer, bind, write_port_file
from cemsplit.shared.security import server_credentials, server_interceptors
from cemsplit.shared.snapshots import SnapshotWriter
from cemsplit.shared.traffic_log import TrafficLogWriter
from cemsplit.shared.specs import split_spec
from cemsplit.shared.wire import server_options
from cemsplit.v1 import split_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = split_pb2.DESCRIPTOR.services_by_name["SplitLearning"].full_name


def serve(config: RunConfig, run_dir: Path, stop: threading.Event | None = None) -> int:
    """Serve the split-learning service until SIGTERM, SIGINT or `stop`; returns the exit status."""
    spec = split_spec(config)
    device = resolve_device(config.runtime.device)
    stop = stop or threading.Event()
    credentials = server_credentials(config.server.listen, config.transport)
    interceptors = server_interceptors(config.transport)
    mirror = None
    if config.server.attacker:
        mirror = AttackerMirror(config.server.attacker, config.server.mirror_queue, config.transport)
        log.info("mirroring training activations to attacker %s (queue %d records)", config.server.attacker, config.server.mirror_queue)

    recorder = None
    if config.server.traffic_log is not None:
        recorder = TrafficLogRecorder(TrafficLogWriter.from_config(config.server.traffic_log, config.traffic), config.server.mirror_queue)
    snapshots = None
    if config.server.snapshots:
        snapshots = SnapshotWriter(Path(run_dir) / "snapshots", config.server.snapshot_every)

    service = SplitLearningService(
        spec,
        Path(run_dir) / "checkpoints",
        mirror,
        recorder,
        snapshots,
        keep_checkpoints=config.server.keep_checkpoints,
        max_abs_activation=config.server.max_abs_activation,
        device=device,
        update_after_reply=config.server.update_after_reply,
    )
    health_service = health.HealthServicer()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="rpc"),
        options=server_options(config.transport.max_message_mb),
        interceptors=interceptors,
    )
    add_checked_servicer(service, server, split_pb2.DESCRIPTOR.services_by_name["SplitLearning"])
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)

    port = bind(server, config.server.listen, credentials)
    server.start()
    for name in ("", SERVICE_NAME):
        health_service.set(name, health_pb2.HealthCheckResponse.SERVING)
    write_port_file(config.server.port_file, port)
    log.info(
        "serving %s on %s (port %d, %s%s), features %s, %d classes, computing on %s",
        spec.arch, config.server.listen, port, "TLS" if credentials else "plaintext",
        ", bearer token required" if interceptors else "", list(spec.feature_shape), spec.num_classes, device,
    )

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, frame: stop.set())
    stop.wait()

    log.info("stopping: no new calls, finishing calls in flight")
    health_service.enter_graceful_shutdown()
    service.begin_shutdown()
    server.stop(grace=10).wait()
    service.checkpoint_all()
    if mirror is not None:
        mirror.close()
    if recorder is not None:
        recorder.close()
    if snapshots is not None:
        snapshots.close()
    log.info("stopped")
    return 0
