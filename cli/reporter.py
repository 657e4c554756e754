"""`cemsplit report`: have a running attacker attack a finished run's traffic, then write the report.

This is the last step of a run whose roles were started separately (docker-compose, or one host
per role). The run directory must contain the client's outputs under client/. The attack
request carries paths as the attacker reads them, so the attacker must see the run directory at
the same path; docker-compose mounts one volume at /runs in every container for this.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

import grpc

from cemsplit.cli.report import print_summary, write_report
from cemsplit.shared.config import RunConfig, save_config
from cemsplit.shared.grpc_util import wait_until_serving
from cemsplit.shared.wire import channel_options
from cemsplit.v1 import attacker_pb2, attacker_pb2_grpc

log = logging.getLogger(__name__)

ATTACKER_SERVICE = attacker_pb2.DESCRIPTOR.services_by_name["Attacker"].full_name


class ReportError(RuntimeError):
    """The report cannot be made: a client output is missing or the attack failed."""


def attack_request(config: RunConfig, run_dir: Path, session_id: str = "") -> attacker_pb2.AttackRequest:
    """Build the white-box attack request for the client outputs under run_dir/client.

    An empty session_id requests the most recent session the attacker recorded.
    """
    return attacker_pb2.AttackRequest(
        threat="white-box",
        session_id=session_id,
        encoder_checkpoint=str(run_dir / "client" / "encoder.pt"),
        manifest=str(run_dir / "client" / "manifest.jsonl"),
        noise_std=config.defense.noise_std,
        out_dir=str(run_dir / "attacker"),
    )


def machine_description() -> dict[str, object]:
    """Describe this machine and library versions for the report."""
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "grpc": grpc.__version__,
    }


def _read_client_summary(run_dir: Path) -> dict:
    path = run_dir / "client" / "summary.json"
    for needed in (path, run_dir / "client" / "encoder.pt", run_dir / "client" / "manifest.jsonl"):
        if not needed.is_file():
            raise ReportError(
                f"{needed} not found; run `cemsplit client --run-dir {run_dir / 'client'}` to the end "
                "before `cemsplit report`, and pass the same run directory"
            )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ReportError(f"{path} is not valid JSON ({error}); rerun the client") from None


def _attack(config: RunConfig, address: str, request: attacker_pb2.AttackRequest) -> tuple[attacker_pb2.AttackReply, attacker_pb2.RecorderStats]:
    # TODO: use the roles' TLS channel settings once the transport section has them.
    channel = grpc.insecure_channel(address, options=channel_options(config.transport.max_message_mb))
    try:
        wait_until_serving(channel, ATTACKER_SERVICE, config.transport.connect_timeout_s, f"attacker {address}")
        stub = attacker_pb2_grpc.AttackerStub(channel)
        log.info("asking attacker %s for the %s attack on session %s", address, request.threat, request.session_id or "(latest)")
        try:
            reply = stub.Attack(request, timeout=config.attacker.attack_timeout_s)
            stats = stub.GetStats(attacker_pb2.StatsRequest(), timeout=config.transport.rpc_timeout_s)
        except grpc.RpcError as error:
            raise ReportError(f"the attack on attacker {address} failed ({error.code().name}): {error.details()}") from None
        return reply, stats
    finally:
        channel.close()


def run_report(config: RunConfig, run_dir: Path, attacker_address: str) -> int:
    """Attack the recorded traffic of the client run in run_dir and write report.json and report.md.

    Returns the exit status: 0 once the report is written. Raises ReportError when a client
    output is missing or the attack fails.
    """
    run_dir = run_dir.resolve()
    summary = _read_client_summary(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        save_config(config, config_path)

    print(f"cemsplit report: attacking session {summary['session_id']} through attacker {attacker_address}", flush=True)
    started = time.monotonic()
    request = attack_request(config, run_dir, summary["session_id"])
    reply, stats = _attack(config, attacker_address, request)
    attack_s = time.monotonic() - started

    training_s = float(summary["training_seconds"])
    timing = {"training_s": training_s, "attack_s": attack_s, "total_s": training_s + attack_s}
    report = write_report(run_dir, config, summary, reply, stats, timing, machine_description())
    log.info("wrote %s and %s", run_dir / "report.json", run_dir / "report.md")
    print_summary(report)
    return 0
