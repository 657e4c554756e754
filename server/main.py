"""Entry point of the server role: `cemsplit server`."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cemsplit.server.mirror import AttackerMirror
from cemsplit.server.recorder import TrafficLogRecorder
from cemsplit.server.service import SplitLearningService
from cemsplit.shared.config import RunConfig
from cemsplit.shared.device import resolve_device
from cemsplit.shared.serving import RoleServer, wait_for_stop
from cemsplit.shared.snapshots import SnapshotWriter
from cemsplit.shared.traffic_log import TrafficLogWriter
from cemsplit.shared.specs import split_spec
from cemsplit.v1 import split_pb2

log = logging.getLogger(__name__)


def serve(config: RunConfig, run_dir: Path, stop: threading.Event | None = None) -> int:
    """Serve the split-learning service until SIGTERM, SIGINT or `stop`; returns the exit status."""
    spec = split_spec(config)
    device = resolve_device(config.runtime.device)
    stop = stop or threading.Event()
    server = RoleServer(config.server.listen, config.transport)
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
    port = server.start(service, split_pb2.DESCRIPTOR.services_by_name["SplitLearning"], config.server.port_file)
    log.info(
        "serving %s on %s (port %d, %s), features %s, %d classes, computing on %s",
        spec.arch, config.server.listen, port, server.security, list(spec.feature_shape), spec.num_classes, device,
    )
    wait_for_stop(stop)

    server.begin_stop()
    service.begin_shutdown()
    server.stop()
    service.checkpoint_all()
    if mirror is not None:
        mirror.close()
    if recorder is not None:
        recorder.close()
    if snapshots is not None:
        snapshots.close()
    log.info("stopped")
    return 0
