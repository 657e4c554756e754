"""Summary of a traffic log: sessions, step ranges, shapes, dtypes and record counts.

Only message headers are read; tensors are not decoded, so a large log is summarised at the
speed of reading its files.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cemsplit.shared.traffic_log import FORMAT_VERSION, iter_records, list_segments
from cemsplit.v1 import attacker_pb2, tensor_pb2


def _dtype_name(value: int) -> str:
    return tensor_pb2.DType.Name(value) if value in tensor_pb2.DType.values() else str(value)


def _tensor_key(tensor: tensor_pb2.Tensor) -> str:
    compression = "" if tensor.compression == tensor_pb2.COMPRESSION_NONE else f" {tensor_pb2.Compression.Name(tensor.compression)}"
    return f"{list(tensor.shape)} {_dtype_name(tensor.dtype)}{compression}"


@dataclass
class _PhaseSummary:
    records: int = 0
    samples: int = 0
    steps: set[int] = field(default_factory=set)
    repeated_steps: int = 0
    epochs: set[int] = field(default_factory=set)
    activations: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)

    def add(self, record: attacker_pb2.ActivationRecord) -> None:
        self.records += 1
        if record.step in self.steps:
            self.repeated_steps += 1
        self.steps.add(record.step)
        self.epochs.add(record.epoch)
        shape = list(record.activations.shape)
        self.samples += shape[0] if shape else 0
        self.activations[_tensor_key(record.activations)] += 1
        if record.HasField("labels"):
            self.labels[_tensor_key(record.labels)] += 1

    def to_dict(self) -> dict[str, object]:
        steps = sorted(self.steps)
        missing = (steps[-1] - steps[0] + 1 - len(steps)) if steps else 0
        return {
            "records": self.records,
            "samples": self.samples,
            "first_step": steps[0] if steps else None,
            "last_step": steps[-1] if steps else None,
            "missing_steps": missing,
            "repeated_steps": self.repeated_steps,
            "epochs": sorted(self.epochs),
            "activations": dict(self.activations),
            "labels": dict(self.labels),
        }


def summarize_log(directory: Path) -> dict[str, object]:
    """Return a JSON-ready summary of a traffic log directory.

    Keys: directory, format_version, segments, bytes, records, and sessions in the order
    first seen. Each session has its announced model, record count, and first and last
    timestamps. Per phase (train, eval) it has the record and sample counts, the step range,
    missing and repeated steps, the epochs, and how often each activation and label
    "shape dtype" occurs.

    Raises:
        FileNotFoundError, TrafficLogError: as iter_records does.
    """
    segments = list_segments(directory)
    sessions: dict[str, dict[str, object]] = {}
    phases: dict[str, dict[str, _PhaseSummary]] = {}
    total = 0

    for _, _, record in iter_records(directory):
        total += 1
        session = sessions.setdefault(
            record.session_id, {"session_id": record.session_id, "started": False, "records": 0, "first_time_ns": record.timestamp_ns}
        )
        session["records"] += 1
        session["last_time_ns"] = record.timestamp_ns
        body = record.WhichOneof("body")
        if body == "session_start":
            start = record.session_start
            session.update(
                started=True,
                client_name=start.client_name,
                architecture=start.model.architecture,
                cut_layer=start.model.cut_layer,
                bottleneck_channels=start.model.bottleneck_channels,
                input_shape=list(start.model.input_shape),
                feature_shape=list(start.model.feature_shape),
                num_classes=start.model.num_classes,
                wire_dtype=_dtype_name(start.wire_dtype),
            )
        elif body == "activations":
            phase = "eval" if record.activations.phase == attacker_pb2.EVAL else "train"
            phases.setdefault(record.session_id, {}).setdefault(phase, _PhaseSummary()).add(record.activations)

    for session_id, session in sessions.items():
        for phase in ("train", "eval"):
            summary = phases.get(session_id, {}).get(phase)
            session[phase] = summary.to_dict() if summary else None
    return {
        "directory": str(directory),
        "format_version": FORMAT_VERSION,
        "segments": len(segments),
        "bytes": sum(path.stat().st_size for path in segments),
        "records": total,
        "sessions": list(sessions.values()),
    }


def _range(values: list[int]) -> str:
    if not values:
        return "none"
    return str(values[0]) if values[0] == values[-1] else f"{values[0]}-{values[-1]}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def format_summary(summary: dict[str, object]) -> str:
    """Render a summarize_log result as indented text lines."""
    lines = [
        f"traffic log {summary['directory']}: format version {summary['format_version']}, {_count(summary['segments'], 'segment')}, "
        f"{summary['bytes'] / 2**20:.2f} MiB, {_count(summary['records'], 'record')}, {_count(len(summary['sessions']), 'session')}"
    ]
    for session in summary["sessions"]:
        if session["started"]:
            described = (
                f"client {session['client_name']!r}, {session['architecture']} cut {session['cut_layer']}, "
                f"input {session['input_shape']}, features {session['feature_shape']}, {session['num_classes']} classes, "
                f"wire {session['wire_dtype']}"
            )
        else:
            described = "no session start recorded"
        seconds = (session["last_time_ns"] - session["first_time_ns"]) / 1e9
        lines.append(f"session {session['session_id']} ({described}): {_count(session['records'], 'record')} over {seconds:.1f} s")
        for phase in ("train", "eval"):
            part = session[phase]
            if part is None:
                lines.append(f"  {phase}: no records")
                continue
            steps = f"steps {_range([part['first_step'], part['last_step']])}" if part["first_step"] is not None else "no steps"
            lines.append(
                f"  {phase}: {_count(part['records'], 'record')}, {steps}, epochs {_range(part['epochs'])}, "
                f"{_count(part['samples'], 'sample')}, {_count(part['missing_steps'], 'missing step')}, "
                f"{_count(part['repeated_steps'], 'repeated step')}"
            )
            for key, count in part["activations"].items():
                lines.append(f"    activations {key}: {_count(count, 'record')}")
            for key, count in part["labels"].items():
                lines.append(f"    labels {key}: {_count(count, 'record')}")
    return "\n".join(lines)
