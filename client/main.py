"""Entry point of the client role: `cemsplit client`."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from cemsplit.client.trainer import ClientError, SplitClient
from cemsplit.shared.checkpoint import CheckpointError
from cemsplit.shared.config import RunConfig
from cemsplit.shared.datasets import DataError
from cemsplit.shared.device import DeviceError

log = logging.getLogger(__name__)


def run(config: RunConfig, run_dir: Path) -> int:
    """Train the client half and write its outputs to run_dir; returns the exit status.

    SIGTERM stops the run after the current step with both halves checkpointed (exit status 0);
    running the same command again continues it.
    """
    try:
        client = SplitClient(config, run_dir)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda signum, frame: _stop(client))
        summary = client.run()
    except (ClientError, DataError, DeviceError, CheckpointError, TimeoutError) as error:
        log.error("%s", error)
        return 1
    if summary.get("stopped"):
        return 0
    log.info("finished %d steps; final test accuracy %.4f", summary["steps"], summary["test_accuracy"])
    return 0


def _stop(client: SplitClient) -> None:
    log.info("stopping: finishing the current step, then checkpointing")
    client.request_stop()
