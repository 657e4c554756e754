"""`cemsplit demo`: server, attacker and client as three local processes, then an attack and a report.

Run directory layout:
    config.yaml                 the resolved config every role read
    logs/{server,attacker,client}.log
    client/metrics.jsonl        per-epoch metrics
    client/manifest.jsonl       sample ids per training step (never sent)
    client/encoder.pt, client/checkpoints/, server/checkpoints/
    attacker/traffic/           the recorded traffic log
    attacker/white_box.png      originals above reconstructions
    report.json, report.md
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

import grpc

from cemsplit.cli.processes import Child, RoleFailed, start_role, stop_children, wait_for_port_file
from cemsplit.cli.report import print_summary, write_report
from cemsplit.shared.config import RunConfig, save_config
from cemsplit.shared.defenses.transmit import TransmitTransform
from cemsplit.shared.grpc_util import wait_until_serving
from cemsplit.shared.wire import channel_options
from cemsplit.v1 import attacker_pb2, attacker_pb2_grpc

log = logging.getLogger(__name__)

POLL_S = 0.2


def _check_out_dir(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output directory {out} already holds files; choose a new --out or remove it")


def _watch(children: list[Child], until) -> None:
    """Poll the children until `until()` is true; raise RoleFailed when one exits unexpectedly."""
    while not until():
        for child in children:
            code = child.exit_code()
            if code is not None and code != 0:
                raise RoleFailed(f"{child.role} failed with exit status {code}; end of {child.log_path}:\n{child.log_tail()}")
            if code == 0 and child.role != "client":
                raise RoleFailed(f"{child.role} exited early; end of {child.log_path}:\n{child.log_tail()}")
        time.sleep(POLL_S)


class _EpochPrinter:
    """Prints each new line of the client's metrics.jsonl as training progresses."""

    def __init__(self, path: Path, epochs: int) -> None:
        self.path = path
        self.epochs = epochs
        self.seen = 0

    def __call__(self) -> None:
        if not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for line in lines[self.seen:]:
            row = json.loads(line)
            print(
                f"  epoch {row['epoch']}/{self.epochs}: train loss {row['train_loss']:.4f}, "
                f"test accuracy {row['test_accuracy']:.4f} ({row['seconds']:.1f} s)",
                flush=True,
            )
        self.seen = len(lines)


def run_demo(config: RunConfig, out: Path, threads: int = 0) -> int:
    """Run the three roles on 127.0.0.1 with free ports, attack the recorded traffic, and report.

    threads: torch CPU threads of each role; 0 keeps torch's default.
    """
    _check_out_dir(out)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    timing: dict[str, float] = {}

    config = config.model_copy(deep=True)
    config.server.listen = "127.0.0.1:0"
    config.server.port_file = out / "server" / "port"
    config.attacker.listen = "127.0.0.1:0"
    config.attacker.port_file = out / "attacker" / "port"
    config_path = out / "config.yaml"
    save_config(config, config_path)

    children: list[Child] = []
    logs = out / "logs"
    common = ["--config", str(config_path), "--threads", str(threads)]
    try:
        print(f"cemsplit demo: run directory {out}", flush=True)
        attacker = start_role("attacker", [*common, "--run-dir", str(out / "attacker")], logs)
        children.append(attacker)
        attacker_port = wait_for_port_file(attacker, config.attacker.port_file, config.transport.connect_timeout_s)
        attacker_address = f"127.0.0.1:{attacker_port}"

        server = start_role("server", [*common, "--run-dir", str(out / "server"), "--set", f"server.attacker={attacker_address}"], logs)
        children.append(server)
        server_port = wait_for_port_file(server, config.server.port_file, config.transport.connect_timeout_s)
        server_address = f"127.0.0.1:{server_port}"
        print(f"  server on {server_address} (pid {server.pid}), attacker on {attacker_address} (pid {attacker.pid})", flush=True)
        timing["startup_s"] = time.monotonic() - started

        training_started = time.monotonic()
        client = start_role("client", [*common, "--run-dir", str(out / "client"), "--set", f"client.server={server_address}"], logs)
        children.append(client)
        printer = _EpochPrinter(out / "client" / "metrics.jsonl", config.train.epochs)

        def client_done() -> bool:
            printer()
            return client.exit_code() == 0

        _watch(children, client_done)
        timing["training_s"] = time.monotonic() - training_started
        client_summary = json.loads((out / "client" / "summary.json").read_text(encoding="utf-8"))

        print("  training finished; the attacker trains its decoder on the recorded traffic", flush=True)
        attack_started = time.monotonic()
        attack, stats = _run_attack(config, attacker_address, out, children)
        timing["attack_s"] = time.monotonic() - attack_started
    except KeyboardInterrupt:
        print("cemsplit demo: interrupted; stopping the roles", flush=True)
        stop_children(children)
        return 130
    except RoleFailed as error:
        print(f"cemsplit demo: {error}", flush=True)
        stop_children(children)
        return 1
    except BaseException:
        stop_children(children)
        raise

    stop_children(children)
    timing["total_s"] = time.monotonic() - started
    report = write_report(out, config, client_summary, attack, stats, timing, _machine())
    print_summary(report)
    return 0


def _run_attack(config: RunConfig, address: str, out: Path, children: list[Child]) -> tuple[attacker_pb2.AttackReply, attacker_pb2.RecorderStats]:
    channel = grpc.insecure_channel(address, options=channel_options(config.transport.max_message_mb))
    try:
        wait_until_serving(channel, "", config.transport.connect_timeout_s, f"attacker {address}")
        stub = attacker_pb2_grpc.AttackerStub(channel)
        request = attacker_pb2.AttackRequest(
            threat="white-box",
            encoder_checkpoint=str(out / "client" / "encoder.pt"),
            manifest=str(out / "client" / "manifest.jsonl"),
            transmit=TransmitTransform.from_config(config.defense).to_message(),
            out_dir=str(out / "attacker"),
        )
        future = stub.Attack.future(request, timeout=config.attacker.attack_timeout_s)
        try:
            _watch(children, future.done)
            reply = future.result()
        except grpc.RpcError as error:
            raise RoleFailed(f"the attack failed ({error.code().name}): {error.details()}") from None
        stats = stub.GetStats(attacker_pb2.StatsRequest(), timeout=config.transport.rpc_timeout_s)
        return reply, stats
    finally:
        channel.close()


def _machine() -> dict[str, object]:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "grpc": grpc.__version__,
    }
