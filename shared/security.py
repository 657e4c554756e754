"""Transport security: TLS and mutual-TLS credentials, bearer tokens, and the plaintext rule.

Plaintext is allowed only between loopback addresses unless `transport.insecure` is set, so a
cross-host deployment cannot send private activations unencrypted by accident.
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
import logging
from pathlib import Path
from typing import Any, Callable

import grpc

from cemsplit.shared.config import TransportConfig
from cemsplit.shared.logs import RateLimitedLog

log = logging.getLogger(__name__)

# Health checks stay open without a token, so that orchestrators (docker-compose, Kubernetes)
# can probe readiness. They reveal only the serving status.
UNAUTHENTICATED_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
AUTHORIZATION_KEY = "authorization"


class SecurityError(ValueError):
    """A transport security setting that cannot work; the message names the setting and the fix."""


def split_host_port(address: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port" into host and port."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SecurityError(f"address {address!r} is invalid; use host:port, for example 127.0.0.1:50051")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Return True for localhost and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: Path, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise SecurityError(f"transport.{setting} file {path} not found") from None
    except OSError as error:
        raise SecurityError(f"transport.{setting} file {path} cannot be read: {error.strerror}") from None


def read_token(config: TransportConfig) -> str | None:
    """Return the bearer token from transport.token_file, or None when no token is configured."""
    if config.token_file is None:
        return None
    token = _read(config.token_file, "token_file").decode("utf-8", errors="strict").strip()
    if not token:
        raise SecurityError(f"transport.token_file {config.token_file} is empty; write a random token into it")
    if any(ch.isspace() for ch in token):
        raise SecurityError(f"transport.token_file {config.token_file} holds whitespace inside the token; use one line without spaces")
    return token


def _check_plaintext(address: str, config: TransportConfig, what: str, setting_hint: str) -> None:
    host, _ = split_host_port(address)
    if not is_loopback(host) and not config.insecure:
        raise SecurityError(
            f"{what} {address} is not a loopback address and TLS is off; set {setting_hint}, "
            "or pass --insecure true to allow plaintext on a trusted network"
        )


def server_credentials(address: str, config: TransportConfig) -> grpc.ServerCredentials | None:
    """Return TLS server credentials (mutual TLS when require_client_cert), or None for plaintext.

    Raises:
        SecurityError: plaintext on a non-loopback address without `insecure`, or unreadable files.
    """
    if config.tls_cert is None:
        _check_plaintext(address, config, "listen address", "transport.tls_cert and transport.tls_key")
        return None
    key = _read(config.tls_key, "tls_key")
    chain = _read(config.tls_cert, "tls_cert")
    roots = _read(config.tls_ca, "tls_ca") if config.require_client_cert else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=roots, require_client_auth=config.require_client_cert)


def open_channel(address: str, config: TransportConfig, options: list[tuple[str, Any]]) -> grpc.Channel:
    """Open a channel to a cemsplit server: TLS when tls_ca is set, and the bearer token if any.

    Raises:
        SecurityError: plaintext to a non-loopback address without `insecure`, or unreadable files.
    """
    token = read_token(config)
    if config.tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(config.tls_ca, "tls_ca"),
            private_key=_read(config.tls_client_key, "tls_client_key") if config.tls_client_key else None,
            certificate_chain=_read(config.tls_client_cert, "tls_client_cert") if config.tls_client_cert else None,
        )
        if config.tls_server_name:
            options = [*options, ("grpc.ssl_target_name_override", config.tls_server_name)]
        channel = grpc.secure_channel(address, credentials, options)
    else:
        _check_plaintext(address, config, "peer address", "transport.tls_ca")
        channel = grpc.insecure_channel(address, options)
    if token is not None:
        channel = grpc.intercept_channel(channel, BearerTokenClientInterceptor(token))
    return channel


def server_interceptors(config: TransportConfig) -> list[grpc.ServerInterceptor]:
    """Return the interceptors a server installs: token checking when token_file is set."""
    token = read_token(config)
    return [BearerTokenServerInterceptor(token)] if token is not None else []


# ---------------------------------------------------------------------------------------------
# Bearer tokens


_CallDetails = collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"))


class BearerTokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION_KEY, f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(details.metadata or []), self._header]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class BearerTokenServerInterceptor(grpc.ServerInterceptor):
    """Rejects calls without the expected bearer token with UNAUTHENTICATED.

    The comparison runs in constant time (hmac.compare_digest), so response timing does not
    reveal how much of a guessed token was right. Health checks are exempt.
    """

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()
        self._reject_log = RateLimitedLog(log)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = continuation(details)
        if handler is None or details.method in UNAUTHENTICATED_METHODS:
            return handler
        presented = dict(details.invocation_metadata or ()).get(AUTHORIZATION_KEY, "")
        if isinstance(presented, str) and hmac.compare_digest(presented.encode(), self._expected):
            return handler
        reason = "missing" if not presented else "wrong"
        self._reject_log.warning("rejected a call to %s: %s bearer token", details.method, reason)
        return _abort_handler(handler, grpc.StatusCode.UNAUTHENTICATED, f"{reason} bearer token; set transport.token_file to the server's token")


def _abort_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """Return a handler of the same kind as `handler` that aborts every call with code."""

    def abort(request_or_iterator, context):
        context.abort(code, message)

    kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)
