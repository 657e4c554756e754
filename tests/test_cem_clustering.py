"""Per-class clustering for CEM: batched k-means against scikit-learn, warm starts, edge cases, GMM."""

import math

import pytest
import torch
from sklearn.cluster import KMeans

from cemsplit.shared.config import DataConfig
from cemsplit.shared.datasets import load_splits
from cemsplit.shared.defenses.cem.clustering import fit_class_clusters, group_by_class
from cemsplit.shared.defenses.cem.clusters import ClassClusters, log_det_diagnostic
from cemsplit.shared.defenses.cem.kmeans import kmeans_plus_plus, lloyd
from cemsplit.shared.vgg import ClientNet, SplitSpec


@pytest.fixture(scope="module")
def digits():
    """Real mnist5k digits: the first 1,500 training images as floats [N, 1, 28, 28] and labels."""
    splits = load_splits(DataConfig(train_limit=1500))
    return splits.train.floats(), splits.train.labels


@pytest.fixture(scope="module")
def digit_features(digits):
    """Client features [N, 392] of the digits from a freshly initialised default split."""
    torch.manual_seed(0)
    encoder = ClientNet(SplitSpec(input_shape=(1, 28, 28), num_classes=10)).eval()
    with torch.no_grad():
        return encoder(digits[0]).flatten(1), digits[1]


@pytest.mark.parametrize("source", ["pixels", "features"])
def test_kmeans_inertia_matches_sklearn(source, digits, digit_features):
    if source == "pixels":
        data, labels = digits[0].flatten(1), digits[1]
    else:
        data, labels = digit_features
    points, mask, classes = group_by_class(data, labels, 10)
    initial = kmeans_plus_plus(points, mask, 5, torch.Generator().manual_seed(3))
    ours = lloyd(points, mask, initial, max_iter=50)

    for group, label in enumerate(classes.tolist()):
        members = data[labels == label].numpy()
        reference = KMeans(n_clusters=5, init=initial[group].numpy(), n_init=1, max_iter=50, tol=0.0, algorithm="lloyd")
        reference.fit(members)
        inertia = float(ours.inertia[group])
        assert inertia == pytest.approx(reference.inertia_, rel=0.01), f"class {label}"


def test_kmeans_plus_plus_picks_data_points_reproducibly(digit_features):
    data, labels = digit_features
    points, mask, _ = group_by_class(data, labels, 10)
    first = kmeans_plus_plus(points, mask, 5, torch.Generator().manual_seed(7))
    second = kmeans_plus_plus(points, mask, 5, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)

    for group in range(len(points)):
        real = points[group][mask[group]]
        distances = torch.cdist(first[group], real, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
        assert float(distances.max()) == 0.0
        assert len(torch.unique(first[group], dim=0)) == 5


def test_batched_groups_match_separate_runs():
    generator = torch.Generator().manual_seed(4)
    points = torch.rand(2, 40, 6, generator=generator)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    initial = points[:, :3].clone()

    batched = lloyd(points, mask, initial, max_iter=50)
    for group in range(2):
        alone = lloyd(points[group : group + 1, mask[group]], mask[group : group + 1, mask[group]], initial[group : group + 1])
        assert torch.allclose(batched.centroids[group], alone.centroids[0])
        assert float(batched.inertia[group]) == pytest.approx(float(alone.inertia[0]), rel=1e-6)
    assert batched.assignments[1, 25:].eq(-1).all()
    assert bool(batched.converged.all())


def test_warm_start_from_converged_centroids_stays(digit_features):
    data, labels = digit_features
    first, _ = fit_class_clusters(data, labels, 10, 5, "kmeans", 50, seed=1)
    second, stats = fit_class_clusters(data, labels, 10, 5, "kmeans", 50, seed=2, previous=first)
    assert torch.allclose(second.centroids, first.centroids)
    assert torch.allclose(second.weights, first.weights)
    assert stats.max_iterations <= 1
    assert stats.unconverged_classes == 0


def test_cluster_statistics_by_hand():
    # Class 0: points 0 and 2 on one side, 10 on the other; class 1 absent; class 2 one point.
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 0, 2])
    previous = ClassClusters(
        centroids=torch.tensor([[[1.0, 0.0], [10.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[5.0, 5.0], [6.0, 6.0]]]),
        weights=torch.tensor([[0.5, 0.5], [0.0, 0.0], [1.0, 0.0]]),
        variances=torch.zeros(3, 2),
        class_counts=torch.tensor([3, 0, 1]),
    )
    clusters, _ = fit_class_clusters(features, labels, 3, 2, "kmeans", 50, seed=0, previous=previous)

    assert clusters.centroids.shape == (3, 2, 2)
    assert torch.allclose(clusters.centroids[0], torch.tensor([[1.0, 0.0], [10.0, 0.0]]))
    assert torch.allclose(clusters.weights[0], torch.tensor([2 / 3, 1 / 3]))
    # vbar of the first cluster: ((0 - 1)^2 + 0^2 + (2 - 1)^2 + 0^2) / (2 members * 2 dims) = 0.5.
    assert torch.allclose(clusters.variances[0], torch.tensor([0.5, 0.0]))
    # The absent class keeps all-zero weights; the singleton class has one member and variance 0.
    assert torch.equal(clusters.weights[1], torch.zeros(2))
    assert torch.equal(clusters.class_counts, torch.tensor([3, 0, 1]))
    assert torch.allclose(clusters.weights[2], torch.tensor([1.0, 0.0]))
    assert torch.equal(clusters.variances[2], torch.zeros(2))


def test_fewer_samples_than_clusters_keeps_arrays_aligned():
    features = torch.tensor([[0.0, 1.0], [0.0, 1.0], [3.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    clusters, _ = fit_class_clusters(features, labels, 2, 4, "kmeans", 50, seed=0)
    assert clusters.centroids.shape == (2, 4, 2)
    assert torch.allclose(clusters.weights.sum(dim=1), torch.ones(2))
    assert int((clusters.weights[0] > 0).sum()) == 1
    assert int((clusters.weights[1] > 0).sum()) == 1
    assert torch.equal(clusters.variances, torch.zeros(2, 4))


def test_gmm_option(digit_features):
    data, labels = digit_features
    data, labels = data[:600], labels[:600]
    clusters, stats = fit_class_clusters(data, labels, 10, 3, "gmm", 50, seed=0)
    assert clusters.centroids.shape == (10, 3, 392)
    assert clusters.covariances.shape == (10, 3, 392)
    assert torch.allclose(clusters.weights.sum(dim=1), torch.ones(10), atol=1e-5)
    assert torch.allclose(clusters.variances, clusters.covariances.mean(dim=-1))
    assert stats.max_iterations >= 1

    warm, warm_stats = fit_class_clusters(data, labels, 10, 3, "gmm", 50, seed=1, previous=clusters)
    assert torch.allclose(warm.centroids, clusters.centroids, atol=1e-3)
    assert warm_stats.max_iterations <= stats.max_iterations


def test_gmm_with_fewer_samples_than_components():
    features = torch.tensor([[0.0, 1.0], [1.0, 1.0], [3.0, 3.0], [3.5, 3.0], [2.5, 3.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    clusters, _ = fit_class_clusters(features, labels, 3, 3, "gmm", 20, seed=0)
    assert clusters.weights.shape == (3, 3)
    assert float(clusters.weights[0, 2]) == 0.0
    assert torch.equal(clusters.weights[2], torch.zeros(3))


def test_log_det_diagnostic_by_hand():
    clusters = ClassClusters(
        centroids=torch.zeros(3, 2, 4),
        weights=torch.tensor([[0.25, 0.75], [0.0, 0.0], [1.0, 0.0]]),
        variances=torch.tensor([[0.01, 0.03], [0.0, 0.0], [0.02, 0.0]]),
        class_counts=torch.tensor([4, 0, 1]),
    )
    sigma_squared = 0.1**2
    class_zero = 0.25 * math.log(0.01 + sigma_squared) + 0.75 * math.log(0.03 + sigma_squared)
    class_two = math.log(0.02 + sigma_squared)
    assert log_det_diagnostic(clusters, 0.1) == pytest.approx((class_zero + class_two) / 2, rel=1e-6)

    clusters.covariances = torch.tensor([0.01, 0.01, 0.03, 0.03]).expand(3, 2, 4).clone()
    diagonal = 0.5 * math.log(0.01 + sigma_squared) + 0.5 * math.log(0.03 + sigma_squared)
    assert log_det_diagnostic(clusters, 0.1) == pytest.approx(diagonal, rel=1e-6)
    with pytest.raises(ValueError, match="must be > 0"):
        log_det_diagnostic(clusters, 0.0)


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match="features have 3 samples but labels 2"):
        fit_class_clusters(torch.rand(3, 2), torch.tensor([0, 1]), 2, 2, "kmeans", 5, seed=0)
    with pytest.raises(ValueError, match="there are 2 classes"):
        fit_class_clusters(torch.rand(3, 2), torch.tensor([0, 1, 2]), 2, 2, "kmeans", 5, seed=0)
    with pytest.raises(ValueError, match="groups \\[1\\] have no points"):
        lloyd(torch.rand(2, 3, 2), torch.tensor([[True, True, True], [False, False, False]]), torch.rand(2, 2, 2))
