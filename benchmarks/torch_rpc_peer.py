"""Server half for the torch.distributed.rpc (TensorPipe) baseline of benchmarks/transport.py.

Run by the benchmark as a separate process: `python -m benchmarks.torch_rpc_peer ARGS`. It holds
the server half and its optimizer; the client process calls `server_step` over RPC, and
`save_server_half` at each epoch end.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed.rpc as rpc
from torch import nn

from benchmarks.common import save_half
from cemsplit.shared.vgg import ServerNet, SplitSpec

_state: dict[str, object] = {}


def server_step(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Apply one training step to the server half; returns (feature gradient, loss, correct)."""
    net: ServerNet = _state["net"]
    optimizer: torch.optim.Optimizer = _state["optimizer"]
    features = features.detach().requires_grad_(True)
    net.train()
    logits = net(features)
    loss = nn.functional.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return features.grad, float(loss.detach()), int((logits.argmax(1) == labels).sum())


def save_server_half(path: str) -> None:
    """Write the server half and its optimizer state durably, like the product's epoch-end checkpoint."""
    save_half(_state["net"], _state["optimizer"], Path(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bottleneck-channels", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=125)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    spec = SplitSpec(input_shape=(1, 28, 28), num_classes=10, bottleneck_channels=args.bottleneck_channels)
    net = ServerNet(spec)
    # RPC calls resolve server_step by its module path, benchmarks.torch_rpc_peer, which is a
    # different module object from this __main__; the state goes there.
    from benchmarks import torch_rpc_peer

    torch_rpc_peer._state["net"] = net
    torch_rpc_peer._state["optimizer"] = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    options = rpc.TensorPipeRpcBackendOptions(num_worker_threads=4, init_method=f"tcp://127.0.0.1:{args.port}")
    rpc.init_rpc("server", rank=1, world_size=2, rpc_backend_options=options)
    rpc.shutdown()


if __name__ == "__main__":
    main()
