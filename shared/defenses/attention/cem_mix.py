"""CEM-mix: the reference CEM loss and the CEM-att loss blended by a weight network.

Both branches are CEM hinges with the same weights pi, the same floor log(tau * sigma^2 + 0.01)
and the same normalisation (per class in the batch), measured on z. So they share one scale,
log variance ratios. The weight network reads six per-dimension statistics of the batch: mean,
variance, standard deviation, mean absolute value, max and min over the batch, 6 * d inputs
for attention width d. It has hidden sizes d/4 and d/8 with ReLU and a softmax over two
outputs, (w_clustering, w_attention).

Guard against the degenerate optimum. A weight network trained to minimise
w_c * L_c + w_a * L_a moves all weight to whichever branch is smaller, because that
minimises the blend whatever the features are. The guard has three parts:
1. The encoder and the CEM-att module see the blend with the weights detached, so the weights
   never make the loss small by choosing the smaller branch for them.
2. The weight network trains on each branch divided by its own running mean (decay
   mix_ema_decay). A branch that is smaller on average is then about 1 like the other, so
   only batch-to-batch changes in the branches' ratio move the weights.
3. A KL divergence rho * KL(w || (0.5, 0.5)) pulls the weights to 0.5. For normalised values
   l_c and l_a, the weights that minimise w . l + rho * KL are softmax(-l / rho), so a batch
   moves the weights away from 0.5 only as far as its normalised branch values differ.
Of the options, this one keeps both branches' gradients in every step and needs no held-out
data. Its cost is that the weights reflect relative, not absolute, branch sizes.
"""

from __future__ import annotations

import torch
from torch import nn

from cemsplit.shared.config import DefenseConfig
from cemsplit.shared.defenses.attention.cem_att import CEMAttention, build_cem_attention
from cemsplit.shared.defenses.attention.slot_loss import responsibility_cem_loss
from cemsplit.shared.defenses.attention.variant_base import AttentionCEMLoss, build_module
from cemsplit.shared.defenses.base import StepTensors
from cemsplit.shared.defenses.cem.loss import cem_loss

STATISTICS = 6
# Keeps the normalised branch values finite once a branch's running mean reaches zero.
NORMALISER_OFFSET = 1e-3

def batch_statistics(features: torch.Tensor) -> torch.Tensor:
    """Return the six per-dimension statistics [6 * d] of features [B, d] over the batch."""
    variance = features.var(dim=0, unbiased=False)
    return torch.cat([
        features.mean(dim=0), variance, variance.sqrt(), features.abs().mean(dim=0), features.max(dim=0).values, features.min(dim=0).values,
    ])

class WeightNetwork(nn.Module):
    """Blend weights from batch statistics: 6d -> d/4 -> d/8 (ReLU) -> softmax over 2."""

    def __init__(self, width: int) -> None:
        super().__init__()
        first, second = max(1, width // 4), max(1, width // 8)
        self.layers = nn.Sequential(
            nn.Linear(STATISTICS * width, first), nn.ReLU(), nn.Linear(first, second), nn.ReLU(), nn.Linear(second, 2)
        )

    def forward(self, statistics: torch.Tensor) -> torch.Tensor:
        """Return (w_clustering, w_attention) [2] for statistics [6 * d]; they sum to 1."""
        return torch.softmax(self.layers(statistics), dim=-1)

class CEMMixModule(nn.Module):
    """The learned parts of CEM-mix: the CEM-att module and the weight network."""

    def __init__(self, attention: CEMAttention, width: int) -> None:
        super().__init__()
        self.attention = attention
        self.weights = WeightNetwork(width)

def guarded_blend(
    clustering: torch.Tensor, attention: torch.Tensor, weights: torch.Tensor, clustering_mean: float, attention_mean: float, prior_weight: float
) -> torch.Tensor:
    """Return the blended loss whose value is w_c * L_c + w_a * L_a, with the guarded gradients.

    Gradients: the branches get the detached weights; the weights get those of
    w . (L / running mean) + prior_weight * KL(w || uniform) with the branch values detached
    (see the module docstring).
    """
    blend = weights[0].detach() * clustering + weights[1].detach() * attention
    normalised = torch.stack([
        clustering.detach() / (clustering_mean + NORMALISER_OFFSET), attention.detach() / (attention_mean + NORMALISER_OFFSET)
    ])
    kl = (weights * torch.log(weights * 2.0 + 1e-12)).sum()
    weight_objective = (weights * normalised).sum() + prior_weight * kl
    return blend + weight_objective - weight_objective.detach()

class CEMMixLoss(AttentionCEMLoss):
    """CEM-mix as a client loss; inactive until the first per-epoch clustering.

    Logs per epoch the mean blend weights (cem_mix_weight_clustering, cem_mix_weight_attention)
    and the mean branch losses (cem_mix_clustering_loss, cem_mix_attention_loss).
    """

    def __init__(self, config: DefenseConfig, num_classes: int, client_sigmoid: bool, feature_dim: int, seed: int) -> None:
        super().__init__(config, num_classes, client_sigmoid, feature_dim, seed)
        self.slots = self.clustering_for(config.att_slots)
        attention = build_cem_attention(config, feature_dim, seed)
        width = attention.slot_mean.numel()
        self.module = build_module(seed + 1, lambda: CEMMixModule(attention, width))
        self.running: list[float] | None = None
        self._sums = [0.0, 0.0, 0.0, 0.0]
        self._steps = 0

    def loss(self, step: StepTensors) -> torch.Tensor | None:
        batch = self.clustered_batch(step.features, step.labels, self.reference)
        if batch is None:
            return None
        z, labels = batch
        clustering = cem_loss(z, labels, self.reference.clusters, self.noise_std, self.var_threshold, self.config.cem_mode)
        attention_module = self.module.attention
        attention_module.train()
        reconstructions, responsibilities = attention_module(
            z, labels, self.slots.clusters.centroids.to(z.device, z.dtype), self.slots.slot_mask(z.device), self.generator
        )
        attention = responsibility_cem_loss(
            z, labels, reconstructions, responsibilities, self.slots.clusters, self.noise_std, self.var_threshold, self.config.cem_mode
        )
        if clustering is None or attention is None:
            return None

        weights = self.module.weights(batch_statistics(attention_module.projection(z).detach()))
        values = [float(clustering.detach()), float(attention.detach())]
        if self.running is None:
            self.running = values
        blended = guarded_blend(clustering, attention, weights, self.running[0], self.running[1], self.config.mix_prior_weight)

        decay = self.config.mix_ema_decay
        self.running = [decay * old + (1 - decay) * new for old, new in zip(self.running, values)]
        detached = weights.detach()
        for index, value in enumerate([float(detached[0]), float(detached[1]), *values]):
            self._sums[index] += value
        self._steps += 1
        return blended

    def epoch_metrics(self) -> dict[str, float]:
        if not self._steps:
            return {}
        names = ("cem_mix_weight_clustering", "cem_mix_weight_attention", "cem_mix_clustering_loss", "cem_mix_attention_loss")
        metrics = {name: total / self._steps for name, total in zip(names, self._sums)}
        self._sums = [0.0, 0.0, 0.0, 0.0]
        self._steps = 0
        return metrics

    def state_dict(self) -> dict[str, object]:
        state = super().state_dict()
        state["running"] = self.running
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        super().load_state_dict(state)
        running = state.get("running")
        self.running = None if running is None else [float(value) for value in running]  # type: ignore[union-attr]

    def describe(self) -> dict[str, object]:
        description = super().describe()
        description.update(
            cem_mode=self.config.cem_mode,
            att_slots=self.config.att_slots,
            att_iterations=self.config.att_iterations,
            att_heads=self.config.att_heads,
            att_dim=self.module.attention.slot_mean.numel(),
            att_init_std=self.config.att_init_std,
            mix_prior_weight=self.config.mix_prior_weight,
            mix_ema_decay=self.config.mix_ema_decay,
        )
        return description

