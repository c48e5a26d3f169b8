"""Random bytes for key material, shared by the families.

A ChaCha20 keystream keyed per source with 256 bits from the operating system's CSPRNG (``os.urandom``): the
construction Linux's own getrandom uses, and ten times faster than reading every byte from the kernel. Only a
caller that passes an explicit seed gets a reproducible (and therefore weak) numpy PCG64 stream, and the source
says so (``seeded``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from instahide_ops.errors import InvalidInputError


class RandomSource:
    """Random bytes from a CSPRNG-keyed ChaCha20 keystream, or from a seeded PCG64 when ``seed`` is given.

    A seed may be a sequence of non-negative ints, e.g. ``(seed, batch_index)``, to give
    each batch of a seeded stream its own reproducible keys.
    """

    def __init__(self, seed: int | Sequence[int] | None = None) -> None:
        self.seeded = seed is not None
        if seed is None:
            self._rng = None
            # The 16-byte nonce is a 32-bit block counter then 96 bits of nonce: the counter starts at 0, so a
            # source runs 2**32 blocks (256 GiB) before it would wrap, wherever a random counter would have begun.
            nonce = bytes(4) + os.urandom(12)
            self._keystream = Cipher(algorithms.ChaCha20(os.urandom(32), nonce), mode=None).encryptor()
        else:
            self._rng = np.random.Generator(np.random.PCG64(seed))

    def bytes(self, n: int) -> bytes:
        if self._rng is not None:
            return self._rng.bytes(n)
        return self._keystream.update(bytes(n))  # ChaCha20 of zeros is the keystream itself

    def uint64(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.frombuffer(self.bytes(8 * math.prod(shape)), dtype="<u8").reshape(shape)

    def uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        """Floats in the open interval (0, 1), 53 random bits each."""
        return ((self.uint64(shape) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53

    def half_normal(self, shape: tuple[int, ...]) -> np.ndarray:
        """|N(0, 1)| samples by the Box–Muller transform."""
        u1, u2 = self.uniform(shape), self.uniform(shape)
        return np.abs(np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2))

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        """N(0, 1) samples by the Box–Muller transform."""
        u1, u2 = self.uniform(shape), self.uniform(shape)
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)

    def integers(self, high: int, shape: tuple[int, ...]) -> np.ndarray:
        """Uniform integers in [0, high); the bias is below high / 2**53."""
        return np.minimum((self.uniform(shape) * high).astype(np.int64), high - 1)

    def permutation(self, n: int) -> np.ndarray:
        return np.argsort(self.uint64((n,)), kind="stable")

    def derangement(self, n: int) -> np.ndarray:
        """A uniformly random permutation with no fixed point (expected e draws)."""
        if n < 2:
            raise InvalidInputError(f"need at least 2 images to pick partners, got {n}", field="images.shape")
        while True:
            perm = self.permutation(n)
            if not np.any(perm == np.arange(n)):
                return perm
