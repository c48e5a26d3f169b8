"""The fused CPU kernel behind ``apply_keys``: gather, mix, offset and sign in one pass.

Eager torch needs a full (N, D) pass per slot, per dtype conversion and for the
mask; this kernel walks each output row once while it is hot in L1 (about 5×
faster on a 2-core box, see docs/BENCHMARKS.md). The parallel loop runs on
numba's default threading layer, which must not be entered from two threads at
once, so calls are serialised: each call already uses every core.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange

_LOCK = threading.Lock()


@njit(parallel=True, boundscheck=False, cache=True)
def _mix_rows(private, public, weights, indices, offsets, mask_bits, private_slots, out):  # pragma: no cover
    n, d = out.shape
    k = weights.shape[1]
    for i in prange(n):
        row = out[i]
        src = private[indices[i, 0]]
        w = weights[i, 0]
        for c in range(d):
            row[c] = w * np.float32(src[c])
        for j in range(1, private_slots):
            src = private[indices[i, j]]
            w = weights[i, j]
            for c in range(d):
                row[c] += w * np.float32(src[c])
        for j in range(private_slots, k):
            pub = public[indices[i, j]]  # may differ in dtype from the private rows
            w = weights[i, j]
            for c in range(d):
                row[c] += w * np.float32(pub[c])
        offset = offsets[i]
        if mask_bits.shape[0] == 0:
            for c in range(d):
                row[c] += offset
        else:
            bits = mask_bits[i]
            for c in range(d):
                v = row[c] + offset
                row[c] = -v if (bits[c >> 3] >> (c & 7)) & 1 else v


def mix_rows(
    private: np.ndarray,
    public: np.ndarray,
    weights: np.ndarray,
    indices: np.ndarray,
    offsets: np.ndarray,
    mask_bits: np.ndarray | None,
    private_slots: int,
) -> np.ndarray:
    """out[i] = ±(Σ_j weights[i, j] · source_j[indices[i, j]] + offsets[i]), float32 (N, D).

    Slots below ``private_slots`` read ``private`` (N, D), the rest ``public`` (P, D);
    both uint8 or float32. The sign of element c is flipped when bit c of
    ``mask_bits[i]`` (little-endian within a byte) is set.
    """
    out = np.empty((indices.shape[0], private.shape[1]), dtype=np.float32)
    bits = np.empty((0, 0), dtype=np.uint8) if mask_bits is None else mask_bits
    with _LOCK:
        _mix_rows(private, public, weights, indices, offsets, bits, private_slots, out)
    return out
