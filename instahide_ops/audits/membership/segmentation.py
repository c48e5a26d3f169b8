"""Segmentations-Leak's membership attacks on segmentation: a small CNN reads the owner's per-pixel outputs.

He et al., "Segmentations-Leak: Membership Inference Attacks and Defenses in Semantic Image Segmentation",
ECCV 2020 (https://arxiv.org/abs/1912.09685). A segmenter's outputs are maps, and where on a map the model errs
can tell training images apart where how much it errs cannot: a model fits its training images' object borders
and rare regions too, while on unseen images its loss gathers there. A whole-image mean loss averages that
structure away; a CNN sees it. Two inputs, as in the paper:

- ``loss_map_cnn``: the structured loss map, per-pixel −log p(label) with ignored pixels 0 (one channel);
- ``posterior_cnn``: the posteriors concatenated with the one-hot label map (2C channels; ignored pixels have
  an all-zero one-hot).

The attack CNN classifies random patches of the maps (the paper crops 90×90 patches of 1/8-resolution maps;
here patches half the map's side, maps first area-pooled to at most ``MAX_SIDE`` on a side), and an image's
membership score is its patches' logits summed (6 patches, as the paper's default). The paper trains the attack
on a shadow model's maps; here, as for TF-Privacy's trained attacks, the attacker is given the membership of the
other folds of the audit set: trained on 4 folds, it scores the 5th, so every score is out-of-fold.
"""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch import nn

from instahide_ops.audits.membership.attack import MembershipResult, MembershipView, register_membership_attack
from instahide_ops.audits.progress import CancelToken

MAX_SIDE = 64
PATCHES = 6
FOLDS = 5
STEPS = 300
BATCH = 64
LOSS_CEILING = -float(np.log(1e-6))
"""Pixel losses are capped where Segmentations-Leak's Gaussian defense clamps probabilities: one confidently wrong
pixel (a loss of 69 at a released 0) would otherwise dominate the standardised map."""


def loss_maps(log_probabilities: np.ndarray, labels: np.ndarray, ignore_index: int) -> np.ndarray:
    """(N, 1, h, w) float32 per-pixel −log p(label), 0 on ignored pixels (the paper's structured loss map)."""
    kept = labels != ignore_index
    at_label = np.take_along_axis(log_probabilities, np.where(kept, labels, 0)[:, None].astype(np.int64), axis=1)
    return np.where(kept[:, None], np.minimum(-at_label, LOSS_CEILING), 0.0).astype(np.float32)


def posterior_maps(log_probabilities: np.ndarray, labels: np.ndarray, ignore_index: int) -> np.ndarray:
    """(N, 2C, h, w) float32 the posteriors, then the one-hot label map (all zero on ignored pixels)."""
    classes = log_probabilities.shape[1]
    one_hot = labels[:, None] == np.arange(classes)[None, :, None, None]
    return np.concatenate([np.exp(log_probabilities), one_hot], axis=1).astype(np.float32)


def patch_cnn(channels: int) -> nn.Module:
    """The attack model: three small convolutions, global average pooling, one membership logit."""
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1),
    )


def random_patches(maps: torch.Tensor, images: torch.Tensor, size: tuple[int, int],
                   generator: torch.Generator) -> torch.Tensor:
    """One random ``size`` crop of each of ``maps[images]``: (len(images), channels, *size)."""
    height, width = maps.shape[-2:]
    tops = torch.randint(0, height - size[0] + 1, (len(images),), generator=generator)
    lefts = torch.randint(0, width - size[1] + 1, (len(images),), generator=generator)
    rows = tops[:, None] + torch.arange(size[0])
    columns = lefts[:, None] + torch.arange(size[1])
    picked = maps[images]  # (B, channels, h, w)
    return picked[torch.arange(len(images))[:, None, None, None], torch.arange(maps.shape[1])[None, :, None, None],
                  rows[:, None, :, None], columns[:, None, None, :]]


def patch_cnn_scores(maps: np.ndarray, member: np.ndarray, *, seed: int | None = None, folds: int = FOLDS,
                     patches: int = PATCHES, steps: int = STEPS, cancel: CancelToken | None = None) -> np.ndarray:
    """Out-of-fold membership scores (N,) float64 of maps (N, channels, h, w): summed patch logits.

    Each fold's CNN trains on balanced batches of random patches of the other folds' maps, labelled with their
    membership; it then scores its own fold's images by ``patches`` random patches each. Channels are
    standardised with the training folds' statistics. Seeded end to end when ``seed`` is given.
    """
    cancel = cancel or CancelToken()
    rng = np.random.default_rng(seed)
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    if max(tensor.shape[-2:]) > MAX_SIDE:  # the paper works on 1/8-resolution maps; a CPU wants small ones too
        scale = MAX_SIDE / max(tensor.shape[-2:])
        size = (max(1, round(tensor.shape[-2] * scale)), max(1, round(tensor.shape[-1] * scale)))
        tensor = nn.functional.adaptive_avg_pool2d(tensor, size)
    crop = ((tensor.shape[-2] + 1) // 2, (tensor.shape[-1] + 1) // 2)
    member = np.asarray(member, dtype=bool)
    folds = max(2, min(folds, int(member.sum()), int((~member).sum())))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=int(rng.integers(2**31)))
    scores = np.zeros(len(member))
    for train, held_out in splitter.split(np.zeros(len(member)), member):
        cancel.raise_if_cancelled()
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        mean = tensor[train].mean(dim=(0, 2, 3), keepdim=True)
        std = tensor[train].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        standard = (tensor - mean) / std
        with torch.random.fork_rng(devices=[]):  # the CNN's initial weights from the seed, the global RNG untouched
            torch.manual_seed(int(rng.integers(2**62)))
            model = patch_cnn(tensor.shape[1])
        train_patch_cnn(model, standard, torch.from_numpy(train), torch.from_numpy(member[train]), crop,
                        generator, steps=steps, cancel=cancel)
        with torch.no_grad():
            images = torch.from_numpy(held_out)
            scores[held_out] = sum(model(random_patches(standard, images, crop, generator))[:, 0].double().numpy()
                               for _ in range(patches))
    return scores


def train_patch_cnn(model: nn.Module, maps: torch.Tensor, images: torch.Tensor, member: torch.Tensor,
                    crop: tuple[int, int], generator: torch.Generator, *, steps: int,
                    cancel: CancelToken) -> None:
    """Adam on the binary cross-entropy of random patches, half of each batch members and half not."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    members, others = images[member], images[~member]
    targets = torch.cat([torch.ones(BATCH // 2), torch.zeros(BATCH // 2)])
    for step in range(steps):
        if step % 50 == 0:
            cancel.raise_if_cancelled()
        batch = torch.cat([members[torch.randint(len(members), (BATCH // 2,), generator=generator)],
                           others[torch.randint(len(others), (BATCH // 2,), generator=generator)]])
        logits = model(random_patches(maps, batch, crop, generator))[:, 0]
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


class _SegmentationsLeak:
    """What both Segmentations-Leak attacks share: the task, the threat, k-fold patch-CNN scoring."""

    title: ClassVar[str]
    threat = ("sees the owner's per-pixel outputs and label maps of the audit set, and the membership of the "
              "other folds' images")
    tasks = frozenset({"segmentation"})
    needs_references = False
    default = True

    def features(self, log_probabilities: np.ndarray, labels: np.ndarray, ignore_index: int) -> np.ndarray:
        raise NotImplementedError

    def run(self, view: MembershipView, *, cancel: CancelToken | None = None) -> MembershipResult:
        start = time.perf_counter()
        data = view.data
        maps = self.features(data.log_probabilities(), np.asarray(data.labels), data.ignore_index)
        scores = patch_cnn_scores(maps, data.is_member, seed=view.seed, cancel=cancel)
        return MembershipResult(scores=scores, seconds=time.perf_counter() - start)


@register_membership_attack
class LossMapCNN(_SegmentationsLeak):
    """Segmentations-Leak's CNN on the structured loss map."""

    name = "loss_map_cnn"
    title = "Segmentations-Leak CNN on the structured loss map"

    def features(self, log_probabilities: np.ndarray, labels: np.ndarray, ignore_index: int) -> np.ndarray:
        return loss_maps(log_probabilities, labels, ignore_index)


@register_membership_attack
class PosteriorCNN(_SegmentationsLeak):
    """Segmentations-Leak's CNN on the posteriors concatenated with the one-hot labels."""

    name = "posterior_cnn"
    title = "Segmentations-Leak CNN on posteriors and one-hot labels"

    def features(self, log_probabilities: np.ndarray, labels: np.ndarray, ignore_index: int) -> np.ndarray:
        return posterior_maps(log_probabilities, labels, ignore_index)
