"""Batched k-means in torch: k-means++ seeding and Lloyd iterations for many groups at once.

Every function takes G groups of up to N points each, padded to [G, N, D], with a boolean mask
[G, N] that marks the real points. One call thus clusters every class of a dataset, on the CPU
or a GPU, without a Python loop over the classes. Each group needs at least one real point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass
class KMeansResult:
    """Outcome of batched k-means.

    Attributes:
        centroids: final centroids [G, K, D].
        assignments: index of each point's nearest final centroid [G, N]; -1 at padding.
        inertia: sum over each group's real points of the squared distance to their centroid [G].
        iterations: Lloyd updates each group ran before its assignments stopped changing [G].
        converged: whether each group's assignments stopped changing within max_iter [G].
    """

    centroids: torch.Tensor
    assignments: torch.Tensor
    inertia: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor


def squared_distances(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Return squared Euclidean distances [G, N, K] between points [G, N, D] and centroids [G, K, D]."""
    point_norms = points.pow(2).sum(-1, keepdim=True)
    centroid_norms = centroids.pow(2).sum(-1)[:, None, :]
    cross = torch.bmm(points, centroids.transpose(1, 2))
    return (point_norms - 2.0 * cross + centroid_norms).clamp_min(0.0)


def _check_groups(points: torch.Tensor, mask: torch.Tensor) -> None:
    if points.dim() != 3 or mask.shape != points.shape[:2]:
        raise ValueError(f"points must be [G, N, D] with a mask [G, N]; got {list(points.shape)} and {list(mask.shape)}")
    empty_groups = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty_groups:
        raise ValueError(f"groups {empty_groups} have no points; cluster only groups with at least one point")


def kmeans_plus_plus(points: torch.Tensor, mask: torch.Tensor, num_clusters: int, generator: torch.Generator) -> torch.Tensor:
    """Pick initial centroids [G, K, D] by greedy k-means++ (Arthur and Vassilvitskii, 2007).

    Each new centroid is the best of 2 + floor(log K) candidates drawn with probability
    proportional to the squared distance to the nearest centroid so far, as scikit-learn does.
    A group with fewer distinct points than K repeats points, which leaves clusters empty.
    """
    _check_groups(points, mask)
    groups, _, dim = points.shape
    rows = torch.arange(groups, device=points.device)
    valid = mask.to(points.dtype)
    trials = 2 + int(math.log(num_clusters))

    centroids = points.new_empty(groups, num_clusters, dim)
    first = torch.multinomial(valid, 1, generator=generator).squeeze(1)
    centroids[:, 0] = points[rows, first]
    closest = squared_distances(points, centroids[:, :1]).squeeze(-1) * valid

    for index in range(1, num_clusters):
        # Once every point coincides with a centroid, draw uniformly among the real points.
        exhausted = closest.sum(dim=1, keepdim=True) <= 0
        weights = torch.where(exhausted, valid, closest)
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator)
        candidate_points = torch.gather(points, 1, candidates[..., None].expand(-1, -1, dim))

        merged = torch.minimum(closest[..., None], squared_distances(points, candidate_points)) * valid[..., None]
        best = merged.sum(dim=1).argmin(dim=1)
        centroids[:, index] = candidate_points[rows, best]
        closest = merged[rows, :, best]
    return centroids


def _relocate_empty_clusters(
    points: torch.Tensor, mask: torch.Tensor, centroids: torch.Tensor, counts: torch.Tensor, distances: torch.Tensor, assignments: torch.Tensor
) -> None:
    """Move each empty cluster's centroid, in place, to a point far from its own centroid.

    This is scikit-learn's rule. Empty clusters are rare, so the loop over groups that have
    one costs little. Clusters stay empty only when no point lies away from its centroid.
    """
    empty = counts == 0
    for group in empty.any(dim=1).nonzero().flatten().tolist():
        own = distances[group].gather(1, assignments[group][:, None]).squeeze(1)
        own = own.masked_fill(~mask[group], -1.0)
        empty_clusters = empty[group].nonzero().flatten()
        farthest = own.topk(min(len(empty_clusters), len(own))).indices
        for cluster, point in zip(empty_clusters.tolist(), farthest.tolist()):
            if own[point] > 0:
                centroids[group, cluster] = points[group, point]


def lloyd(points: torch.Tensor, mask: torch.Tensor, centroids: torch.Tensor, max_iter: int = 50) -> KMeansResult:
    """Run Lloyd's algorithm from the given centroids [G, K, D] on points [G, N, D] with mask [G, N].

    A group stops when its assignments no longer change (it has then converged exactly) or
    after max_iter updates. Empty clusters are relocated to far points after each update.
    """
    _check_groups(points, mask)
    if centroids.shape[0] != points.shape[0] or centroids.shape[2] != points.shape[2]:
        raise ValueError(f"centroids {list(centroids.shape)} do not fit points {list(points.shape)}; expected [G, K, D]")
    groups, _, _ = points.shape
    num_clusters = centroids.shape[1]
    valid = mask.to(points.dtype)
    centroids = centroids.clone()
    iterations = torch.zeros(groups, dtype=torch.long, device=points.device)
    converged = torch.zeros(groups, dtype=torch.bool, device=points.device)
    previous: torch.Tensor | None = None

    for _ in range(max_iter):
        distances = squared_distances(points, centroids)
        assignments = distances.argmin(dim=-1)
        if previous is not None:
            converged |= ((assignments == previous) | ~mask).all(dim=1)
            if bool(converged.all()):
                break
        previous = assignments

        members = F.one_hot(assignments, num_clusters).to(points.dtype) * valid[..., None]
        counts = members.sum(dim=1)
        sums = torch.einsum("gnk,gnd->gkd", members, points)
        updated = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1.0)[..., None], centroids)
        _relocate_empty_clusters(points, mask, updated, counts, distances, assignments)

        active = ~converged
        centroids = torch.where(active[:, None, None], updated, centroids)
        iterations += active.long()

    distances = squared_distances(points, centroids)
    nearest, assignments = distances.min(dim=-1)
    if previous is not None:
        converged |= ((assignments == previous) | ~mask).all(dim=1)
    inertia = (nearest * valid).sum(dim=1)
    assignments = assignments.masked_fill(~mask, -1)
    return KMeansResult(centroids, assignments, inertia, iterations, converged)
