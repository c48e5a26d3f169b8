"""Disguising and undisguising a batch under a DisguisedNets key: functions over tensors.

Pixels are on the 0–255 scale throughout: uint8 images as they are, float images in [-1, 1] mapped there.
RMT gives float32 ((X + Δ)·R_i for each block X at position i and each channel, then the blocks moved); AES gives
uint8 (each 16-byte unit of a block's row-major pixels of one channel through AES-128-ECB, then the blocks moved).
A call's noise is RMT's Δ, or AES's salt-and-pepper codes (0 keep, 1 pepper, 2 salt per pixel); ``draw_noise``
draws either.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from instahide_ops.errors import InvalidInputError
from instahide_ops.randomness import RandomSource
from instahide_ops.transforms.disguisednets.blocks import from_blocks, move_blocks, to_blocks
from instahide_ops.transforms.disguisednets.keys import AES_UNIT_BYTES, DisguisedNetsKey


def disguise(images: torch.Tensor, key: DisguisedNetsKey, *, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Disguise (N, H, W, C) images under ``key``: float32 for RMT, uint8 for AES, on the images' device.

    A key with noise adds ``noise`` ((N, H, W, C) on the 0–255 scale, as ``draw_noise`` makes it), or noise drawn
    fresh from the CSPRNG when none is given.
    """
    pixels = _pixels(images, key)
    if noise is None:
        noise = draw_noise(key, len(pixels), device=pixels.device)
    block = key.params.block
    if key.params.method == "rmt":
        if noise is None and images.dtype == torch.uint8:  # move the bytes, a quarter of the floats
            moved = move_blocks(images, block, key.permutation)
        else:
            moved = move_blocks(pixels if noise is None else pixels + noise, block, key.permutation)
        return _project_rows(moved, _row_matrices(key, inverse=False, device=moved.device), block)
    pixels = pixels.to(torch.uint8)
    if noise is not None:
        pixels = torch.where(noise == 0, pixels, torch.where(noise == 1, 0, 255).to(torch.uint8))
    blocks = to_blocks(pixels, block)
    blocks = _aes(blocks, key, encrypt=True) if key.params.scale == 1 else _aes_scaled(blocks, key)
    h, w, _ = key.image_shape
    return move_blocks(from_blocks(blocks, h, w), block, key.permutation)


def undisguise(disguised: torch.Tensor, key: DisguisedNetsKey) -> torch.Tensor:
    """The images back on the 0–255 scale (float32 for RMT, where noise stays in; uint8 for AES, exactly, with
    salt-and-pepper left in). AES with a scale past 1 averages ciphertext and cannot be undone."""
    if key.params.method == "aes" and key.params.scale != 1:
        raise InvalidInputError(f"AES at scale {key.params.scale} keeps one mean byte of each scaled cell's "
                                "ciphertext, so it cannot be undisguised", field="scale")
    if tuple(disguised.shape[1:]) != key.image_shape:
        raise InvalidInputError(f"the key disguises images of {list(key.image_shape)}, got "
                                f"{list(disguised.shape[1:])}", field="images.shape")
    block, back = key.params.block, np.argsort(key.permutation)
    if key.params.method == "rmt":
        pixels = disguised.to(torch.float32)
        unprojected = _project_rows(pixels, _row_matrices(key, inverse=True, device=pixels.device), block)
        return move_blocks(unprojected, block, back)
    h, w, _ = key.image_shape
    blocks = to_blocks(move_blocks(disguised.to(torch.uint8), block, back), block)
    return from_blocks(_aes(blocks.contiguous(), key, encrypt=False), h, w)


# RMT in the image's own layout: a row of the moved image, cut into segments of G blocks, is multiplied by one
# block-diagonal matrix per (block row, segment) holding the s×s matrix of each block once per channel (channels
# interleave in memory). A product of width G·s·C does G·C times the arithmetic of the s×s products, but as a
# handful of dense GEMMs it runs several times faster than N·P·C tiny ones; G keeps the width near SEGMENT_WIDTH.
SEGMENT_WIDTH = 48
_ROW_MATRICES: dict[tuple[str, bool, str], torch.Tensor] = {}
_ROW_MATRICES_KEPT = 16
_ROW_MATRICES_LOCK = threading.Lock()  # encoding threads share the cache


def _segment_blocks(key: DisguisedNetsKey) -> int:
    """G: the most blocks of a row (dividing it) whose segment stays within SEGMENT_WIDTH elements; at least 1."""
    (_, w, c), (_, s) = key.image_shape, key.params.block
    columns = w // s
    return max(g for g in range(1, columns + 1) if columns % g == 0 and (g == 1 or g * s * c <= SEGMENT_WIDTH))


def _row_matrices(key: DisguisedNetsKey, *, inverse: bool, device: torch.device) -> torch.Tensor:
    """(Hb·segments, G·s·C, G·s·C) float32: the block-diagonal matrix of each (block row, segment) of the moved
    image, each block's slot holding the matrix of the block that moved there (or its inverse). Cached per key."""
    cache_key = (key.fingerprint(), inverse, str(device))
    with _ROW_MATRICES_LOCK:
        cached = _ROW_MATRICES.get(cache_key)
    if cached is not None:
        return cached
    (h, w, c), (r, s) = key.image_shape, key.params.block
    columns, g = w // s, _segment_blocks(key)
    assert key.matrices is not None
    matrices = np.linalg.inv(key.matrices) if inverse else key.matrices  # (P, 1 or C, s, s)
    width = g * s * c
    out = np.zeros(((h // r) * (columns // g), width, width))
    k, t = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    for q, p in enumerate(np.argsort(key.permutation)):  # p: the block that moved to position q
        qy, qx = divmod(q, columns)
        segment, slot = qy * (columns // g) + qx // g, qx % g
        for channel in range(c):
            matrix = matrices[p, channel if matrices.shape[1] > 1 else 0]
            out[segment, (slot * s + k) * c + channel, (slot * s + t) * c + channel] = matrix
    tensor = torch.as_tensor(out, dtype=torch.float32, device=device)
    with _ROW_MATRICES_LOCK:
        while len(_ROW_MATRICES) >= _ROW_MATRICES_KEPT:
            _ROW_MATRICES.pop(next(iter(_ROW_MATRICES)))
        _ROW_MATRICES[cache_key] = tensor
    return tensor


def _project_rows(images: torch.Tensor, matrices: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """(N, H, W, C) images (uint8 or float) times each (block row, segment)'s matrix, float32: one batched GEMM
    between two copies that move whole segments (the first also converts to float)."""
    n, h, w, c = images.shape
    r = block[0]
    width = matrices.shape[-1]
    segments = w * c // width
    rows = torch.empty((h // r, segments, n, r, width), dtype=torch.float32, device=images.device)
    rows.copy_(images.reshape(n, h // r, r, segments, width).permute(1, 3, 0, 2, 4))
    product = torch.bmm(rows.reshape(-1, n * r, width), matrices)
    return product.reshape(h // r, segments, n, r, width).permute(2, 0, 3, 1, 4).reshape(n, h, w, c)


def _pixels(images: torch.Tensor, key: DisguisedNetsKey) -> torch.Tensor:
    if images.ndim != 4 or tuple(images.shape[1:]) != key.image_shape:
        raise InvalidInputError(f"the key disguises images of {list(key.image_shape)}, got "
                                f"{list(images.shape)}", field="images.shape")
    if images.dtype == torch.uint8:  # RMT converts after moving the blocks, unless noise is added first
        return images
    if not images.dtype.is_floating_point:
        raise InvalidInputError(f"expected uint8 or float images, got {images.dtype}", field="images.dtype")
    pixels = (images.to(torch.float32) + 1) * 127.5
    if not bool(torch.isfinite(pixels).all()):
        raise InvalidInputError("contains NaN or Inf", field="images.content")
    return pixels.clamp_(0, 255).round_() if key.params.method == "aes" else pixels


def draw_noise(key: DisguisedNetsKey, count: int, *, seed: int | Sequence[int] | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor | None:
    """One call's noise for ``count`` images, from the CSPRNG unless ``seed`` is given; None for a key without.

    RMT: Δ, (count, H, W, C) float32 uniform on [0, noise]. AES: salt-and-pepper codes, (count, H, W, 1) uint8:
    1 (pepper, the pixel becomes 0) and 2 (salt, 255) each with probability ``salt_pepper / 2``, else 0.
    """
    h, w, c = key.image_shape
    if key.params.method == "rmt" and key.params.noise:
        uniform = RandomSource(seed).uniform((count, h, w, c)).astype(np.float32)
        return torch.from_numpy(uniform).to(device) * np.float32(key.params.noise)
    if key.params.method == "aes" and key.params.salt_pepper:
        uniform = RandomSource(seed).uniform((count, h, w, 1))
        rate = key.params.salt_pepper
        codes = np.where(uniform < rate / 2, 1, np.where(uniform < rate, 2, 0)).astype(np.uint8)
        return torch.from_numpy(codes).to(device)
    return None


def _aes(blocks: torch.Tensor, key: DisguisedNetsKey, *, encrypt: bool) -> torch.Tensor:
    """Every 16-byte unit of (N, P, C, r, s) uint8 blocks through AES-128-ECB: the whole batch in one call under
    one key, one call per position under a key each."""
    assert key.aes_keys is not None
    host = np.ascontiguousarray(blocks.cpu().numpy())
    out = np.empty_like(host)
    groups = [slice(None)] if len(key.aes_keys) == 1 else [slice(i, i + 1) for i in range(len(key.aes_keys))]
    for aes_key, group in zip(key.aes_keys, groups, strict=True):
        cipher = Cipher(algorithms.AES(aes_key.tobytes()), modes.ECB())
        worker = cipher.encryptor() if encrypt else cipher.decryptor()
        part = np.ascontiguousarray(host[:, group])
        assert part.nbytes % AES_UNIT_BYTES == 0
        out[:, group] = np.frombuffer(worker.update(part.tobytes()) + worker.finalize(), np.uint8).reshape(part.shape)
    return torch.from_numpy(out).to(blocks.device)


def _aes_scaled(blocks: torch.Tensor, key: DisguisedNetsKey) -> torch.Tensor:
    """AES at scale f: every pixel an f×f cell, encrypt, each cell's mean (rounded) back.

    When a scaled block's rows are whole units (s·f a multiple of 16), the f copies of a row encrypt alike, so
    only columns are repeated: the same bytes at 1/f of the work.
    """
    f = key.params.scale
    n, p, c, r, s = blocks.shape
    if (s * f) % AES_UNIT_BYTES == 0:
        cipher = _aes(blocks.repeat_interleave(f, dim=4), key, encrypt=True).reshape(n, p, c, r, s, f)
        means = cipher.to(torch.float32).mean(dim=5)
    else:
        cells = blocks.repeat_interleave(f, dim=3).repeat_interleave(f, dim=4)
        cipher = _aes(cells, key, encrypt=True).reshape(n, p, c, r, f, s, f)
        means = cipher.to(torch.float32).mean(dim=(4, 6))
    return means.round_().to(torch.uint8)
