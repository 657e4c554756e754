"""Atomic, private checkpoint files.

A checkpoint is written to a temporary file in the same directory, flushed to disk, and renamed
over the target, so a crash leaves either the old or the new file, never half of one. Files are
created with mode 0600 because weights can leak the private data they were trained on. Loading
uses torch.load(weights_only=True), which rebuilds tensors and plain containers only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch


class CheckpointError(ValueError):
    """An unreadable or mismatched checkpoint; the message names the file."""


def _write_private_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create path atomically with mode 0600 from what write(handle) writes to its temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_private_atomic(path: Path, data: bytes) -> None:
    """Write bytes to path atomically with mode 0600."""
    _write_private_atomic(path, lambda handle: handle.write(data))


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Save a dict of tensors and plain values atomically with mode 0600.

    torch.save writes straight into the temporary file, without a copy of the whole
    checkpoint in memory (78 MB for the server half of the digits' model and its optimizer).
    """
    _write_private_atomic(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: Path, required_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint, with weights_only=True.

    Raises:
        CheckpointError: the file is missing, unreadable, not a checkpoint, or lacks a required key.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    missing = [key for key in required_keys if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it was not written by this cemsplit role")
    return state


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load a state dict with strict key checking; errors name the checkpoint file."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {source} does not fit the model: {error}") from None
