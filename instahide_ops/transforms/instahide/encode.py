"""InstaHide encoding (Huang et al., ICML 2020) as functions over tensors.

    e = σ ⊙ (λ₁·x + λ₂·x₂ + … + λ_k·x_k)

``encode`` draws fresh keys (``instahide_ops.transforms.instahide.keys``) and calls ``apply_keys``;
recomputing a batch from its key record calls the same ``apply_keys``, so the
recomputation is bit-for-bit the encoding on the same device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.inputs import check_images, check_labels
from instahide_ops.transforms.instahide._mix_cpu import mix_rows
from instahide_ops.transforms.instahide.keys import EncodeKeys, RandomSource, draw_keys
from instahide_ops.transforms.instahide.pool import PublicPool

MODES = ("cross", "inside")
DEFAULT_K = {"cross": 6, "inside": 4}
MAX_K = 16


@dataclass(frozen=True)
class EncodeParams:
    """Public parameters of an encoding (the keys are drawn per call).

    Attributes:
        mode: ``"cross"`` (private images + public pool) or ``"inside"`` (batch only).
        k: images per mix; None means 6 in cross mode and 4 in inside mode.
        private_per_mix: cross mode's private images per mix (the image and its partners).
        max_coefficient: rows with a larger coefficient are redrawn (official: 0.65).
        min_private_mass: cross mode's lower bound on the private coefficients' sum (official: 0.3).
        sign_flip: multiply each element by an independent random sign.
    """

    mode: str = "cross"
    k: int | None = None
    private_per_mix: int = 2
    max_coefficient: float = 0.65
    min_private_mass: float = 0.3
    sign_flip: bool = True

    @property
    def resolved_k(self) -> int:
        return DEFAULT_K.get(self.mode, 0) if self.k is None else self.k

    @property
    def private_slots(self) -> int:
        """Slots that index the batch: all k in inside mode."""
        return self.resolved_k if self.mode == "inside" else self.private_per_mix

    def validate(self) -> None:
        """Raise InvalidInputError when the parameters cannot be sampled."""
        if self.mode not in MODES:
            raise InvalidInputError(f"unknown mode {self.mode!r}; expected one of {MODES}", field="config.mode")
        k = self.resolved_k
        if not 2 <= k <= MAX_K:
            raise InvalidInputError(f"k must be in [2, {MAX_K}], got {k}", field="config.k")
        if self.mode == "cross" and not 1 <= self.private_per_mix <= k:
            raise InvalidInputError(
                f"private_per_mix must be in [1, k={k}], got {self.private_per_mix}", field="config.private_per_mix"
            )
        if not 0.0 < self.max_coefficient <= 1.0 or self.max_coefficient * k < 1.0:
            raise InvalidInputError(
                f"max_coefficient must be in [1/k, 1] = [{1 / k:.4g}, 1], got {self.max_coefficient}",
                field="config.max_coefficient",
            )
        if self.mode == "cross" and not (
            0.0 <= self.min_private_mass <= min(1.0, self.max_coefficient * self.private_per_mix)
        ):
            raise InvalidInputError(
                f"min_private_mass must be in [0, min(1, max_coefficient * private_per_mix)], "
                f"got {self.min_private_mass}",
                field="config.min_private_mass",
            )


@dataclass(frozen=True)
class EncodeResult:
    """One encoded batch.

    Attributes:
        encoded: (N, H, W, C) float32 or float16, on the images' device.
        mixed_labels: (N, num_classes) float32, on the images' device.
        keys: the key record (CPU tensors).
    """

    encoded: torch.Tensor
    mixed_labels: torch.Tensor
    keys: EncodeKeys


def apply_keys(images: torch.Tensor, keys: EncodeKeys, pool: PublicPool | None = None) -> torch.Tensor:
    """Mix and sign-flip a batch with given keys.

    Sources stay in their stored dtype: a uint8 pixel u enters as u / 127.5 − 1, folded
    into per-slot weights and one offset per row, so no float copy of the batch or of
    the pool is made. CPU tensors go through a fused kernel, others through torch ops;
    both compute the same formula.

    Args:
        images: (N, H, W, C) uint8 in [0, 255] or float in [-1, 1].
        keys: the key record (its tensors may live on any device).
        pool: the public pool the keys' public slots index (cross mode with public slots).

    Returns:
        (N, H, W, C) float32 on the images' device.
    """
    device = images.device
    n = images.shape[0]
    private = images.reshape(n, -1)
    if private.is_floating_point():
        private = private.float()
    if keys.k > keys.private_per_mix:
        if pool is None:
            raise InvalidInputError("the keys index a public pool, but none was given", field="pool")
        public = pool.pixels.to(device).reshape(len(pool), -1)
    else:
        public = private[:0]
    weights, offsets = _fold_unit_range(keys, private.dtype, public.dtype)
    if device.type == "cpu":
        mask = None if keys.mask_bits is None else keys.mask_bits.numpy()
        out = mix_rows(private.numpy(), public.numpy(), weights.numpy(), keys.indices.numpy(),
                       offsets.numpy(), mask, keys.private_per_mix)
        return torch.from_numpy(out).reshape(images.shape)
    weights, offsets = weights.to(device), offsets.to(device)
    indices = keys.indices.to(device, non_blocking=True)
    out = private.float().mul_(weights[:, :1])
    for slot in range(1, keys.k):
        source = private if slot < keys.private_per_mix else public
        out.addcmul_(source.index_select(0, indices[:, slot]), weights[:, slot : slot + 1])
    out.add_(offsets.unsqueeze(1))
    if keys.mask_bits is not None:
        out = _apply_mask(out, keys.mask_bits.to(device, non_blocking=True))
    return out.reshape(images.shape)


def _fold_unit_range(
    keys: EncodeKeys, private_dtype: torch.dtype, public_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slot weights and per-row offsets so that Σ weights·source + offset = Σ λ·unit-range source."""
    lam = keys.coefficients
    uint8_slots = torch.zeros(keys.k, dtype=torch.bool)
    uint8_slots[: keys.private_per_mix] = private_dtype == torch.uint8
    uint8_slots[keys.private_per_mix :] = public_dtype == torch.uint8
    weights = torch.where(uint8_slots, lam / 127.5, lam).float()
    offsets = -(lam * uint8_slots).sum(dim=1).float()
    return weights, offsets


def _apply_mask(flat: torch.Tensor, mask_bits: torch.Tensor) -> torch.Tensor:
    """Negate the elements whose mask bit is 1 (little-endian bit order within a byte)."""
    shifts = torch.arange(8, device=flat.device, dtype=torch.uint8)
    bits = (mask_bits.unsqueeze(-1) >> shifts).bitwise_and_(1).reshape(flat.shape[0], -1)[:, : flat.shape[1]]
    return torch.where(bits.bool(), -flat, flat)


def mix_labels(labels: torch.Tensor, keys: EncodeKeys, num_classes: int) -> torch.Tensor:
    """One-hot labels mixed with the private coefficients (public mass dropped).

    Args:
        labels: (N,) integer class labels.
        keys: the batch's key record.
        num_classes: width of the one-hot vectors.

    Returns:
        (N, num_classes) float32 on the labels' device.
    """
    device = labels.device
    n = labels.shape[0]
    private = keys.private_per_mix
    rows = torch.arange(n, device=device).repeat_interleave(private)
    classes = labels.to(torch.int64)[keys.indices[:, :private].to(device)].reshape(-1)
    mixed = torch.zeros(n, num_classes, dtype=torch.float32, device=device)
    mixed.index_put_((rows, classes), keys.coefficients[:, :private].to(device).reshape(-1), accumulate=True)
    return mixed


def encode(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    params: EncodeParams = EncodeParams(),
    pool: PublicPool | None = None,
    seed: int | tuple[int, ...] | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> EncodeResult:
    """Encode a batch with fresh one-time keys.

    Args:
        images: (N, H, W, C) uint8 in [0, 255] or float in [-1, 1], on any device.
        labels: (N,) integer labels in [0, num_classes).
        num_classes: width of the mixed label vectors.
        params: mode, k and coefficient bounds.
        pool: public pool of images shaped like the batch's (required when cross mode has public slots).
        seed: explicit seed (an int or a tuple of ints) for reproducible, weak keys; None draws
            from the OS CSPRNG.
        out_dtype: torch.float32 or torch.float16.

    Returns:
        The encoded batch, its mixed labels and its key record.

    Raises:
        InvalidInputError: malformed images, labels, parameters or pool; ``.field`` names the culprit.

    Example:
        >>> images = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
        >>> result = encode(images, torch.tensor([0, 1, 2, 1]), num_classes=3, params=EncodeParams(mode="inside"))
        >>> result.encoded.shape, result.mixed_labels.sum(dim=1).allclose(torch.ones(4))
        (torch.Size([4, 8, 8, 3]), True)
    """
    params.validate()
    check_images(images)
    n = images.shape[0]
    check_labels(labels, n, num_classes)
    if out_dtype not in (torch.float32, torch.float16):
        raise InvalidInputError(f"expected float32 or float16, got {out_dtype}", field="config.output_dtype")
    k, private = params.resolved_k, params.private_slots
    if private > 1 and n < 2:
        raise InvalidInputError(f"mixing needs at least 2 images per batch, got {n}", field="images.shape")
    needs_pool = k > private
    if needs_pool:
        if pool is None or len(pool) == 0:
            raise InvalidInputError("cross mode with public slots needs a public pool", field="pool")
        if pool.image_shape != tuple(images.shape[1:]):
            raise InvalidInputError(
                f"pool images are {list(pool.image_shape)}, batch images are {list(images.shape[1:])}",
                field="pool",
            )
    keys = draw_keys(
        RandomSource(seed),
        num_images=n,
        image_numel=images[0].numel(),
        mode=params.mode,
        k=k,
        private_per_mix=private,
        max_coefficient=params.max_coefficient,
        min_private_mass=params.min_private_mass,
        sign_flip=params.sign_flip,
        pool_size=len(pool) if needs_pool else 0,
        pool_fingerprint=pool.fingerprint if needs_pool else "",
    )
    encoded = apply_keys(images, keys, pool if needs_pool else None)
    return EncodeResult(encoded.to(out_dtype), mix_labels(labels, keys, num_classes), keys)
