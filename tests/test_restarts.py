"""Training survives killed and stopped processes: real server, client and attacker processes.

Every run trains 640 digits in batches of 64 (10 steps per epoch) for 2 epochs, checkpointing
every 3 steps. An uninterrupted run with the same seed gives the reference accuracy.
"""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import RoleProcess, newest_client_checkpoint

CLI = [sys.executable, "-m", "cemsplit.cli"]

DATA = ["--train-limit", "640", "--test-limit", "200", "--aux-limit", "256", "--threads", "1"]
TRAIN = [*DATA, "--batch-size", "64", "--epochs", "2", "--checkpoint-every", "3", "--retry-max-elapsed-s", "120"]
STEPS = 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, what: str, timeout_s: float = 120.0, processes: tuple[RoleProcess, ...] = ()) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        for process in processes:
            if process.process.poll() is not None:
                raise AssertionError(f"{process.role} exited with {process.process.returncode} while waiting for {what}:\n{process.log()}")
        time.sleep(0.05)
    logs = "\n".join(process.log() for process in processes)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def server_checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(path.stem.split("-")[1]) for path in (workdir / "server" / "checkpoints").glob("*/step-*.pt"))


def finish(client: RoleProcess, timeout_s: float = 300.0) -> dict:
    client.process.wait(timeout_s)
    assert client.process.returncode == 0, client.log()
    return json.loads((client.log_path.parent / "client" / "summary.json").read_text())


def start_server(workdir: Path, port: int, *args: str) -> RoleProcess:
    server = RoleProcess("server", [*DATA, *args], workdir, listen=f"127.0.0.1:{port}")
    server.wait_port()
    return server


def start_client(workdir: Path, port: int, *args: str) -> RoleProcess:
    return RoleProcess("client", [*TRAIN, "--server", f"127.0.0.1:{port}", *args], workdir)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[dict, Path]:
    """Summary and working directory of an uninterrupted run."""
    workdir = tmp_path_factory.mktemp("reference")
    port = free_port()
    server = start_server(workdir, port)
    try:
        return finish(start_client(workdir, port)), workdir
    finally:
        server.stop()


@pytest.fixture(scope="module")
def reference(reference_run) -> dict:
    return reference_run[0]


def assert_matches_reference(summary: dict, reference: dict) -> None:
    assert summary["steps"] == STEPS
    assert [row["epoch"] for row in summary["epochs"]] == [1, 2]
    assert abs(summary["test_accuracy"] - reference["test_accuracy"]) <= 0.01, (summary["test_accuracy"], reference["test_accuracy"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "train_call"),
    [(signal.SIGKILL, "unary"), (signal.SIGTERM, "unary"), (signal.SIGKILL, "stream"), (signal.SIGTERM, "stream")],
    ids=["sigkill-unary", "sigterm-unary", "sigkill-stream", "sigterm-stream"],
)
def test_server_restart_mid_epoch(tmp_path, reference, signum, train_call):
    port = free_port()
    server = start_server(tmp_path, port)
    client = start_client(tmp_path, port, "--train-call", train_call)
    try:
        wait_for(lambda: 6 in server_checkpoint_steps(tmp_path), "the server's checkpoint of step 6", processes=(server, client))
        server.process.send_signal(signum)
        server.process.wait(30)
        if signum == signal.SIGTERM:
            assert server.process.returncode == 0, server.log()
            assert "stopped" in server.log()
        time.sleep(1.0)
        server = start_server(tmp_path, port)
        summary = finish(client)
    finally:
        server.stop()
        client.stop()

    assert_matches_reference(summary, reference)
    assert "resuming from the newest step both halves hold" in client.log()
    assert "resumed session" in server.log()


@pytest.mark.slow
def test_client_killed_and_restarted(tmp_path, reference):
    port = free_port()
    server = start_server(tmp_path, port)
    try:
        client = start_client(tmp_path, port)
        wait_for(lambda: 6 in server_checkpoint_steps(tmp_path), "the server's checkpoint of step 6", processes=(server, client))
        client.process.kill()
        client.process.wait(30)

        restarted = start_client(tmp_path, port)
        summary = finish(restarted)
    finally:
        server.stop()

    assert_matches_reference(summary, reference)
    assert f"opened session {summary['session_id']}" in client.log()
    metrics = (tmp_path / "client" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2]


@pytest.mark.slow
def test_client_sigterm_checkpoints_and_resumes(tmp_path, reference):
    port = free_port()
    server = start_server(tmp_path, port)
    try:
        client = start_client(tmp_path, port)
        wait_for(lambda: 3 in server_checkpoint_steps(tmp_path), "the server's checkpoint of step 3", processes=(server, client))
        client.process.send_signal(signal.SIGTERM)
        client.process.wait(60)
        assert client.process.returncode == 0, client.log()
        assert "stopped at step" in client.log()
        assert not (tmp_path / "client" / "summary.json").exists()
        stopped_at = int(newest_client_checkpoint(tmp_path / "client").stem.split("-")[-1])
        assert stopped_at in server_checkpoint_steps(tmp_path)
        checkpoints = [*(tmp_path / "client" / "checkpoints").glob("*.pt"), *(tmp_path / "server" / "checkpoints").glob("*/*.pt")]
        assert checkpoints and all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in checkpoints)

        summary = finish(start_client(tmp_path, port))
    finally:
        server.stop()

    assert_matches_reference(summary, reference)


@pytest.mark.slow
def test_attacker_killed_training_continues(tmp_path, reference):
    attacker = RoleProcess("attacker", [*DATA, "--decoder-epochs", "1"], tmp_path)
    attacker.wait_port()
    port = free_port()
    server = start_server(tmp_path, port, "--attacker", attacker.address)
    try:
        client = start_client(tmp_path, port)
        wait_for(lambda: 3 in server_checkpoint_steps(tmp_path), "the server's checkpoint of step 3", processes=(server, client))
        attacker.process.kill()
        attacker.process.wait(30)
        summary = finish(client)
    finally:
        server.stop()

    assert_matches_reference(summary, reference)
    mirror = summary["mirror"]
    assert mirror["dropped"] > 0
    assert mirror["sent"] + mirror["dropped"] == mirror["enqueued"]


@pytest.mark.slow
def test_finished_run_is_not_overwritten(reference_run):
    _, workdir = reference_run
    before = {path: path.read_bytes() for path in (workdir / "client").rglob("*") if path.is_file()}
    again = subprocess.run(
        [*CLI, "client", "--run-dir", str(workdir / "client"), *TRAIN, "--server", "127.0.0.1:9", "--connect-timeout-s", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert again.returncode == 1
    assert "already contains a finished run of 2 epochs" in again.stderr
    assert {path: path.read_bytes() for path in (workdir / "client").rglob("*") if path.is_file()} == before


def test_unreadable_checkpoint_is_named_and_kept(tmp_path):
    checkpoint = tmp_path / "client" / "checkpoints" / "client-step-000000003.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")
    result = subprocess.run(
        [*CLI, "client", "--run-dir", str(tmp_path / "client"), *TRAIN, "--server", "127.0.0.1:9", "--connect-timeout-s", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert f"checkpoint {checkpoint} cannot be read" in result.stderr
    assert checkpoint.read_bytes() == b"not a checkpoint"
    assert not (tmp_path / "client" / "metrics.jsonl").exists()


def test_missing_dataset_file_is_named(tmp_path):
    result = subprocess.run(
        [*CLI, "client", "--run-dir", str(tmp_path / "client"), "--dataset", "mnist", "--root", str(tmp_path / "no-such-dir")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert str(tmp_path / "no-such-dir") in result.stderr
    assert "Traceback" not in result.stderr
