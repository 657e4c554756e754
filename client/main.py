"""Entry point of the client role: `cemsplit client`."""

from __future__ import annotations

import logging
from pathlib import Path

from cemsplit.client.trainer import ClientError, SplitClient
from cemsplit.shared.checkpoint import CheckpointError
from cemsplit.shared.config import RunConfig
from cemsplit.shared.datasets import DataError

log = logging.getLogger(__name__)


def run(config: RunConfig, run_dir: Path) -> int:
    """Train the client half and write its outputs to run_dir; returns the exit status."""
    try:
        summary = SplitClient(config, run_dir).run()
    except (ClientError, DataError, CheckpointError, TimeoutError) as error:
        log.error("%s", error)
        return 1
    log.info("finished %d steps; final test accuracy %.4f", summary["steps"], summary["test_accuracy"])
    return 0
