"""Step time of each CEM variant divided by the step time without a defence, in one process.

A training step at batch 128 on the default split (mnist5k digits, VGG11-BN cut after two
convolutions, 8-channel bottleneck, features 8x7x7 so D = 392) is timed without a defence,
with Gaussian noise (sigma = 0.025), and with noise + cem, cem-att, cem-mix and cem-enhanced
(lambda = 16, default settings, clusters fitted on the client-training split). "client" times
the client's own work: encoder forward, transmit, backward from a fixed server gradient, SGD
step over the encoder and the variant's weights. "split" adds the server half's forward and
backward in the same process, the compute of a real step without gRPC. The variants take turns
on the same batch, so load from other programs hits all of them alike.

Usage: python benchmarks/cem_variants_steps.py [--steps N] [--threads N] [--result FILE]
"""

from __future__ import annotations

import argparse
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
from cemsplit.shared.vgg import ClientNet, ServerNet, SplitSpec  # noqa: E402

BATCH_SIZE = 128
LEARNING_RATE = 0.05
DEFENSES = {
    "none": DefenseConfig(),
    "noise": DefenseConfig(defense="noise", noise_std=0.025),
    "cem": DefenseConfig(defense="cem", noise_std=0.025),
    "cem-att": DefenseConfig(defense="cem-att", noise_std=0.025),
    "cem-mix": DefenseConfig(defense="cem-mix", noise_std=0.025),
    "cem-enhanced": DefenseConfig(defense="cem-enhanced", noise_std=0.025),
}


class Setup:
    """One encoder, optional server half, defence and optimizer, built as the client trainer does."""

    def __init__(self, spec: SplitSpec, config: DefenseConfig, with_server: bool) -> None:
        torch.manual_seed(125)
        self.encoder = ClientNet(spec)
        dim = spec.feature_shape[0] * spec.feature_shape[1] * spec.feature_shape[2]
        self.defense = build_defense(config, spec.num_classes, spec.client_sigmoid, seed=126, feature_dim=dim)
        groups = [{"params": list(self.encoder.parameters())}]
        if self.defense.parameters():
            groups.append({"params": self.defense.parameters()})
        self.optimizer = torch.optim.SGD(groups, lr=LEARNING_RATE, momentum=0.9, weight_decay=5e-4)
        self.server = ServerNet(spec) if with_server else None
        self.server_optimizer = torch.optim.SGD(self.server.parameters(), lr=LEARNING_RATE, momentum=0.9) if with_server else None


def step(setup: Setup, images: torch.Tensor, labels: torch.Tensor, fixed: torch.Tensor) -> float:
    """Run and time one training step; returns seconds."""
    started = time.perf_counter()
    setup.encoder.train()
    features = setup.encoder(images)
    transmitted = setup.defense.transmit(features)
    gradient = fixed
    if setup.server is not None:
        received = transmitted.detach().requires_grad_(True)
        loss = F.cross_entropy(setup.server(received), labels)
        setup.server_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        setup.server_optimizer.step()
        gradient = received.grad
    setup.optimizer.zero_grad(set_to_none=True)
    setup.defense.backward(StepTensors(images, labels, features, transmitted, gradient, LEARNING_RATE))
    setup.optimizer.step()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant, after 3 warm-up steps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--scopes", nargs="+", default=["client", "split"], choices=["client", "split"], help="what each step includes")
    parser.add_argument("--result", type=Path, default=Path("runs/bench/cem_variants_steps.json"), help="JSON result file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    splits = load_splits(DataConfig())
    spec = SplitSpec(input_shape=splits.input_shape, num_classes=splits.num_classes)
    images, labels = splits.train.floats(), splits.train.labels

    setups: dict[str, Setup] = {}
    for scope in args.scopes:
        for name, config in DEFENSES.items():
            setup = Setup(spec, config, with_server=scope == "split")
            if setup.defense.needs_epoch_update:
                with torch.no_grad():
                    features = torch.cat([setup.encoder.eval()(images[start:start + BATCH_SIZE]) for start in range(0, len(images), BATCH_SIZE)])
                setup.defense.end_epoch(1, lambda features=features: (features, labels))
            setups[f"{scope}/{name}"] = setup

    generator = torch.Generator().manual_seed(0)
    fixed = torch.randn(BATCH_SIZE, *spec.feature_shape, generator=generator) * 1e-3
    times: dict[str, list[float]] = {name: [] for name in setups}
    for index in range(args.steps + 3):
        batch = torch.randperm(len(labels), generator=generator)[:BATCH_SIZE]
        for name, setup in setups.items():
            seconds = step(setup, images[batch], labels[batch], fixed)
            if index >= 3:
                times[name].append(seconds)

    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = {}
    for name, value in medians.items():
        scope = name.split("/")[0]
        ratios[name] = value / medians[f"{scope}/none"]
        print(f"{name:22s} {value * 1e3:8.1f} ms per step, {ratios[name]:.2f}x no defence")
    parameters = {name: sum(p.numel() for p in setup.defense.parameters()) for name, setup in setups.items()}
    write_result(args.result, {
        "revision": git_revision(), "threads": args.threads, "steps": args.steps, "batch_size": BATCH_SIZE,
        "step_ms": {name: value * 1e3 for name, value in medians.items()}, "ratio_to_none": ratios, "parameters": parameters,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
