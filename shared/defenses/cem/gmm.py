"""Diagonal Gaussian mixtures per class with scikit-learn, an alternative to CEM's k-means."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from cemsplit.shared.defenses.cem.clusters import ClassClusters, ClusteringStats


def _warm_start(previous: ClassClusters | None, label: int, components: int) -> dict[str, np.ndarray]:
    """Return GaussianMixture's initial means, and weights and precisions when a GMM made them."""
    if previous is None or previous.num_clusters < components or int(previous.class_counts[label]) == 0:
        return {}
    start = {"means_init": previous.centroids[label, :components].detach().cpu().double().numpy()}
    weights = previous.weights[label, :components].detach().cpu().double().numpy()
    if previous.covariances is not None and components == previous.num_clusters and bool((weights > 0).all()):
        start["weights_init"] = weights / weights.sum()
        start["precisions_init"] = 1.0 / previous.covariances[label].detach().cpu().double().numpy()
    return start


def fit_diagonal_gmm(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    num_clusters: int,
    max_iter: int,
    seed: int,
    previous: ClassClusters | None = None,
) -> tuple[ClassClusters, ClusteringStats]:
    """Fit one GaussianMixture(covariance_type="diag") per class to features [N, D].

    The first fit starts from k-means++. Later fits start from the previous centroids of the
    class, and also from its weights and covariances when the previous fit was a GMM. A class with n_y < K samples gets n_y components and zero-weight padding. vbar is
    the mean over dimensions of each component's diagonal covariance (which includes
    scikit-learn's reg_covar of 1e-6). Runs on the CPU in float64; results return to the
    features' device and dtype.
    """
    dim = features.shape[1]
    data = features.detach().cpu().double().numpy()
    label_array = labels.cpu().numpy()
    centroids = np.zeros((num_classes, num_clusters, dim))
    weights = np.zeros((num_classes, num_clusters))
    covariances = np.zeros((num_classes, num_clusters, dim))
    counts = np.bincount(label_array, minlength=num_classes)
    max_iterations, unconverged = 0, 0

    for label in np.flatnonzero(counts):
        samples = data[label_array == label]
        components = min(num_clusters, len(samples))
        mixture = GaussianMixture(
            n_components=components,
            covariance_type="diag",
            max_iter=max_iter,
            init_params="k-means++",
            random_state=seed + int(label),
            **_warm_start(previous, int(label), components),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mixture.fit(samples)

        centroids[label, :components] = mixture.means_
        centroids[label, components:] = mixture.means_[0]
        weights[label, :components] = mixture.weights_
        covariances[label, :components] = mixture.covariances_
        max_iterations = max(max_iterations, int(mixture.n_iter_))
        unconverged += int(not mixture.converged_)

    def to_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(features.device, features.dtype)

    clusters = ClassClusters(
        centroids=to_tensor(centroids),
        weights=to_tensor(weights),
        variances=to_tensor(covariances.mean(axis=-1)),
        class_counts=torch.from_numpy(counts).to(features.device),
        covariances=to_tensor(covariances),
    )
    return clusters, ClusteringStats(max_iterations, unconverged)
