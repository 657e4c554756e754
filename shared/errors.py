"""The errors a user can fix: the command line prints their message instead of a traceback."""

from __future__ import annotations

from cemsplit.shared.checkpoint import CheckpointError
from cemsplit.shared.config import ConfigError
from cemsplit.shared.datasets import DataError
from cemsplit.shared.device import DeviceError
from cemsplit.shared.grpc_util import AddressError
from cemsplit.shared.manifest import ManifestError
from cemsplit.shared.security import SecurityError
from cemsplit.shared.traffic_log import TrafficLogError

USER_ERRORS: tuple[type[BaseException], ...] = (
    AddressError,
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    FileExistsError,
    FileNotFoundError,
    ManifestError,
    SecurityError,
    TimeoutError,
    TrafficLogError,
)
