"""`cemsplit traffic inspect`: sessions, step ranges, shapes, dtypes and counts of a real log."""

import json
import subprocess
import sys

import torch

from cemsplit.shared import codec
from cemsplit.shared.specs import model_spec_message
from cemsplit.shared.traffic_log import TrafficLogWriter, list_segments
from cemsplit.shared.vgg import SplitSpec
from cemsplit.v1 import attacker_pb2, tensor_pb2

SPEC = SplitSpec(input_shape=(1, 28, 28), num_classes=10)


def activations(session: str, step: int, epoch: int, batch: int, phase=attacker_pb2.TRAIN, wire=None) -> attacker_pb2.TrafficRecord:
    return attacker_pb2.TrafficRecord(
        session_id=session,
        timestamp_ns=step * 1_000_000_000,
        activations=attacker_pb2.ActivationRecord(
            step=step,
            epoch=epoch,
            phase=phase,
            activations=codec.encode(torch.rand(batch, 8, 7, 7), wire),
            labels=codec.encode(torch.arange(batch) % 10),
        ),
    )


def write_log(directory):
    start = attacker_pb2.SessionStart(model=model_spec_message(SPEC), wire_dtype=tensor_pb2.FLOAT16, client_name="alice")
    with TrafficLogWriter(directory, segment_bytes=16 * 1024) as writer:
        writer.append(attacker_pb2.TrafficRecord(session_id="first", timestamp_ns=0, session_start=start))
        for step in (1, 2, 3, 5):  # step 4 was never recorded
            writer.append(activations("first", step, 1 if step < 3 else 2, 16 if step < 5 else 4, wire=tensor_pb2.FLOAT16))
        writer.append(activations("first", 5, 2, 4, wire=tensor_pb2.FLOAT16))  # a retried step
        writer.append(activations("first", 0, 2, 8, phase=attacker_pb2.EVAL))
        writer.append(activations("second", 7, 3, 2))  # a session whose start is not in the log


def inspect(*args):
    return subprocess.run([sys.executable, "-m", "cemsplit.cli", "traffic", "inspect", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_inspect_json_counts(tmp_path):
    write_log(tmp_path)
    result = inspect(tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["records"] == 8
    assert summary["segments"] == len(list_segments(tmp_path)) > 1
    first, second = summary["sessions"]

    assert first["session_id"] == "first"
    assert first["client_name"] == "alice"
    assert first["feature_shape"] == [8, 7, 7]
    assert first["wire_dtype"] == "FLOAT16"
    train = first["train"]
    assert train["records"] == 5
    assert (train["first_step"], train["last_step"]) == (1, 5)
    assert train["missing_steps"] == 1
    assert train["repeated_steps"] == 1
    assert train["epochs"] == [1, 2]
    assert train["samples"] == 16 * 3 + 4 * 2
    assert train["activations"] == {"[16, 8, 7, 7] FLOAT16": 3, "[4, 8, 7, 7] FLOAT16": 2}
    assert train["labels"] == {"[16] INT64": 3, "[4] INT64": 2}
    assert first["eval"]["records"] == 1
    assert first["eval"]["activations"] == {"[8, 8, 7, 7] FLOAT32": 1}

    assert second["started"] is False
    assert second["train"]["activations"] == {"[2, 8, 7, 7] FLOAT32": 1}
    assert second["eval"] is None


def test_inspect_text_output(tmp_path):
    write_log(tmp_path)
    result = inspect(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "8 records, 2 sessions" in result.stdout
    assert "session first (client 'alice', vgg11_bn cut 2" in result.stdout
    assert "train: 5 records, steps 1-5, epochs 1-2, 56 samples, 1 missing step, 1 repeated step" in result.stdout
    assert "activations [16, 8, 7, 7] FLOAT16: 3 records" in result.stdout
    assert "session second (no session start recorded)" in result.stdout


def test_inspect_reports_damage_and_missing_directory(tmp_path):
    write_log(tmp_path)
    first = list_segments(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[40] ^= 0xFF
    first.write_bytes(bytes(data))
    result = inspect(tmp_path)
    assert result.returncode == 1
    assert f"corrupt traffic log record in {first} at byte offset 16: checksum mismatch" in result.stderr

    result = inspect(tmp_path / "missing")
    assert result.returncode == 1
    assert "not found" in result.stderr
