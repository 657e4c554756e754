"""The inputs of an attack, which of them each threat model needs, and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cemsplit.shared.defenses.transmit import TransmitTransform
from cemsplit.shared.traffic_log import LogPosition

THREATS = ("white-box", "shadow", "rmle")

# Inputs a threat model cannot run without. The traffic log and the manifest are always
# needed. The encoder and the server snapshot are optional where not listed, and when both
# are given they add the target model's accuracy on the reconstructions.
REQUIRED_INPUTS: dict[str, tuple[str, ...]] = {
    "white-box": ("encoder",),
    "shadow": ("server_snapshot",),
    "rmle": ("encoder",),
}

INPUT_DESCRIPTIONS = {
    "traffic_dir": "the recorded traffic log directory",
    "manifest": "the client's manifest of sample ids per step (client/manifest.jsonl), to score against the true images",
    "encoder": "the trained client encoder checkpoint (client/encoder.pt)",
    "server_snapshot": "a snapshot of the server half (a file or the server's snapshots directory)",
}

# Command-line flag of each input, used in errors. The gRPC service passes its field names instead.
COMMAND_LINE_NAMES = {"traffic_dir": "--traffic", "manifest": "--manifest", "encoder": "--encoder", "server_snapshot": "--server-snapshot"}


class AttackInputError(ValueError):
    """Missing or invalid attack inputs; the message names each one and what to pass.

    `files_not_found` is true when every problem is a given path that does not exist, as
    opposed to an input that is missing or out of range.
    """

    def __init__(self, message: str, files_not_found: bool = False) -> None:
        super().__init__(message)
        self.files_not_found = files_not_found


@dataclass
class AttackInputs:
    """Files and choices of one attack; paths are local to the attacking process.

    traffic_end: where to stop reading a log that a live writer is still appending to.
    epoch: training epoch whose traffic is reconstructed; 0 takes the last recorded one.
    transform: the client's transmit transform (noise, dropout, top-k), known to a
        defence-aware attacker.
    """

    traffic_dir: Path
    manifest: Path | None
    encoder: Path | None = None
    server_snapshot: Path | None = None
    session_id: str = ""
    epoch: int = 0
    transform: TransmitTransform = field(default_factory=TransmitTransform)
    traffic_end: LogPosition | None = None


def report_key(threat: str) -> str:
    """Return the report.json key and file stem of a threat model ("white-box" -> "white_box")."""
    return threat.replace("-", "_")


def check_inputs(threat: str, inputs: AttackInputs, names: dict[str, str] = COMMAND_LINE_NAMES) -> None:
    """Raise AttackInputError listing every input the threat model lacks or that does not exist.

    `names` maps input fields to the names the caller's user knows them by (flags or fields).
    """
    if threat not in THREATS:
        raise AttackInputError(f"threat {threat!r} is not supported; use one of {', '.join(THREATS)}")
    if inputs.epoch < 0:
        raise AttackInputError(f"epoch {inputs.epoch} is negative; pass 0 for the last recorded epoch")

    missing = []
    for field in ("traffic_dir", "manifest", *REQUIRED_INPUTS[threat]):
        if getattr(inputs, field) is None:
            missing.append(f"{names[field]} is missing: the {threat} attack needs {INPUT_DESCRIPTIONS[field]}")
    not_found = []
    for field in ("traffic_dir", "manifest", "encoder", "server_snapshot"):
        value = getattr(inputs, field)
        if value is not None and not Path(value).exists():
            not_found.append(f"{names[field]} {value} not found: pass {INPUT_DESCRIPTIONS[field]}")
    if missing or not_found:
        raise AttackInputError("; ".join(missing + not_found), files_not_found=not missing)
