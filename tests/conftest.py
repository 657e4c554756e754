"""Shared fixtures: real role processes started with `python -m cemsplit.cli` on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from cemsplit.shared.config import TransportConfig
from cemsplit.shared.grpc_util import wait_until_serving
from cemsplit.shared.security import open_channel
from cemsplit.v1 import split_pb2_grpc

# Small settings for runs across real processes: a few hundred real digits, one thread each.
TINY = [
    "--train-limit", "640",
    "--test-limit", "200",
    "--aux-limit", "256",
    "--batch-size", "64",
    "--threads", "1",
]


class RoleProcess:
    """A cemsplit role running as a child process, with its log in a file."""

    def __init__(self, role: str, args: list[str], workdir: Path, listen: str = "127.0.0.1:0") -> None:
        self.role = role
        self.log_path = workdir / f"{role}.log"
        self.port_file = workdir / f"{role}.port"
        self.port_file.unlink(missing_ok=True)
        port_flag = {"server": "--server-port-file", "attacker": "--attacker-port-file"}.get(role)
        listen_flag = {"server": "--server-listen", "attacker": "--attacker-listen"}.get(role)
        extra = [listen_flag, listen, port_flag, str(self.port_file)] if port_flag else []
        command = [sys.executable, "-m", "cemsplit.cli", role, "--run-dir", str(workdir / role), *extra, *args]
        with open(self.log_path, "ab") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.port = 0

    def wait_port(self, timeout_s: float = 60.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.role} exited with {self.process.returncode}:\n{self.log()}")
            if self.port_file.is_file() and self.port_file.read_text().strip():
                self.port = int(self.port_file.read_text())
                return self.port
            time.sleep(0.1)
        raise AssertionError(f"{self.role} did not serve within {timeout_s} s:\n{self.log()}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def start_role(tmp_path):
    """Start roles as child processes; every one still running is stopped after the test."""
    started: list[RoleProcess] = []

    def start(role: str, *args: str, wait: bool = True, transport: TransportConfig | None = None) -> RoleProcess:
        """Start a role; servers are awaited through a health check over `transport` (default plaintext)."""
        process = RoleProcess(role, list(args), tmp_path)
        started.append(process)
        if wait and role in ("server", "attacker"):
            process.wait_port()
            channel = open_channel(process.address, transport or TransportConfig(), [])
            wait_until_serving(channel, "", 30, role)
            channel.close()
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def stub(start_role):
    """A SplitLearning stub on a plaintext channel to a server started for the test."""
    server = start_role("server", "--threads", "1")
    channel = grpc.insecure_channel(server.address)
    yield split_pb2_grpc.SplitLearningStub(channel)
    channel.close()


def pid_alive(pid: int) -> bool:
    """Return True while a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def newest_client_checkpoint(client_run_dir: Path) -> Path:
    """Return the client's newest step checkpoint in a client run directory."""
    paths = sorted((client_run_dir / "checkpoints").glob("client-step-*.pt"))
    assert paths, f"no client checkpoints in {client_run_dir / 'checkpoints'}"
    return paths[-1]


def processes_mentioning(text: str) -> list[int]:
    """Return pids of live processes whose command line contains text."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found
