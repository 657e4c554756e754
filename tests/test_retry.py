"""Retry policy: which statuses are retried, backoff growth, jitter bounds and the time limit."""

import random

import grpc
import pytest

from cemsplit.shared.retry import RetriesExhausted, RetryPolicy, call_with_retry


class FakeError(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return f"fake {self._code.name}"


def flaky(failures, code=grpc.StatusCode.UNAVAILABLE):
    state = {"calls": 0}

    def call():
        state["calls"] += 1
        if state["calls"] <= failures:
            raise FakeError(code)
        return "ok"

    return call, state


def test_retries_unavailable_then_succeeds():
    call, state = flaky(3)
    waits = []
    assert call_with_retry(call, "TrainStep 1", RetryPolicy(), random.Random(0), waits.append) == "ok"
    assert state["calls"] == 4
    assert len(waits) == 3


def test_deadline_exceeded_is_retried():
    call, state = flaky(1, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert call_with_retry(call, "x", RetryPolicy(), random.Random(0), lambda s: None) == "ok"
    assert state["calls"] == 2


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED])
def test_answers_are_not_retried(code):
    call, state = flaky(5, code)
    with pytest.raises(grpc.RpcError):
        call_with_retry(call, "x", RetryPolicy(), random.Random(0), lambda s: None)
    assert state["calls"] == 1


def test_backoff_doubles_with_jitter_and_cap():
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=5.0)
    rng = random.Random(1)
    for retry, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        delay = policy.delay(retry, rng)
        assert 0.5 * base <= delay < 1.5 * base


def test_gives_up_after_max_elapsed():
    call, state = flaky(1000)
    waits = []
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=1.0, max_elapsed_s=0.0)
    with pytest.raises(RetriesExhausted, match="x failed 1 times"):
        call_with_retry(call, "x", policy, random.Random(0), waits.append)
    assert waits == []
