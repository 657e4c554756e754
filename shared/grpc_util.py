"""Small gRPC helpers shared by the roles: binding, readiness and health checks."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
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


def add_checked_servicer(servicer: object, server: grpc.Server, service: ServiceDescriptor) -> None:
    """Register a servicer so that undecodable requests get INVALID_ARGUMENT, not INTERNAL.

    The generated add_*Servicer_to_server functions let gRPC parse requests, and a parse failure
    then surfaces as INTERNAL "Exception deserializing request!". Here the handlers receive raw
    bytes and parse them, so a malformed message is rejected with a status that names its type.
    """
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        behaviour = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handler = grpc.stream_stream_rpc_method_handler(
                _parse_stream(behaviour, request_class, method.full_name), response_serializer=response_class.SerializeToString
            )
        elif method.server_streaming:
            raise NotImplementedError(f"{service.full_name}/{method.name}: server-streaming methods are not supported here")
        elif method.client_streaming:
            handler = grpc.stream_unary_rpc_method_handler(
                _parse_stream(behaviour, request_class, method.full_name), response_serializer=response_class.SerializeToString
            )
        else:
            handler = grpc.unary_unary_rpc_method_handler(
                _parse_unary(behaviour, request_class, method.full_name), response_serializer=response_class.SerializeToString
            )
        handlers[method.name] = handler
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _decode(request_class, raw: bytes, method: str, context: grpc.ServicerContext):
    try:
        return request_class.FromString(raw)
    except DecodeError as error:
        log.warning("%s: rejected an undecodable %s from %s: %s", method, request_class.DESCRIPTOR.full_name, context.peer(), error)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {request_class.DESCRIPTOR.full_name}: {error}")


def _parse_unary(behaviour, request_class, method: str):
    def handle(raw: bytes, context: grpc.ServicerContext):
        return behaviour(_decode(request_class, raw, method, context), context)

    return handle


def _parse_stream(behaviour, request_class, method: str):
    def handle(raw_iterator, context: grpc.ServicerContext):
        return behaviour((_decode(request_class, raw, method, context) for raw in raw_iterator), context)

    return handle
