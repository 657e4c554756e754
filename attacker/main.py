"""Entry point of the attacker role: `cemsplit attacker`."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cemsplit.attacker.service import AttackerService
from cemsplit.shared.config import RunConfig
from cemsplit.shared.datasets import load_splits
from cemsplit.shared.grpc_util import add_checked_servicer, bind, write_port_file
from cemsplit.shared.security import server_credentials, server_interceptors
from cemsplit.shared.wire import server_options
from cemsplit.v1 import attacker_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = attacker_pb2.DESCRIPTOR.services_by_name["Attacker"].full_name


def serve(config: RunConfig, run_dir: Path, stop: threading.Event | None = None) -> int:
    """Serve the attacker until SIGTERM, SIGINT or `stop`; returns the exit status."""
    stop = stop or threading.Event()
    credentials = server_credentials(config.attacker.listen, config.transport)
    interceptors = server_interceptors(config.transport)
    splits = load_splits(config.data)
    service = AttackerService(config, splits, Path(run_dir) / "traffic")
    health_service = health.HealthServicer()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="rpc"),
        options=server_options(config.transport.max_message_mb),
        interceptors=interceptors,
    )
    add_checked_servicer(service, server, attacker_pb2.DESCRIPTOR.services_by_name["Attacker"])
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)

    port = bind(server, config.attacker.listen, credentials)
    server.start()
    for name in ("", SERVICE_NAME):
        health_service.set(name, health_pb2.HealthCheckResponse.SERVING)
    write_port_file(config.attacker.port_file, port)
    log.info(
        "recording on %s (port %d, %s%s) into %s; %d auxiliary images for decoders",
        config.attacker.listen, port, "TLS" if credentials else "plaintext", ", bearer token required" if interceptors else "",
        service.traffic_dir, len(splits.aux),
    )

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, frame: stop.set())
    stop.wait()

    log.info("stopping: no new calls, finishing calls in flight")
    health_service.enter_graceful_shutdown()
    server.stop(grace=10).wait()
    service.close()
    log.info("stopped after recording %d records", service.received)
    return 0
