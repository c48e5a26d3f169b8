"""Challenge-shaped data: N private images × T encodings each, in the InstaHide Challenge's format.

The attack side reads only ``encryption.npy`` and ``label.npy``; the ground truth (private images,
each encoding's private indices and coefficients) goes to a separate ``ground_truth.npz`` that
nothing on the attack path opens. Bundled benchmark images come from photos kept apart from the
public pool's photos, so no public patch is a crop of a private image's photo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from instahide_ops.errors import InvalidInputError
from instahide_ops.images import IMAGE_SUFFIXES, image_files, read_rgb, resize_image, to_grey, unit_range_array
from instahide_ops.photos import bundled_sources
from instahide_ops.transforms.instahide.encode import EncodeParams, apply_keys, encode
from instahide_ops.transforms.instahide.pool import DEFAULT_POOL_SIZE, PublicPool, default_pool

PRIVATE_SOURCE_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left")
PUBLIC_SOURCE_NAMES = ("china", "flower", "hubble_deep_field", "immunohistochemistry", "retina")
NUM_PSEUDO_CLASSES = 10
# Grey-level standard deviation (of 255) below which a crop is rejected: flat sky or background
# patches are near-copies of each other, unlike the object photos of the challenge's CIFAR-10 set.
MIN_PRIVATE_CONTRAST = 24.0
ENCRYPTION_FILE = "encryption.npy"
LABEL_FILE = "label.npy"
GROUND_TRUTH_FILE = "ground_truth.npz"


@dataclass(frozen=True)
class ChallengeSet:
    """What an attacker sees.

    Attributes:
        encryption: (E, H, W, C) float32 encodings in [-1, 1].
        labels: (E, num_classes) float32: each private coefficient at its image's class.
        k: images per mix; encodings_per_image: T; mode: "cross" or "inside" (public parameters).
    """

    encryption: np.ndarray
    labels: np.ndarray
    k: int
    encodings_per_image: int
    mode: str = "cross"


@dataclass(frozen=True)
class GroundTruth:
    """What only the scorer sees.

    Attributes:
        privates: (N, H, W, C) float32 private images in [-1, 1].
        private_labels: (N,) int64 classes.
        pair_indices: (E, private_per_mix) int64: each encoding's private images, slot order.
        coefficients: (E, k) float32: each encoding's coefficients, slot order.
        sum_signs: (E, H, W, C) int8 sign of every unmasked sum (what the masks hide), only when
            ``build_challenge`` was asked for it; not saved with the ground truth.
        public_indices: (E, k - private_per_mix) int64 pool index in each public slot (cross mode; None
            without public slots): the rest of a key's mapping, which the key-aware bound also holds.
    """

    privates: np.ndarray
    private_labels: np.ndarray
    pair_indices: np.ndarray
    coefficients: np.ndarray
    sum_signs: np.ndarray | None = None
    public_indices: np.ndarray | None = None


def bundled_private_images(count: int = 100, *, height: int = 32, width: int = 32,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Private images cut from the bundled photos reserved for privates, with pseudo-classes.

    Crops of 48–112 source pixels (square scaled to the output's aspect) never overlap within a
    photo, so no two private images share pixels, and flat crops (``MIN_PRIVATE_CONTRAST``) are
    skipped. Ten pseudo-classes are derived deterministically: the photo's index times two, plus one
    when the crop's centre lies in the photo's lower half.

    Returns:
        (count, height, width, 3) uint8 images and (count,) int64 classes in [0, 10).
    """
    if count < 2:
        raise InvalidInputError(f"need at least 2 private images, got {count}", field="count")
    photos = list(bundled_sources(PRIVATE_SOURCE_NAMES).values())
    rng = np.random.default_rng(seed)
    taken: list[list[tuple[int, int, int, int]]] = [[] for _ in photos]
    images, labels = [], []
    areas = np.array([photo.shape[0] * photo.shape[1] for photo in photos], dtype=np.float64)
    for _ in range(500 * count):
        if len(images) == count:
            break
        index = int(rng.choice(len(photos), p=areas / areas.sum()))
        photo = photos[index]
        side = int(rng.integers(48, 113))
        crop_h, crop_w = (side, max(1, round(side * width / height))) if height >= width else \
            (max(1, round(side * height / width)), side)
        if crop_h > photo.shape[0] or crop_w > photo.shape[1]:
            continue
        top = int(rng.integers(0, photo.shape[0] - crop_h + 1))
        left = int(rng.integers(0, photo.shape[1] - crop_w + 1))
        box = (top, left, top + crop_h, left + crop_w)
        if any(_overlap(box, other) for other in taken[index]):
            continue
        crop = resize_image(photo[box[0]:box[2], box[1]:box[3]], height, width)
        if to_grey(crop).std() < MIN_PRIVATE_CONTRAST:
            continue
        taken[index].append(box)
        images.append(crop)
        labels.append((2 * index + int(top + crop_h / 2 >= photo.shape[0] / 2)) % NUM_PSEUDO_CLASSES)
    if len(images) < count:
        raise InvalidInputError(f"could only cut {len(images)} non-overlapping crops", field="count")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def load_private_images(folder: str | os.PathLike, *, height: int = 32, width: int = 32,
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Private images from a folder, for challenge-shaped sets of one's own data.

    A folder of sub-folders is one class per sub-folder (classes numbered in name order); a flat folder
    of images gets the pseudo-classes 0–9 in turn, in file-name order. Images of any size are resized
    to ``height`` × ``width`` (``INTER_AREA`` to shrink) and read as RGB.

    Returns:
        (N, height, width, 3) uint8 images and (N,) int64 classes.

    Raises:
        InvalidInputError: no such folder, no images, an unreadable image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{str(folder)!r} is not a folder", field="images")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    groups = [(index, image_files(sub)) for index, sub in enumerate(classes)] if classes else \
        [(None, image_files(folder))]
    images, labels = [], []
    for label, files in groups:
        for file in files:
            images.append(resize_image(read_rgb(file, field="images"), height, width))
            labels.append(label if label is not None else len(labels) % NUM_PSEUDO_CLASSES)
    if not images:
        raise InvalidInputError(f"{str(folder)!r} holds no {'/'.join(IMAGE_SUFFIXES)} images", field="images")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def challenge_public_pool(height: int = 32, width: int = 32, *, count: int = DEFAULT_POOL_SIZE,
                          device: torch.device | str = "cpu",
                          cache_dir: str | os.PathLike | None = None) -> PublicPool:
    """The public pool (``count`` images) for bundled challenge sets: cut only from photos no private image
    comes from."""
    array = default_pool(height, width, count=count, cache_dir=cache_dir, sources=PUBLIC_SOURCE_NAMES)
    return PublicPool.from_array(array, device=device)


def build_challenge(privates: np.ndarray, labels: np.ndarray, *, encodings_per_image: int = 50, k: int = 6,
                    mode: str = "cross", params: EncodeParams | None = None, pool: PublicPool | None = None,
                    num_classes: int = NUM_PSEUDO_CLASSES,
                    seed: int | None = None, device: torch.device | str = "cpu", with_sum_signs: bool = False,
                    ) -> tuple[ChallengeSet, GroundTruth]:
    """Encode every private image T times with fresh keys, the way the challenge was made.

    Each of the T rounds encodes the whole private set once through ``encode`` (image i
    in slot 0, private partners from derangements), so every image appears about 2T times (k = 6:
    once as itself and once as a partner per round, on average).

    Args:
        privates: (N, H, W, C) uint8, or float in [-1, 1].
        labels: (N,) integer classes in [0, num_classes).
        encodings_per_image: T.
        k, mode: the encoding's public parameters (2 private images per mix in cross mode).
        params: every parameter of the encoding instead of ``k`` and ``mode`` (coefficient bounds, sign flip).
        pool: public pool (cross mode); None builds ``challenge_public_pool`` for the images' size.
        seed: reproducible keys (seeded with (seed, round)); None draws them from the CSPRNG.
        with_sum_signs: also record the sign of every unmasked sum in the ground truth (for the
            recovery's ceiling: an attacker who holds the masks too).

    Returns:
        The attacker's view and the ground truth, encodings in a random order.
    """
    if encodings_per_image < 1:
        raise InvalidInputError(f"must be at least 1, got {encodings_per_image}", field="encodings_per_image")
    images = torch.as_tensor(np.ascontiguousarray(privates), device=device)
    classes = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=device)
    params = EncodeParams(mode=mode, k=k) if params is None else params
    params.validate()
    if params.mode == "cross" and params.resolved_k > params.private_slots and pool is None:
        _, height, width, _ = images.shape
        pool = challenge_public_pool(height, width, device=device)
    rounds = [encode(images, classes, num_classes=num_classes, params=params, pool=pool,
                     seed=None if seed is None else (seed, t)) for t in range(encodings_per_image)]
    # Shuffled, so that no attack can lean on the order rounds were made in.
    order = np.random.default_rng(None if seed is None else (seed, encodings_per_image)).permutation(
        len(rounds) * len(images))
    private_slots = params.private_slots
    indices = torch.cat([r.keys.indices for r in rounds]).numpy()[order]  # every slot: private, then public
    challenge = ChallengeSet(
        encryption=torch.cat([r.encoded for r in rounds]).cpu().numpy()[order],
        labels=torch.cat([r.mixed_labels for r in rounds]).cpu().numpy()[order],
        k=params.resolved_k, encodings_per_image=encodings_per_image, mode=params.mode,
    )
    truth = GroundTruth(
        privates=unit_range_array(privates),
        private_labels=np.asarray(labels, dtype=np.int64),
        pair_indices=np.ascontiguousarray(indices[:, :private_slots]),
        coefficients=torch.cat([r.keys.coefficients for r in rounds]).numpy()[order],
        sum_signs=_sum_signs(images, rounds, pool)[order] if with_sum_signs else None,
        public_indices=np.ascontiguousarray(indices[:, private_slots:]) if indices.shape[1] > private_slots else None,
    )
    return challenge, truth


def _sum_signs(images: torch.Tensor, rounds: list, pool: PublicPool | None) -> np.ndarray:
    """Sign of each round's mix before its mask: the same keys applied with the mask left out."""
    unmasked = [apply_keys(images, replace(r.keys, mask_bits=None), pool) for r in rounds]
    return torch.cat(unmasked).sign().to(torch.int8).cpu().numpy()


def save_challenge(directory: str | os.PathLike, challenge: ChallengeSet, truth: GroundTruth | None = None) -> None:
    """Write ``encryption.npy`` and ``label.npy`` (and ``ground_truth.npz`` when given) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / ENCRYPTION_FILE, challenge.encryption.astype(np.float32), allow_pickle=False)
    np.save(directory / LABEL_FILE, challenge.labels.astype(np.float32), allow_pickle=False)
    if truth is not None:
        extra = {} if truth.public_indices is None else {"public_indices": truth.public_indices}
        np.savez(directory / GROUND_TRUTH_FILE, privates=truth.privates, private_labels=truth.private_labels,
                 pair_indices=truth.pair_indices, coefficients=truth.coefficients, **extra)


def load_challenge(directory: str | os.PathLike, *, k: int, encodings_per_image: int,
                   mode: str = "cross") -> ChallengeSet:
    """Read the attacker's view; ``k``, T and the mode are public parameters. Never opens the truth."""
    directory = Path(directory)
    encryption = np.load(directory / ENCRYPTION_FILE, allow_pickle=False)
    labels = np.load(directory / LABEL_FILE, allow_pickle=False)
    if encryption.ndim != 4 or labels.ndim != 2 or len(encryption) != len(labels):
        raise InvalidInputError(f"expected (E, H, W, C) encodings and (E, classes) labels, got "
                                f"{list(encryption.shape)} and {list(labels.shape)}", field="encryption")
    return ChallengeSet(encryption.astype(np.float32), labels.astype(np.float32), k, encodings_per_image, mode)


def load_ground_truth(path: str | os.PathLike) -> GroundTruth:
    """Read ``ground_truth.npz`` (a file or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / GROUND_TRUTH_FILE
    with np.load(path, allow_pickle=False) as data:
        return GroundTruth(data["privates"], data["private_labels"], data["pair_indices"], data["coefficients"],
                           public_indices=data["public_indices"] if "public_indices" in data.files else None)
