"""The gRPC server of a serving role (split-learning server, attacker): setup, health, stop.

Both roles serve one checked servicer beside the standard gRPC health service, on a listen
address with the transport's TLS and bearer-token settings. They stop on SIGTERM or SIGINT.
Health checks then report NOT_SERVING first, and calls in flight get a grace period.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cemsplit.shared.config import TransportConfig
from cemsplit.shared.grpc_util import add_checked_servicer, bind, write_port_file
from cemsplit.shared.security import server_credentials, server_interceptors
from cemsplit.shared.wire import server_options

log = logging.getLogger(__name__)

# Seconds that calls in flight may take to finish once a stop begins.
STOP_GRACE_S = 10.0


class RoleServer:
    """A gRPC server for one role's servicer, with TLS and tokens set up from the transport config.

    Construction checks the credentials, so a bad TLS setting fails before the role loads its
    data. `start` registers the servicer, binds and reports SERVING.
    """

    def __init__(self, listen: str, transport: TransportConfig) -> None:
        self.listen = listen
        self._credentials = server_credentials(listen, transport)
        self._interceptors = server_interceptors(transport)
        self._health = health.HealthServicer()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="rpc"),
            options=server_options(transport.max_message_mb),
            interceptors=self._interceptors,
        )
        self.port = 0

    @property
    def security(self) -> str:
        """How clients must connect, for log lines: "TLS" or "plaintext", and the token rule."""
        security = "TLS" if self._credentials else "plaintext"
        if self._interceptors:
            security += ", bearer token required"
        return security

    def start(self, servicer: object, service: ServiceDescriptor, port_file: Path | None) -> int:
        """Serve `servicer` as `service` and the health service; returns the bound port, also written to port_file."""
        add_checked_servicer(servicer, self._server, service)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self.port = bind(self._server, self.listen, self._credentials)
        self._server.start()
        for name in ("", service.full_name):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        write_port_file(port_file, self.port)
        return self.port

    def begin_stop(self) -> None:
        """Report NOT_SERVING to health checks, so that load balancers and launchers stop sending calls."""
        log.info("stopping: no new calls, finishing calls in flight")
        self._health.enter_graceful_shutdown()

    def stop(self) -> None:
        """Reject new calls and wait up to STOP_GRACE_S seconds for those in flight."""
        self._server.stop(grace=STOP_GRACE_S).wait()


def wait_for_stop(stop: threading.Event) -> None:
    """Block until `stop` is set; in the main thread SIGTERM and SIGINT set it too."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, frame: stop.set())
    stop.wait()
