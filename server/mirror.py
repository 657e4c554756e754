"""Mirror of received activations to an attacker service, off the training path.

Records wait in a bounded queue and a background thread streams them to the attacker's Record
call. A full queue drops new records instead of blocking training; the drop is counted and
logged. When the attacker is down the thread waits for it with exponential backoff and jitter
while records stay queued, and a flush drops what is queued instead of waiting for an attacker
that does not answer.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time

import grpc

from cemsplit.server.record_queue import RecordQueue
from cemsplit.shared.config import TransportConfig
from cemsplit.shared.security import open_channel
from cemsplit.shared.wire import channel_options
from cemsplit.v1 import attacker_pb2, attacker_pb2_grpc

log = logging.getLogger(__name__)

# A stream ends after this long so that every call has a deadline; the next record opens another.
STREAM_MAX_S = 300.0
# A stream also ends after this long without records, so that the attacker sees its summary.
STREAM_IDLE_S = 2.0
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0


class AttackerMirror(RecordQueue):
    """Streams TrafficRecords to an attacker at `address` from a bounded queue.

    Counters: `enqueued` records accepted into the queue, `sent` records the attacker confirmed,
    `dropped` records refused by a full queue or lost with a failed stream.
    """

    def __init__(self, address: str, max_queue: int, transport: TransportConfig) -> None:
        super().__init__(max_queue, "attacker mirror", log)
        self.address = address
        self._options = channel_options(transport.max_message_mb)
        self._transport = transport
        self._open_channel: grpc.Channel | None = None
        self._stop = threading.Event()
        self._flush_requested = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._reachable = True
        self._thread = threading.Thread(target=self._run, name="attacker-mirror", daemon=True)
        self._thread.start()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued record reached the attacker or was dropped; False on timeout."""
        deadline = time.monotonic() + timeout_s
        self._flush_requested.set()
        with self._idle:
            while not (self._queue.empty() and not self._busy):
                if not self._reachable and not self._busy:
                    dropped = self._drop_queued()
                    log.warning("attacker %s is unreachable; dropped %d queued records", self.address, dropped)
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.1))
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush for up to timeout_s seconds, then stop the background thread."""
        self.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout_s)
        if self._open_channel is not None:
            self._open_channel.close()

    def _drop_queued(self) -> int:
        """Drop every queued record and count it; returns how many."""
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            dropped += 1
        with self._counter_lock:
            self.dropped += dropped
        return dropped

    def _wait_until_reachable(self, timeout_s: float) -> bool:
        try:
            grpc.channel_ready_future(self._channel()).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            return False
        return True

    def _run(self) -> None:
        backoff = BACKOFF_INITIAL_S
        while not self._stop.is_set():
            if not self._reachable:
                if not self._wait_until_reachable(backoff * random.uniform(0.5, 1.5)):
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                log.info("attacker %s is reachable again", self.address)
                self._reachable = True
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._flush_requested.clear()
                continue
            with self._idle:
                self._busy = True
            try:
                if self._stream([first]):
                    backoff = BACKOFF_INITIAL_S
                else:
                    self._reachable = False
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()

    def _channel(self) -> grpc.Channel:
        if self._open_channel is None:
            self._open_channel = open_channel(self.address, self._transport, self._options)
        return self._open_channel

    def _stream(self, first: list[attacker_pb2.TrafficRecord]) -> bool:
        """Send `first` and then queued records over one Record call; True when it succeeded.

        gRPC reads the records from its own thread, which may still be taking a record from the
        queue when the call fails; `ended` makes that record count as lost, not vanish.
        """
        pending = list(first)
        yielded = 0
        ended = False
        lock = threading.Lock()

        def records():
            nonlocal yielded
            started = time.monotonic()
            while True:
                while True:
                    with lock:
                        if ended or not pending:
                            break
                        record = pending.pop(0)
                        yielded += 1
                    yield record
                if ended or self._stop.is_set() or time.monotonic() - started > STREAM_MAX_S:
                    return
                wait_s = 0.05 if self._flush_requested.is_set() else STREAM_IDLE_S
                try:
                    record = self._queue.get(timeout=wait_s)
                except queue.Empty:
                    return
                with lock:
                    if ended:
                        with self._counter_lock:
                            self.dropped += 1
                        return
                    pending.append(record)

        try:
            summary = attacker_pb2_grpc.AttackerStub(self._channel()).Record(records(), timeout=STREAM_MAX_S + 60)
        except grpc.RpcError as error:
            with lock:
                ended = True
                lost = yielded + len(pending)
            with self._counter_lock:
                self.dropped += lost
            self._drop_log.warning(
                "stream to attacker %s failed (%s: %s); %d records lost, waiting for the attacker with backoff",
                self.address, error.code().name, error.details(), lost,
            )
            self._open_channel.close()
            self._open_channel = None
            return False
        with self._counter_lock:
            self.sent += summary.received
            self.dropped += yielded - summary.received
        return True
