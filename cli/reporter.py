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
from typing import Callable

import grpc

from cemsplit.cli.report import print_summary, write_report
from cemsplit.shared.config import RunConfig, save_config
from cemsplit.shared.defenses.transmit import TransmitTransform
from cemsplit.shared.grpc_util import wait_until_serving
from cemsplit.shared.security import open_channel
from cemsplit.shared.wire import channel_options
from cemsplit.v1 import attacker_pb2, attacker_pb2_grpc

log = logging.getLogger(__name__)

ATTACKER_SERVICE = attacker_pb2.DESCRIPTOR.services_by_name["Attacker"].full_name


class ReportError(RuntimeError):
    """The report cannot be made: a client output is missing or the attack failed."""


def attack_requests(config: RunConfig, run_dir: Path, session_id: str = "") -> list[attacker_pb2.AttackRequest]:
    """Build one attack request per configured threat model for the outputs under run_dir.

    Paths are the ones the attacker sees. The server's snapshots (for the shadow model) are
    passed when run_dir/server/snapshots exists. An empty session_id requests the most recent
    session the attacker recorded.
    """
    snapshots = run_dir / "server" / "snapshots"
    transform = TransmitTransform.from_config(config.defense)
    return [
        attacker_pb2.AttackRequest(
            threat=threat,
            session_id=session_id,
            encoder_checkpoint=str(run_dir / "client" / "encoder.pt"),
            manifest=str(run_dir / "client" / "manifest.jsonl"),
            server_snapshot=str(snapshots) if snapshots.is_dir() else "",
            transmit=transform.to_message(),
            out_dir=str(run_dir / "attacker"),
        )
        for threat in config.attacker.threats
    ]


def request_attacks(
    stub: attacker_pb2_grpc.AttackerStub,
    requests: list[attacker_pb2.AttackRequest],
    timeout_s: float,
    wait: Callable[[Callable[[], bool]], None] = lambda done: None,
) -> dict[str, dict[str, object]]:
    """Run each request on the attacker in turn; returns {threat: results}.

    wait(done) is called while each attack runs, for callers that watch other processes
    meanwhile; it returns once done() is true or raises.

    Raises:
        ReportError: an attack failed; names the threat and the status.
    """
    results: dict[str, dict[str, object]] = {}
    for request in requests:
        future = stub.Attack.future(request, timeout=timeout_s)
        try:
            wait(future.done)
            reply = future.result()
        except grpc.RpcError as error:
            raise ReportError(f"the {request.threat} attack failed ({error.code().name}): {error.details()}") from None
        results[request.threat] = json.loads(reply.result_json)
        print(f"  {request.threat} attack: MSE {reply.metrics['mse']:.5f}, SSIM {reply.metrics['ssim']:.4f} ({reply.seconds:.1f} s)", flush=True)
    return results


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


def _attack(config: RunConfig, address: str, requests: list[attacker_pb2.AttackRequest]) -> tuple[dict[str, dict[str, object]], attacker_pb2.RecorderStats]:
    channel = open_channel(address, config.transport, channel_options(config.transport.max_message_mb))
    try:
        wait_until_serving(channel, ATTACKER_SERVICE, config.transport.connect_timeout_s, f"attacker {address}")
        stub = attacker_pb2_grpc.AttackerStub(channel)
        log.info("asking attacker %s for %s on session %s", address, [r.threat for r in requests], requests[0].session_id or "(latest)")
        results = request_attacks(stub, requests, config.attacker.attack_timeout_s)
        try:
            stats = stub.GetStats(attacker_pb2.StatsRequest(), timeout=config.transport.rpc_timeout_s)
        except grpc.RpcError as error:
            raise ReportError(f"attacker {address} did not return its recording stats ({error.code().name}): {error.details()}") from None
        return results, stats
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
    attacks, stats = _attack(config, attacker_address, attack_requests(config, run_dir, summary["session_id"]))
    attack_s = time.monotonic() - started

    training_s = float(summary["training_seconds"])
    timing = {"training_s": training_s, "attack_s": attack_s, "total_s": training_s + attack_s}
    report = write_report(run_dir, config, summary, attacks, stats, timing, machine_description())
    log.info("wrote %s and %s", run_dir / "report.json", run_dir / "report.md")
    print_summary(report)
    return 0
