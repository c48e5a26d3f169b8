"""Stages 3–4 of the attack: one cluster per private image, two clusters per encoding, λ from labels.

The mixed labels do most of the work. An encoding's label puts each private coefficient at its
image's class, so every encoding names the class of each of its two private images, and the classes'
shares of the total label mass tell how many private images each class holds (each image appears in
equally many encodings under the same coefficient law). Clustering then splits, class by class, the
encodings that name the class into that many groups: spectral clustering of their similarity graph
(each encoding linked to its nearest neighbours; links between encodings that also share another class
dropped, since the shared image may be that one), k-means on the graph's leading eigenvectors. An
encoding's two clusters are its group in each of its two classes; when both its images share a class,
the second is the next-nearest group of that class.

On the bundled 100 × 50 set with the high-pass similarity this took the attack from 0.525 to 0.657 Max_SSIM
(one EM run; 0.533 → 0.685 with the full recovery) against the earlier greedy seeds and k-means on
profiles: 97 of 100 private images get a cluster of their own (84 before), and both clusters are right
for 65 % of encodings (36 %). docs/notes/attack-research.md has each step's share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

KMEANS_RESTARTS = 10
KMEANS_ITERATIONS = 50


@dataclass(frozen=True)
class Clustering:
    """Attributes:
    members: (E, 2) int64 cluster ids of each encoding: the cluster of its heavier label class first.
    cluster_classes: (M,) int64 the class of each cluster's private image.
    """

    members: torch.Tensor
    cluster_classes: torch.Tensor


def class_image_counts(labels: torch.Tensor, num_images: int) -> torch.Tensor:
    """How many of the ``num_images`` private images each class holds, read from the label mass.

    Every class some encoding names gets at least one image; the rest go by largest remainder, so the
    counts sum to ``num_images`` whenever that is at least the number of named classes.

    Args:
        labels: (E, classes) mixed labels.
        num_images: the number of private images (E / T).

    Returns:
        (classes,) int64 on the labels' device.
    """
    mass = labels.float().clamp_min(0).sum(dim=0).cpu()
    named = mass > 0
    if not bool(named.any()):
        return torch.zeros(len(mass), dtype=torch.long, device=labels.device)
    share = mass / mass.sum() * num_images
    counts = torch.where(named, share.floor().long().clamp_min(1), torch.zeros_like(share, dtype=torch.long))
    remainder = torch.where(named, share - share.floor(), torch.full_like(share, -1.0))
    for c in torch.argsort(remainder, descending=True).tolist():  # largest remainders first
        if int(counts.sum()) >= num_images:
            break
        if named[c]:
            counts[c] += 1
    while int(counts.sum()) > num_images and int(counts.max()) > 1:  # the floor of 1 overshot: take from the largest
        counts[int(torch.argmax(counts))] -= 1
    return counts.to(labels.device)


def label_classes(labels: torch.Tensor) -> torch.Tensor:
    """(E, 2) int64: the classes of each encoding's two private images, the heavier first.

    An encoding whose label names a single class holds two images of that class.
    """
    top = labels.float().topk(min(2, labels.shape[1]), dim=1)
    first = top.indices[:, 0]
    if labels.shape[1] < 2:
        return torch.stack([first, first], dim=1)
    second = torch.where(top.values[:, 1] > 0, top.indices[:, 1], first)
    return torch.stack([first, second], dim=1)


def cluster_by_class(similarity: torch.Tensor, labels: torch.Tensor, num_images: int, *, neighbours: int,
                     seed: int = 0, report: Callable[[float], None] | None = None) -> Clustering:
    """Cluster encodings into private images, class by class, by spectral clustering of their similarity.

    Args:
        similarity: (E, E) pairwise similarity of encodings (``similarity_matrix``: higher is likelier
            to share an image; values ≤ 0 count as no link).
        labels: (E, classes) mixed labels.
        num_images: the number of private images to find.
        neighbours: links kept per encoding (about the number of encodings an image appears in).
        seed: seeds k-means, so the same input always gives the same clusters.
        report: called with the fraction of classes done.

    Returns:
        The clusters, ordered by class; as many as ``class_image_counts`` gives.
    """
    if similarity.ndim != 2 or similarity.shape != (len(labels), len(labels)):
        raise ValueError(f"expected a ({len(labels)}, {len(labels)}) similarity, got {list(similarity.shape)}")
    pair_classes = label_classes(labels)
    named = labels > 0
    counts = class_image_counts(labels, num_images).tolist()
    generator = torch.Generator().manual_seed(seed)
    members = torch.zeros_like(pair_classes)
    cluster_classes: list[int] = []
    for c, count in enumerate(counts):
        rows = (pair_classes == c).any(dim=1).nonzero().flatten()
        if count == 0 or len(rows) == 0:
            continue
        count = min(count, len(rows))
        embedding = _spectral_embedding(similarity, named, rows, c, count, neighbours)
        centroids = _kmeans(embedding.cpu(), count, generator)
        ranked = torch.cdist(embedding.cpu(), centroids).argsort(dim=1).to(rows.device) + len(cluster_classes)
        nearest, next_nearest = ranked[:, 0], ranked[:, min(1, count - 1)]
        first, second = pair_classes[rows, 0] == c, pair_classes[rows, 1] == c
        members[rows[first], 0] = nearest[first]
        # When both images are of this class, the second takes the next-nearest group.
        members[rows[second], 1] = torch.where(first, next_nearest, nearest)[second]
        cluster_classes.extend([c] * count)
        if report is not None:
            report((c + 1) / len(counts))
    return Clustering(members, torch.tensor(cluster_classes, dtype=torch.long, device=labels.device))


def _spectral_embedding(similarity: torch.Tensor, named: torch.Tensor, rows: torch.Tensor, label_class: int,
                        count: int, neighbours: int) -> torch.Tensor:
    """Row-normalised leading ``count`` eigenvectors of the normalised kNN affinity among ``rows``."""
    if count == 1:
        return torch.ones(len(rows), 1, device=similarity.device)
    affinity = similarity[rows][:, rows].float().clamp_min(0.0)
    others = named[rows].float()
    others[:, label_class] = 0
    affinity.masked_fill_((others @ others.T) > 0, 0.0)  # the shared image may be the other class's
    affinity.fill_diagonal_(0.0)
    keep = min(neighbours, len(rows) - 1)
    threshold = affinity.topk(keep, dim=1).values[:, -1:]
    affinity = torch.where(affinity >= threshold, affinity, torch.zeros_like(affinity))
    affinity = torch.maximum(affinity, affinity.T)
    scale = affinity.sum(dim=1).clamp_min(1e-12).rsqrt()
    _, vectors = torch.linalg.eigh((affinity * scale[:, None] * scale[None, :]).double())
    embedding = vectors[:, -count:].float()
    return embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _kmeans(points: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, D) centroids: the lowest-cost of ``KMEANS_RESTARTS`` k-means++ runs."""
    best, best_cost = None, float("inf")
    for _ in range(KMEANS_RESTARTS):
        chosen = [int(torch.randint(len(points), (1,), generator=generator))]
        distance = (points - points[chosen[0]]).square().sum(dim=1)
        for _ in range(1, count):
            weights = distance if float(distance.sum()) > 0 else torch.ones_like(distance)
            chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
            distance = torch.minimum(distance, (points - points[chosen[-1]]).square().sum(dim=1))
        centroids = points[chosen].clone()
        for _ in range(KMEANS_ITERATIONS):
            nearest = torch.cdist(points, centroids).argmin(dim=1)
            sums = torch.zeros_like(centroids).index_add_(0, nearest, points)
            sizes = torch.bincount(nearest, minlength=count).to(points.dtype)[:, None]
            moved = torch.where(sizes > 0, sums / sizes.clamp_min(1.0), centroids)  # an empty group stays put
            if torch.allclose(moved, centroids):
                break
            centroids = moved
        cost = float(torch.cdist(points, centroids).min(dim=1).values.square().sum())
        if cost < best_cost:
            best, best_cost = centroids, cost
    return best


def coefficients_from_labels(labels: torch.Tensor, members: torch.Tensor, cluster_classes: torch.Tensor,
                             ) -> torch.Tensor:
    """λ of each encoding's two clusters, read from its mixed labels.

    The label vector holds each private coefficient at its image's class; when both clusters have
    the same class only the sum is visible and it is split evenly.

    Returns:
        (E, 2) float32.
    """
    pair_classes = cluster_classes[members]
    mass = labels.float().gather(1, pair_classes)
    same = pair_classes[:, 0] == pair_classes[:, 1]
    mass[same] = mass[same] / 2
    return mass
