"""The CEM batch loss: hand-computed values, invariances, the hinge floor and edge cases."""

import math

import pytest
import torch

from cemsplit.shared.defenses.cem.clusters import ClassClusters
from cemsplit.shared.defenses.cem.loss import cem_loss, separate_scale

SIGMA = 0.1
TAU = 0.125
GAMMA = 0.01


def two_class_clusters(class_counts=(400, 400)) -> ClassClusters:
    """Two classes, two clusters each, in two dimensions."""
    return ClassClusters(
        centroids=torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 2.0]]]),
        weights=torch.tensor([[0.5, 0.5], [0.75, 0.25]]),
        variances=torch.tensor([[0.02, 0.04], [0.01, 0.1]]),
        class_counts=torch.tensor(class_counts),
    )


# Three samples of class 0 (two near centroid 0, one near centroid 1) and one of class 1.
BATCH = torch.tensor([[0.1, 0.0], [0.0, 0.3], [1.2, 1.0], [2.0, 0.4]])
LABELS = torch.tensor([0, 0, 0, 1])


def hinge(pi: float, v: float) -> float:
    return pi * max(0.0, math.log(v + GAMMA) - math.log(TAU * SIGMA**2 + GAMMA))


def test_hand_computed_hinge_value():
    # Per-sample mean squared distances to the assigned centroid: 0.005, 0.045, 0.02, 0.08.
    # N / C = 800 / 2 = 400 samples per class.
    v00 = 0.1 * 0.025 + 0.9 * 0.02  # alpha = 10 * 2 / (0.5 * 400) = 0.1, vhat = (0.005 + 0.045) / 2
    v01 = 0.05 * 0.02 + 0.95 * 0.04  # alpha = 10 * 1 / (0.5 * 400) = 0.05, vhat = 0.02
    v10 = (1 / 30) * 0.08 + (29 / 30) * 0.01  # alpha = 10 * 1 / (0.75 * 400), vhat = 0.08
    expected = (hinge(0.5, v00) + hinge(0.5, v01) + hinge(0.75, v10)) / 2
    assert expected == pytest.approx(0.874346, abs=1e-5)

    loss = cem_loss(BATCH, LABELS, two_class_clusters(), SIGMA, TAU, "hinge")
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_hand_computed_plain_value():
    v00 = 0.1 * 0.025 + 0.9 * 0.02
    v01 = 0.05 * 0.02 + 0.95 * 0.04
    v10 = (1 / 30) * 0.08 + (29 / 30) * 0.01
    expected = (0.5 * (v00 + 0.001) + 0.5 * (v01 + 0.001) + 0.75 * (v10 + 0.001)) / 2

    loss = cem_loss(BATCH, LABELS, two_class_clusters(), SIGMA, TAU, "plain")
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_batch_share_capped_at_099():
    # With 8 clustered samples every alpha exceeds 0.99, so v = 0.99 * vhat + 0.01 * vbar.
    v00 = 0.99 * 0.025 + 0.01 * 0.02
    v01 = 0.99 * 0.02 + 0.01 * 0.04
    v10 = 0.99 * 0.08 + 0.01 * 0.01
    expected = (hinge(0.5, v00) + hinge(0.5, v01) + hinge(0.75, v10)) / 2

    loss = cem_loss(BATCH, LABELS, two_class_clusters((4, 4)), SIGMA, TAU, "hinge")
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_single_cluster_equals_per_class_variance_term():
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(48, 3, 2, 2, generator=generator)
    labels = torch.randint(0, 4, (48,), generator=generator)
    centroids = torch.rand(4, 1, 12, generator=generator)
    variances = torch.rand(4, 1, generator=generator) * 0.05
    clusters = ClassClusters(centroids, torch.ones(4, 1), variances, torch.full((4,), 250))

    terms = []
    for label in labels.unique().tolist():
        members = features.flatten(1)[labels == label]
        batch_variance = float((members - centroids[label, 0]).pow(2).mean())
        alpha = min(0.99, 10 * len(members) / (1000 / 4))
        v = alpha * batch_variance + (1 - alpha) * float(variances[label, 0])
        terms.append(hinge(1.0, v))
    expected = sum(terms) / len(terms)

    loss = cem_loss(features, labels, clusters, SIGMA, TAU, "hinge")
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_permutation_leaves_loss_unchanged():
    generator = torch.Generator().manual_seed(1)
    features = torch.rand(64, 8, generator=generator)
    labels = torch.randint(0, 3, (64,), generator=generator)
    clusters = ClassClusters(
        centroids=torch.rand(3, 4, 8, generator=generator),
        weights=torch.full((3, 4), 0.25),
        variances=torch.rand(3, 4, generator=generator) * 0.1,
        class_counts=torch.full((3,), 300),
    )
    order = torch.randperm(64, generator=generator)

    original = cem_loss(features, labels, clusters, SIGMA, TAU)
    permuted = cem_loss(features[order], labels[order], clusters, SIGMA, TAU)
    assert float(original) > 0
    assert float(permuted) == pytest.approx(float(original), rel=1e-6)


def test_zero_when_clusters_tighter_than_noise_floor():
    # tau * sigma^2 = 0.00125; every sample lies within 0.01 of its centroid in each dimension,
    # so vhat <= 1e-4, and vbar = 1e-3, so v stays below the floor.
    generator = torch.Generator().manual_seed(2)
    centroids = torch.rand(2, 3, 6, generator=generator)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])
    nearest = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])
    features = centroids[labels, nearest] + (torch.rand(8, 6, generator=generator) - 0.5) * 0.02
    features.requires_grad_(True)
    clusters = ClassClusters(centroids, torch.full((2, 3), 1 / 3), torch.full((2, 3), 1e-3), torch.tensor([30, 30]))

    loss = cem_loss(features, labels, clusters, SIGMA, TAU)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert float(features.grad.abs().max()) == 0.0


def test_assignment_uses_own_class_centroids_only():
    # The sample sits on class 1's centroid but is labelled 0, so it is measured against class 0.
    clusters = two_class_clusters((4, 4))
    loss = cem_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), clusters, SIGMA, TAU, "plain")
    # Nearest class-0 centroid is [1, 1]: squared distances 1 and 1, so vhat = 1.
    expected = 0.5 * (0.99 * 1.0 + 0.01 * 0.04 + 0.001)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_empty_clusters_are_never_assigned():
    clusters = two_class_clusters((4, 4))
    clusters.weights = torch.tensor([[1.0, 0.0], [0.75, 0.25]])
    loss = cem_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([0]), clusters, SIGMA, TAU, "plain")
    # The sample sits on the empty cluster's centroid but is assigned to centroid [0, 0].
    expected = 1.0 * (0.99 * 1.0 + 0.01 * 0.02 + 0.001)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_classes_without_clusters_are_skipped():
    clusters = two_class_clusters((4, 0))
    loss = cem_loss(BATCH, LABELS, clusters, SIGMA, TAU)
    only_class_zero = cem_loss(BATCH[:3], LABELS[:3], clusters, SIGMA, TAU)
    assert float(loss) == pytest.approx(float(only_class_zero), rel=1e-6)
    assert cem_loss(BATCH[3:], LABELS[3:], clusters, SIGMA, TAU) is None


def test_gradient_flows_only_through_batch_variance():
    clusters = two_class_clusters()
    for tensor in (clusters.centroids, clusters.weights, clusters.variances):
        tensor.requires_grad_(True)
    features = BATCH.clone().requires_grad_(True)

    cem_loss(features, LABELS, clusters, SIGMA, TAU).backward()
    assert float(features.grad.abs().sum()) > 0
    # Centroids, weights and variances are last epoch's constants.
    assert clusters.centroids.grad is None
    assert clusters.weights.grad is None
    assert clusters.variances.grad is None


def test_hinge_rejects_zero_noise():
    with pytest.raises(ValueError, match="needs noise_std > 0"):
        cem_loss(BATCH, LABELS, two_class_clusters(), 0.0, TAU)


def test_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="features have 3 dimensions but the clusters 2"):
        cem_loss(torch.rand(4, 3), LABELS, two_class_clusters(), SIGMA, TAU)


def test_separate_scale():
    assert separate_scale(0.05) == pytest.approx(0.02)
    assert separate_scale(0.01) == pytest.approx(0.1)
    assert separate_scale(4.1e-4) == pytest.approx(0.001 / 4.1e-4)
    assert separate_scale(4e-4) == 1.0
    with pytest.raises(ValueError, match="must be > 0"):
        separate_scale(0.0)
