"""One-time InstaHide keys: coefficients, partners, public picks and sign masks.

Every call draws fresh keys. Key material comes from a ChaCha20 keystream keyed,
per call, with 256 bits from the operating system's CSPRNG (``os.urandom``): the
construction Linux's own getrandom uses, and ten times faster than reading the
mask bits from the kernel. Only a caller that passes an explicit seed gets a
reproducible (and therefore weak) numpy PCG64 stream, and the keys are then
flagged ``seeded``. The challenge's "PRNG attack" recovered every key from a
32-bit seed, so seeded keys are for tests and debugging only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from instahide_ops.errors import InvalidInputError
from instahide_ops.randomness import RandomSource

# Rows whose coefficients break the bounds are redrawn; give up after this many
# rounds rather than spin on bounds that are feasible but nearly never met.
MAX_REJECTION_ROUNDS = 1000
# Bounds met by fewer than MIN_ACCEPTANCE of the rows drawn are refused as soon as
# JUDGED_AFTER_ROWS rows have been drawn: finishing would cost over 1000 draws a row
# (1000 rounds of them, minutes for a large batch, when bounds are met almost never).
MIN_ACCEPTANCE = 1e-3
JUDGED_AFTER_ROWS = 2**16


@dataclass(frozen=True)
class EncodeKeys:
    """Everything needed to recompute one encoded batch (all tensors on the CPU).

    Attributes:
        mode: ``"cross"`` or ``"inside"``.
        k: images mixed into each encoding.
        private_per_mix: leading slots that index the batch; later slots index the public pool.
        coefficients: (N, k) float32; slot 0 is the image itself.
        indices: (N, k) int64; ``indices[:, 0] == arange(N)``.
        mask_bits: (N, ceil(D / 8)) uint8 with D = H*W*C, little-endian bit order,
            1 = sign flipped; None without sign flip.
        seeded: the keys came from an explicit seed, not the CSPRNG.
        pool_fingerprint: SHA-256 of the public pool the public slots index ("" when none).
    """

    mode: str
    k: int
    private_per_mix: int
    coefficients: torch.Tensor
    indices: torch.Tensor
    mask_bits: torch.Tensor | None
    seeded: bool
    pool_fingerprint: str = ""


def draw_coefficients(
    source: RandomSource,
    num_rows: int,
    k: int,
    *,
    private_slots: int,
    max_coefficient: float,
    min_private_mass: float,
) -> np.ndarray:
    """Half-normal coefficients normalised to sum 1, whole rows redrawn until within bounds.

    A row is redrawn while its largest coefficient exceeds ``max_coefficient`` or its
    first ``private_slots`` coefficients sum below ``min_private_mass`` (the official rule).

    Returns:
        (num_rows, k) float64, each row summing to 1.
    """
    lam = np.empty((num_rows, k))
    filled, acceptance = 0, 0.5
    drawn = met = 0  # rows drawn and rows within bounds, over all rounds
    for _ in range(MAX_REJECTION_ROUNDS):
        # Draw enough rows for the rows still missing at the acceptance rate seen so far, in one go.
        wanted = num_rows - filled
        draw = source.half_normal((int(min(wanted / acceptance, 2**22 / k) * 1.1) + 8, k))
        draw /= draw.sum(axis=1, keepdims=True)
        ok = (draw.max(axis=1) <= max_coefficient) & (draw[:, :private_slots].sum(axis=1) >= min_private_mass)
        accepted = draw[ok][:wanted]
        lam[filled : filled + len(accepted)] = accepted
        filled += len(accepted)
        acceptance = max(ok.mean(), 1e-3)
        if filled == num_rows:
            return lam
        drawn, met = drawn + len(draw), met + int(ok.sum())
        if drawn >= JUDGED_AFTER_ROWS and met < MIN_ACCEPTANCE * drawn:
            break
    raise InvalidInputError(
        f"coefficient bounds max_coefficient={max_coefficient}, min_private_mass={min_private_mass} "
        f"with k={k} are met too rarely to sample",
        field="config.max_coefficient",
    )


def draw_keys(
    source: RandomSource,
    *,
    num_images: int,
    image_numel: int,
    mode: str,
    k: int,
    private_per_mix: int,
    max_coefficient: float,
    min_private_mass: float,
    sign_flip: bool,
    pool_size: int,
    pool_fingerprint: str = "",
) -> EncodeKeys:
    """Draw one call's keys. Bounds are checked by the caller (``encode``).

    Private partner slots are independent derangements of the batch, so no image is
    ever its own partner (a flaw of the reference code); public slots pick pool images
    uniformly with replacement.
    """
    n = num_images
    lam = draw_coefficients(
        source,
        n,
        k,
        private_slots=private_per_mix,
        max_coefficient=max_coefficient,
        min_private_mass=min_private_mass if mode == "cross" else 0.0,
    )
    columns = [np.arange(n)]
    columns += [source.derangement(n) for _ in range(1, private_per_mix)]
    if k > private_per_mix:
        columns.append(source.integers(pool_size, (k - private_per_mix, n)).reshape(-1, n))
    indices = np.concatenate([np.atleast_2d(c) for c in columns], axis=0).T
    mask_bits = None
    if sign_flip:
        row_bytes = (image_numel + 7) // 8
        mask_bits = torch.frombuffer(bytearray(source.bytes(n * row_bytes)), dtype=torch.uint8).reshape(n, row_bytes)
    return EncodeKeys(
        mode=mode,
        k=k,
        private_per_mix=private_per_mix,
        coefficients=torch.from_numpy(lam.astype(np.float32)),
        indices=torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64)),
        mask_bits=mask_bits,
        seeded=source.seeded,
        pool_fingerprint=pool_fingerprint if k > private_per_mix else "",
    )
