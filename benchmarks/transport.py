"""Training throughput of the split model three ways: in one process, over gRPC, over torch RPC.

(a) in_process: both halves in this process, no network: the limit.
(b) grpc: the product: a `cemsplit server` process and this process as the client, over
    loopback gRPC, through cemsplit's own client training loop. Measured with one unary
    TrainStep call per step (grpc*) and with one TrainStream stream per epoch (grpc_stream*);
    with float32, float16 and bfloat16 on the wire and with zlib compression; with the server's optimizer step after its reply (*_overlap,
    server.update_after_reply); and with the same servicer logic behind an asyncio server
    (aio*, benchmarks/aio_server.py) in place of the synchronous one.
(c) torch_rpc: the same split over torch.distributed.rpc (TensorPipe), the server half in a
    second process.
Every mode trains the same split model on the same mnist5k batches (same seed, batch size and
order): one epoch to warm up, one measured. Every epoch ends with a durable checkpoint of both
halves (weights and optimizer state, written and fsynced), which the product's client loop always
writes, so that all modes do the same work. Two settings: the default bottlenecked split
(8x7x7 features) and an unbottlenecked 128-channel cut (128x7x7). Modes alternate within each
repeat and the median over repeats is reported, because other load on the machine shifts all
modes of one repeat alike.

Also measured: protobuf bytes on the wire per sample (request and reply payloads), peak
resident memory of each process, the test accuracy after the measured epoch for each wire
precision, a profile of the product's default transport at the slower split, and one epoch of
attack-decoder training.

`--accuracy` instead trains full epochs of mnist5k at the bottleneck with each wire precision
(same seed) and reports test accuracy, the effect of the wire precision on training.

Usage: python -m benchmarks.transport [--steps 25] [--batch-size 128] [--repeats 3] [--modes ...] [--result FILE]
       python -m benchmarks.transport --accuracy [--epochs 3] [--result FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import git_revision, save_half, write_result
from cemsplit.attacker.white_box import encode_images, train_decoder
from cemsplit.cli.processes import Child, start_role, stop_children, wait_for_port_file
from cemsplit.client.trainer import SplitClient
from cemsplit.shared import codec
from cemsplit.shared.config import RunConfig, save_config
from cemsplit.shared.manifest import ManifestWriter
from cemsplit.shared.vgg import ServerNet
from cemsplit.v1 import split_pb2

SETTINGS = {"bottleneck": 8, "wide": 0}
# Settings of each gRPC mode: transport.* fields, server.update_after_reply, and "aio" for the
# asyncio server. Every mode sets train_call and update_after_reply, so that changed product
# defaults do not change what a mode measures.
GRPC_VARIANTS: dict[str, dict[str, object]] = {
    "grpc": {"train_call": "unary", "update_after_reply": False},
    "grpc_fp16": {"train_call": "unary", "update_after_reply": False, "wire_dtype": "float16"},
    "grpc_bf16": {"train_call": "unary", "update_after_reply": False, "wire_dtype": "bfloat16"},
    "grpc_zlib": {"train_call": "unary", "update_after_reply": False, "compress": True},
    "grpc_stream": {"train_call": "stream", "update_after_reply": False},
    "grpc_stream_fp16": {"train_call": "stream", "update_after_reply": False, "wire_dtype": "float16"},
    "grpc_overlap": {"train_call": "unary", "update_after_reply": True},
    "grpc_stream_overlap": {"train_call": "stream", "update_after_reply": True},
    "grpc_stream_overlap_fp16": {"train_call": "stream", "update_after_reply": True, "wire_dtype": "float16"},
    "grpc_stream_overlap_bf16": {"train_call": "stream", "update_after_reply": True, "wire_dtype": "bfloat16"},
    "aio": {"train_call": "unary", "update_after_reply": False, "aio": True},
    "aio_stream": {"train_call": "stream", "update_after_reply": False, "aio": True},
}
MODES = ["in_process", *GRPC_VARIANTS, "torch_rpc"]
PRECISIONS = ("float32", "float16", "bfloat16")


def make_config(bottleneck_channels: int, steps: int, batch_size: int, **transport: object) -> RunConfig:
    """Return the benchmark's run config; `transport` sets transport fields and server.update_after_reply."""
    config = RunConfig()
    config.model.bottleneck_channels = bottleneck_channels
    config.data.train_limit = steps * batch_size
    config.data.test_limit = 500
    config.train.batch_size = batch_size
    config.train.lr_milestones = []
    config.train.checkpoint_every = 0
    config.runtime.device = "cpu"
    for key, value in transport.items():
        if key == "update_after_reply":
            config.server.update_after_reply = bool(value)
        elif key != "aio":
            setattr(config.transport, key, value)
    return config


def reset_peak_rss() -> None:
    """Reset this process's peak resident memory (VmHWM) on Linux, so each mode reports its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib(pid: int | str = "self") -> float:
    """Return the peak resident memory of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wire_bytes_per_sample(client: SplitClient) -> float:
    """Return protobuf payload bytes per sample of one training step: request plus reply."""
    index = client._batches(1)[0]
    with torch.no_grad():
        features = client.encoder(client.splits.train.floats(index))
    transport = client.config.transport
    activations = codec.encode(features, client.wire_dtype, transport.compress)
    request = split_pb2.TrainRequest(session_id="0" * 32, step=1, epoch=1, activations=activations, labels=codec.encode(client.splits.train.labels[index]))
    reply = split_pb2.TrainReply(step=1, gradient=codec.encode(torch.randn_like(features) * 1e-3, client.wire_dtype, transport.compress), loss=1.0, correct=1, batch_size=len(index))
    return (request.ByteSize() + reply.ByteSize()) / len(index)


def run_in_process(config: RunConfig, workdir: Path) -> dict[str, float]:
    reset_peak_rss()
    client = SplitClient(config, Path(tempfile.mkdtemp(prefix="in-process-", dir=workdir)))
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
        save_half(client.encoder, client.optimizer, client.run_dir / f"client-epoch-{number}.pt")
        save_half(server, server_optimizer, client.run_dir / f"server-epoch-{number}.pt")
        return time.perf_counter() - started

    epoch(1)
    seconds = epoch(2)
    return {"seconds": seconds, "samples_per_s": len(client.splits.train) / seconds, "client_peak_rss_mib": peak_rss_mib()}


def start_server(config: RunConfig, workdir: Path, label: str, aio: bool) -> tuple[Child, Path]:
    """Start `cemsplit server`, or the asyncio benchmark server when aio; returns it and its port file."""
    config_path = workdir / f"{label}.yaml"
    save_config(config, config_path)
    port_file = workdir / f"{label}.port"
    run_dir = workdir / f"{label}-server"
    if not aio:
        arguments = ["--config", str(config_path), "--run-dir", str(run_dir), "--server-listen", "127.0.0.1:0", "--server-port-file", str(port_file)]
        return start_role("server", arguments, workdir / "logs"), port_file

    log_path = workdir / "logs" / f"{label}-aio-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "benchmarks.aio_server", "--config", str(config_path), "--run-dir", str(run_dir), "--port-file", str(port_file)]
    with open(log_path, "ab") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent)
    return Child("aio-server", process, log_path), port_file


def run_grpc(config: RunConfig, workdir: Path, label: str, profile: bool = False, aio: bool = False) -> dict[str, object]:
    server, port_file = start_server(config, workdir, label, aio)
    try:
        port = wait_for_port_file(server, port_file, 120)
        config.client.server = f"127.0.0.1:{port}"
        reset_peak_rss()
        client = SplitClient(config, workdir / f"{label}-client")
        stub = client.connect()
        manifest = ManifestWriter(workdir / f"{label}-client" / "manifest.jsonl")
        client.train_epoch(stub, 1, manifest)
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        started = time.perf_counter()
        client.train_epoch(stub, 2, manifest)
        seconds = time.perf_counter() - started
        if profiler:
            profiler.disable()
        manifest.close()
        result: dict[str, object] = {
            "seconds": seconds,
            "samples_per_s": len(client.splits.train) / seconds,
            "test_accuracy": client.evaluate(stub)["test_accuracy"],
            "wire_bytes_per_sample": wire_bytes_per_sample(client),
            "client_peak_rss_mib": peak_rss_mib(),
            "server_peak_rss_mib": peak_rss_mib(server.pid),
        }
        if profiler:
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
            result["profile_top_tottime"] = text.getvalue()
        client.channel.close()
        return result
    finally:
        stop_children([server])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_torch_rpc(config: RunConfig, workdir: Path) -> dict[str, float]:
    """Run the torch RPC mode in a child process of its own, since RPC can be initialised once per process."""
    command = [sys.executable, "-m", "benchmarks.transport", "--torch-rpc-client", json.dumps(config.model_dump(mode="json")), "--workdir", str(workdir)]
    output = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=Path(__file__).resolve().parent.parent)
    if output.returncode != 0:
        raise RuntimeError(f"torch RPC mode failed:\n{output.stdout}\n{output.stderr}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def torch_rpc_client(config: RunConfig, workdir: Path) -> dict[str, float]:
    import torch.distributed.rpc as rpc

    from benchmarks import torch_rpc_peer

    port = _free_port()
    peer = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.torch_rpc_peer", "--port", str(port), "--bottleneck-channels", str(config.model.bottleneck_channels), "--seed", str(config.train.seed)],
        cwd=Path(__file__).resolve().parent.parent,
    )
    client = SplitClient(config, Path(tempfile.mkdtemp(prefix="torch-rpc-", dir=workdir)))
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
            save_half(client.encoder, client.optimizer, client.run_dir / f"client-epoch-{number}.pt")
            rpc.rpc_sync("server", torch_rpc_peer.save_server_half, args=(str(client.run_dir / f"server-epoch-{number}.pt"),))
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


def decoder_epoch_seconds(config: RunConfig, workdir: Path) -> float:
    """Return the seconds of one epoch of attack-decoder training on the auxiliary split."""
    client = SplitClient(config, Path(tempfile.mkdtemp(prefix="decoder-", dir=workdir)))
    images = client.splits.aux.floats()
    config.attacker.decoder_epochs = 1
    return train_decoder(encode_images(client.encoder, images), images, 0.0, config.attacker, seed=1).seconds


def run_accuracy(epochs: int, batch_size: int, workdir: Path) -> dict[str, dict[str, float]]:
    """Train `epochs` full epochs of mnist5k at the bottleneck over gRPC per wire precision; returns test accuracy and timing."""
    results = {}
    for precision in PRECISIONS:
        config = make_config(8, 1, batch_size, wire_dtype=precision)
        config.data.train_limit = None
        config.data.test_limit = None
        label = f"accuracy-{precision}"
        server, port_file = start_server(config, workdir, label, aio=False)
        try:
            config.client.server = f"127.0.0.1:{wait_for_port_file(server, port_file, 120)}"
            client = SplitClient(config, workdir / f"{label}-client")
            stub = client.connect()
            manifest = ManifestWriter(workdir / f"{label}-client" / "manifest.jsonl")
            started = time.perf_counter()
            losses = [client.train_epoch(stub, epoch, manifest)["train_loss"] for epoch in range(1, epochs + 1)]
            seconds = time.perf_counter() - started
            manifest.close()
            metrics = client.evaluate(stub)
            client.channel.close()
        finally:
            stop_children([server])
        results[precision] = {"test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"], "final_train_loss": losses[-1], "train_seconds": seconds}
        print(json.dumps({precision: results[precision]}), flush=True)
    return results


def median_row(runs: list[dict[str, object]]) -> dict[str, object]:
    row: dict[str, object] = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)):
            row[key] = statistics.median(float(run[key]) for run in runs)  # type: ignore[arg-type]
        else:
            row[key] = value
    row["samples_per_s_all"] = [run["samples_per_s"] for run in runs]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25, help="training steps per epoch (default: 25; mnist5k has 3,500 training images)")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per step (default: 128)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every mode; the median is reported (default: 3)")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS), help="splits to measure")
    parser.add_argument("--modes", nargs="*", default=MODES, choices=MODES, help="modes to measure (default: all; ratios need in_process and torch_rpc)")
    parser.add_argument("--result", type=Path, default=Path("runs/bench/transport.json"), help="JSON result file")
    parser.add_argument("--accuracy", action="store_true", help="only train full mnist5k epochs per wire precision and report test accuracy")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the --accuracy runs (default: 3)")
    parser.add_argument("--torch-rpc-client", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_rpc_client:
        print(json.dumps(torch_rpc_client(RunConfig.model_validate(json.loads(args.torch_rpc_client)), args.workdir)))
        return 0

    # Run directories and checkpoints take hundreds of MB per mode, so they go away at the end.
    with tempfile.TemporaryDirectory(prefix="cemsplit-bench-") as temporary:
        return run_benchmark(args, Path(temporary))


def run_benchmark(args: argparse.Namespace, workdir: Path) -> int:
    """Run the modes and settings that args select, with run directories under workdir; writes args.result."""
    if args.accuracy:
        accuracy = run_accuracy(args.epochs, args.batch_size, workdir)
        write_result(
            args.result,
            {"revision": git_revision(), "epochs": args.epochs, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(), "accuracy": accuracy},
        )
        return 0

    variants = {mode: settings for mode, settings in GRPC_VARIANTS.items() if mode in args.modes}
    results: dict[str, dict[str, object]] = {}
    for setting in args.settings:
        channels = SETTINGS[setting]
        runs: dict[str, list[dict[str, object]]] = {}
        for repeat in range(args.repeats):
            if "in_process" in args.modes:
                runs.setdefault("in_process", []).append(run_in_process(make_config(channels, args.steps, args.batch_size), workdir))
            for variant, settings in variants.items():
                config = make_config(channels, args.steps, args.batch_size, **settings)
                runs.setdefault(variant, []).append(run_grpc(config, workdir, f"{setting}-{variant}-{repeat}", aio=bool(settings.get("aio"))))
            if "torch_rpc" in args.modes:
                runs.setdefault("torch_rpc", []).append(run_torch_rpc(make_config(channels, args.steps, args.batch_size), workdir))
            print(f"{setting}: repeat {repeat + 1}/{args.repeats} done", flush=True)
        rows: dict[str, object] = {mode: median_row(mode_runs) for mode, mode_runs in runs.items()}
        for variant in variants:
            grpc_rate = rows[variant]["samples_per_s"]  # type: ignore[index]
            for reference, key in (("in_process", "over_in_process"), ("torch_rpc", "over_torch_rpc")):
                if reference in rows:
                    rows[variant][key] = grpc_rate / rows[reference]["samples_per_s"]  # type: ignore[index]
        results[setting] = rows
        print(json.dumps({setting: rows}, indent=2), flush=True)

    # The profile runs the product's default transport settings at the slower split.
    slowest = min(args.settings, key=lambda name: min(row["samples_per_s"] for mode, row in results[name].items() if mode in variants))  # type: ignore[index]
    profiled = run_grpc(make_config(SETTINGS[slowest], args.steps, args.batch_size), workdir, f"{slowest}-profile", profile=True)
    decoder_seconds = decoder_epoch_seconds(make_config(8, args.steps, args.batch_size), workdir)
    write_result(
        args.result,
        {
            "revision": git_revision(),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "torch_threads": torch.get_num_threads(),
            "results": results,
            "profile": {"setting": slowest, "mode": "product defaults", "top_tottime": profiled["profile_top_tottime"]},
            "decoder_epoch_seconds_1000_images": decoder_seconds,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
