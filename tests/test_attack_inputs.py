"""Attack inputs: the offline command and the attacker's Attack call name what is missing."""

import subprocess
import sys

import grpc
import pytest

from cemsplit.v1 import attacker_pb2, attacker_pb2_grpc


def run_attack_command(*args):
    command = [sys.executable, "-m", "cemsplit.cli", "attack", "--aux-limit", "64", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_offline_attack_names_missing_flags(tmp_path):
    (tmp_path / "traffic").mkdir()
    result = run_attack_command("--traffic", tmp_path / "traffic", "--threat", "white-box", "--out", tmp_path / "out")
    assert result.returncode == 1
    assert "--manifest is missing: the white-box attack needs the client's manifest" in result.stderr
    assert "--encoder is missing: the white-box attack needs the trained client encoder checkpoint" in result.stderr
    assert not (tmp_path / "out").exists()


def test_offline_attack_names_missing_files(tmp_path):
    (tmp_path / "traffic").mkdir()
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")
    snapshots = tmp_path / "nowhere" / "snapshots"
    result = run_attack_command(
        "--traffic", tmp_path / "traffic", "--threat", "shadow", "--out", tmp_path / "out", "--manifest", manifest, "--server-snapshot", snapshots
    )
    assert result.returncode == 1
    assert f"--server-snapshot {snapshots} not found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_offline_attack_on_empty_log(tmp_path):
    (tmp_path / "traffic").mkdir()
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")
    snapshot = tmp_path / "server.pt"
    snapshot.write_bytes(b"")
    result = run_attack_command(
        "--traffic", tmp_path / "traffic", "--threat", "shadow", "--out", tmp_path / "out", "--manifest", manifest, "--server-snapshot", snapshot
    )
    assert result.returncode == 1
    assert f"traffic log {tmp_path / 'traffic'} holds no session" in result.stderr


def test_offline_attack_rejects_unknown_threat(tmp_path):
    result = run_attack_command("--traffic", tmp_path, "--threat", "gan", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "invalid choice: 'gan'" in result.stderr


@pytest.fixture
def attacker_stub(start_role):
    attacker = start_role("attacker", "--threads", "1", "--aux-limit", "64")
    channel = grpc.insecure_channel(attacker.address)
    yield attacker_pb2_grpc.AttackerStub(channel), attacker
    channel.close()


def attack_status(stub, **fields) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Attack(attacker_pb2.AttackRequest(**fields), timeout=60)
    return caught.value.code(), caught.value.details()


def test_attack_call_statuses(attacker_stub, tmp_path):
    stub, attacker = attacker_stub
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")

    code, details = attack_status(stub, threat="gan", manifest=str(manifest), out_dir=str(tmp_path))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "threat 'gan' is not supported" in details

    code, details = attack_status(stub, threat="white-box", manifest=str(manifest), out_dir=str(tmp_path))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "encoder_checkpoint is missing" in details

    code, details = attack_status(stub, threat="rmle", manifest=str(manifest))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "out_dir is missing" in details

    missing = tmp_path / "encoder.pt"
    code, details = attack_status(stub, threat="rmle", manifest=str(manifest), encoder_checkpoint=str(missing), out_dir=str(tmp_path))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"encoder_checkpoint {missing} not found" in details

    snapshot = tmp_path / "server.pt"
    snapshot.write_bytes(b"")
    code, details = attack_status(stub, threat="shadow", manifest=str(manifest), server_snapshot=str(snapshot), out_dir=str(tmp_path))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "holds no session" in details

    stats = stub.GetStats(attacker_pb2.StatsRequest(), timeout=30)
    assert stats.received == 0
    assert attacker.process.poll() is None
