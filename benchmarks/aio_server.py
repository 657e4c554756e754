"""The split-learning servicer behind an asyncio gRPC server (grpc.aio), for the transport benchmark only.

It hosts the product's SplitLearningService logic unchanged: every request is validated and
applied by the same methods, which run in a one-thread executor so that torch never blocks the
event loop. Only what the benchmark needs is wired up: plaintext on loopback, no mirror, no
traffic log, no token, no snapshots. `cemsplit server` remains the product's server.

Usage: python -m benchmarks.aio_server --config FILE --run-dir DIR --port-file FILE [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import AsyncIterator, Callable

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cemsplit.server.service import RequestError, SplitLearningService
from cemsplit.shared.config import build_config, load_yaml
from cemsplit.shared.grpc_util import write_port_file
from cemsplit.shared.specs import split_spec
from cemsplit.shared.wire import server_options
from cemsplit.v1 import split_pb2, split_pb2_grpc

log = logging.getLogger(__name__)


class AsyncSplitLearning(split_pb2_grpc.SplitLearningServicer):
    """Runs each request of the synchronous servicer's logic in one worker thread, in arrival order."""

    def __init__(self, service: SplitLearningService) -> None:
        self.service = service
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")

    async def _run(self, context: grpc.aio.ServicerContext, work: Callable[[], object]):
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, work)
        except RequestError as error:
            await context.abort(error.code, error.message)

    async def OpenSession(self, request, context):
        return await self._run(context, lambda: self.service._open(request))

    async def TrainStep(self, request, context):
        return await self._run(context, lambda: self.service._train(request))

    async def TrainStream(self, requests, context) -> AsyncIterator[split_pb2.TrainReply]:
        async for request in requests:
            yield await self._run(context, lambda: self.service._train(request))

    async def Evaluate(self, request, context):
        return await self._run(context, lambda: self.service._evaluate(request))

    async def CloseSession(self, request, context):
        return await self._run(context, lambda: self.service._close(request))


async def serve(config_path: Path, run_dir: Path, port_file: Path) -> None:
    """Serve on 127.0.0.1 with a free port, written to port_file, until SIGTERM or SIGINT."""
    config = build_config(load_yaml(config_path), str(config_path))
    spec = split_spec(config)
    service = SplitLearningService(spec, run_dir / "checkpoints", update_after_reply=config.server.update_after_reply)
    server = grpc.aio.server(options=server_options(config.transport.max_message_mb))
    split_pb2_grpc.add_SplitLearningServicer_to_server(AsyncSplitLearning(service), server)
    health_service = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    for name in ("", split_pb2.DESCRIPTOR.services_by_name["SplitLearning"].full_name):
        await health_service.set(name, health_pb2.HealthCheckResponse.SERVING)
    write_port_file(port_file, port)
    log.info("asyncio server serving on 127.0.0.1:%d", port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    service.begin_shutdown()
    await server.stop(grace=5)
    log.info("asyncio server stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="run config YAML, as `cemsplit server` reads it")
    parser.add_argument("--run-dir", type=Path, required=True, help="directory for the server's checkpoints")
    parser.add_argument("--port-file", type=Path, required=True, help="file the bound port is written to")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    asyncio.run(serve(args.config, args.run_dir, args.port_file))


if __name__ == "__main__":
    main()
