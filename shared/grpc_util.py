"""Small gRPC helpers shared by the roles: binding, readiness and health checks."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)


class AddressError(ValueError):
    """A listen or peer address that cannot be used."""


def bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Bind a server to host:port and return the bound port (port 0 picks a free one)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise AddressError(f"listen address {address!r} is invalid; use host:port, for example 127.0.0.1:50051")
    try:
        bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as error:
        raise AddressError(f"cannot bind {address}: {error}; is the port in use?") from None
    if bound == 0:
        raise AddressError(f"cannot bind {address}; is the port in use or the host not local?")
    return bound


def write_port_file(path: Path | None, port: int) -> None:
    """Write the bound port to a file atomically, for launchers that started us with port 0."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{port}\n", encoding="utf-8")
    temporary.replace(path)


def wait_until_serving(channel: grpc.Channel, service: str, timeout_s: float, peer: str) -> None:
    """Block until the peer's health service reports SERVING for `service`.

    Raises:
        TimeoutError: the peer was not serving within timeout_s seconds; names the peer.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    last_problem = "no answer"
    while time.monotonic() < deadline:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=min(5.0, max(deadline - time.monotonic(), 0.1)))
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last_problem = f"status {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
        except grpc.RpcError as error:
            last_problem = f"{error.code().name}: {error.details()}"
        time.sleep(0.2)
    raise TimeoutError(f"{peer} was not serving {service or 'its services'} within {timeout_s:.0f} s ({last_problem}); check that it is running and reachable")
