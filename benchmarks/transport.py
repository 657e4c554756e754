"""Training throughput of the split model three ways: in one process, over gRPC, over torch RPC.

(a) in-process: both halves in this process, no network: the limit.
(b) grpc: the product: a `cemsplit server` process and this process as the client, over
    loopback gRPC, through cemsplit's own client training loop.
(c) torch-rpc: the same split over torch.distributed.rpc (TensorPipe), the server half in a
    second process.
Every mode trains the same split model on the same mnist5k batches (same seed, batch size and
order), once to warm up and once measured. Two settings: the default bottlenecked split (8x7x7
features) and an unbottlenecked 128-channel cut (128x7x7).

Usage: python -m benchmarks.transport [--steps 40] [--batch-size 128] [--result FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import git_revision, write_result
from cemsplit.client.trainer import SplitClient
from cemsplit.cli.processes import start_role, stop_children, wait_for_port_file
from cemsplit.shared.config import RunConfig
from cemsplit.shared.vgg import ClientNet, ServerNet

SETTINGS = {"bottleneck": 8, "wide": 0}


def make_config(bottleneck_channels: int, steps: int, batch_size: int, **transport: object) -> RunConfig:
    config = RunConfig()
    config.model.bottleneck_channels = bottleneck_channels
    config.data.train_limit = steps * batch_size
    config.train.batch_size = batch_size
    config.train.lr_milestones = []
    for key, value in transport.items():
        setattr(config.transport, key, value)
    return config


def peak_rss_mib(pid: int | None = None) -> float:
    """Return the peak resident memory of a process in MiB (this process when pid is None)."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_in_process(config: RunConfig) -> dict[str, float]:
    client = SplitClient(config, Path(tempfile.mkdtemp(prefix="bench-a-")))
    torch.manual_seed(config.train.seed)
    server = ServerNet(client.spec)
    server_optimizer = torch.optim.SGD(server.parameters(), lr=config.train.lr, momentum=config.train.momentum, weight_decay=config.train.weight_decay)

    def epoch(number: int) -> float:
        started = time.perf_counter()
        client.encoder.train()
        server.train()
        for index in client._batches(number):
            images, labels = client.splits.train.floats(index), client.splits.train.labels[index]
            features = client.encoder(images)
            sent = features.detach().requires_grad_(True)
            loss = nn.functional.cross_entropy(server(sent), labels)
            server_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            server_optimizer.step()
            client.optimizer.zero_grad(set_to_none=True)
            features.backward(sent.grad)
            client.optimizer.step()
        return time.perf_counter() - started

    epoch(1)
    seconds = epoch(2)
    return {"seconds": seconds, "samples_per_s": len(client.splits.train) / seconds, "client_peak_rss_mib": peak_rss_mib()}


def run_grpc(config: RunConfig, workdir: Path, label: str) -> dict[str, float]:
    config_path = workdir / f"{label}.yaml"
    from cemsplit.shared.config import save_config

    save_config(config, config_path)
    port_file = workdir / f"{label}.port"
    server = start_role(
        "server",
        ["--config", str(config_path), "--run-dir", str(workdir / f"{label}-server"), "--server-listen", "127.0.0.1:0", "--server-port-file", str(port_file)],
        workdir / "logs",
    )
    try:
        port = wait_for_port_file(server, port_file, 120)
        config.client.server = f"127.0.0.1:{port}"
        client = SplitClient(config, workdir / f"{label}-client")
        stub = client.connect()
        from cemsplit.shared.manifest import ManifestWriter

        manifest = ManifestWriter(workdir / f"{label}-client" / "manifest.jsonl")
        client.train_epoch(stub, 1, manifest)
        started = time.perf_counter()
        client.train_epoch(stub, 2, manifest)
        seconds = time.perf_counter() - started
        manifest.close()
        wire = client.wire_bytes_per_step / config.train.batch_size if hasattr(client, "wire_bytes_per_step") else float("nan")
        result = {
            "seconds": seconds,
            "samples_per_s": len(client.splits.train) / seconds,
            "client_peak_rss_mib": peak_rss_mib(),
            "server_peak_rss_mib": peak_rss_mib(server.pid),
            "wire_bytes_per_sample": wire,
        }
        client.channel.close()
        return result
    finally:
        stop_children([server])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_torch_rpc(config: RunConfig) -> dict[str, float]:
    import torch.distributed.rpc as rpc

    from benchmarks import torch_rpc_peer

    port = _free_port()
    peer = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.torch_rpc_peer", "--port", str(port), "--bottleneck-channels", str(config.model.bottleneck_channels), "--seed", str(config.train.seed)],
        cwd=Path(__file__).resolve().parent.parent,
    )
    client = SplitClient(config, Path(tempfile.mkdtemp(prefix="bench-c-")))
    options = rpc.TensorPipeRpcBackendOptions(num_worker_threads=4, init_method=f"tcp://127.0.0.1:{port}")
    rpc.init_rpc("client", rank=0, world_size=2, rpc_backend_options=options)
    try:

        def epoch(number: int) -> float:
            started = time.perf_counter()
            client.encoder.train()
            for index in client._batches(number):
                images, labels = client.splits.train.floats(index), client.splits.train.labels[index]
                features = client.encoder(images)
                gradient, _, _ = rpc.rpc_sync("server", torch_rpc_peer.server_step, args=(features.detach(), labels))
                client.optimizer.zero_grad(set_to_none=True)
                features.backward(gradient)
                client.optimizer.step()
            return time.perf_counter() - started

        epoch(1)
        seconds = epoch(2)
        server_rss = peak_rss_mib(peer.pid)
        return {"seconds": seconds, "samples_per_s": len(client.splits.train) / seconds, "client_peak_rss_mib": peak_rss_mib(), "server_peak_rss_mib": server_rss}
    finally:
        rpc.shutdown()
        try:
            peer.wait(60)
        except subprocess.TimeoutExpired:
            peer.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="measured training steps per mode (default: 40)")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per step (default: 128)")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS), help="splits to measure")
    parser.add_argument("--result", type=Path, default=Path("runs/bench/transport.json"), help="JSON result file")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="cemsplit-bench-"))
    results: dict[str, dict[str, object]] = {}
    for setting in args.settings:
        channels = SETTINGS[setting]
        rows: dict[str, object] = {}
        rows["in_process"] = run_in_process(make_config(channels, args.steps, args.batch_size))
        rows["grpc"] = run_grpc(make_config(channels, args.steps, args.batch_size), workdir, f"{setting}-grpc")
        rows["torch_rpc"] = run_torch_rpc(make_config(channels, args.steps, args.batch_size))
        rows["grpc_over_in_process"] = rows["grpc"]["samples_per_s"] / rows["in_process"]["samples_per_s"]
        rows["grpc_over_torch_rpc"] = rows["grpc"]["samples_per_s"] / rows["torch_rpc"]["samples_per_s"]
        results[setting] = rows
        print(json.dumps({setting: rows}, indent=2), flush=True)

    write_result(args.result, {"revision": git_revision(), "steps": args.steps, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
