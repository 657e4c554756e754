"""Entry point of the attacker role: `cemsplit attacker`."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cemsplit.attacker.service import AttackerService
from cemsplit.shared.config import RunConfig
from cemsplit.shared.datasets import load_splits
from cemsplit.shared.serving import RoleServer, wait_for_stop
from cemsplit.v1 import attacker_pb2

log = logging.getLogger(__name__)


def serve(config: RunConfig, run_dir: Path, stop: threading.Event | None = None) -> int:
    """Serve the attacker until SIGTERM, SIGINT or `stop`; returns the exit status."""
    stop = stop or threading.Event()
    server = RoleServer(config.attacker.listen, config.transport)
    splits = load_splits(config.data)
    service = AttackerService(config, splits, Path(run_dir) / "traffic")
    port = server.start(service, attacker_pb2.DESCRIPTOR.services_by_name["Attacker"], config.attacker.port_file)
    log.info(
        "recording on %s (port %d, %s) into %s; %d auxiliary images for decoders",
        config.attacker.listen, port, server.security, service.traffic_dir, len(splits.aux),
    )
    wait_for_stop(stop)

    server.begin_stop()
    server.stop()
    service.close()
    log.info("stopped after recording %d records", service.received)
    return 0
