"""Weights-only snapshots of the server half, which the shadow-model attack trains through.

The server saves one file per snapshot, server-<session id>-epoch-<NNNN>.pt, holding the keys
"model" (the ServerNet state dict), "spec" (the split), "session_id", "epoch" and "step".
Files are written atomically with mode 0600 by a background thread, so that saving does not
stall training. Readers also accept the server's checkpoints (server-<session id>.pt), which
hold "model" but no spec.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import re
import threading
from pathlib import Path

import torch

from cemsplit.shared.checkpoint import CheckpointError, load_checkpoint, load_state_strict, save_checkpoint
from cemsplit.shared.vgg import ServerNet, SplitSpec

log = logging.getLogger(__name__)

SNAPSHOT_PATTERN = re.compile(r"^server-(?P<session>[0-9A-Za-z_-]+)-epoch-(?P<epoch>\d+)\.pt$")


def snapshot_path(directory: Path, session_id: str, epoch: int) -> Path:
    """Return the path of a session's snapshot after `epoch`."""
    return Path(directory) / f"server-{session_id}-epoch-{epoch:04d}.pt"


def find_snapshot(location: Path, session_id: str) -> Path:
    """Return the snapshot file to use: `location` itself, or the latest epoch's snapshot of the session in it.

    Raises:
        FileNotFoundError: nothing at `location`, or a directory without a snapshot of the session.
    """
    location = Path(location)
    if location.is_file():
        return location
    if not location.is_dir():
        raise FileNotFoundError(f"server snapshot {location} not found; pass a snapshot file or the server's snapshots directory")
    found = []
    for entry in location.iterdir():
        match = SNAPSHOT_PATTERN.match(entry.name)
        if match and match.group("session") == session_id:
            found.append((int(match.group("epoch")), entry))
    if not found:
        raise FileNotFoundError(
            f"no snapshot of session {session_id} in {location}; the server writes them when server.snapshots is true"
        )
    return max(found)[1]


def load_server_half(path: Path, spec: SplitSpec) -> ServerNet:
    """Load a server-half snapshot or checkpoint into a ServerNet in eval mode with frozen weights.

    `spec` is the split recorded in the traffic log. A snapshot whose own spec disagrees is
    rejected, because its weights belong to another split.
    """
    state = load_checkpoint(path, required_keys=("model",))
    if "spec" in state:
        saved = dict(state["spec"])
        saved["input_shape"] = tuple(saved["input_shape"])
        for field in ("input_shape", "num_classes", "cut_layer", "bottleneck_channels", "arch"):
            if saved.get(field) != getattr(spec, field):
                raise CheckpointError(
                    f"server snapshot {path} is for {field} {saved.get(field)!r} but the recorded session has "
                    f"{getattr(spec, field)!r}; pass the snapshot of the attacked session"
                )
    net = ServerNet(spec)
    load_state_strict(net, state["model"], path)
    net.eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


class SnapshotWriter:
    """Saves server-half snapshots every `every_epochs` epochs and when a session closes.

    Weights are copied on the calling thread (a memory copy) and written by a background
    thread. `every_epochs` 0 saves only when the session closes.
    """

    def __init__(self, directory: Path, every_epochs: int) -> None:
        if every_epochs < 0:
            raise ValueError(f"every_epochs {every_epochs} is negative; use 0 to snapshot only at session close")
        self.directory = Path(directory)
        self.every_epochs = every_epochs
        self.written: list[Path] = []
        self._queue: queue.Queue[tuple[Path, dict] | threading.Event] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)
        self._thread.start()

    def epoch_done(self, session_id: str, epoch: int, step: int, net: torch.nn.Module, spec: SplitSpec) -> None:
        """Queue a snapshot if `epoch` is a multiple of every_epochs."""
        if self.every_epochs and epoch % self.every_epochs == 0:
            self._submit(session_id, epoch, step, net, spec)

    def session_closed(self, session_id: str, epoch: int, step: int, net: torch.nn.Module, spec: SplitSpec, timeout_s: float = 60.0) -> Path:
        """Save the final snapshot of a session and wait until every queued snapshot is on disk."""
        path = self._submit(session_id, epoch, step, net, spec)
        self.wait(timeout_s)
        return path

    def _submit(self, session_id: str, epoch: int, step: int, net: torch.nn.Module, spec: SplitSpec) -> Path:
        spec_fields = dataclasses.asdict(spec)
        spec_fields["input_shape"] = list(spec.input_shape)
        weights = {name: tensor.detach().clone() for name, tensor in net.state_dict().items()}
        state = {"model": weights, "spec": spec_fields, "session_id": session_id, "epoch": epoch, "step": step}
        path = snapshot_path(self.directory, session_id, epoch)
        self._queue.put((path, state))
        return path

    def wait(self, timeout_s: float) -> bool:
        """Wait until every queued snapshot is written; False when timeout_s passed first."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 60.0) -> None:
        """Write the queued snapshots and stop the thread."""
        self.wait(timeout_s)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if isinstance(job, threading.Event):
                job.set()
                continue
            path, state = job
            try:
                save_checkpoint(state, path)
            except OSError as error:
                log.error("saving server snapshot %s failed: %s", path, error)
                continue
            self.written.append(path)
            log.info("session %s: saved server snapshot %s (epoch %d, step %d)", state["session_id"], path, state["epoch"], state["step"])
