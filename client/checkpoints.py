"""The client's checkpoints: the training position and everything needed to continue from it.

Layout: <run dir>/checkpoints/client-step-000000123.pt, one file per step, written atomically
with mode 0600 (see cemsplit.shared.checkpoint). The client marks the same steps for the server
to checkpoint, so after a restart of either side the two halves resume from a step both hold.
The newest `keep` files are kept.

A checkpoint contains the encoder and its optimizer, the defence's state (noise generator,
clustering), the data-order state (epoch, next batch, augmentation generator), the running
sums of the epoch's training metrics, the session id and the settings that must not change
between the interrupted run and its continuation.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cemsplit.shared.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

_STEP_FILE = re.compile(r"^client-step-(\d{9})\.pt$")
REQUIRED_KEYS = ("encoder", "spec", "optimizer", "defense", "position", "session_id", "settings")


@dataclass
class Position:
    """Training position: the next batch to train, and the epoch's metrics so far.

    `batch` counts the epoch's batches already trained; when it equals the epoch's batch count,
    only the epoch's end (defence update, evaluation, metrics row) is left. `epoch_done` marks a
    checkpoint taken after that end, so training continues with batch 0 of the next epoch.
    """

    epoch: int = 1
    batch: int = 0
    step: int = 0
    epoch_done: bool = False
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    augment_state: torch.Tensor | None = field(default=None, repr=False)

    def to_state(self) -> dict[str, object]:
        state: dict[str, object] = {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "epoch_done": self.epoch_done,
            "loss_sum": self.loss_sum,
            "correct": self.correct,
            "seen": self.seen,
        }
        if self.augment_state is not None:
            state["augment_state"] = self.augment_state
        return state

    @classmethod
    def from_state(cls, state: dict[str, object]) -> "Position":
        return cls(
            epoch=int(state["epoch"]),  # type: ignore[arg-type]
            batch=int(state["batch"]),  # type: ignore[arg-type]
            step=int(state["step"]),  # type: ignore[arg-type]
            epoch_done=bool(state["epoch_done"]),
            loss_sum=float(state["loss_sum"]),  # type: ignore[arg-type]
            correct=int(state["correct"]),  # type: ignore[arg-type]
            seen=int(state["seen"]),  # type: ignore[arg-type]
            augment_state=state.get("augment_state"),  # type: ignore[arg-type]
        )

    @property
    def completed_epochs(self) -> int:
        """Epochs whose end (evaluation and metrics row) is part of this position."""
        return self.epoch if self.epoch_done else self.epoch - 1


class ClientCheckpoints:
    """Saves, lists and loads the client's step checkpoints in one directory.

    Args:
        directory: the checkpoint directory, usually <run dir>/checkpoints.
        keep: checkpoints kept, newest first (at least 1).
    """

    def __init__(self, directory: Path, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep {keep} must be at least 1")
        self.directory = Path(directory)
        self.keep = keep

    def path(self, step: int) -> Path:
        return self.directory / f"client-step-{step:09d}.pt"

    def steps(self) -> list[int]:
        """Return the steps that have a checkpoint, oldest first."""
        if not self.directory.is_dir():
            return []
        matches = (_STEP_FILE.match(path.name) for path in self.directory.iterdir())
        return sorted(int(match.group(1)) for match in matches if match)

    def save(self, state: dict[str, object], step: int) -> Path:
        """Write the checkpoint of `step` atomically, then delete all but the newest `keep`."""
        path = self.path(step)
        save_checkpoint(state, path)
        for old in self.steps()[: -self.keep]:
            self.path(old).unlink(missing_ok=True)
        return path

    def load(self, step: int) -> dict[str, object]:
        """Read the checkpoint of `step`.

        Raises:
            CheckpointError: the file is missing, unreadable or was not written by the client.
        """
        state = load_checkpoint(self.path(step), REQUIRED_KEYS)
        if not isinstance(state["position"], dict) or int(state["position"].get("step", -1)) != step:
            raise CheckpointError(f"checkpoint {self.path(step)} does not hold step {step}; delete it or restore the original file")
        return state

    def newest(self) -> tuple[str, list[int], Position] | None:
        """Return the newest checkpoint's session id and position, and the steps on disk; None if there are none.

        Raises:
            CheckpointError: the newest checkpoint cannot be read.
        """
        steps = self.steps()
        if not steps:
            return None
        state = self.load(steps[-1])
        return str(state["session_id"]), steps, Position.from_state(state["position"])  # type: ignore[arg-type]
