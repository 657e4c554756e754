"""`cemsplit health`: one gRPC health check, for container health checks and scripts.

The server and the attacker register the standard grpc.health.v1 service, with the empty name
for the process and their full service names ("cemsplit.v1.SplitLearning",
"cemsplit.v1.Attacker"). The command exits 0 when the named service reports SERVING and 1
otherwise, so `docker-compose` and `docker run --health-cmd` can use it as it is.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cemsplit.shared.config import RunConfig
from cemsplit.shared.security import SecurityError, open_channel
from cemsplit.shared.wire import channel_options


def check_health(address: str, service: str, timeout_s: float, config: RunConfig) -> tuple[bool, str]:
    """Ask the peer at address for the health of service ("" for the whole process).

    Returns (serving, description): serving is True only for status SERVING, and description is
    one line that names the address, the service and the status or the gRPC error.
    """
    name = service or "(process)"

    try:
        channel = open_channel(address, config.transport, channel_options(config.transport.max_message_mb))
    except SecurityError as error:
        return False, f"{address}: {error}"
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.RpcError as error:
        code = error.code()
        if code == grpc.StatusCode.NOT_FOUND:
            return False, f"{address}: service {name} is not registered; check --service (NOT_FOUND)"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return False, f"{address}: no answer within {timeout_s:g} s; check that the role is running and the address is reachable"
        return False, f"{address}: health check of {name} failed ({code.name}): {error.details()}"
    finally:
        channel.close()

    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {name} {status}"


def run_health(config: RunConfig, address: str, service: str, timeout_s: float) -> int:
    """Print the health of service at address; returns 0 when SERVING, else 1."""
    serving, description = check_health(address, service, timeout_s, config)
    print(description, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1
