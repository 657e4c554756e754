"""Child processes of the local launcher: start, watch, stop, and show their logs."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this child when the launcher dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt, so that a launcher stops its children as on Ctrl-C."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


class RoleFailed(RuntimeError):
    """A role exited with an error; the message carries the end of its log."""


@dataclass
class Child:
    """A role running as its own OS process, with its output in a log file."""

    role: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        return self.process.poll()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def start_role(role: str, arguments: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Child:
    """Start `python -m cemsplit.cli <role> <arguments>` with stdout and stderr in log_dir/<role>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{role}.log"
    handle = open(log_path, "ab")
    command = [sys.executable, "-m", "cemsplit.cli", role, *arguments]
    process = subprocess.Popen(
        command,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        # Its own session: Ctrl-C reaches the launcher only, which then stops the roles in order.
        start_new_session=True,
        preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
    )
    handle.close()
    log.info("started %s (pid %d), log %s", role, process.pid, log_path)
    return Child(role, process, log_path)


def wait_for_port_file(child: Child, path: Path, timeout_s: float) -> int:
    """Wait until a child writes its bound port to path; raises RoleFailed if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.exit_code() is not None:
            raise RoleFailed(f"{child.role} failed with exit status {child.exit_code()}; end of {child.log_path}:\n{child.log_tail()}")
        try:
            text = path.read_text(encoding="utf-8").strip()
            if text:
                return int(text)
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.1)
    raise RoleFailed(f"{child.role} did not start serving within {timeout_s:.0f} s; end of {child.log_path}:\n{child.log_tail()}")


def stop_children(children: list[Child], timeout_s: float = 20.0) -> None:
    """SIGTERM every child still running, wait up to timeout_s, then SIGKILL the rest."""
    for child in children:
        if child.exit_code() is None:
            try:
                child.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout_s
    for child in children:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            child.process.wait(remaining)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) did not stop within %.0f s; killing it", child.role, child.pid, timeout_s)
            child.process.kill()
            child.process.wait()
