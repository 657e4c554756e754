"""Durable server-side session state: one checkpoint file per session and step.

Layout: <checkpoint_dir>/<session id>/step-000000123.pt, each written atomically with mode 0600
(see cemsplit.shared.checkpoint). A checkpoint holds the server half, its optimizer, the
session's opening request, the reply to the last applied step (so that a retried step is
answered, not applied twice, even after a restart) and the random state (dropout masks).
The newest `keep` checkpoints of a session are kept, so the server can rewind to an older step
when the client lost its latest checkpoint.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from cemsplit.shared.checkpoint import load_checkpoint, save_checkpoint
from cemsplit.v1 import split_pb2

log = logging.getLogger(__name__)

_STEP_FILE = re.compile(r"^step-(\d{9})\.pt$")
_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")
REQUIRED_KEYS = ("model", "optimizer", "open_request", "last_step", "epoch", "rng_state")


def _to_tensor(message) -> torch.Tensor:
    return torch.frombuffer(bytearray(message.SerializeToString()), dtype=torch.uint8).clone()


def _from_tensor(tensor: torch.Tensor, message_type):
    return message_type.FromString(bytes(tensor.numpy().tobytes()))


@dataclass
class SavedSession:
    """A session read back from a checkpoint."""

    open_request: split_pb2.OpenSessionRequest
    model: dict[str, torch.Tensor]
    optimizer: dict
    last_step: int
    epoch: int
    last_reply: split_pb2.TrainReply | None
    rng_state: torch.Tensor


class SessionStore:
    """Saves and loads session checkpoints under one directory."""

    def __init__(self, directory: Path, keep: int = 3) -> None:
        if keep < 2:
            raise ValueError(f"keep {keep} must be at least 2 so that a client one checkpoint behind can resume")
        self.directory = Path(directory)
        self.keep = keep

    @staticmethod
    def valid_session_id(session_id: str) -> bool:
        """Return True for ids this server issues (32 hex digits), which are safe as folder names."""
        return bool(_SESSION_ID.match(session_id))

    def steps(self, session_id: str) -> list[int]:
        """Return the steps with a checkpoint for a session, oldest first."""
        folder = self.directory / session_id
        if not self.valid_session_id(session_id) or not folder.is_dir():
            return []
        found = [int(m.group(1)) for m in (_STEP_FILE.match(p.name) for p in folder.iterdir()) if m]
        return sorted(found)

    def save(
        self,
        session_id: str,
        open_request: split_pb2.OpenSessionRequest,
        net: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        last_step: int,
        epoch: int,
        last_reply: split_pb2.TrainReply | None,
    ) -> Path:
        """Write the session's state at last_step and prune older checkpoints beyond `keep`."""
        folder = self.directory / session_id
        path = folder / f"step-{last_step:09d}.pt"
        state = {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "open_request": _to_tensor(open_request),
            "last_step": last_step,
            "epoch": epoch,
            "rng_state": torch.get_rng_state(),
        }
        if last_reply is not None:
            state["last_reply"] = _to_tensor(last_reply)
        save_checkpoint(state, path)
        for old in self.steps(session_id)[: -self.keep]:
            (folder / f"step-{old:09d}.pt").unlink(missing_ok=True)
        return path

    def load(self, session_id: str, step: int) -> SavedSession:
        """Read a session's checkpoint at one step."""
        path = self.directory / session_id / f"step-{step:09d}.pt"
        state = load_checkpoint(path, REQUIRED_KEYS)
        reply = _from_tensor(state["last_reply"], split_pb2.TrainReply) if "last_reply" in state else None
        return SavedSession(
            open_request=_from_tensor(state["open_request"], split_pb2.OpenSessionRequest),
            model=state["model"],
            optimizer=state["optimizer"],
            last_step=int(state["last_step"]),
            epoch=int(state["epoch"]),
            last_reply=reply,
            rng_state=state["rng_state"],
        )
