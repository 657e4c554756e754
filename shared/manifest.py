"""The client's manifest: which sample ids went into which training step.

One JSON object per line: {"session": id, "step": n, "epoch": e, "ids": [...]}. The manifest
stays with the client (ids never go on the wire); evaluators join recorded traffic to it to
score reconstructions against the true images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence


class ManifestError(ValueError):
    """An unreadable manifest line; the message names the file and line."""


class ManifestWriter:
    """Appends one line per training step, created with mode 0600."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._handle = os.fdopen(fd, "a", encoding="utf-8")

    def write(self, session_id: str, step: int, epoch: int, ids: Sequence[int]) -> None:
        line = json.dumps({"session": session_id, "step": step, "epoch": epoch, "ids": [int(i) for i in ids]})
        self._handle.write(line + "\n")

    def flush(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self.flush()
        self._handle.close()


def read_manifest(path: Path) -> dict[tuple[str, int], list[int]]:
    """Return {(session id, step): sample ids} from a manifest file.

    A later line for the same step (written after a client restart) replaces the earlier one.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} not found; pass the client's manifest.jsonl")
    steps: dict[tuple[str, int], list[int]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                steps[(str(entry["session"]), int(entry["step"]))] = [int(i) for i in entry["ids"]]
            except (ValueError, KeyError, TypeError) as error:
                raise ManifestError(f"{path}:{number}: invalid manifest line ({error})") from None
    return steps
