"""`cemsplit attack`: run threat models on a traffic log alone, with no server or client running.

The log directory may be a copy taken to another machine. The attack needs the files listed
per threat model in cemsplit.attacker.inputs and the data settings of the recorded run (pass
the run's config.yaml with --config). It writes the same per-threat results and grids as the
live attacker, and merges its report section into OUT/report.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from cemsplit.attacker.attack import load_target, run_attack
from cemsplit.attacker.inputs import THREATS, AttackInputError, AttackInputs, check_inputs, report_key
from cemsplit.cli.report import attack_rows, attack_section, format_rows
from cemsplit.shared.config import RunConfig
from cemsplit.shared.datasets import load_splits
from cemsplit.shared.defenses.transmit import TransmitTransform

log = logging.getLogger(__name__)


def add_attack_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the inputs of an offline attack to a parser."""
    parser.add_argument("--traffic", type=Path, required=True, metavar="DIR", help="traffic log directory (a copy is fine)")
    parser.add_argument(
        "--threat",
        action="append",
        required=True,
        choices=[*THREATS, "all"],
        help="threat model to run; repeat the flag for several, or pass 'all'",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for report.json and the grids; created if missing")
    parser.add_argument("--manifest", type=Path, metavar="FILE", help="the client's manifest.jsonl, to score against the true images (required)")
    parser.add_argument(
        "--encoder", type=Path, metavar="FILE", help="client encoder checkpoint (encoder.pt); white-box and rmle need it"
    )
    parser.add_argument(
        "--server-snapshot",
        type=Path,
        metavar="PATH",
        help="server-half snapshot file, or the server's snapshots directory (the session's latest is used); shadow needs it",
    )
    parser.add_argument("--session", default="", metavar="ID", help="session to attack (default: the last session in the log)")
    parser.add_argument("--epoch", type=int, default=0, metavar="N", help="training epoch to reconstruct (default: 0, the last recorded)")


def _threats(requested: list[str]) -> list[str]:
    if "all" in requested:
        return list(THREATS)
    return list(dict.fromkeys(requested))


def run_offline_attack(config: RunConfig, args: argparse.Namespace) -> int:
    """Run the requested threat models on a traffic log and write OUT/report.json; returns the exit status."""
    started = time.monotonic()
    threats = _threats(args.threat)
    inputs = AttackInputs(
        traffic_dir=args.traffic,
        manifest=args.manifest,
        encoder=args.encoder,
        server_snapshot=args.server_snapshot,
        session_id=args.session,
        epoch=args.epoch,
        transform=TransmitTransform.from_config(config.defense),
    )
    for threat in threats:
        check_inputs(threat, inputs)

    out = Path(args.out).resolve()
    report_path = out / "report.json"
    report: dict[str, object] = {}
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise AttackInputError(f"{report_path} is not valid JSON ({error}); choose another --out or remove the file") from None
    out.mkdir(parents=True, exist_ok=True)

    splits = load_splits(config.data)
    target = load_target(config, splits, inputs)
    sections = dict(report.get("attack", {}))
    for threat in threats:
        result = run_attack(threat, config, splits, inputs, out, target)
        sections[report_key(threat)] = attack_section(result, out)

    report.update(
        attack=sections,
        traffic=str(Path(args.traffic).resolve()),
        session_id=target.traffic.session_id,
        dataset=splits.describe(),
        inputs={
            "manifest": str(args.manifest),
            "encoder": str(args.encoder) if args.encoder else None,
            "server_snapshot": str(args.server_snapshot) if args.server_snapshot else None,
            "transmit": inputs.transform.describe(),
        },
    )
    temporary = report_path.with_name(f".{report_path.name}.tmp")
    temporary.write_text(json.dumps(report, indent=2), encoding="utf-8")
    temporary.replace(report_path)
    print(format_rows(attack_rows({report_key(threat): sections[report_key(threat)] for threat in threats})))
    print(f"wrote {report_path} ({time.monotonic() - started:.1f} s)")
    return 0
