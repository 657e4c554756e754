"""`cemsplit health` against real server and attacker processes: exit status and messages."""

import os
import socket
import subprocess
import sys

HEALTH = [sys.executable, "-m", "cemsplit.cli", "health"]


def health(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*HEALTH, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_health_serving_roles(start_role):
    server = start_role("server", "--threads", "1")
    attacker = start_role("attacker", "--threads", "1", "--aux-limit", "64")

    for address, service in (
        (server.address, ""),
        (server.address, "cemsplit.v1.SplitLearning"),
        (attacker.address, ""),
        (attacker.address, "cemsplit.v1.Attacker"),
    ):
        result = health("--address", address, "--service", service)
        assert result.returncode == 0, (service, result.stderr)
        assert "SERVING" in result.stdout, (service, result.stdout)


def test_health_unknown_service(start_role):
    server = start_role("server", "--threads", "1")
    result = health("--address", server.address, "--service", "cemsplit.v1.NoSuchService")
    assert result.returncode == 1
    assert "cemsplit.v1.NoSuchService is not registered" in result.stderr


def test_health_nothing_listening():
    port = free_port()
    result = health("--address", f"127.0.0.1:{port}", "--timeout", "3")
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "UNAVAILABLE" in result.stderr


def test_health_after_server_stops(start_role):
    server = start_role("server", "--threads", "1")
    assert health("--address", server.address).returncode == 0
    assert server.stop() == 0
    result = health("--address", server.address, "--timeout", "3")
    assert result.returncode == 1
    assert "SERVING" not in result.stdout


def test_health_rejects_bad_timeout():
    result = health("--address", "127.0.0.1:1", "--timeout", "0")
    assert result.returncode == 2
    assert "--timeout 0.0 must be positive" in result.stderr


def test_health_reads_environment_config():
    # The transport section comes from CEMSPLIT_TRANSPORT__* variables, as in a container.
    result = health("--address", "127.0.0.1:1", env={"CEMSPLIT_TRANSPORT__MAX_MESSAGE_MB": "0"})
    assert result.returncode == 2
    assert "transport.max_message_mb" in result.stderr
