"""Transport constants and gRPC channel and server options shared by every role.

Each limit sits here with its reason, so that client, server and attacker agree on them.
"""

from __future__ import annotations

# Version of the cemsplit.v1 contract this code speaks. It increases when the meaning of a
# field changes; new optional fields do not change it.
PROTOCOL_VERSION = 1

DEFAULT_SERVER_PORT = 50051
DEFAULT_ATTACKER_PORT = 50052

# Largest message either side sends or accepts. A batch of 1024 unbottlenecked 128x16x16
# float32 activations is 128 MiB, so the default covers the default splits with a wide margin
# and a larger cut needs --max-message-mb.
DEFAULT_MAX_MESSAGE_MB = 64

# Clients ping an idle connection every 60 s so that NATs and load balancers keep it open.
# Servers accept pings 30 s apart, half the clients' interval, so a client never trips the
# server's "too many pings" limit (GOAWAY with ENHANCE_YOUR_CALM).
CLIENT_KEEPALIVE_TIME_MS = 60_000
CLIENT_KEEPALIVE_TIMEOUT_MS = 20_000
SERVER_MIN_PING_INTERVAL_MS = 30_000

# gRPC waits up to 120 s between reconnection attempts by default; 5 s lets a client find a
# restarted peer soon after it is back, at a cost of one connection attempt per 5 s meanwhile.
CLIENT_MAX_RECONNECT_BACKOFF_MS = 5_000


def channel_options(max_message_mb: int) -> list[tuple[str, int]]:
    """Return gRPC channel options: message size limits in bytes, keepalive and reconnection settings."""
    limit = max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", CLIENT_KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", CLIENT_MAX_RECONNECT_BACKOFF_MS),
    ]


def server_options(max_message_mb: int) -> list[tuple[str, int]]:
    """Return gRPC server options: message size limits in bytes and the accepted ping rate."""
    limit = max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 2),
        # One port per process: a second server on the same port is an error, not a silent share.
        ("grpc.so_reuseport", 0),
    ]
