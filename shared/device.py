"""Choosing the torch device a role computes on, from the runtime.device setting."""

from __future__ import annotations

import re

import torch

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DeviceError(ValueError):
    """A device setting this machine cannot honour; the message names the setting to change."""


def resolve_device(name: str) -> torch.device:
    """Return the device for "auto", "cpu", "cuda" or "cuda:N"; "auto" is cuda when available.

    Raises:
        DeviceError: the name is malformed, or CUDA (or that GPU) is not available here.
    """
    if not _DEVICE.match(name):
        raise DeviceError(f"runtime.device {name!r} is not a device; use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"runtime.device {name!r} needs CUDA, but torch {torch.__version__} sees no GPU; "
                "install a CUDA build of torch (CEMSPLIT_TORCH=any bash scripts/setup.sh) or use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"runtime.device {name!r} names GPU {device.index}, but this machine has {torch.cuda.device_count()}; "
                "use cuda:0 or another index below that"
            )
    return device
