"""Traffic log: round trip, rotation, torn-tail recovery, corruption with file and offset."""

import os
import stat

import pytest
import torch

from cemsplit.shared import codec
from cemsplit.shared.traffic_log import CorruptRecordError, TrafficLogWriter, list_segments, read_records
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
