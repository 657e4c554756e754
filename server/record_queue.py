"""The bounded record queue and the counters that every record sink of the server reports."""

from __future__ import annotations

import logging
import queue
import threading

from cemsplit.shared.logs import RateLimitedLog
from cemsplit.v1 import attacker_pb2, split_pb2


class RecordQueue:
    """A bounded queue of TrafficRecords that never blocks the training thread.

    Counters: `enqueued` records accepted into the queue, `sent` records the sink delivered,
    `dropped` records refused by a full queue or lost by the sink. Subclasses drain `_queue` from
    their own thread and update `sent` and `dropped` under `_counter_lock`.

    Args:
        max_queue: records held before new ones are dropped.
        sink: what the records feed, for the drop warning, for example "traffic log".
        logger: the sink's logger.
    """

    def __init__(self, max_queue: int, sink: str, logger: logging.Logger) -> None:
        self.enqueued = 0
        self.sent = 0
        self.dropped = 0
        self._queue: queue.Queue[attacker_pb2.TrafficRecord] = queue.Queue(maxsize=max_queue)
        self._counter_lock = threading.Lock()
        self._drop_log = RateLimitedLog(logger)
        self._sink = sink

    def offer(self, record: attacker_pb2.TrafficRecord) -> bool:
        """Queue a record without blocking; returns False and counts a drop when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            with self._counter_lock:
                self.dropped += 1
            self._drop_log.warning("%s queue is full (%d records); dropping records", self._sink, self._queue.maxsize)
            return False
        with self._counter_lock:
            self.enqueued += 1
        return True

    def stats(self) -> split_pb2.MirrorStats:
        """Return the counters as the wire message CloseSession reports."""
        with self._counter_lock:
            return split_pb2.MirrorStats(enqueued=self.enqueued, sent=self.sent, dropped=self.dropped)
