"""Measure what CEM adds to a client training step and to an epoch, in one process.

Step time: a client step at batch 128 on the default split (mnist5k digits, VGG11-BN cut after
two convolutions, 8-channel bottleneck, features 8x7x7) is timed with Gaussian noise alone
(sigma = 0.025) and with noise + CEM (lambda = 16, "separate", K = 5, clusters fitted on the
client-training split). "client" times the client's own work: encoder forward, transmit,
backward from a fixed server gradient, SGD step. "split" adds the server half's forward and
backward in the same process, which is the compute of a real step without gRPC. For reference
the script also times CEM as the reference code runs it, with two backward passes.

Clustering share: the per-epoch update (encode the client-training split in eval mode, then
k-means warm-started from the previous epoch) divided by an epoch of split steps with CEM.

Targets: step ratio <= 1.15; clustering <= 10% of the epoch.

Usage: python benchmarks/cem_overhead.py [--steps N] [--threads N] [--result FILE]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import git_revision, write_result  # noqa: E402
from cemsplit.shared.config import DataConfig, DefenseConfig  # noqa: E402
from cemsplit.shared.datasets import load_splits  # noqa: E402
from cemsplit.shared.defenses import StepTensors, build_defense  # noqa: E402
from cemsplit.shared.defenses.cem.loss import cem_loss, separate_scale  # noqa: E402
from cemsplit.shared.vgg import ClientNet, ServerNet, SplitSpec  # noqa: E402

TARGET_STEP_RATIO = 1.15
TARGET_CLUSTER_SHARE = 0.10
BATCH_SIZE = 128
LEARNING_RATE = 0.05


class Setup:
    """One encoder, optimizer and defence; each timed variant gets its own."""

    def __init__(self, spec: SplitSpec, defense_config: DefenseConfig, with_server: bool) -> None:
        torch.manual_seed(125)
        self.encoder = ClientNet(spec)
        self.optimizer = torch.optim.SGD(self.encoder.parameters(), lr=LEARNING_RATE, momentum=0.9, weight_decay=5e-4)
        self.server = ServerNet(spec) if with_server else None
        self.server_optimizer = torch.optim.SGD(self.server.parameters(), lr=LEARNING_RATE, momentum=0.9) if with_server else None
        self.defense = build_defense(defense_config, spec.num_classes, spec.client_sigmoid, seed=126)


def server_gradient(setup: Setup, transmitted: torch.Tensor, labels: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """Return the gradient the server sends back; a fixed one when no server half is timed."""
    if setup.server is None:
        return fixed
    received = transmitted.detach().requires_grad_(True)
    loss = F.cross_entropy(setup.server(received), labels)
    setup.server_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    setup.server_optimizer.step()
    return received.grad


def step(setup: Setup, images: torch.Tensor, labels: torch.Tensor, fixed: torch.Tensor, two_pass: bool = False) -> float:
    """Run and time one training step; returns seconds."""
    started = time.perf_counter()
    setup.encoder.train()
    features = setup.encoder(images)
    transmitted = setup.defense.transmit(features)
    gradient = server_gradient(setup, transmitted, labels, fixed)
    setup.optimizer.zero_grad(set_to_none=True)

    if two_pass:
        # The reference: backward of the CEM loss alone, keep the gradients, backward of the
        # task, then add lambda * s(lr) times the kept gradients.
        cem = setup.defense.losses[0]
        parameters = list(setup.encoder.parameters())
        value = cem_loss(features, labels, cem.clusters, cem.noise_std, cem.var_threshold)
        value.backward(retain_graph=True)
        kept = [parameter.grad.clone() for parameter in parameters]
        setup.optimizer.zero_grad(set_to_none=True)
        transmitted.backward(gradient)
        for parameter, extra in zip(parameters, kept):
            parameter.grad.add_(extra, alpha=cem.weight * separate_scale(LEARNING_RATE))
    else:
        setup.defense.backward(StepTensors(images, labels, features, transmitted, gradient, LEARNING_RATE))
    setup.optimizer.step()
    return time.perf_counter() - started


def encode_all(encoder: ClientNet, images: torch.Tensor, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Encode images in eval mode in batches of batch_size, as the client trainer does."""
    with torch.no_grad():
        encoder.eval()
        return torch.cat([encoder(images[start:start + batch_size]) for start in range(0, len(images), batch_size)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per variant, after 5 warm-up steps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--result", type=Path, default=Path("runs/bench/cem_overhead.json"), help="JSON result file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    splits = load_splits(DataConfig())
    spec = SplitSpec(input_shape=splits.input_shape, num_classes=splits.num_classes)
    images, labels = splits.train.floats(), splits.train.labels
    noise = DefenseConfig(defense="noise", noise_std=0.025)
    cem = DefenseConfig(defense="cem", noise_std=0.025, cem_weight=16, num_clusters=5)

    variants: dict[str, tuple[Setup, bool]] = {}
    for scope, with_server in (("client", False), ("split", True)):
        variants[f"{scope}/noise"] = (Setup(spec, noise, with_server), False)
        variants[f"{scope}/cem"] = (Setup(spec, cem, with_server), False)
        variants[f"{scope}/cem-two-pass"] = (Setup(spec, cem, with_server), True)
    for name, (setup, _) in variants.items():
        if setup.defense.losses:
            setup.defense.end_epoch(1, lambda setup=setup: (encode_all(setup.encoder, images), labels))

    generator = torch.Generator().manual_seed(0)
    fixed = torch.randn(BATCH_SIZE, *spec.feature_shape, generator=generator) * 1e-3
    times: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(args.steps + 5):
        batch = torch.randperm(len(labels), generator=generator)[:BATCH_SIZE]
        # Variants take turns on the same batch, so load from other processes hits all alike.
        for name, (setup, two_pass) in variants.items():
            seconds = step(setup, images[batch], labels[batch], fixed, two_pass)
            if index >= 5:
                times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:20s} {value * 1e3:8.2f} ms per step")

    ratios = {
        "client": medians["client/cem"] / medians["client/noise"],
        "split": medians["split/cem"] / medians["split/noise"],
        "client_two_pass": medians["client/cem-two-pass"] / medians["client/noise"],
        "split_two_pass": medians["split/cem-two-pass"] / medians["split/noise"],
    }
    for name, value in ratios.items():
        print(f"step ratio {name}: {value:.3f}")

    setup = variants["split/cem"][0]
    cem_loss_object = setup.defense.losses[0]
    update_times, encode_times, cluster_times = [], [], []
    for epoch in range(2, 5):
        diagnostics = cem_loss_object.end_epoch(epoch, lambda: (encode_all(setup.encoder, images), labels))
        encode_times.append(diagnostics["cem_encode_seconds"])
        cluster_times.append(diagnostics["cem_cluster_seconds"])
        update_times.append(diagnostics["cem_encode_seconds"] + diagnostics["cem_cluster_seconds"])
    # The trainer encoded in batches of 500 before; time that too, for comparison.
    large_batch_started = time.perf_counter()
    encode_all(setup.encoder, images, batch_size=500)
    large_batch_encode = time.perf_counter() - large_batch_started

    cold_started = time.perf_counter()
    cem_loss_object.clusters = None
    cem_loss_object.end_epoch(5, lambda: (encode_all(setup.encoder, images), labels))
    cold = time.perf_counter() - cold_started

    steps_per_epoch = math.ceil(len(labels) / BATCH_SIZE)
    epoch_seconds = steps_per_epoch * medians["split/cem"]
    share = statistics.median(update_times) / epoch_seconds
    print(f"epoch of {steps_per_epoch} split steps: {epoch_seconds:.2f} s; per-epoch update {statistics.median(update_times):.3f} s "
          f"(encode {statistics.median(encode_times):.3f} s, k-means {statistics.median(cluster_times):.3f} s), share {share:.1%}; "
          f"cold start with k-means++ {cold:.3f} s; encoding in batches of 500 {large_batch_encode:.3f} s")

    passed = {"step_ratio_split": ratios["split"] <= TARGET_STEP_RATIO, "step_ratio_client": ratios["client"] <= TARGET_STEP_RATIO,
              "cluster_share": share <= TARGET_CLUSTER_SHARE}
    write_result(
        args.result,
        {
            "revision": git_revision(),
            "threads": args.threads,
            "steps": args.steps,
            "batch_size": BATCH_SIZE,
            "train_images": len(labels),
            "step_ms": {name: value * 1e3 for name, value in medians.items()},
            "step_ratio": ratios,
            "epoch_seconds_estimate": epoch_seconds,
            "update_seconds": statistics.median(update_times),
            "encode_seconds": statistics.median(encode_times),
            "kmeans_seconds": statistics.median(cluster_times),
            "cold_update_seconds": cold,
            "encode_seconds_batch_500": large_batch_encode,
            "cluster_share": share,
            "targets": {"step_ratio": TARGET_STEP_RATIO, "cluster_share": TARGET_CLUSTER_SHARE},
            "passed": passed,
        },
    )
    return 0 if all(passed.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
