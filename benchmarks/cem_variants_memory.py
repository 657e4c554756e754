"""Extra memory of the CEM variants' loss at D = 512 and at an unbottlenecked cut (64 x 14 x 14).

Each case runs in its own process. It records the peak resident set size, then builds the
variant's loss with synthetic per-epoch clusters, an SGD optimizer with momentum over its
parameters, and runs 3 steps of loss forward, backward and update at batch 128. The extra memory is the increase of the peak resident set size: parameters,
gradients, momentum buffers and the activations of the loss's autograd graph. The encoder,
whose memory is the same with or without the variant, is not part of it.

Target: under 1 GiB in every case.

Usage: python benchmarks/cem_variants_memory.py [--result FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import git_revision, write_result  # noqa: E402
from cemsplit.shared.config import DefenseConfig  # noqa: E402
from cemsplit.shared.defenses import StepTensors, build_defense  # noqa: E402
from cemsplit.shared.defenses.cem.clusters import ClassClusters  # noqa: E402

VARIANTS = ["cem", "cem-att", "cem-mix", "cem-enhanced"]
SHAPES = {"D=512 (8x8x8)": (8, 8, 8), "unbottlenecked (64x14x14)": (64, 14, 14)}
TARGET_BYTES = 1 << 30
BATCH_SIZE = 128


def peak_bytes() -> int:
    """Return the peak resident set size of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def synthetic_clusters(num_clusters: int, dim: int, generator: torch.Generator) -> ClassClusters:
    """Return clusters of 10 classes with num_clusters centroids in (0, 1)^dim, as k-means would store."""
    return ClassClusters(
        centroids=torch.rand(10, num_clusters, dim, generator=generator),
        weights=torch.full((10, num_clusters), 1.0 / num_clusters),
        variances=torch.full((10, num_clusters), 0.01),
        class_counts=torch.full((10,), 350),
    )


def measure(variant: str, shape: tuple[int, int, int]) -> dict[str, float]:
    """Return the peak memory before and after 3 steps of the variant's loss, in this process.

    The per-epoch clusters are synthetic, because k-means on a training set would raise the
    peak before the steps start and hide what the steps add.
    """
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(BATCH_SIZE, *shape, generator=generator).requires_grad_(True)
    labels = torch.arange(BATCH_SIZE) % 10
    dim = batch[0].numel()
    before = peak_bytes()

    defense = build_defense(DefenseConfig(defense=variant, noise_std=0.025), 10, True, seed=0, feature_dim=dim)
    client_loss = defense.losses[0]
    if variant == "cem":
        client_loss.clusters = synthetic_clusters(client_loss.num_clusters, dim, generator)
    else:
        for clustering in client_loss.clusterings.values():
            clustering.clusters = synthetic_clusters(clustering.num_clusters, dim, generator)

    parameters = defense.parameters()
    optimizer = torch.optim.SGD(parameters, lr=0.05, momentum=0.9) if parameters else None
    for _ in range(3):
        transmitted = defense.transmit(batch)
        defense.backward(StepTensors(torch.zeros(1), labels, batch, transmitted, torch.zeros_like(batch), 0.05))
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        batch.grad = None
    after = peak_bytes()
    return {"parameters": sum(parameter.numel() for parameter in parameters), "before_bytes": before, "extra_bytes": after - before}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", nargs=2, metavar=("VARIANT", "SHAPE"), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=Path("runs/bench/cem_variants_memory.json"), help="JSON result file")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case[0], SHAPES[args.case[1]])))
        return 0

    rows = []
    for shape_name in SHAPES:
        for variant in VARIANTS:
            output = subprocess.run(
                [sys.executable, __file__, "--case", variant, shape_name], capture_output=True, text=True, check=True
            ).stdout
            row = {"variant": variant, "features": shape_name, **json.loads(output.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{shape_name:28s} {variant:14s} parameters {row['parameters']:>10,d}  extra {row['extra_bytes'] / 2**20:8.1f} MiB")

    passed = all(row["extra_bytes"] < TARGET_BYTES for row in rows)
    write_result(args.result, {"revision": git_revision(), "batch_size": BATCH_SIZE, "rows": rows, "target_bytes": TARGET_BYTES, "passed": passed})
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
