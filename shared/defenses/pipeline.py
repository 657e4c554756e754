"""The client's defence as one object: transmit transform, client losses and per-epoch updates."""

from __future__ import annotations

from collections import defaultdict

import torch

from cemsplit.shared.config import DefenseConfig
from cemsplit.shared.defenses.attention import build_attention_loss
from cemsplit.shared.defenses.base import ClientLoss, EncodeTrainingData, StepTensors
from cemsplit.shared.defenses.cem.regularizer import CEMLoss
from cemsplit.shared.defenses.nopeek import NoPeekLoss
from cemsplit.shared.defenses.transmit import TransmitTransform



class ClientDefense:
    """The defence interface that the client trainer calls at each step and after each epoch.

    Per step: transmit() transforms the features to send, and backward() accumulates into the
    encoder's .grad the task gradient (from the server's gradient on what was sent) plus the
    gradients of the client losses, in one backward pass. After an epoch: epoch_metrics()
    returns the mean loss values of the epoch's steps, and end_epoch() runs the per-epoch
    updates and returns their diagnostics.

    Args:
        name: the defence name, for example "nopeek+cem".
        transform: what is done to the features before sending.
        losses: client losses added to the task loss.
        seed: seed of the noise and dropout draws.
    """

    def __init__(self, name: str, transform: TransmitTransform, losses: list[ClientLoss], seed: int) -> None:
        self.name = name
        self.transform = transform
        self.losses = losses
        self.generator = torch.Generator().manual_seed(seed)
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def transmit(self, features: torch.Tensor) -> torch.Tensor:
        """Return what the client sends for features [B, C, H, W]; keeps the autograd graph."""
        if self.transform.is_identity:
            return features
        return self.transform.apply(features, self.generator)

    def backward(self, step: StepTensors) -> None:
        """Accumulate d(task + sum of coefficient * client loss)/d(encoder weights) into .grad.

        The task term is sum(transmitted * server_gradient), whose gradient through the
        transform is the task loss's gradient. A loss with coefficient 0 is evaluated without
        autograd, only for the epoch metrics.
        """
        total = (step.transmitted * step.server_gradient).sum()
        for client_loss in self.losses:
            coefficient = client_loss.coefficient(step.lr)
            if coefficient == 0:
                with torch.no_grad():
                    value = client_loss.loss(step)
            else:
                value = client_loss.loss(step)
            if value is None:
                continue
            self._record(client_loss.name, float(value.detach()))
            if coefficient != 0:
                total = total + coefficient * value
        total.backward()

    def _record(self, name: str, value: float) -> None:
        self._sums[f"{name}_loss"] += value
        self._counts[f"{name}_loss"] += 1

    def epoch_metrics(self) -> dict[str, float]:
        """Return the mean of each client loss over the steps where it was active, and reset.

        Keys are "<loss>_loss" and "<loss>_active_steps", for example cem_loss and
        cem_active_steps; a loss that was never active reports 0 active steps only.
        """
        metrics: dict[str, float] = {}
        for client_loss in self.losses:
            key = f"{client_loss.name}_loss"
            steps = self._counts.get(key, 0)
            metrics[f"{client_loss.name}_active_steps"] = steps
            if steps:
                metrics[key] = self._sums[key] / steps
            metrics.update(client_loss.epoch_metrics())
        self._sums.clear()
        self._counts.clear()
        return metrics

    def end_epoch(self, epoch: int, encode: EncodeTrainingData) -> dict[str, float]:
        """Run every loss's per-epoch update; returns their diagnostics for the epoch metrics."""
        diagnostics: dict[str, float] = {}
        for client_loss in self.losses:
            diagnostics.update(client_loss.end_epoch(epoch, encode))
        return diagnostics

    def parameters(self) -> list[torch.nn.Parameter]:
        """Return the learned parameters of the client losses, for the client's optimizer."""
        return [parameter for client_loss in self.losses for parameter in client_loss.parameters()]

    def to(self, device: torch.device) -> None:
        """Move the client losses' learned parameters to the encoder's device; noise draws stay on the CPU generator."""
        for client_loss in self.losses:
            client_loss.to(device)

    @property
    def needs_epoch_update(self) -> bool:
        """Whether end_epoch does any work (so the trainer may skip encoding the data)."""
        return any(type(client_loss).end_epoch is not ClientLoss.end_epoch for client_loss in self.losses)

    def state_dict(self) -> dict[str, object]:
        """Return the state to checkpoint: the noise generator, each loss's state and the epoch's loss sums."""
        return {
            "name": self.name,
            "generator": self.generator.get_state(),
            "losses": {client_loss.name: client_loss.state_dict() for client_loss in self.losses},
            "epoch_sums": dict(self._sums),
            "epoch_counts": dict(self._counts),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore state_dict(); the defence name must match."""
        if state.get("name") != self.name:
            raise ValueError(f"the checkpoint's defence is {state.get('name')!r} but this client runs {self.name!r}; use the same --defense")
        self.generator.set_state(state["generator"])  # type: ignore[arg-type]
        self._sums = defaultdict(float, state.get("epoch_sums", {}))  # type: ignore[arg-type]
        self._counts = defaultdict(int, state.get("epoch_counts", {}))  # type: ignore[arg-type]
        losses = state.get("losses", {})
        for client_loss in self.losses:
            client_loss.load_state_dict(losses.get(client_loss.name, {}))  # type: ignore[union-attr]

    def describe(self) -> dict[str, object]:
        """Return the defence name and the settings of its enabled parts, for the run report."""
        description: dict[str, object] = {"name": self.name}
        description.update({key: value for key, value in self.transform.describe().items() if key != "defense"})
        for client_loss in self.losses:
            description.update(client_loss.describe())
        return description


def build_defense(
    config: DefenseConfig, num_classes: int, client_sigmoid: bool, seed: int, feature_dim: int | None = None
) -> ClientDefense:
    """Return the client defence named in config.defense.

    Args:
        config: the defence section of the run config.
        num_classes: classes of the task (CEM clusters each one).
        client_sigmoid: whether the client ends in a sigmoid (CEM's default K).
        seed: seed of noise, dropout and clustering draws, and of the attention variants' weights.
        feature_dim: D, the number of entries of one sample's features; the attention variants
            size their weights by it, and the other defences ignore it.
    """
    parts = config.components
    losses: list[ClientLoss] = []
    if "nopeek" in parts:
        losses.append(NoPeekLoss(config.nopeek_weight))
    variant = config.cem_variant
    if variant == "cem":
        losses.append(CEMLoss(config, num_classes, client_sigmoid, seed + 1))
    elif variant is not None:
        if feature_dim is None:
            raise ValueError(f"defense {config.defense!r} needs feature_dim, the number of feature entries per sample, to size its attention")
        losses.append(build_attention_loss(variant, config, num_classes, client_sigmoid, feature_dim, seed + 1))
    return ClientDefense(config.defense, TransmitTransform.from_config(config), losses, seed)
