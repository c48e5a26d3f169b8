"""Level-2 attack on DisguisedNets AES-ECB: the codebook.

ECB sends equal plaintext units to equal ciphertext units, so m original/disguised pairs are a dictionary. A
**codeword** is the smallest piece of a block whose output depends on it alone: a 16-byte unit of one channel's
row-major pixels (scale 1), or, at scale f, the 16/f pixels of one row that one scaled unit covers (their f×f cells'
means are the output). Steps, never reading the key:

1. **Permutation.** A bijective codebook keeps how often a codeword occurs: each position's sequence of codeword
   frequencies (over the pairs, channels and codewords in a block) is the same at its source and at its target. One
   assignment over the L1 distances of those sequences (log counts) matches positions.
2. **Codebook.** Output codeword → plaintext codeword, from every matched pair block (per position with a key
   per position); the most frequent plaintext where one output stood for several (at scale f the cells' means
   keep fewer bits than the pixels had, so outputs collide).
3. **Recovery.** Each disguised codeword found in the codebook is decrypted (the hit rate the papers report), the
   rest inpainted from their decrypted neighbours (OpenCV's Telea inpainting, a natural-image fill), blocks moved
   back.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from instahide_ops.audits.reconstruction.disguisednets.pairs import check_pairs
from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.disguisednets.blocks import from_blocks, to_blocks
from instahide_ops.transforms.disguisednets.keys import AES_UNIT_BYTES, DisguisedNetsParams

AMBIGUITY_SHARE = 0.75  # the share of its sightings an output's commonest plaintext needs to be trusted


@dataclass(frozen=True)
class CodebookResult:
    """The recoveries (N, H, W, C) float32 on the 0–255 scale, the permutation found, and the share of the
    disguised codewords the codebook decrypted."""

    recovered: torch.Tensor
    permutation: np.ndarray
    hit_rate: float


def codeword_length(params: DisguisedNetsParams) -> int:
    """L: the pixels (bytes) of one codeword: a 16-byte unit, or the 16/f pixels a scaled unit covers."""
    return AES_UNIT_BYTES // params.scale


def codewords(images: np.ndarray, params: DisguisedNetsParams) -> np.ndarray:
    """(N, H, W, C) uint8 → (N, P, C·K, L) uint8: every codeword of every block, L bytes each."""
    blocks = to_blocks(torch.from_numpy(np.ascontiguousarray(images)), params.block).numpy()  # (N, P, C, r, s)
    n, p, c, r, s = blocks.shape
    f = params.scale
    if f == 1:
        return blocks.reshape(n, p, c * (r * s // AES_UNIT_BYTES), AES_UNIT_BYTES)
    if (s * f) % AES_UNIT_BYTES:
        raise InvalidInputError(f"the codebook attack reads scale {f} when a scaled block row holds whole units "
                                f"(s·f a multiple of {AES_UNIT_BYTES}); got s = {s}", field="scale")
    length = AES_UNIT_BYTES // f
    return blocks.reshape(n, p, c * r * (s // length), length)


def codeword_ids(units: np.ndarray) -> np.ndarray:
    """Integer ids of codewords (equal bytes, equal id), same leading shape."""
    flat = np.ascontiguousarray(units.reshape(-1, units.shape[-1]))
    _, ids = np.unique(flat.view(np.dtype((np.void, flat.shape[1]))).ravel(), return_inverse=True)
    return ids.reshape(units.shape[:-1])


def _frequencies(ids: np.ndarray, per_position: bool) -> np.ndarray:
    """(P, m·C·K) float: log of how often each codeword occurs (in its position, with a key per position)."""
    m, p, k = ids.shape
    out = np.empty((p, m * k))
    if per_position:
        for position in range(p):
            column = ids[:, position].ravel()
            _, inverse, counts = np.unique(column, return_inverse=True, return_counts=True)
            out[position] = np.log(counts[inverse])
        return out
    _, inverse, counts = np.unique(ids.ravel(), return_inverse=True, return_counts=True)
    return np.log(counts[inverse]).reshape(m, p, k).transpose(1, 0, 2).reshape(p, m * k)


def codebook_attack(disguised: torch.Tensor, pair_originals: torch.Tensor, pair_disguised: torch.Tensor,
                    params: DisguisedNetsParams) -> CodebookResult:
    """Recover (N, H, W, C) AES-disguised images from m known pairs.

    Raises:
        InvalidInputError: no pairs, shapes that disagree, parameters that are not AES's, or a scale whose
            codewords span rows.
    """
    h, w, c = check_pairs(disguised, pair_originals, pair_disguised, params, method="aes",
                          other="the least-squares attack")
    plain = codewords(pair_originals.to(torch.uint8).numpy(), params)  # (m, P, K, L)
    cipher = codewords(pair_disguised.to(torch.uint8).numpy(), params)
    targets = codewords(disguised.to(torch.uint8).numpy(), params)
    m, p, k, length = plain.shape
    per_position = params.aes_key_per_block

    # 1. the permutation: codeword frequencies agree at a source and its target
    plain_ids, cipher_ids = codeword_ids(plain), codeword_ids(cipher)
    cost = np.abs(_frequencies(plain_ids, per_position)[:, None, :]
                  - _frequencies(cipher_ids, per_position)[None, :, :]).sum(-1)
    sources, found = linear_sum_assignment(cost)
    permutation = np.empty(p, dtype=np.int64)
    permutation[sources] = found
    source_of = np.argsort(permutation)  # the source block of each target position

    # 2. the codebook: output codeword bytes → the plaintext codeword seen most often behind them (at scale > 1
    #    the cells' means lose bits, so one output can stand for several plaintexts)
    seen: dict[tuple[int, bytes], collections.Counter[bytes]] = collections.defaultdict(collections.Counter)
    for target in range(p):
        scope = target if per_position else -1
        for image in range(m):
            for index in range(k):
                output = cipher[image, target, index].tobytes()
                seen[(scope, output)][plain[image, source_of[target], index].tobytes()] += 1
    # An output that stood for several plaintexts is decoded only when one of them dominates; else inpainted.
    book = {output: top for output, counts in seen.items()
            for top, count in [counts.most_common(1)[0]] if count >= AMBIGUITY_SHARE * sum(counts.values())}

    # 3. decrypt what the codebook holds, inpaint the rest, move blocks back
    n = len(targets)
    decrypted = np.zeros((n, p, k, length), dtype=np.uint8)
    known = np.zeros((n, p, k), dtype=bool)
    for target in range(p):
        scope = target if per_position else -1
        for image in range(n):
            for index in range(k):
                hit = book.get((scope, targets[image, target, index].tobytes()))
                if hit is not None:
                    decrypted[image, source_of[target], index] = np.frombuffer(hit, dtype=np.uint8)
                    known[image, source_of[target], index] = True
    r, s = params.block
    shape_blocks = (n, p, c, r, s)
    pixels = from_blocks(torch.from_numpy(decrypted.reshape(shape_blocks)), h, w).numpy()
    mask = from_blocks(torch.from_numpy(np.repeat(known[..., None], length, axis=-1).reshape(shape_blocks)),
                       h, w).numpy()
    recovered = np.empty((n, h, w, c), dtype=np.float32)
    for image in range(n):
        for channel in range(c):
            holes = (~mask[image, :, :, channel]).astype(np.uint8)
            plane = pixels[image, :, :, channel]
            if holes.all():
                recovered[image, :, :, channel] = 127.5
            else:
                recovered[image, :, :, channel] = cv2.inpaint(plane, holes, 3, cv2.INPAINT_TELEA) if holes.any() \
                    else plane
    return CodebookResult(torch.from_numpy(recovered), permutation, float(known.mean()))
