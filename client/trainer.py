"""Client training loop: encode, defend, send over gRPC, apply the returned gradient.

The defence (cemsplit.shared.defenses) decides what is sent, adds its client losses to the
backward pass and runs its per-epoch updates; this loop only calls it.

Training steps go either as one TrainStep call per step or over one TrainStream stream per
epoch (transport.train_call); both take the same retry and resume path.

Restarts lose nothing. Calls that fail with UNAVAILABLE or DEADLINE_EXCEEDED are retried with
backoff. A retried step is not applied twice: the server replies with its stored reply to that step. Every
`train.checkpoint_every` steps and at every epoch end the client asks the server to checkpoint
the step and checkpoints its own half (cemsplit.client.checkpoints). When the server has lost
the session (it restarted), or when the client itself starts again on the same run directory,
the client reopens the session with the steps it has checkpointed, the server replies with the
newest step both halves have, and the client rewinds to it. A stop request (SIGTERM) finishes
the current step, checkpoints both halves and returns.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from pathlib import Path

import grpc
import torch

from cemsplit.client.checkpoints import ClientCheckpoints, Position
from cemsplit.client.train_calls import TrainCalls, open_train_calls
from cemsplit.shared import codec
from cemsplit.shared.checkpoint import CheckpointError, load_state_strict, save_checkpoint, write_private_atomic
from cemsplit.shared.config import RunConfig
from cemsplit.shared.datasets import DataSplits, augment_batch, load_splits
from cemsplit.shared.defenses import StepTensors, build_defense
from cemsplit.shared.device import resolve_device
from cemsplit.shared.grpc_util import wait_until_serving
from cemsplit.shared.manifest import ManifestWriter
from cemsplit.shared.retry import RetriesExhausted, RetryPolicy, call_with_retry
from cemsplit.shared.schedule import learning_rate
from cemsplit.shared.security import open_channel
from cemsplit.shared.specs import model_spec_message, split_spec, training_spec_message
from cemsplit.shared.vgg import ClientNet, SplitSpec
from cemsplit.shared.wire import PROTOCOL_VERSION, channel_options
from cemsplit.v1 import split_pb2, split_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = split_pb2.DESCRIPTOR.services_by_name["SplitLearning"].full_name

# Config sections that shape the training; a run resumes only with the same values.
RESUME_SECTIONS = ("data", "model", "train", "defense")


class ClientError(RuntimeError):
    """A failure of the client run that the user can act on; the message says how."""


class SessionLost(RuntimeError):
    """The server has no session with this id, for example after a restart, so the client resumes it."""


class StopRequested(RuntimeError):
    """A stop was requested while the client waited for the server."""


def encoder_state(encoder: ClientNet, spec: SplitSpec) -> dict[str, object]:
    """Return the checkpoint dict of an encoder: its weights and the split that shapes it."""
    spec_fields = dataclasses.asdict(spec)
    spec_fields["input_shape"] = list(spec.input_shape)
    return {"encoder": encoder.state_dict(), "spec": spec_fields}


def resume_settings(config: RunConfig) -> dict[str, object]:
    """Return the settings a continued run must share with the run it continues."""
    settings = {section: getattr(config, section).model_dump(mode="json") for section in RESUME_SECTIONS}
    settings["wire_dtype"] = config.transport.wire_dtype
    return settings


def _settings_differences(saved: dict[str, object], current: dict[str, object]) -> list[str]:
    differences = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += [
                f"{key}.{field} {old.get(field)!r} -> {new.get(field)!r}"
                for field in sorted(set(old) | set(new))
                if old.get(field) != new.get(field)
            ]
        elif old != new:
            differences.append(f"{key} {old!r} -> {new!r}")
    return differences


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

        self.device = resolve_device(config.runtime.device)
        torch.manual_seed(config.train.seed)
        self.encoder = ClientNet(self.spec).to(self.device)
        feature_dim = math.prod(self.spec.feature_shape)
        self.defense = build_defense(config.defense, self.spec.num_classes, self.spec.client_sigmoid, config.train.seed + 1, feature_dim)
        log.info("client defence %s", self.defense.describe())
        self.defense.to(self.device)
        # The attention variants' weights train with the encoder, under the same schedule.
        groups = [{"params": list(self.encoder.parameters())}]
        defense_parameters = self.defense.parameters()
        if defense_parameters:
            groups.append({"params": defense_parameters})
        self.optimizer = torch.optim.SGD(groups, lr=config.train.lr, momentum=config.train.momentum, weight_decay=config.train.weight_decay)
        self.wire_dtype = codec.wire_dtype_from_name(config.transport.wire_dtype)
        transport = config.transport
        self.retry = RetryPolicy(transport.retry_initial_backoff_s, transport.retry_max_backoff_s, transport.retry_max_elapsed_s)
        self.checkpoints = ClientCheckpoints(self.run_dir / "checkpoints", config.client.keep_checkpoints)
        self.position = Position()
        self.session_id = ""
        self._stop = threading.Event()

    @property
    def step(self) -> int:
        """The last step applied by both halves."""
        return self.position.step

    def request_stop(self) -> None:
        """Ask the run to stop after the current step, with both halves checkpointed; safe in a signal handler."""
        self._stop.set()

    # -- Connection -----------------------------------------------------------------------------

    def connect(self) -> split_pb2_grpc.SplitLearningStub:
        """Wait for the server's health check, then open a session; returns the stub."""
        address = self.config.client.server
        self.channel = open_channel(address, self.config.transport, channel_options(self.config.transport.max_message_mb))
        wait_until_serving(self.channel, SERVICE_NAME, self.config.transport.connect_timeout_s, f"server {address}")
        stub = split_pb2_grpc.SplitLearningStub(self.channel)
        reply = self._open(stub, self._open_request())
        self.session_id = reply.session_id
        log.info("opened session %s on %s", self.session_id, address)
        return stub

    def _open_request(self, resume_session_id: str = "", resume_steps: list[int] | None = None) -> split_pb2.OpenSessionRequest:
        return split_pb2.OpenSessionRequest(
            protocol_version=PROTOCOL_VERSION,
            client_name=self.config.client.name,
            model=model_spec_message(self.spec),
            training=training_spec_message(self.config.train),
            wire_dtype=self.wire_dtype,
            max_batch_size=max(self.config.train.batch_size, self.config.train.eval_batch_size),
            resume_session_id=resume_session_id,
            resume_steps=resume_steps or [],
        )

    def _open(self, stub: split_pb2_grpc.SplitLearningStub, request: split_pb2.OpenSessionRequest) -> split_pb2.OpenSessionReply:
        address = self.config.client.server
        try:
            return call_with_retry(
                lambda: stub.OpenSession(request, timeout=self.config.transport.rpc_timeout_s), "OpenSession", self.retry, sleep=self._sleep
            )
        except RetriesExhausted as error:
            raise ClientError(f"server {address}: {error}") from None
        except grpc.RpcError as error:
            raise ClientError(f"server {address} rejected the session ({error.code().name}): {error.details()}") from None

    def _resume(self, stub: split_pb2_grpc.SplitLearningStub, session_id: str) -> None:
        """Reopen session_id on the server and rewind both halves to the newest step both hold."""
        steps = self.checkpoints.steps()
        try:
            reply = self._open(stub, self._open_request(session_id, steps))
        except ClientError as error:
            raise ClientError(
                f"{error}; the client's checkpoints in {self.checkpoints.directory} belong to that session: "
                "to start over, choose a new --run-dir or move that directory away"
            ) from None
        self.session_id = session_id
        self._restore(self.checkpoints.load(reply.last_durable_step))
        log.info(
            "resumed session %s at step %d (epoch %d, batch %d); the client held steps %s",
            session_id, self.position.step, self.position.epoch, self.position.batch, steps,
        )

    def _sleep(self, seconds: float) -> None:
        """Wait between retries; a stop request ends the wait."""
        if self._stop.wait(seconds):
            raise StopRequested(f"stop requested while retrying a call to {self.config.client.server}")

    # -- Checkpoints ----------------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        state = encoder_state(self.encoder, self.spec)
        state.update(
            optimizer=self.optimizer.state_dict(),
            defense=self.defense.state_dict(),
            position=self.position.to_state(),
            session_id=self.session_id,
            settings=resume_settings(self.config),
        )
        path = self.checkpoints.save(state, self.position.step)
        log.debug("saved checkpoint %s", path)

    def _restore(self, state: dict[str, object]) -> None:
        path = self.checkpoints.path(int(state["position"]["step"]))  # type: ignore[index]
        differences = _settings_differences(state["settings"], resume_settings(self.config))  # type: ignore[arg-type]
        if differences:
            raise ClientError(
                f"checkpoint {path} was written with other settings ({'; '.join(differences)}); "
                "resume with the settings of that run, or choose a new --run-dir"
            )
        load_state_strict(self.encoder, state["encoder"], path)  # type: ignore[arg-type]
        try:
            self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
            self.defense.load_state_dict(state["defense"])  # type: ignore[arg-type]
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint {path} does not fit this client: {error}") from None
        self.position = Position.from_state(state["position"])  # type: ignore[arg-type]

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
        """Run the batches of one epoch from self.position on; returns mean loss and accuracy on the training data.

        Stops early, with self.position at the last applied step, when a stop is requested.
        """
        train = self.config.train
        position = self.position
        if position.epoch != epoch or position.epoch_done:
            self.position = position = Position(epoch=epoch, step=position.step)
        rate = learning_rate(train.lr, train.lr_milestones, train.lr_gamma, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        augment_generator = torch.Generator().manual_seed(train.seed * 1000 + epoch + 7)
        if position.augment_state is not None:
            augment_generator.set_state(position.augment_state)

        self.encoder.train()
        batches = self._batches(epoch)
        calls = open_train_calls(self.config.transport.train_call, stub, self.config.transport.rpc_timeout_s)
        try:
            self._train_batches(calls, batches, epoch, rate, augment_generator, manifest)
        finally:
            calls.close()

        seen = max(position.seen, 1)
        return {"train_loss": position.loss_sum / seen, "train_accuracy": position.correct / seen, "lr": rate}

    def _train_batches(
        self, calls: TrainCalls, batches: list[torch.Tensor], epoch: int, rate: float, augment_generator: torch.Generator, manifest: ManifestWriter
    ) -> None:
        """Train the batches of the epoch from self.position.batch on, one step each."""
        train = self.config.train
        position = self.position
        for index in batches[position.batch:]:
            if self._stop.is_set():
                break
            images = self.splits.train.floats(index)
            labels = self.splits.train.labels[index]
            if self.config.data.augment:
                images = augment_batch(images, self.config.data.dataset, augment_generator)
            images, labels = images.to(self.device), labels.to(self.device)

            features = self.encoder(images)
            transmitted = self.defense.transmit(features)
            step = position.step + 1
            last = position.batch + 1 == len(batches)
            checkpoint = last or (train.checkpoint_every > 0 and step % train.checkpoint_every == 0)
            request = split_pb2.TrainRequest(
                session_id=self.session_id,
                step=step,
                epoch=epoch,
                activations=codec.encode(transmitted, self.wire_dtype, self.config.transport.compress),
                labels=codec.encode(labels),
                checkpoint=checkpoint,
            )
            reply = self._call_with_retry(lambda: calls.call(request), f"{calls.method} step {step}")
            gradient = codec.decode(reply.gradient, "gradient").to(self.device)
            if gradient.shape != transmitted.shape:
                raise ClientError(f"server returned a gradient of shape {list(gradient.shape)} for activations {list(transmitted.shape)}")

            self.optimizer.zero_grad(set_to_none=True)
            self.defense.backward(StepTensors(images, labels, features, transmitted, gradient, rate))
            self.optimizer.step()
            manifest.write(self.session_id, step, epoch, self.splits.train.ids[index].tolist())

            position.step = step
            position.batch += 1
            position.loss_sum += reply.loss * len(index)
            position.correct += reply.correct
            position.seen += len(index)
            position.augment_state = augment_generator.get_state()
            if checkpoint:
                manifest.flush()
                self._save_checkpoint()

    @torch.no_grad()
    def encode_training_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return features [N, C, H, W] and labels [N] of the client-training split, on the client's device.

        The encoder runs in eval mode without augmentation or defence, for the defence's
        per-epoch update (CEM's clustering); it is left in eval mode. Batches have the training
        batch size: on 2 CPU cores, 28x28 digits encode about 1.7 times as fast per image in
        batches of 128 as in batches of 500 (benchmarks/cem_overhead.py).
        """
        self.encoder.eval()
        train = self.splits.train
        size = self.config.train.batch_size
        features = [self.encoder(train.floats(slice(start, start + size)).to(self.device)) for start in range(0, len(train), size)]
        return torch.cat(features), train.labels.to(self.device)

    @torch.no_grad()
    def evaluate(self, stub: split_pb2_grpc.SplitLearningStub) -> dict[str, float]:
        """Return loss and accuracy on the test split; features carry the defence as in training."""
        self.encoder.eval()
        test = self.splits.test
        loss_sum, correct = 0.0, 0
        size = self.config.train.eval_batch_size
        for start in range(0, len(test), size):
            index = torch.arange(start, min(start + size, len(test)))
            transmitted = self.defense.transmit(self.encoder(test.floats(index).to(self.device)))
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
        """Make one call with retries; NOT_FOUND for our session raises SessionLost."""
        return self._call_with_retry(lambda: method(request, timeout=self.config.transport.rpc_timeout_s), name)

    def _call_with_retry(self, attempt, name: str):
        """Run attempt() with retries; NOT_FOUND for our session raises SessionLost."""
        try:
            return call_with_retry(attempt, name, self.retry, sleep=self._sleep)
        except RetriesExhausted as error:
            raise ClientError(f"server {self.config.client.server}: {error}") from None
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND and self.session_id:
                raise SessionLost(f"{name}: session {self.session_id} not found on the server ({error.details()})") from None
            raise ClientError(
                f"{name} failed at step {self.step} of session {self.session_id} ({error.code().name}): {error.details()}"
            ) from None

    # -- The run --------------------------------------------------------------------------------

    def run(self) -> dict[str, object]:
        """Train for the configured epochs, evaluating every epoch; returns the run summary.

        Continues the run checkpointed in run_dir, if any. After a stop request the summary
        has "stopped": True and no summary.json is written.
        """
        started = time.monotonic()
        saved = self.checkpoints.newest()
        if saved is not None:
            session_id, _, position = saved
            if not self.config.client.resume:
                raise ClientError(
                    f"{self.checkpoints.directory} contains checkpoints of session {session_id} and client.resume is false; "
                    "choose a new --run-dir, or set --resume true to continue that run"
                )
            if position.completed_epochs >= self.config.train.epochs:
                raise ClientError(
                    f"{self.run_dir} already contains a finished run of {position.completed_epochs} epochs (session {session_id}); "
                    "choose a new --run-dir"
                )
        address = self.config.client.server
        self.channel = open_channel(address, self.config.transport, channel_options(self.config.transport.max_message_mb))
        try:
            return self._run(started, None if saved is None else saved[0])
        finally:
            self.channel.close()

    def _run(self, started: float, resume_session_id: str | None) -> dict[str, object]:
        epochs = self.config.train.epochs
        address = self.config.client.server
        wait_until_serving(self.channel, SERVICE_NAME, self.config.transport.connect_timeout_s, f"server {address}")
        stub = split_pb2_grpc.SplitLearningStub(self.channel)
        if resume_session_id is None:
            self.session_id = self._open(stub, self._open_request()).session_id
            log.info("opened session %s on %s; the client half computes on %s", self.session_id, address, self.device)
        else:
            self._resume(stub, resume_session_id)

        history = self._rewind_metrics()
        manifest = ManifestWriter(self.run_dir / "manifest.jsonl")
        try:
            while self.position.completed_epochs < epochs and not self._stop.is_set():
                try:
                    history.append(self._run_epoch(stub, manifest))
                except SessionLost as lost:
                    log.warning("%s; resuming from the newest step both halves hold", lost)
                    self._resume(stub, self.session_id)
                    history = self._rewind_metrics()
                except StopRequested as stop:
                    log.info("%s", stop)
        finally:
            manifest.close()

        if self._stop.is_set():
            return self._stop_run(stub)
        return self._finish(stub, history, started)

    def _run_epoch(self, stub: split_pb2_grpc.SplitLearningStub, manifest: ManifestWriter) -> dict[str, object]:
        """Train the rest of the current epoch, run its end and checkpoint; returns its metrics row."""
        epoch = self.position.completed_epochs + 1
        epoch_started = time.monotonic()
        row: dict[str, object] = {"epoch": epoch}
        row.update(self.train_epoch(stub, epoch, manifest))
        if self._stop.is_set():
            raise StopRequested("stop requested during training")
        train_seconds = time.monotonic() - epoch_started
        row.update(self.defense.epoch_metrics())
        if self.defense.needs_epoch_update:
            row.update(self.defense.end_epoch(epoch, self.encode_training_data))
        row.update(self.evaluate(stub))
        row.update(step=self.step, train_seconds=train_seconds, seconds=time.monotonic() - epoch_started)

        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as metrics_file:
            metrics_file.write(json.dumps(row) + "\n")
        self.position.epoch_done = True
        self._save_checkpoint()
        log.info(
            "epoch %d/%d: train loss %.4f, train acc %.4f, test acc %.4f (%.1f s)",
            epoch, self.config.train.epochs, row["train_loss"], row["train_accuracy"], row["test_accuracy"], row["seconds"],
        )
        return row

    def _rewind_metrics(self) -> list[dict[str, object]]:
        """Keep the metrics rows of the epochs that self.position has completed; returns them."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return []
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [json.loads(line) for line in lines]
        kept = [row for row in rows if row.get("epoch", 0) <= self.position.completed_epochs]
        if len(kept) != len(rows):
            write_private_atomic(path, "".join(json.dumps(row) + "\n" for row in kept).encode("utf-8"))
            log.info("dropped the metrics of %d epoch(s) past step %d from %s", len(rows) - len(kept), self.step, path)
        return kept

    def _stop_run(self, stub: split_pb2_grpc.SplitLearningStub) -> dict[str, object]:
        """Checkpoint the client at the current step and ask the server to do the same by closing the session."""
        if self.step == 0:
            log.info("stopped before the first step; nothing to checkpoint")
            return {"session_id": self.session_id, "steps": 0, "stopped": True}
        self._save_checkpoint()
        request = split_pb2.CloseSessionRequest(session_id=self.session_id, flush_timeout_s=10.0)
        try:
            stub.CloseSession(request, timeout=30.0)
        except grpc.RpcError as error:
            log.warning("the server did not checkpoint step %d (%s); a resumed run rewinds to an older step", self.step, error.code().name)
        log.info("stopped at step %d of session %s; run the same command again to resume", self.step, self.session_id)
        return {"session_id": self.session_id, "steps": self.step, "stopped": True}

    def _finish(self, stub: split_pb2_grpc.SplitLearningStub, history: list[dict[str, object]], started: float) -> dict[str, object]:
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
        return summary
