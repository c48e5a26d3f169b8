"""Stages 3–4 of the attack: one cluster per private image, two clusters per encoding, λ from labels.

Seeds: for a confident encoding i and its nearest neighbour j (which likely shares one of i's two
private images), the encodings most similar to *both* mostly contain that shared image; the mean
of their features is the cluster's profile. Seeds whose profile resembles an existing one are
skipped, until there is one per private image. Then, k-means style, every encoding joins the two
compatible clusters whose profiles it matches best and profiles are re-estimated from members.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Clustering:
    """Attributes:
    members: (E, 2) int64 cluster ids of each encoding, best first.
    scores: (E, 2) float32 the matching profile correlations.
    cluster_classes: (M,) int64 the class of each cluster's private image.
    """

    members: torch.Tensor
    scores: torch.Tensor
    cluster_classes: torch.Tensor


def seed_profiles(features: torch.Tensor, similarity: torch.Tensor, classes: torch.Tensor, num_clusters: int,
                  *, core: int = 20, max_overlap: float = 0.3,
                  report: Callable[[float], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``num_clusters`` distinct cluster profiles (M, D) and their classes (M,).

    Seeds are tried from the most confident encoding down; a seed whose profile correlates above
    ``max_overlap`` with one already taken is a second copy of that image and skipped. When too few
    distinct seeds turn up (tiny sets), the bar is raised until there are at least two clusters.
    """
    confidence = similarity.topk(min(10, len(similarity) - 1), dim=1).values.mean(dim=1)
    order = torch.argsort(confidence, descending=True).tolist()
    core = max(2, min(core, len(features) // 2))
    profiles: list[torch.Tensor] = []
    cluster_classes: list[int] = []
    for bar in (max_overlap, 0.6, float("inf")):
        for step, i in enumerate(order):
            if len(profiles) == num_clusters:
                break
            if report is not None and step % 64 == 0:
                report(len(profiles) / num_clusters)
            j = int(similarity[i].argmax())
            joint = torch.minimum(similarity[i], similarity[j])
            joint[i] = joint[j] = 1.0
            core_members = joint.topk(core).indices
            profile = features[core_members].mean(dim=0)
            profile = profile / profile.norm().clamp_min(1e-12)
            if profiles and float((torch.stack(profiles) @ profile).max()) > bar:
                continue
            profiles.append(profile)
            cluster_classes.append(int(classes[core_members].sum(dim=0).argmax()))
        if len(profiles) >= 2:
            break
    return torch.stack(profiles), torch.tensor(cluster_classes, device=features.device)


def assign_clusters(features: torch.Tensor, profiles: torch.Tensor, cluster_classes: torch.Tensor,
                    classes: torch.Tensor, *, rounds: int = 3,
                    report: Callable[[float], None] | None = None) -> Clustering:
    """Every encoding into its two best compatible clusters; profiles re-estimated ``rounds`` times."""
    for round_index in range(rounds + 1):
        scores = (features @ profiles.T).masked_fill_(~classes[:, cluster_classes], -2.0)
        top = scores.topk(2, dim=1)
        if round_index == rounds:
            break
        weights = torch.zeros_like(scores)
        weights.scatter_(1, top.indices, top.values.clamp_min(0))
        profiles = weights.T @ features
        profiles = profiles / profiles.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if report is not None:
            report((round_index + 1) / rounds)
    return Clustering(top.indices, top.values, cluster_classes)


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
