"""Helpers shared by the benchmark scripts: machine description, result files and checkpoints."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from cemsplit.shared.checkpoint import save_checkpoint


def machine() -> dict[str, object]:
    """Return the facts a benchmark number depends on: CPU, core count, library versions."""
    import grpc

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "grpc": grpc.__version__,
        "platform": platform.platform(),
    }


def save_half(net: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Write one half's weights and optimizer state durably, like the product's epoch-end checkpoint."""
    save_checkpoint({"model": net.state_dict(), "optimizer": optimizer.state_dict()}, path)


def command_line() -> str:
    """Return the command that ran this benchmark, for the results page."""
    return " ".join([Path(sys.executable).name, *sys.argv])


def write_result(path: Path, result: dict[str, object]) -> None:
    """Write a benchmark result as JSON with the machine and the command."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": command_line(), "machine": machine(), **result}
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    print(f"wrote {path}")


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
