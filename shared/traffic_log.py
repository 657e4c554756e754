"""Append-only traffic log: segment files of length-prefixed, checksummed TrafficRecord messages.

Layout of a log directory: segment files named traffic-000001.log, traffic-000002.log, ...
numbered without gaps. Each segment starts with a 16-byte header:

    magic b"CEMSPLTL" | format version (uint32 LE) | reserved (uint32 LE, 0)

followed by records:

    payload length (uint32 LE) | CRC32 of the payload (uint32 LE) | payload

where the payload is a non-empty serialized cemsplit.v1.TrafficRecord. A writer starts a new
segment when the current one would pass `segment_bytes`. Segments are created with mode 0600
and the directory with mode 0700 because they hold private activations.

A crash mid-write can leave the end of the last segment incomplete: a record cut short, a
header cut short, or (on file systems that extend the file before its data is on disk) a run
of zero bytes. The reader stops before such a torn tail, and a writer opening the directory
truncates it. Any other damage (a checksum mismatch, an impossible length, a torn record in
an earlier segment, a missing segment) raises TrafficLogError naming the file and byte offset.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from cemsplit.v1 import attacker_pb2

log = logging.getLogger(__name__)

MAGIC = b"CEMSPLTL"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sII")
_RECORD = struct.Struct("<II")
HEADER_BYTES = _HEADER.size
RECORD_PREFIX_BYTES = _RECORD.size
SEGMENT_PATTERN = re.compile(r"^traffic-(\d{6})\.log$")

# Largest payload accepted; a longer length field can only come from damage.
MAX_RECORD_BYTES = 1 << 30
DEFAULT_SEGMENT_BYTES = 256 * 1024 * 1024
# Bytes read at a time when checking that the rest of a segment is zero-filled.
_ZERO_CHECK_CHUNK = 1 << 20

FsyncPolicy = Literal["always", "interval", "never"]


class TrafficLogError(ValueError):
    """A traffic log directory that cannot be read as written; the message names the file."""


class CorruptRecordError(TrafficLogError):
    """A damaged traffic log record; `path` and `offset` locate it."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"corrupt traffic log record in {path} at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset


@dataclass(frozen=True)
class LogPosition:
    """End of the data a writer had flushed: segment number and byte offset within it."""

    segment: int
    offset: int


def segment_path(directory: Path, index: int) -> Path:
    """Return the path of segment number `index` (starting at 1) in a log directory."""
    return Path(directory) / f"traffic-{index:06d}.log"


def segment_index(path: Path) -> int:
    """Return the number of a segment file from its name."""
    match = SEGMENT_PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not named like a traffic log segment (traffic-NNNNNN.log)")
    return int(match.group(1))


def list_segments(directory: Path) -> list[Path]:
    """Return the segment files of a log directory in write order.

    Raises:
        FileNotFoundError: the directory does not exist.
        TrafficLogError: a segment number is missing between the first and the last segment,
            for example after an incomplete copy.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"traffic log directory {directory} not found")
    found = sorted((int(match.group(1)), entry) for entry in directory.iterdir() if (match := SEGMENT_PATTERN.match(entry.name)))
    for (previous, _), (current, _) in zip(found, found[1:]):
        if current != previous + 1:
            missing = segment_path(directory, previous + 1)
            raise TrafficLogError(
                f"traffic log {directory} lacks segment {missing.name} between {segment_path(directory, previous).name} and "
                f"{segment_path(directory, current).name}; copy the whole directory"
            )
    return [path for _, path in found]


@dataclass
class _ScanState:
    """Where the valid data of a segment ends and whether a torn tail follows it."""

    valid_end: int = 0
    torn: bool = False
    records: int = 0


def _rest_is_zero(handle, offset: int, size: int) -> bool:
    handle.seek(offset)
    remaining = size - offset
    while remaining > 0:
        chunk = handle.read(min(_ZERO_CHECK_CHUNK, remaining))
        if not chunk or chunk.count(0) != len(chunk):
            return False
        remaining -= len(chunk)
    return True


def _iter_segment(path: Path, last_segment: bool, state: _ScanState, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield (byte offset, payload) for each valid record of one segment.

    Rules are in the module docstring. `state` receives the end of the valid data and whether
    a torn tail was found. `end` stops reading at that byte offset (data written later is not
    read).
    """
    size = path.stat().st_size if end is None else min(end, path.stat().st_size)
    with open(path, "rb") as handle:
        header = handle.read(_HEADER.size)
        if len(header) < _HEADER.size:
            if last_segment:
                log.warning("traffic log segment %s has a torn header (%d of %d bytes); it holds no records", path, len(header), _HEADER.size)
                state.torn = True
                return
            raise CorruptRecordError(path, 0, f"segment header is {len(header)} bytes, expected {_HEADER.size}")
        magic, version, _ = _HEADER.unpack(header)
        if magic != MAGIC:
            raise CorruptRecordError(path, 0, f"bad magic {magic!r}; this is not a cemsplit traffic log segment")
        if version != FORMAT_VERSION:
            raise CorruptRecordError(path, 0, f"format version {version} is not supported (this reader reads {FORMAT_VERSION})")

        offset = _HEADER.size
        state.valid_end = offset
        while offset < size:
            handle.seek(offset)
            prefix = handle.read(_RECORD.size)
            if len(prefix) < _RECORD.size:
                _torn_or_corrupt(path, offset, last_segment, "record header cut short", state)
                return
            length, checksum = _RECORD.unpack(prefix)
            if length == 0:
                if last_segment and _rest_is_zero(handle, offset, size):
                    _torn_or_corrupt(path, offset, last_segment, f"{size - offset} zero bytes, written before their data", state)
                    return
                raise CorruptRecordError(path, offset, "record length is 0; writers never write empty records")
            if length > MAX_RECORD_BYTES:
                raise CorruptRecordError(path, offset, f"record length {length} exceeds the limit {MAX_RECORD_BYTES}")
            if offset + _RECORD.size + length > size:
                available = size - offset - _RECORD.size
                _torn_or_corrupt(path, offset, last_segment, f"payload cut short at {available} of {length} bytes", state)
                return
            payload = handle.read(length)
            if zlib.crc32(payload) != checksum:
                raise CorruptRecordError(path, offset, "checksum mismatch")
            yield offset, payload
            offset += _RECORD.size + length
            state.valid_end = offset
            state.records += 1


def _torn_or_corrupt(path: Path, offset: int, last_segment: bool, reason: str, state: _ScanState) -> None:
    if not last_segment:
        raise CorruptRecordError(path, offset, f"{reason} in a segment that is not the last one")
    log.warning("traffic log %s ends with a torn record at byte offset %d (%s); reading stops there", path, offset, reason)
    state.torn = True


def _parse(path: Path, offset: int, payload: bytes) -> attacker_pb2.TrafficRecord:
    record = attacker_pb2.TrafficRecord()
    try:
        record.ParseFromString(payload)
    except Exception as error:  # protobuf raises DecodeError, whose class differs between backends
        raise CorruptRecordError(path, offset, f"payload is not a TrafficRecord ({error})") from None
    return record


def iter_records(directory: Path, end: LogPosition | None = None) -> Iterator[tuple[Path, int, attacker_pb2.TrafficRecord]]:
    """Yield (segment path, byte offset, record) for every record of a log directory.

    Reading stops before a torn tail, and at `end` when given (for example the position a live
    writer returned from flush, so that records appended later are not read half-written).

    Raises:
        FileNotFoundError: the directory does not exist.
        TrafficLogError: a segment is missing or a record is damaged; names the file and byte offset.
    """
    segments = list_segments(directory)
    if end is not None:
        segments = [path for path in segments if segment_index(path) <= end.segment]
    for position, path in enumerate(segments):
        last = position == len(segments) - 1
        stop = end.offset if end is not None and last and segment_index(path) == end.segment else None
        for offset, payload in _iter_segment(path, last, _ScanState(), stop):
            yield path, offset, _parse(path, offset, payload)


def read_records(directory: Path, end: LogPosition | None = None) -> Iterator[attacker_pb2.TrafficRecord]:
    """Yield every record of a log directory in write order; see iter_records for the rules."""
    for _, _, record in iter_records(directory, end):
        yield record


class TrafficLogWriter:
    """Appends TrafficRecords to a log directory; thread-safe.

    Opening a directory that already holds segments truncates a torn tail of the last one and
    continues in a new segment, so earlier records are never rewritten.

    Args:
        directory: created with mode 0700 if missing.
        segment_bytes: size in bytes at which a new segment starts.
        fsync: "always" after every record, "interval" at most every fsync_interval_s seconds
            (checked when a record is appended), "never" only when a segment is closed.
        fsync_interval_s: seconds between forced writes under the "interval" policy.
    """

    def __init__(
        self,
        directory: Path,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: FsyncPolicy = "interval",
        fsync_interval_s: float = 1.0,
    ) -> None:
        if segment_bytes < _HEADER.size + _RECORD.size + 1:
            raise ValueError(f"segment_bytes {segment_bytes} is too small to hold one record")
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync policy {fsync!r} is invalid; use always, interval or never")
        if fsync_interval_s <= 0:
            raise ValueError(f"fsync_interval_s {fsync_interval_s} must be positive")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.records_written = 0
        self.bytes_written = 0
        self._lock = threading.Lock()
        self._handle = None
        self._size = 0
        self._last_sync = time.monotonic()
        self._index = self._recover()

    @classmethod
    def from_config(cls, directory: Path, config) -> "TrafficLogWriter":
        """Open a writer with the settings of a TrafficLogConfig (segment_mb, fsync, fsync_interval_s)."""
        return cls(directory, config.segment_mb * 1024 * 1024, config.fsync, config.fsync_interval_s)

    def _recover(self) -> int:
        """Truncate a torn tail of the last segment; return the number of the last segment kept."""
        segments = list_segments(self.directory)
        if not segments:
            return 0
        last = segments[-1]
        state = _ScanState()
        for _ in _iter_segment(last, True, state):
            pass
        if state.torn and state.valid_end == 0:
            log.warning("removing segment %s, whose header was never completely written", last)
            last.unlink()
            segments.pop()
            if not segments:
                return 0
            last = segments[-1]
        elif state.torn:
            log.warning("truncating torn tail of %s at byte offset %d", last, state.valid_end)
            os.truncate(last, state.valid_end)
        self._size = last.stat().st_size
        return segment_index(last)

    @property
    def current_segment(self) -> Path | None:
        """Path of the segment being written, or None before the first record."""
        return segment_path(self.directory, self._index) if self._handle else None

    def _open_next(self) -> None:
        self._close_segment()
        self._index += 1
        path = segment_path(self.directory, self._index)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._handle = os.fdopen(fd, "wb")
        self._handle.write(_HEADER.pack(MAGIC, FORMAT_VERSION, 0))
        self._size = _HEADER.size
        if self._index == 1 or self.fsync == "always":
            _fsync_directory(self.directory)

    def _close_segment(self) -> None:
        if self._handle is None:
            return
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None

    def append(self, record: attacker_pb2.TrafficRecord) -> None:
        """Append one record, starting a new segment first when this one would pass the size.

        Raises:
            ValueError: the record is empty or larger than MAX_RECORD_BYTES.
        """
        payload = record.SerializeToString()
        if not payload:
            raise ValueError("an empty TrafficRecord cannot be logged; set session_id and a body")
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(f"record of {len(payload)} bytes exceeds the limit {MAX_RECORD_BYTES}")
        prefix = _RECORD.pack(len(payload), zlib.crc32(payload))
        with self._lock:
            framed_size = len(prefix) + len(payload)
            if self._handle is None or (self._size + framed_size > self.segment_bytes and self._size > _HEADER.size):
                self._open_next()
            self._handle.write(prefix)
            self._handle.write(payload)
            self._size += framed_size
            self.records_written += 1
            self.bytes_written += framed_size
            self._sync_if_due()

    def _sync_if_due(self) -> None:
        if self.fsync == "never":
            return
        now = time.monotonic()
        if self.fsync == "always" or now - self._last_sync >= self.fsync_interval_s:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._last_sync = now

    def flush(self) -> LogPosition:
        """Write buffered records to the file and fsync it (unless the policy is "never").

        Returns the end of the data written so far, for iter_records(end=...).
        """
        with self._lock:
            if self._handle is not None:
                self._handle.flush()
                if self.fsync != "never":
                    os.fsync(self._handle.fileno())
            return LogPosition(self._index, self._size)

    def close(self) -> None:
        """Flush, fsync and close the current segment."""
        with self._lock:
            self._close_segment()

    def __enter__(self) -> "TrafficLogWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_directory(directory: Path) -> None:
    """Force a new directory entry to disk, so that a crash cannot lose a whole segment file."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
