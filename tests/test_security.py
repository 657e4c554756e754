"""TLS, mutual TLS, bearer tokens and the plaintext rule, against real server processes."""

import json
import stat
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cemsplit.shared.certs import create_dev_pki
from cemsplit.shared.config import TransportConfig
from cemsplit.shared.security import SecurityError, open_channel, server_credentials
from cemsplit.v1 import split_pb2, split_pb2_grpc
from conftest import TINY


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    good = tmp_path_factory.mktemp("pki")
    other = tmp_path_factory.mktemp("other-pki")
    create_dev_pki(good)
    create_dev_pki(other)
    return good, other


def tls_flags(pki_dir, *, server=False, client=False, mutual=False):
    flags = []
    if server:
        flags += ["--tls-cert", str(pki_dir / "server.pem"), "--tls-key", str(pki_dir / "server-key.pem")]
    if client:
        flags += ["--tls-ca", str(pki_dir / "ca.pem")]
    if mutual:
        flags += ["--tls-client-cert", str(pki_dir / "client.pem"), "--tls-client-key", str(pki_dir / "client-key.pem")]
    return flags


def close_unknown_session(channel) -> grpc.StatusCode:
    """Call CloseSession on a session that does not exist; a reachable server answers NOT_FOUND."""
    stub = split_pb2_grpc.SplitLearningStub(channel)
    try:
        stub.CloseSession(split_pb2.CloseSessionRequest(session_id="0" * 32), timeout=10)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_certs_command_writes_private_keys_and_never_overwrites(tmp_path):
    command = [sys.executable, "-m", "cemsplit.cli", "certs", str(tmp_path), "--host", "server.lan"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    for name in ("ca-key.pem", "server-key.pem", "client-key.pem"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    before = (tmp_path / "ca.pem").read_bytes()
    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode == 1
    assert "already exists" in second.stderr
    assert (tmp_path / "ca.pem").read_bytes() == before


@pytest.mark.slow
def test_training_run_over_tls(start_role, pki, tmp_path):
    good, _ = pki
    server = start_role("server", *tls_flags(good, server=True, client=True), transport=TransportConfig(tls_ca=good / "ca.pem"))
    client = start_role(
        "client", *TINY, "--train-limit", "128", "--epochs", "1", "--server", server.address, *tls_flags(good, client=True)
    )
    assert client.process.wait(300) == 0, client.log()
    summary = json.loads((tmp_path / "client" / "summary.json").read_text())
    assert summary["steps"] == 2
    assert "TLS" in server.log()


def test_mutual_tls_rejects_foreign_client_certificate(start_role, pki):
    good, other = pki
    trusted = TransportConfig(tls_ca=good / "ca.pem", tls_client_cert=good / "client.pem", tls_client_key=good / "client-key.pem")
    server = start_role("server", *tls_flags(good, server=True, client=True), "--require-client-cert", "true", transport=trusted)

    channel = open_channel(server.address, trusted, [])
    assert close_unknown_session(channel) == grpc.StatusCode.NOT_FOUND
    channel.close()

    foreign = TransportConfig(tls_ca=good / "ca.pem", tls_client_cert=other / "client.pem", tls_client_key=other / "client-key.pem")
    channel = open_channel(server.address, foreign, [])
    assert close_unknown_session(channel) == grpc.StatusCode.UNAVAILABLE
    channel.close()

    anonymous = TransportConfig(tls_ca=good / "ca.pem")
    channel = open_channel(server.address, anonymous, [])
    assert close_unknown_session(channel) == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_client_rejects_server_from_unknown_ca(start_role, pki):
    good, other = pki
    server = start_role("server", *tls_flags(good, server=True, client=True), transport=TransportConfig(tls_ca=good / "ca.pem"))
    channel = open_channel(server.address, TransportConfig(tls_ca=other / "ca.pem"), [])
    assert close_unknown_session(channel) == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_bearer_token_checked(start_role, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token-value\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("s3cret-token-valuX\n")
    server = start_role("server", "--token-file", str(token))

    for config, expected in (
        (TransportConfig(token_file=token), grpc.StatusCode.NOT_FOUND),
        (TransportConfig(token_file=wrong), grpc.StatusCode.UNAUTHENTICATED),
        (TransportConfig(), grpc.StatusCode.UNAUTHENTICATED),
    ):
        channel = open_channel(server.address, config, [])
        assert close_unknown_session(channel) == expected
        channel.close()

    channel = grpc.insecure_channel(server.address)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()
    assert "rejected a call to /cemsplit.v1.SplitLearning/CloseSession: wrong bearer token" in server.log()


def test_plaintext_only_on_loopback(tmp_path):
    with pytest.raises(SecurityError, match="not a loopback address and TLS is off"):
        open_channel("10.1.2.3:50051", TransportConfig(), [])
    with pytest.raises(SecurityError, match="not a loopback address and TLS is off"):
        server_credentials("0.0.0.0:50051", TransportConfig())
    assert server_credentials("0.0.0.0:50051", TransportConfig(insecure=True)) is None
    assert server_credentials("[::1]:50051", TransportConfig()) is None
    open_channel("10.1.2.3:50051", TransportConfig(insecure=True), []).close()

    result = subprocess.run(
        [sys.executable, "-m", "cemsplit.cli", "server", "--server-listen", "0.0.0.0:0", "--run-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "listen address 0.0.0.0:0 is not a loopback address and TLS is off" in result.stderr


def test_tls_settings_validated(tmp_path):
    with pytest.raises(ValueError, match="tls_cert and tls_key must be given together"):
        TransportConfig(tls_cert=tmp_path / "a.pem")
    with pytest.raises(ValueError, match="require_client_cert needs tls_cert"):
        TransportConfig(require_client_cert=True)
    missing = TransportConfig(tls_ca=tmp_path / "missing.pem")
    with pytest.raises(SecurityError, match="tls_ca file .*missing.pem not found"):
        open_channel("127.0.0.1:1", missing, [])
    empty = tmp_path / "empty-token"
    empty.write_text("  \n")
    with pytest.raises(SecurityError, match="is empty"):
        open_channel("127.0.0.1:1", TransportConfig(token_file=empty), [])
