"""Senders of the client's training steps: one unary TrainStep call per step, or one TrainStream stream.

Both kinds make one attempt per `call` and raise grpc.RpcError on failure, so that the trainer's
retry logic (cemsplit.shared.retry) treats them alike. The stream kind keeps one bidirectional
stream open, sends each request on it and waits for the reply. A stream has no per-message
deadline, so the client enforces transport.rpc_timeout_s per step: when it passes, the stream is
cancelled and the attempt fails with DEADLINE_EXCEEDED. Any failure drops the stream, and the
next attempt opens a new one.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Protocol

import grpc

from cemsplit.v1 import split_pb2, split_pb2_grpc

log = logging.getLogger(__name__)

# Marks the end of the request iterator and of the reply queue.
_END = object()


class TrainCalls(Protocol):
    """Sends one training request per call and returns its reply."""

    method: str

    def call(self, request: split_pb2.TrainRequest) -> split_pb2.TrainReply:
        """Make one attempt; raises grpc.RpcError when it fails."""
        ...

    def close(self) -> None:
        """Release the connection state; calling it twice is harmless."""
        ...


class StreamFailure(grpc.RpcError):
    """A failed stream attempt that the client detected itself, with the status it maps to."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class UnaryTrainCalls:
    """One TrainStep call per step, each with the deadline timeout_s in seconds."""

    method = "TrainStep"

    def __init__(self, stub: split_pb2_grpc.SplitLearningStub, timeout_s: float) -> None:
        self._stub = stub
        self._timeout_s = timeout_s

    def call(self, request: split_pb2.TrainRequest) -> split_pb2.TrainReply:
        return self._stub.TrainStep(request, timeout=self._timeout_s)

    def close(self) -> None:
        pass


class _OpenStream:
    """One TrainStream call: a queue of requests feeds it and a reader thread queues its replies."""

    def __init__(self, stub: split_pb2_grpc.SplitLearningStub) -> None:
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.replies: queue.SimpleQueue = queue.SimpleQueue()
        self.call = stub.TrainStream(iter(self.requests.get, _END))
        self.reader = threading.Thread(target=self._read, name="train-stream-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for reply in self.call:
                self.replies.put(reply)
        except grpc.RpcError as error:
            self.replies.put(error)
        self.replies.put(_END)

    def end(self, cancel: bool) -> None:
        """Half-close the stream, cancel it when `cancel`, and wait briefly for the reader to finish."""
        self.requests.put(_END)
        if cancel:
            self.call.cancel()
        self.reader.join(timeout=5.0)


class StreamTrainCalls:
    """One long-lived TrainStream stream; each step waits at most timeout_s seconds for its reply."""

    method = "TrainStream"

    def __init__(self, stub: split_pb2_grpc.SplitLearningStub, timeout_s: float) -> None:
        self._stub = stub
        self._timeout_s = timeout_s
        self._stream: _OpenStream | None = None

    def call(self, request: split_pb2.TrainRequest) -> split_pb2.TrainReply:
        if self._stream is None:
            self._stream = _OpenStream(self._stub)
        stream = self._stream
        stream.requests.put(request)
        try:
            item = stream.replies.get(timeout=self._timeout_s)
        except queue.Empty:
            self._drop(cancel=True)
            raise StreamFailure(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no reply to step {request.step} on the training stream within {self._timeout_s:g} s (transport.rpc_timeout_s)",
            ) from None

        if isinstance(item, grpc.RpcError):
            self._drop(cancel=False)
            raise item
        if item is _END:
            self._drop(cancel=False)
            raise StreamFailure(grpc.StatusCode.UNAVAILABLE, f"the training stream ended before the reply to step {request.step}")
        return item

    def _drop(self, cancel: bool) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.end(cancel)

    def close(self) -> None:
        """End the stream from the client's side; the server's handler then returns."""
        self._drop(cancel=False)


def open_train_calls(kind: str, stub: split_pb2_grpc.SplitLearningStub, timeout_s: float) -> TrainCalls:
    """Return the caller for transport.train_call `kind` ("unary" or "stream")."""
    if kind == "unary":
        return UnaryTrainCalls(stub, timeout_s)
    if kind == "stream":
        return StreamTrainCalls(stub, timeout_s)
    raise ValueError(f"transport.train_call {kind!r} is invalid; use 'unary' or 'stream'")
