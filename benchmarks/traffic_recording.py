"""Measure traffic recording: log write throughput, and training throughput with recording on and off.

Part 1 appends real TrafficRecords (float32 activations of the default MNIST split, batch 128,
about 200 KB each) to a TrafficLogWriter under each fsync policy and reports MB/s (framed
bytes written per wall second), then the read-back rate.

Part 2 times what recording adds to the server's training thread per step: building the
TrafficRecord and offering it to the recorder's queue. It also times the recorder's
background thread per record, which competes with training for CPU.

Part 3 drives two server-half services in this process through the TrainStep handler, one
writing a traffic log and one not, alternating between them every few steps, and compares
their median step times. Fine interleaving makes the ratio robust to load from other
programs that drifts over seconds, which end-to-end runs on a shared machine are not.

Part 4 runs a real server and client (and, for the mirror setting, an attacker) as separate
processes on 127.0.0.1 and measures training steps per second from the client's per-epoch
training time, which excludes evaluation. Settings: off (no recording), log (the server writes
its own traffic log) and log+mirror (the server also mirrors to a live attacker). Rounds
alternate the settings; the ratio of the medians is reported.

Target: training throughput with recording >= 0.97 x without.

Usage: python benchmarks/traffic_recording.py [--rounds N] [--train-limit N] [--epochs N] [--result FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import git_revision, write_result  # noqa: E402

TARGET_RATIO = 0.97
SETTINGS = ("off", "log", "log+mirror")


def measure_log_throughput(directory: Path, megabytes: int) -> dict[str, object]:
    """Write about `megabytes` MB of records under each fsync policy, then read them back."""
    import torch

    from cemsplit.shared import codec
    from cemsplit.shared.traffic_log import TrafficLogWriter, read_records
    from cemsplit.v1 import attacker_pb2

    activations = codec.encode(torch.rand(128, 8, 7, 7))
    labels = codec.encode(torch.arange(128) % 10)
    size = len(attacker_pb2.TrafficRecord(session_id="x" * 32, activations=attacker_pb2.ActivationRecord(activations=activations)).SerializeToString())
    count = max(1, megabytes * 1_000_000 // size)
    results: dict[str, object] = {"record_bytes": size, "records": count}

    for policy in ("never", "interval", "always"):
        target = directory / policy
        started = time.perf_counter()
        with TrafficLogWriter(target, segment_bytes=64 * 2**20, fsync=policy) as writer:
            for step in range(1, count + 1):
                record = attacker_pb2.TrafficRecord(
                    session_id="x" * 32,
                    timestamp_ns=time.time_ns(),
                    activations=attacker_pb2.ActivationRecord(step=step, epoch=1, phase=attacker_pb2.TRAIN, activations=activations, labels=labels),
                )
                writer.append(record)
        seconds = time.perf_counter() - started
        results[f"write_{policy}_mb_per_s"] = writer.bytes_written / 1e6 / seconds
        print(f"write, fsync {policy}: {writer.bytes_written / 1e6:.0f} MB in {seconds:.2f} s = {writer.bytes_written / 1e6 / seconds:.0f} MB/s")

    started = time.perf_counter()
    read = sum(1 for _ in read_records(directory / "never"))
    seconds = time.perf_counter() - started
    written = sum(path.stat().st_size for path in (directory / "never").iterdir())
    results["read_mb_per_s"] = written / 1e6 / seconds
    print(f"read: {read} records, {written / 1e6:.0f} MB in {seconds:.2f} s = {written / 1e6 / seconds:.0f} MB/s")
    return results


def measure_training_path_cost(directory: Path, records: int) -> dict[str, float]:
    """Time record construction plus TrafficLogRecorder.offer (the training thread's share) and the background writes."""
    import torch

    from cemsplit.server.recorder import TrafficLogRecorder
    from cemsplit.shared import codec
    from cemsplit.shared.traffic_log import TrafficLogWriter
    from cemsplit.v1 import attacker_pb2

    activations = codec.encode(torch.rand(128, 8, 7, 7))
    labels = codec.encode(torch.arange(128) % 10)
    recorder = TrafficLogRecorder(TrafficLogWriter(directory, fsync="interval"), max_queue=records + 1)
    started = time.perf_counter()
    for step in range(1, records + 1):
        record = attacker_pb2.TrafficRecord(
            session_id="x" * 32,
            timestamp_ns=time.time_ns(),
            activations=attacker_pb2.ActivationRecord(step=step, epoch=1, phase=attacker_pb2.TRAIN, activations=activations, labels=labels),
        )
        recorder.offer(record)
    offered = time.perf_counter() - started
    recorder.flush(600)
    drained = time.perf_counter() - started
    recorder.close()
    result = {"offer_us_per_record": offered / records * 1e6, "write_us_per_record": drained / records * 1e6}
    print(f"training thread: {result['offer_us_per_record']:.0f} us per record; recorder thread: {result['write_us_per_record']:.0f} us per record")
    return result


def measure_interleaved_steps(directory: Path, blocks: int, steps_per_block: int) -> dict[str, object]:
    """Time TrainStep on a server half with and without a traffic log, alternating every few steps."""
    import torch

    from cemsplit.server.recorder import TrafficLogRecorder
    from cemsplit.server.service import SplitLearningService
    from cemsplit.shared import codec
    from cemsplit.shared.config import TrainConfig
    from cemsplit.shared.specs import model_spec_message, training_spec_message
    from cemsplit.shared.traffic_log import TrafficLogWriter
    from cemsplit.shared.vgg import SplitSpec
    from cemsplit.shared.wire import PROTOCOL_VERSION
    from cemsplit.v1 import split_pb2, tensor_pb2

    spec = SplitSpec(input_shape=(1, 28, 28), num_classes=10)
    services = {
        "off": SplitLearningService(spec, directory / "off"),
        "log": SplitLearningService(spec, directory / "log", recorder=TrafficLogRecorder(TrafficLogWriter(directory / "traffic"), 1024)),
    }
    opened = {}
    for name, service in services.items():
        request = split_pb2.OpenSessionRequest(
            protocol_version=PROTOCOL_VERSION, client_name="bench", model=model_spec_message(spec),
            training=training_spec_message(TrainConfig()), wire_dtype=tensor_pb2.FLOAT32, max_batch_size=128,
        )
        opened[name] = service.OpenSession(request, None).session_id

    generator = torch.Generator().manual_seed(0)
    step_numbers = {name: 0 for name in services}
    times: dict[str, list[float]] = {name: [] for name in services}
    for block in range(blocks):
        order = ["off", "log"] if block % 2 == 0 else ["log", "off"]
        for name in order:
            for _ in range(steps_per_block):
                step_numbers[name] += 1
                request = split_pb2.TrainRequest(
                    session_id=opened[name],
                    step=step_numbers[name],
                    epoch=1,
                    activations=codec.encode(torch.rand((128, 8, 7, 7), generator=generator)),
                    labels=codec.encode(torch.randint(0, 10, (128,), generator=generator)),
                )
                started = time.perf_counter()
                services[name].TrainStep(request, None)
                times[name].append(time.perf_counter() - started)
    services["log"].recorder.close()

    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["off"] / medians["log"]
    print(f"in-process TrainStep, median over {len(times['off'])} steps each: off {medians['off'] * 1e3:.1f} ms, log {medians['log'] * 1e3:.1f} ms, throughput ratio {ratio:.3f}")
    return {"median_step_s": medians, "steps_each": len(times["off"]), "ratio_log_to_off": ratio, "step_s": times}


def train_once(setting: str, directory: Path, train_limit: int, epochs: int) -> dict[str, float]:
    """Run server and client (and an attacker for log+mirror); return the client's training throughput."""
    from cemsplit.cli.processes import start_role, stop_children, wait_for_port_file

    data = ["--train-limit", str(train_limit), "--test-limit", "500", "--aux-limit", "64", "--threads", "1"]
    logs = directory / "logs"
    children = []
    try:
        server_args = [*data, "--run-dir", str(directory / "server"), "--server-listen", "127.0.0.1:0", "--server-port-file", str(directory / "server.port")]
        if setting != "off":
            server_args += ["--traffic-log", str(directory / "server-traffic")]
        if setting == "log+mirror":
            attacker = start_role(
                "attacker",
                [*data, "--run-dir", str(directory / "attacker"), "--attacker-listen", "127.0.0.1:0", "--attacker-port-file", str(directory / "attacker.port")],
                logs,
            )
            children.append(attacker)
            server_args += ["--attacker", f"127.0.0.1:{wait_for_port_file(attacker, directory / 'attacker.port', 120)}"]
        server = start_role("server", server_args, logs)
        children.append(server)
        port = wait_for_port_file(server, directory / "server.port", 120)
        client = start_role(
            "client",
            [*data, "--run-dir", str(directory / "client"), "--server", f"127.0.0.1:{port}", "--epochs", str(epochs)],
            logs,
        )
        children.append(client)
        if client.process.wait(1800) != 0:
            raise RuntimeError(f"client failed; end of {client.log_path}:\n{client.log_tail()}")
    finally:
        stop_children(children)

    summary = json.loads((directory / "client" / "summary.json").read_text())
    train_seconds = sum(row["train_seconds"] for row in summary["epochs"])
    return {
        "steps": summary["steps"],
        "train_seconds": train_seconds,
        "steps_per_s": summary["steps"] / train_seconds,
        "log_dropped": summary["traffic_log"]["dropped"],
        "mirror_dropped": summary["mirror"]["dropped"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=60, help="alternating blocks of 2 steps per setting in part 3 (default: 60)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three process settings in part 4 (default: 3)")
    parser.add_argument("--train-limit", type=int, default=2000, help="client-training images per run (default: 2000)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default: 2)")
    parser.add_argument("--log-mb", type=int, default=200, help="MB written per fsync policy in part 1 (default: 200)")
    parser.add_argument("--result", type=Path, default=Path("runs/bench/traffic_recording.json"), help="JSON result file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cemsplit-bench-") as temporary:
        root = Path(temporary)
        log_results = measure_log_throughput(root / "log", args.log_mb)
        path_cost = measure_training_path_cost(root / "recorder", 1000)
        interleaved = measure_interleaved_steps(root / "interleaved", args.blocks, 2)

        runs: dict[str, list[dict[str, float]]] = {setting: [] for setting in SETTINGS}
        for round_index in range(args.rounds):
            for setting in SETTINGS:
                run = train_once(setting, root / f"train-{round_index}-{setting.replace('+', '-')}", args.train_limit, args.epochs)
                runs[setting].append(run)
                print(f"round {round_index + 1}, {setting}: {run['steps_per_s']:.2f} steps/s ({run['train_seconds']:.1f} s of training)")

    medians = {setting: statistics.median(run["steps_per_s"] for run in runs[setting]) for setting in SETTINGS}
    ratios = {setting: medians[setting] / medians["off"] for setting in SETTINGS if setting != "off"}
    for setting, ratio in ratios.items():
        print(f"{setting} / off: {ratio:.3f} ({'meets' if ratio >= TARGET_RATIO else 'misses'} target {TARGET_RATIO})")
    write_result(
        args.result,
        {
            "revision": git_revision(),
            "log": log_results,
            "training_path": path_cost,
            "interleaved": interleaved,
            "training": {"runs": runs, "median_steps_per_s": medians, "ratio_to_off": ratios, "target_ratio": TARGET_RATIO},
            "settings": {"train_limit": args.train_limit, "epochs": args.epochs, "rounds": args.rounds, "batch_size": 128},
        },
    )
    return 0 if interleaved["ratio_log_to_off"] >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
