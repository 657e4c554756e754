"""Client training loop: encode, defend, send over gRPC, apply the returned gradient.

The defence (cemsplit.shared.defenses) decides what is sent, adds its client losses to the
backward pass and runs its per-epoch updates; this loop only calls it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import grpc
import torch

from cemsplit.shared import codec
from cemsplit.shared.checkpoint import save_checkpoint
from cemsplit.shared.config import RunConfig
from cemsplit.shared.datasets import DataSplits, augment_batch, load_splits
from cemsplit.shared.defenses import StepTensors, build_defense
from cemsplit.shared.grpc_util import wait_until_serving
from cemsplit.shared.manifest import ManifestWriter
from cemsplit.shared.schedule import learning_rate
from cemsplit.shared.security import open_channel
from cemsplit.shared.specs import model_spec_message, split_spec, training_spec_message
from cemsplit.shared.vgg import ClientNet, SplitSpec
from cemsplit.shared.wire import PROTOCOL_VERSION, channel_options
from cemsplit.v1 import split_pb2, split_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = split_pb2.DESCRIPTOR.services_by_name["SplitLearning"].full_name


class ClientError(RuntimeError):
    """A failure of the client run that the user can act on; the message says how."""


def encoder_state(encoder: ClientNet, spec: SplitSpec) -> dict[str, object]:
    """Return the checkpoint dict of an encoder: its weights and the split that shapes it."""
    spec_fields = dataclasses.asdict(spec)
    spec_fields["input_shape"] = list(spec.input_shape)
    return {"encoder": encoder.state_dict(), "spec": spec_fields}


class SplitClient:
    """Trains the client half against a remote server half.

    Args:
        config: the run config (data, model, train, defense, transport and client sections).
        run_dir: where metrics.jsonl, manifest.jsonl, checkpoints and encoder.pt are written.
        splits: the dataset; loaded from config.data when not given.
    """

    def __init__(self, config: RunConfig, run_dir: Path, splits: DataSplits | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.splits = splits or load_splits(config.data)
        self.spec = split_spec(config)
        if tuple(self.spec.input_shape) != tuple(self.splits.input_shape):
            raise ClientError(
                f"model.input_shape {list(self.spec.input_shape)} does not match the dataset's images "
                f"{list(self.splits.input_shape)}; remove model.input_shape or fix it"
            )

        torch.manual_seed(config.train.seed)
        self.encoder = ClientNet(self.spec)
        feature_dim = math.prod(self.spec.feature_shape)
        self.defense = build_defense(config.defense, self.spec.num_classes, self.spec.client_sigmoid, config.train.seed + 1, feature_dim)
        # The attention variants' weights train with the encoder, under the same schedule.
        groups = [{"params": list(self.encoder.parameters())}]
        defense_parameters = self.defense.parameters()
        if defense_parameters:
            groups.append({"params": defense_parameters})
        self.optimizer = torch.optim.SGD(groups, lr=config.train.lr, momentum=config.train.momentum, weight_decay=config.train.weight_decay)
        self.wire_dtype = codec.wire_dtype_from_name(config.transport.wire_dtype)
        self.session_id = ""
        self.step = 0

    # -- Connection -----------------------------------------------------------------------------

    def connect(self) -> split_pb2_grpc.SplitLearningStub:
        """Wait for the server's health check, then open a session; returns the stub."""
        address = self.config.client.server
        self.channel = open_channel(address, self.config.transport, channel_options(self.config.transport.max_message_mb))
        wait_until_serving(self.channel, SERVICE_NAME, self.config.transport.connect_timeout_s, f"server {address}")
        stub = split_pb2_grpc.SplitLearningStub(self.channel)
        request = split_pb2.OpenSessionRequest(
            protocol_version=PROTOCOL_VERSION,
            client_name=self.config.client.name,
            model=model_spec_message(self.spec),
            training=training_spec_message(self.config.train),
            wire_dtype=self.wire_dtype,
            max_batch_size=max(self.config.train.batch_size, self.config.train.eval_batch_size),
        )
        try:
            reply = stub.OpenSession(request, timeout=self.config.transport.rpc_timeout_s)
        except grpc.RpcError as error:
            raise ClientError(f"server {address} rejected the session ({error.code().name}): {error.details()}") from None
        self.session_id = reply.session_id
        log.info("opened session %s on %s", self.session_id, address)
        return stub

    # -- Training -------------------------------------------------------------------------------

    def _batches(self, epoch: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.config.train.seed * 1000 + epoch)
        order = torch.randperm(len(self.splits.train), generator=generator)
        size = self.config.train.batch_size
        batches = [order[start:start + size] for start in range(0, len(order), size)]
        # Batch norm cannot train on one sample; a final batch of one joins the previous batch.
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches[-2] = torch.cat([batches[-2], batches.pop()])
        return batches

    def train_epoch(self, stub: split_pb2_grpc.SplitLearningStub, epoch: int, manifest: ManifestWriter) -> dict[str, float]:
        """Run one epoch of split training; returns mean loss and accuracy on the training data."""
        train = self.config.train
        rate = learning_rate(train.lr, train.lr_milestones, train.lr_gamma, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        augment_generator = torch.Generator().manual_seed(train.seed * 1000 + epoch + 7)

        self.encoder.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for index in self._batches(epoch):
            images = self.splits.train.floats(index)
            labels = self.splits.train.labels[index]
            if self.config.data.augment:
                images = augment_batch(images, self.config.data.dataset, augment_generator)

            features = self.encoder(images)
            transmitted = self.defense.transmit(features)
            self.step += 1
            request = split_pb2.TrainRequest(
                session_id=self.session_id,
                step=self.step,
                epoch=epoch,
                activations=codec.encode(transmitted, self.wire_dtype, self.config.transport.compress),
                labels=codec.encode(labels),
            )
            reply = self._call(stub.TrainStep, request, "TrainStep")
            gradient = codec.decode(reply.gradient, "gradient")
            if gradient.shape != transmitted.shape:
                raise ClientError(f"server returned a gradient of shape {list(gradient.shape)} for activations {list(transmitted.shape)}")

            self.optimizer.zero_grad(set_to_none=True)
            self.defense.backward(StepTensors(images, labels, features, transmitted, gradient, rate))
            self.optimizer.step()
            manifest.write(self.session_id, self.step, epoch, self.splits.train.ids[index].tolist())

            loss_sum += reply.loss * len(index)
            correct += reply.correct
            seen += len(index)
        return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen, "lr": rate}

    @torch.no_grad()
    def encode_training_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return features [N, C, H, W] and labels [N] of the client-training split.

        The encoder runs in eval mode without augmentation or defence, for the defence's
        per-epoch update (CEM's clustering); it is left in eval mode. Batches have the training
        batch size: on 2 CPU cores, 28x28 digits encode about 1.7 times as fast per image in
        batches of 128 as in batches of 500 (benchmarks/cem_overhead.py).
        """
        self.encoder.eval()
        train = self.splits.train
        size = self.config.train.batch_size
        features = [self.encoder(train.floats(slice(start, start + size))) for start in range(0, len(train), size)]
        return torch.cat(features), train.labels

    @torch.no_grad()
    def evaluate(self, stub: split_pb2_grpc.SplitLearningStub) -> dict[str, float]:
        """Return loss and accuracy on the test split; features carry the defence as in training."""
        self.encoder.eval()
        test = self.splits.test
        loss_sum, correct = 0.0, 0
        size = self.config.train.eval_batch_size
        for start in range(0, len(test), size):
            index = torch.arange(start, min(start + size, len(test)))
            transmitted = self.defense.transmit(self.encoder(test.floats(index)))
            request = split_pb2.EvalRequest(
                session_id=self.session_id,
                activations=codec.encode(transmitted, self.wire_dtype, self.config.transport.compress),
                labels=codec.encode(test.labels[index]),
            )
            reply = self._call(stub.Evaluate, request, "Evaluate")
            loss_sum += reply.loss * len(index)
            correct += reply.correct
        return {"test_loss": loss_sum / len(test), "test_accuracy": correct / len(test)}

    def _call(self, method, request, name: str):
        try:
            return method(request, timeout=self.config.transport.rpc_timeout_s)
        except grpc.RpcError as error:
            raise ClientError(
                f"{name} failed at step {self.step} of session {self.session_id} ({error.code().name}): {error.details()}"
            ) from None

    def run(self) -> dict[str, object]:
        """Train for the configured epochs, evaluating every epoch; returns the run summary."""
        started = time.monotonic()
        stub = self.connect()
        metrics_path = self.run_dir / "metrics.jsonl"
        manifest = ManifestWriter(self.run_dir / "manifest.jsonl")
        history = []
        try:
            with open(metrics_path, "a", encoding="utf-8") as metrics_file:
                for epoch in range(1, self.config.train.epochs + 1):
                    epoch_started = time.monotonic()
                    row: dict[str, object] = {"epoch": epoch, "step": self.step}
                    row.update(self.train_epoch(stub, epoch, manifest))
                    train_seconds = time.monotonic() - epoch_started
                    row.update(self.defense.epoch_metrics())
                    if self.defense.needs_epoch_update:
                        row.update(self.defense.end_epoch(epoch, self.encode_training_data))
                    row.update(self.evaluate(stub))
                    row.update(step=self.step, train_seconds=train_seconds, seconds=time.monotonic() - epoch_started)
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
                    manifest.flush()
                    self._checkpoint(epoch)
                    history.append(row)
                    log.info(
                        "epoch %d/%d: train loss %.4f, train acc %.4f, test acc %.4f (%.1f s)",
                        epoch, self.config.train.epochs, row["train_loss"], row["train_accuracy"], row["test_accuracy"], row["seconds"],
                    )
        finally:
            manifest.close()

        close = self._call(stub.CloseSession, split_pb2.CloseSessionRequest(session_id=self.session_id, flush_timeout_s=30.0), "CloseSession")
        save_checkpoint(encoder_state(self.encoder, self.spec), self.run_dir / "encoder.pt")
        summary = {
            "session_id": self.session_id,
            "steps": self.step,
            "test_accuracy": history[-1]["test_accuracy"],
            "defense": self.defense.describe(),
            "mirror": {"enqueued": close.mirror.enqueued, "sent": close.mirror.sent, "dropped": close.mirror.dropped},
            "traffic_log": {"enqueued": close.traffic_log.enqueued, "sent": close.traffic_log.sent, "dropped": close.traffic_log.dropped},
            "training_seconds": time.monotonic() - started,
            "epochs": history,
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        self.channel.close()
        return summary

    def _checkpoint(self, epoch: int) -> None:
        state = encoder_state(self.encoder, self.spec)
        state.update(
            optimizer=self.optimizer.state_dict(), defense=self.defense.state_dict(), epoch=epoch, step=self.step, session_id=self.session_id
        )
        save_checkpoint(state, self.run_dir / "checkpoints" / "client-last.pt")
