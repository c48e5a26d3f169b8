"""DisguisedNets keys: parameters, checks, and key material drawn from the CSPRNG.

A key is long-lived: a data owner disguises a whole dataset (training data and later queries) under it, so the
same image under the same noise-free key gives the same output every time. Its material is the permutation of
block positions, and either one s×s matrix per block position (RMT) or AES-128 keys (one for every position, or
one per position). Material is drawn from ``randomness.RandomSource`` (ChaCha20 keyed from ``os.urandom``); a
seed is used only when a caller passes one, and the key then says so (``seeded``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from instahide_ops.errors import InvalidInputError
from instahide_ops.randomness import RandomSource

METHODS = ("rmt", "aes")
MATRICES = ("orthogonal", "gaussian", "uniform")
AES_UNIT_BYTES = 16
MAX_NOISE = 255.0
MAX_SCALE = 16
MAX_SALT_PEPPER = 0.5
# A projection this ill-conditioned would amplify float32 rounding past what undisguising can take back.
MAX_CONDITION = 1e3
MAX_MATRIX_DRAWS = 100


@dataclass(frozen=True)
class DisguisedNetsParams:
    """What a key is made for.

    Attributes:
        method: ``"rmt"`` (random multidimensional transformation) or ``"aes"`` (AES-128, ECB).
        block: (r, s), the block's rows and columns; they must divide the image's height and width.
        permute: move blocks by one secret permutation of positions.
        matrix: RMT's matrices: ``"orthogonal"`` (Haar), ``"gaussian"`` (N(0, 1/s)) or ``"uniform"`` (on [0, 1),
            as the 2019 code draws them); each invertible.
        noise: RMT's noise bound N: Δ uniform on [0, N] (0–255 scale) per element at every call; 0 for none.
        matrix_per_channel: RMT: one matrix per position and channel instead of one per position.
        aes_key_per_block: AES: one key per block position instead of one for all.
        scale: AES's "pixel-level" variant: each pixel becomes an f×f cell before encryption and each cell's mean
            after, so a 16-byte unit holds 16/f pixels (the papers' 32 → 256 → 32 is f = 8: 2-pixel units). Not
            invertible past 1.
        salt_pepper: AES: the rate p of salt-and-pepper noise before encryption (a pixel becomes 0 or 255, each
            with probability p/2, fresh at every call): the papers' defence against the codebook attack.
    """

    method: str = "rmt"
    block: tuple[int, int] = (4, 4)
    permute: bool = True
    matrix: str = "orthogonal"
    noise: float = 0.0
    matrix_per_channel: bool = False
    aes_key_per_block: bool = False
    scale: int = 1
    salt_pepper: float = 0.0


@dataclass(frozen=True)
class DisguisedNetsKey:
    """One key's material (numpy, on the host) and what it was made for.

    Attributes:
        params: the parameters.
        image_shape: (H, W, C) of the images it disguises.
        permutation: (P,) int64: the block at position i moves to position ``permutation[i]``.
        matrices: RMT: (P, 1 or C, s, s) float64; None for AES.
        aes_keys: AES: (1 or P, 16) uint8; None for RMT.
        seeded: drawn from an explicit seed, not the CSPRNG.
    """

    params: DisguisedNetsParams
    image_shape: tuple[int, int, int]
    permutation: np.ndarray
    matrices: np.ndarray | None
    aes_keys: np.ndarray | None
    seeded: bool

    @property
    def positions(self) -> int:
        (h, w, _), (r, s) = self.image_shape, self.params.block
        return (h // r) * (w // s)

    def fingerprint(self) -> str:
        """SHA-256 over the material and parameters: names a key without showing it."""
        digest = hashlib.sha256(repr((self.params, self.image_shape)).encode())
        for part in (self.permutation, self.matrices, self.aes_keys):
            if part is not None:
                digest.update(np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()

    def matrices_tensor(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        assert self.matrices is not None
        return torch.as_tensor(self.matrices, dtype=dtype, device=device)

    def __repr__(self) -> str:  # never the material
        return (f"DisguisedNetsKey(params={self.params!r}, image_shape={self.image_shape}, "
                f"fingerprint={self.fingerprint()[:16]}…, seeded={self.seeded})")


def check_params(params: DisguisedNetsParams, image_shape: Sequence[int]) -> tuple[int, int, int]:
    """The image shape as (H, W, C) if ``params`` can disguise images of it; InvalidInputError naming the field
    otherwise."""
    if len(image_shape) != 3 or any(int(d) < 1 for d in image_shape):
        raise InvalidInputError(f"expected an image shape (H, W, C), got {list(image_shape)}", field="shape")
    h, w, c = (int(d) for d in image_shape)
    if params.method not in METHODS:
        raise InvalidInputError(f"unknown method {params.method!r}; expected one of {list(METHODS)}", field="method")
    if len(params.block) != 2 or any(int(b) < 1 for b in params.block):
        raise InvalidInputError(f"expected a block (r, s) of positive sides, got {list(params.block)}", field="block")
    r, s = (int(b) for b in params.block)
    if h % r or w % s:
        raise InvalidInputError(f"block {r}×{s} does not divide images of {h}×{w}", field="block")
    if params.method == "rmt":
        if params.matrix not in MATRICES:
            raise InvalidInputError(f"unknown matrix {params.matrix!r}; expected one of {list(MATRICES)}",
                                    field="matrix")
        if not (math.isfinite(params.noise) and 0 <= params.noise <= MAX_NOISE):
            raise InvalidInputError(f"noise must lie in [0, {MAX_NOISE:g}] (0–255 scale), got {params.noise}",
                                    field="noise")
        for name, unset in (("scale", 1), ("salt_pepper", 0.0)):
            if getattr(params, name) != unset:
                raise InvalidInputError(f"{name} is AES's; RMT takes noise instead", field=name)
    else:
        if not (isinstance(params.scale, int) and 1 <= params.scale <= MAX_SCALE):
            raise InvalidInputError(f"scale must be an integer in [1, {MAX_SCALE}], got {params.scale}", field="scale")
        f = params.scale
        if (r * f * s * f) % AES_UNIT_BYTES:
            what = f"a {r}×{s} block" if f == 1 else f"a {r}×{s} block scaled by {f}"
            raise InvalidInputError(f"AES encrypts {AES_UNIT_BYTES}-byte units of a block's pixels: {what} "
                                    f"holds {r * f * s * f}, not a multiple of {AES_UNIT_BYTES}", field="block")
        if not (math.isfinite(params.salt_pepper) and 0 <= params.salt_pepper <= MAX_SALT_PEPPER):
            raise InvalidInputError(f"salt_pepper must lie in [0, {MAX_SALT_PEPPER:g}], got {params.salt_pepper}",
                                    field="salt_pepper")
        if params.noise:
            raise InvalidInputError("noise is RMT's; AES takes none (salt_pepper is its noise)", field="noise")
    return h, w, c


def create_key(params: DisguisedNetsParams, image_shape: Sequence[int], *,
               seed: int | Sequence[int] | None = None) -> DisguisedNetsKey:
    """A fresh key for images of ``image_shape``: from the CSPRNG, or from ``seed`` when one is given."""
    h, w, c = check_params(params, image_shape)
    r, s = params.block
    positions = (h // r) * (w // s)
    source = RandomSource(seed)
    permutation = source.permutation(positions) if params.permute else np.arange(positions)
    matrices = aes_keys = None
    if params.method == "rmt":
        per_position = c if params.matrix_per_channel else 1
        matrices = np.stack([_invertible_matrix(source, params.matrix, s) for _ in range(positions * per_position)])
        matrices = matrices.reshape(positions, per_position, s, s)
    else:
        count = positions if params.aes_key_per_block else 1
        aes_keys = np.frombuffer(source.bytes(AES_UNIT_BYTES * count), dtype=np.uint8).reshape(count, AES_UNIT_BYTES)
    return DisguisedNetsKey(params, (h, w, c), permutation.astype(np.int64), matrices, aes_keys, source.seeded)


def haar_orthogonal(source: RandomSource, n: int) -> np.ndarray:
    """An n×n orthogonal matrix distributed by the Haar measure: QR of a Gaussian matrix, R's diagonal signs
    moved into Q (Mezzadri 2007), without which Q is biased."""
    q, r = np.linalg.qr(source.normal((n, n)))
    return q * np.sign(np.diag(r))


def _invertible_matrix(source: RandomSource, kind: str, n: int) -> np.ndarray:
    for _ in range(MAX_MATRIX_DRAWS):
        if kind == "orthogonal":
            return haar_orthogonal(source, n)
        matrix = source.normal((n, n)) / math.sqrt(n) if kind == "gaussian" else source.uniform((n, n))
        if np.linalg.cond(matrix) < MAX_CONDITION:
            return matrix
    raise InvalidInputError(f"no well-conditioned {kind} {n}×{n} matrix in {MAX_MATRIX_DRAWS} draws",
                            field="matrix")
