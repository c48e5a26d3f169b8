"""Disguising and undisguising a batch under a DisguisedNets key: functions over tensors.

Pixels are on the 0–255 scale throughout: uint8 images as they are, float images in [-1, 1] mapped there.
RMT gives float32 ((X + Δ)·R_i for each block X at position i and each channel, then the blocks moved); AES gives
uint8 (each 16-byte unit of a block's row-major pixels of one channel through AES-128-ECB, then the blocks moved).
A call's noise is RMT's Δ, or AES's salt-and-pepper codes (0 keep, 1 pepper, 2 salt per pixel); ``draw_noise``
draws either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from instahide_ops.errors import InvalidInputError
from instahide_ops.randomness import RandomSource
from instahide_ops.transforms.disguisednets.blocks import block_order, block_placement, gather
from instahide_ops.transforms.disguisednets.keys import AES_UNIT_BYTES, DisguisedNetsKey


def disguise(images: torch.Tensor, key: DisguisedNetsKey, *, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Disguise (N, H, W, C) images under ``key``: float32 for RMT, uint8 for AES, on the images' device.

    A key with noise adds ``noise`` ((N, H, W, C) on the 0–255 scale, as ``draw_noise`` makes it), or noise drawn
    fresh from the CSPRNG when none is given.
    """
    pixels = _pixels(images, key)
    if noise is None:
        noise = draw_noise(key, len(pixels), device=pixels.device)
    if key.params.method == "rmt":
        if noise is not None:
            pixels = pixels + noise
        blocks = _project(_blocks(pixels, key), key.matrices_tensor(pixels.device))
    else:
        pixels = pixels.to(torch.uint8)
        if noise is not None:
            pixels = torch.where(noise == 0, pixels, torch.where(noise == 1, 0, 255).to(torch.uint8))
        blocks = _blocks(pixels, key)
        blocks = _aes(blocks, key, encrypt=True) if key.params.scale == 1 else _aes_scaled(blocks, key)
    placement = block_placement(key.image_shape, key.params.block, key.permutation)
    return gather(blocks.reshape(len(blocks), -1), placement).reshape(-1, *key.image_shape)


def undisguise(disguised: torch.Tensor, key: DisguisedNetsKey) -> torch.Tensor:
    """The images back on the 0–255 scale (float32 for RMT, where noise stays in; uint8 for AES, exactly, with
    salt-and-pepper left in). AES with a scale past 1 averages ciphertext and cannot be undone."""
    if key.params.method == "aes" and key.params.scale != 1:
        raise InvalidInputError(f"AES at scale {key.params.scale} keeps one mean byte of each scaled cell's "
                                "ciphertext, so it cannot be undisguised", field="scale")
    if tuple(disguised.shape[1:]) != key.image_shape:
        raise InvalidInputError(f"the key disguises images of {list(key.image_shape)}, got "
                                f"{list(disguised.shape[1:])}", field="images.shape")
    shape, block = key.image_shape, key.params.block
    placement = block_placement(shape, block, key.permutation)
    flat = disguised.reshape(len(disguised), -1)
    blocks = gather(flat, np.argsort(placement)).reshape(len(disguised), -1, shape[2], *block)
    if key.params.method == "rmt":
        inverse = torch.linalg.inv(key.matrices_tensor(blocks.device, torch.float64)).to(torch.float32)
        blocks = _project(blocks.to(torch.float32), inverse)
    else:
        blocks = _aes(blocks.to(torch.uint8).contiguous(), key, encrypt=False)
    return gather(blocks.reshape(len(blocks), -1), np.argsort(block_order(shape, block))).reshape(-1, *shape)


def _blocks(pixels: torch.Tensor, key: DisguisedNetsKey) -> torch.Tensor:
    """(N, H, W, C) → (N, P, C, r, s), one gather."""
    shape, block = key.image_shape, key.params.block
    flat = gather(pixels.reshape(len(pixels), -1), block_order(shape, block))
    return flat.reshape(len(pixels), -1, shape[2], *block)


def _project(blocks: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Each block times its position's matrix: (N, P, C, r, s) @ (P, 1 or C, s, s).

    As one batched product over positions (and channels, with a matrix each): the blocks of every image at a
    position are rows of one tall matrix, so the product runs as P (or P·C) large GEMMs, not N·P·C tiny ones.
    """
    n, p, c, r, s = blocks.shape
    per_channel = matrices.shape[1] != 1
    tall = blocks.permute(1, 2, 0, 3, 4)  # (P, C, N, r, s)
    if per_channel:
        product = torch.bmm(tall.reshape(p * c, n * r, s), matrices.reshape(p * c, s, s))
    else:
        product = torch.bmm(tall.reshape(p, c * n * r, s), matrices[:, 0])
    return product.reshape(p, c, n, r, s).permute(2, 0, 1, 3, 4)


def _pixels(images: torch.Tensor, key: DisguisedNetsKey) -> torch.Tensor:
    if images.ndim != 4 or tuple(images.shape[1:]) != key.image_shape:
        raise InvalidInputError(f"the key disguises images of {list(key.image_shape)}, got "
                                f"{list(images.shape)}", field="images.shape")
    if images.dtype == torch.uint8:
        return images if key.params.method == "aes" else images.to(torch.float32)
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
