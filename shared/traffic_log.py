"""Append-only traffic log: segment files of length-prefixed, checksummed TrafficRecord messages.

Layout of a log directory: segment files named traffic-000001.log, traffic-000002.log, ...
Each segment starts with a 16-byte header:

    magic b"CEMSPLTL" | format version (uint32 LE) | reserved (uint32 LE, 0)

followed by records:

    payload length (uint32 LE) | CRC32 of the payload (uint32 LE) | payload

where the payload is a serialized cemsplit.v1.TrafficRecord. A writer starts a new segment when
the current one would pass `segment_bytes`. Segments are created with mode 0600 because they
hold private activations.

A crash mid-write can leave the last record of the last segment incomplete. The reader stops
before such a torn tail (and a writer opening the directory truncates it). Any other damage,
a checksum mismatch or a length past the limit, raises CorruptRecordError naming the file and
byte offset.
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
SEGMENT_PATTERN = re.compile(r"^traffic-(\d{6})\.log$")

# Largest payload accepted; a longer length field can only come from damage.
MAX_RECORD_BYTES = 1 << 30
DEFAULT_SEGMENT_BYTES = 256 * 1024 * 1024

FsyncPolicy = Literal["always", "interval", "never"]


class CorruptRecordError(ValueError):
    """A damaged traffic log record; `path` and `offset` locate it."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"corrupt traffic log record in {path} at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset


def segment_path(directory: Path, index: int) -> Path:
    return Path(directory) / f"traffic-{index:06d}.log"


def list_segments(directory: Path) -> list[Path]:
    """Return the segment files of a log directory in write order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"traffic log directory {directory} not found")
    found = []
    for entry in directory.iterdir():
        match = SEGMENT_PATTERN.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    return [path for _, path in sorted(found)]


@dataclass
class _Scan:
    valid_end: int
    torn: bool
    records: int


def _scan(path: Path, last_segment: bool, visit=None) -> _Scan:
    """Walk one segment, calling visit(payload) per record; see the module docstring for rules."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(_HEADER.size)
        if len(header) < _HEADER.size:
            if last_segment:
                return _Scan(0, True, 0)
            raise CorruptRecordError(path, 0, f"segment header is {len(header)} bytes, expected {_HEADER.size}")
        magic, version, _ = _HEADER.unpack(header)
        if magic != MAGIC:
            raise CorruptRecordError(path, 0, f"bad magic {magic!r}; this is not a cemsplit traffic log segment")
        if version != FORMAT_VERSION:
            raise CorruptRecordError(path, 0, f"format version {version} is not supported (this reader reads {FORMAT_VERSION})")

        offset = _HEADER.size
        records = 0
        while offset < size:
            prefix = handle.read(_RECORD.size)
            if len(prefix) < _RECORD.size:
                return _torn_or_corrupt(path, offset, last_segment, "record header cut short", records)
            length, checksum = _RECORD.unpack(prefix)
            if length > MAX_RECORD_BYTES:
                raise CorruptRecordError(path, offset, f"record length {length} exceeds the limit {MAX_RECORD_BYTES}")
            payload = handle.read(length)
            if len(payload) < length:
                return _torn_or_corrupt(path, offset, last_segment, f"payload cut short at {len(payload)} of {length} bytes", records)
            if zlib.crc32(payload) != checksum:
                raise CorruptRecordError(path, offset, "checksum mismatch")
            if visit is not None:
                visit(payload, offset)
            offset += _RECORD.size + length
            records += 1
    return _Scan(offset, False, records)


def _torn_or_corrupt(path: Path, offset: int, last_segment: bool, reason: str, records: int) -> _Scan:
    if not last_segment:
        raise CorruptRecordError(path, offset, f"{reason} in a segment that is not the last one")
    log.warning("traffic log %s ends with a torn record at byte offset %d (%s); reading stops there", path, offset, reason)
    return _Scan(offset, True, records)


def read_records(directory: Path) -> Iterator[attacker_pb2.TrafficRecord]:
    """Yield every record of a log directory in write order, stopping before a torn tail.

    Raises:
        FileNotFoundError: the directory does not exist.
        CorruptRecordError: a record is damaged; names the file and byte offset.
    """
    segments = list_segments(directory)
    for position, path in enumerate(segments):
        records: list[attacker_pb2.TrafficRecord] = []

        def keep(payload: bytes, offset: int, path: Path = path, records: list = records) -> None:
            record = attacker_pb2.TrafficRecord()
            try:
                record.ParseFromString(payload)
            except Exception as error:  # protobuf raises DecodeError, a private subclass
                raise CorruptRecordError(path, offset, f"payload is not a TrafficRecord ({error})") from None
            records.append(record)

        _scan(path, position == len(segments) - 1, keep)
        yield from records


class TrafficLogWriter:
    """Appends TrafficRecords to a log directory; thread-safe.

    Opening a directory that already holds segments truncates a torn tail of the last one and
    continues in a new segment, so earlier records are never rewritten.

    Args:
        directory: created with mode 0700 if missing.
        segment_bytes: size at which a new segment starts.
        fsync: "always" after every record, "interval" at most every fsync_interval_s seconds,
            "never" only when a segment is closed.
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

        segments = list_segments(self.directory)
        if segments:
            last = segments[-1]
            scan = _scan(last, last_segment=True)
            if scan.torn:
                log.warning("truncating torn tail of %s at byte offset %d", last, scan.valid_end)
                os.truncate(last, scan.valid_end)
            self._index = int(SEGMENT_PATTERN.match(last.name).group(1))
        else:
            self._index = 0

    @property
    def current_segment(self) -> Path | None:
        return segment_path(self.directory, self._index) if self._handle else None

    def _open_next(self) -> None:
        self._close_segment()
        self._index += 1
        path = segment_path(self.directory, self._index)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._handle = os.fdopen(fd, "wb")
        self._handle.write(_HEADER.pack(MAGIC, FORMAT_VERSION, 0))
        self._size = _HEADER.size

    def _close_segment(self) -> None:
        if self._handle is None:
            return
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None

    def append(self, record: attacker_pb2.TrafficRecord) -> None:
        """Append one record, starting a new segment first when this one would pass the size."""
        payload = record.SerializeToString()
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(f"record of {len(payload)} bytes exceeds the limit {MAX_RECORD_BYTES}")
        framed = _RECORD.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self._handle is None or (self._size + len(framed) > self.segment_bytes and self._size > _HEADER.size):
                self._open_next()
            self._handle.write(framed)
            self._size += len(framed)
            self.records_written += 1
            self.bytes_written += len(framed)
            self._sync_if_due()

    def _sync_if_due(self) -> None:
        if self.fsync == "never":
            return
        now = time.monotonic()
        if self.fsync == "always" or now - self._last_sync >= self.fsync_interval_s:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._last_sync = now

    def flush(self) -> None:
        """Write buffered records to the file and fsync it (unless the policy is "never")."""
        with self._lock:
            if self._handle is not None:
                self._handle.flush()
                if self.fsync != "never":
                    os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Flush, fsync and close the current segment."""
        with self._lock:
            self._close_segment()

    def __enter__(self) -> "TrafficLogWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
