"""Retries of gRPC calls with exponential backoff and jitter.

Only UNAVAILABLE (peer down or unreachable) and DEADLINE_EXCEEDED (peer too slow) are retried:
both can pass once the peer restarts. Every other status is an answer and is raised at once.
Retrying a training step is safe because steps are numbered and the server answers a repeated
step from its record instead of applying it twice.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import grpc

log = logging.getLogger(__name__)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
Reply = TypeVar("Reply")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff of retried calls, in seconds.

    The n-th retry waits min(max_backoff_s, initial_backoff_s * 2**(n-1)) times a random factor
    in [0.5, 1.5). Retrying stops once max_elapsed_s have passed since the first attempt.
    """

    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    max_elapsed_s: float = 300.0

    def delay(self, retry: int, rng: random.Random) -> float:
        """Return the wait before retry number `retry` (1-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (retry - 1))
        return base * rng.uniform(0.5, 1.5)


class RetriesExhausted(RuntimeError):
    """A call kept failing with a retryable status until the policy's time ran out."""

    def __init__(self, name: str, attempts: int, elapsed_s: float, error: grpc.RpcError) -> None:
        super().__init__(
            f"{name} failed {attempts} times over {elapsed_s:.0f} s, last with {error.code().name}: {error.details()}; "
            "check that the peer is running, or raise transport.retry_max_elapsed_s"
        )
        self.error = error


def call_with_retry(
    call: Callable[[], Reply],
    name: str,
    policy: RetryPolicy,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Reply:
    """Run call() until it succeeds, retrying UNAVAILABLE and DEADLINE_EXCEEDED with backoff.

    Args:
        call: makes one attempt, with its own deadline.
        name: what the call is, for logs and errors (for example "TrainStep 42").
        policy: backoff limits.

    Raises:
        grpc.RpcError: a status that is not retried.
        RetriesExhausted: retryable failures until policy.max_elapsed_s passed.
    """
    rng = rng or random.Random()
    started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        try:
            return call()
        except grpc.RpcError as error:
            if error.code() not in RETRYABLE:
                raise
            elapsed = time.monotonic() - started
            delay = policy.delay(attempts, rng)
            if elapsed + delay > policy.max_elapsed_s:
                raise RetriesExhausted(name, attempts, elapsed, error) from None
            log.warning("%s failed with %s (attempt %d); retrying in %.1f s", name, error.code().name, attempts, delay)
            sleep(delay)
