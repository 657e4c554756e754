"""Traffic log written by the server itself, off the training path.

Records wait in a bounded queue and a background thread appends them to a TrafficLogWriter,
so serialisation, checksums, writes and fsyncs never run on the thread that trains. A full
queue drops new records instead of blocking training; drops are counted and logged. This is
the same contract as the attacker mirror, so the service treats both as record sinks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from cemsplit.server.record_queue import RecordQueue
from cemsplit.shared.traffic_log import TrafficLogWriter

log = logging.getLogger(__name__)

# Longest wait for the next record before the thread checks whether it should stop.
_POLL_S = 0.2


class TrafficLogRecorder(RecordQueue):
    """Appends offered TrafficRecords to a traffic log from a background thread.

    Counters: `enqueued` records accepted into the queue, `sent` records appended to the log,
    `dropped` records refused by a full queue or lost to a failed write.

    Args:
        writer: the open log; the recorder closes it in close().
        max_queue: records held before new ones are dropped.
    """

    def __init__(self, writer: TrafficLogWriter, max_queue: int) -> None:
        super().__init__(max_queue, "traffic log", log)
        self.writer = writer
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="traffic-log", daemon=True)
        self._thread.start()
        log.info("writing traffic log to %s (fsync %s, segments of %d bytes)", writer.directory, writer.fsync, writer.segment_bytes)

    @property
    def directory(self) -> Path:
        return self.writer.directory

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued record is in the log and fsynced; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while not (self._queue.empty() and not self._busy):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.1))
        self.writer.flush()
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (for up to timeout_s seconds), stop the thread and close the log."""
        if not self.flush(timeout_s):
            log.warning("traffic log queue did not drain within %.1f s; %d records are lost", timeout_s, self._queue.qsize())
        self._stop.set()
        self._thread.join(timeout_s)
        self.writer.close()
        log.info("closed traffic log %s after %d records (%d dropped)", self.writer.directory, self.sent, self.dropped)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                record = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            with self._idle:
                self._busy = True
            try:
                self.writer.append(record)
                with self._counter_lock:
                    self.sent += 1
            except (OSError, ValueError) as error:
                with self._counter_lock:
                    self.dropped += 1
                self._drop_log.warning(
                    "traffic log write to %s failed for session %s: %s; the record is lost", self.writer.directory, record.session_id, error
                )
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()
