"""Vectorised cross attention of CEM-att against a per-sample Python loop.

Times forward + backward of CEMAttention's cross attention (4 heads, 8 slots per class) on
features of real digits from the default split (D = 392) at several batch sizes. The loop
version, kept in this benchmark only, attends one sample at a time to its class's slots, as the
first implementation of CEM-att did. Both versions share the weights and agree to 1e-5.

Target: the vectorised version is >= 20x faster at batch 128. The default thread count is
torch's own (one per core), the setting every cemsplit role runs with unless --threads is given.

Usage: python benchmarks/cross_attention_speed.py [--repeats N] [--threads N] [--result FILE]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import git_revision, write_result  # noqa: E402
from cemsplit.shared.config import DataConfig  # noqa: E402
from cemsplit.shared.datasets import load_splits  # noqa: E402
from cemsplit.shared.defenses.attention.cross_attention import CrossAttention  # noqa: E402
from cemsplit.shared.defenses.attention.grouping import group_by_class  # noqa: E402
from cemsplit.shared.vgg import ClientNet, SplitSpec  # noqa: E402

TARGET_SPEEDUP = 20.0
SLOTS = 8
HEADS = 4


def vectorised(module: CrossAttention, z: torch.Tensor, labels: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Return reconstructions [B, D]: all samples and classes in one padded batch."""
    groups = group_by_class(labels, slots.shape[0])
    mask = torch.ones(len(groups.classes), SLOTS, dtype=torch.bool)
    output, _ = module(z, groups, slots[groups.classes], mask)
    return output


def per_sample_loop(module: CrossAttention, z: torch.Tensor, labels: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Return reconstructions [B, D], one sample at a time."""
    outputs = []
    head_dim = z.shape[1] // HEADS
    for index in range(len(z)):
        own = slots[int(labels[index])]
        query = module.to_q(module.norm_queries(z[index])).view(HEADS, head_dim)
        keys = module.to_k(module.norm_keys(own)).view(SLOTS, HEADS, head_dim).transpose(0, 1)
        values = module.to_v(own).view(SLOTS, HEADS, head_dim).transpose(0, 1)
        attention = torch.softmax(torch.einsum("hd,hkd->hk", query, keys) / math.sqrt(head_dim), dim=-1)
        outputs.append(module.out(torch.einsum("hk,hkd->hd", attention, values).reshape(-1)))
    return torch.stack(outputs)


def time_pass(function, module, z, labels, slots, repeats: int) -> float:
    """Return the median seconds of forward + backward."""
    times = []
    for _ in range(repeats + 2):
        inputs = z.clone().requires_grad_(True)
        module.zero_grad(set_to_none=True)
        started = time.perf_counter()
        function(module, inputs, labels, slots).pow(2).sum().backward()
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="timed passes per version and batch size")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default, as the roles do (default: 0)")
    parser.add_argument("--result", type=Path, default=Path("runs/bench/cross_attention_speed.json"), help="JSON result file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")

    splits = load_splits(DataConfig(train_limit=512))
    torch.manual_seed(0)
    encoder = ClientNet(SplitSpec(input_shape=(1, 28, 28), num_classes=10)).eval()
    with torch.no_grad():
        features = encoder(splits.train.floats()).flatten(1)
    labels = splits.train.labels
    dim = features.shape[1]
    module = CrossAttention(dim, HEADS)
    slots = features[:80].reshape(10, SLOTS, dim) + 0.01 * torch.randn(10, SLOTS, dim)

    rows = []
    for batch in (32, 128, 512):
        z, batch_labels = features[:batch], labels[:batch]
        with torch.no_grad():
            difference = float((vectorised(module, z, batch_labels, slots) - per_sample_loop(module, z, batch_labels, slots)).abs().max())
        fast = time_pass(vectorised, module, z, batch_labels, slots, args.repeats)
        slow = time_pass(per_sample_loop, module, z, batch_labels, slots, max(3, args.repeats // 4))
        rows.append({"batch": batch, "vectorised_ms": fast * 1e3, "loop_ms": slow * 1e3, "speedup": slow / fast, "max_difference": difference})
        print(f"batch {batch:4d}: vectorised {fast * 1e3:7.2f} ms, loop {slow * 1e3:8.2f} ms, speedup {slow / fast:6.1f}x, max difference {difference:.1e}")

    at_128 = next(row for row in rows if row["batch"] == 128)["speedup"]
    write_result(args.result, {"revision": git_revision(), "threads": torch.get_num_threads(), "dim": dim, "rows": rows,
                               "target_speedup": TARGET_SPEEDUP, "passed": at_128 >= TARGET_SPEEDUP})
    return 0 if at_128 >= TARGET_SPEEDUP else 1


if __name__ == "__main__":
    sys.exit(main())
