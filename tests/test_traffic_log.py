"""Traffic log: round trip, rotation, torn-tail recovery, corruption with file and offset."""

import os
import stat
import struct
import zlib

import pytest
import torch

from cemsplit.shared import codec
from cemsplit.shared.config import TrafficLogConfig
from cemsplit.shared.traffic_log import CorruptRecordError, TrafficLogError, TrafficLogWriter, list_segments, read_records
from cemsplit.v1 import attacker_pb2


def record(step: int) -> attacker_pb2.TrafficRecord:
    return attacker_pb2.TrafficRecord(
        session_id="s1",
        timestamp_ns=step,
        activations=attacker_pb2.ActivationRecord(
            step=step, epoch=1, phase=attacker_pb2.TRAIN, activations=codec.encode(torch.full((4, 8, 7, 7), float(step))), labels=codec.encode(torch.arange(4))
        ),
    )


def test_round_trip_and_private_mode(tmp_path):
    with TrafficLogWriter(tmp_path / "log", fsync="always") as writer:
        for step in range(1, 6):
            writer.append(record(step))
    records = list(read_records(tmp_path / "log"))
    assert [r.activations.step for r in records] == [1, 2, 3, 4, 5]
    assert float(codec.decode(records[2].activations.activations).mean()) == 3.0
    for segment in list_segments(tmp_path / "log"):
        assert stat.S_IMODE(segment.stat().st_mode) == 0o600


def test_rotation_by_size(tmp_path):
    size = len(record(1).SerializeToString())
    with TrafficLogWriter(tmp_path, segment_bytes=16 + 2 * (size + 8), fsync="never") as writer:
        for step in range(1, 8):
            writer.append(record(step))
    assert len(list_segments(tmp_path)) == 4
    assert [r.activations.step for r in read_records(tmp_path)] == list(range(1, 8))


def test_torn_tail_is_recovered_and_truncated(tmp_path):
    with TrafficLogWriter(tmp_path) as writer:
        for step in range(1, 4):
            writer.append(record(step))
    segment = list_segments(tmp_path)[-1]
    full = segment.stat().st_size
    with open(segment, "r+b") as handle:
        handle.truncate(full - 100)
    assert [r.activations.step for r in read_records(tmp_path)] == [1, 2]

    with TrafficLogWriter(tmp_path) as writer:
        writer.append(record(4))
    assert [r.activations.step for r in read_records(tmp_path)] == [1, 2, 4]
    assert len(list_segments(tmp_path)) == 2


def test_checksum_mismatch_names_file_and_offset(tmp_path):
    with TrafficLogWriter(tmp_path) as writer:
        for step in range(1, 4):
            writer.append(record(step))
    segment = list_segments(tmp_path)[0]
    first_length = 8 + len(record(1).SerializeToString())
    second_offset = 16 + first_length
    with open(segment, "r+b") as handle:
        handle.seek(second_offset + 8 + 50)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptRecordError, match=rf"{segment} at byte offset {second_offset}: checksum mismatch") as caught:
        list(read_records(tmp_path))
    assert caught.value.offset == second_offset


def test_torn_record_in_earlier_segment_is_corruption(tmp_path):
    size = len(record(1).SerializeToString())
    with TrafficLogWriter(tmp_path, segment_bytes=16 + 2 * (size + 8)) as writer:
        for step in range(1, 5):
            writer.append(record(step))
    first = list_segments(tmp_path)[0]
    with open(first, "r+b") as handle:
        handle.truncate(first.stat().st_size - 10)
    with pytest.raises(CorruptRecordError, match="not the last one"):
        list(read_records(tmp_path))


def test_bad_magic_and_missing_directory(tmp_path):
    (tmp_path / "traffic-000001.log").write_bytes(b"NOTALOG!" + bytes(8))
    with pytest.raises(CorruptRecordError, match="bad magic"):
        list(read_records(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found"):
        list(read_records(tmp_path / "missing"))


def test_zero_filled_tail_is_torn_and_truncated(tmp_path):
    with TrafficLogWriter(tmp_path) as writer:
        for step in range(1, 3):
            writer.append(record(step))
    segment = list_segments(tmp_path)[-1]
    valid_size = segment.stat().st_size
    with open(segment, "ab") as handle:
        handle.write(bytes(4096))
    assert [r.activations.step for r in read_records(tmp_path)] == [1, 2]

    TrafficLogWriter(tmp_path).close()
    assert segment.stat().st_size == valid_size


def test_zero_length_record_before_data_is_corruption(tmp_path):
    with TrafficLogWriter(tmp_path) as writer:
        writer.append(record(1))
    segment = list_segments(tmp_path)[0]
    with open(segment, "ab") as handle:
        handle.write(bytes(8) + b"not zero")
    end_of_first = 16 + 8 + len(record(1).SerializeToString())
    with pytest.raises(CorruptRecordError, match=rf"at byte offset {end_of_first}: record length is 0"):
        list(read_records(tmp_path))


def test_torn_header_segment_is_removed_by_writer(tmp_path):
    with TrafficLogWriter(tmp_path) as writer:
        writer.append(record(1))
    (tmp_path / "traffic-000002.log").write_bytes(b"CEMS")
    assert [r.activations.step for r in read_records(tmp_path)] == [1]

    with TrafficLogWriter(tmp_path) as writer:
        writer.append(record(2))
    assert [path.name for path in list_segments(tmp_path)] == ["traffic-000001.log", "traffic-000002.log"]
    assert [r.activations.step for r in read_records(tmp_path)] == [1, 2]


def test_missing_segment_names_the_file(tmp_path):
    size = len(record(1).SerializeToString())
    with TrafficLogWriter(tmp_path, segment_bytes=16 + size + 8) as writer:
        for step in range(1, 4):
            writer.append(record(step))
    (tmp_path / "traffic-000002.log").unlink()
    with pytest.raises(TrafficLogError, match=r"lacks segment traffic-000002.log between traffic-000001.log and traffic-000003.log"):
        list(read_records(tmp_path))


def test_payload_that_is_not_a_record(tmp_path):
    with TrafficLogWriter(tmp_path) as writer:
        writer.append(record(1))
    segment = list_segments(tmp_path)[0]
    garbage = b"\xff\xff\xff\xff"
    with open(segment, "ab") as handle:
        handle.write(struct.pack("<II", len(garbage), zlib.crc32(garbage)) + garbage)
    offset = 16 + 8 + len(record(1).SerializeToString())
    with pytest.raises(CorruptRecordError, match=rf"at byte offset {offset}: payload is not a TrafficRecord"):
        list(read_records(tmp_path))


def test_empty_record_is_rejected(tmp_path):
    with TrafficLogWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="empty TrafficRecord"):
            writer.append(attacker_pb2.TrafficRecord())
    assert list(read_records(tmp_path)) == []


def test_reading_stops_at_flushed_position(tmp_path):
    writer = TrafficLogWriter(tmp_path, fsync="never")
    writer.append(record(1))
    writer.append(record(2))
    position = writer.flush()
    writer.append(record(3))
    writer.flush()
    assert [r.activations.step for r in read_records(tmp_path, position)] == [1, 2]
    assert [r.activations.step for r in read_records(tmp_path)] == [1, 2, 3]
    writer.close()


def test_writer_from_config_and_directory_mode(tmp_path):
    config = TrafficLogConfig(segment_mb=1, fsync="always", fsync_interval_s=5.0)
    directory = tmp_path / "log"
    with TrafficLogWriter.from_config(directory, config) as writer:
        assert writer.segment_bytes == 1024 * 1024
        assert writer.fsync == "always"
        assert writer.fsync_interval_s == 5.0
        writer.append(record(1))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_invalid_writer_settings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="fsync policy 'sometimes' is invalid"):
        TrafficLogWriter(tmp_path, fsync="sometimes")
    with pytest.raises(ValueError, match="segment_bytes 10 is too small"):
        TrafficLogWriter(tmp_path, segment_bytes=10)
