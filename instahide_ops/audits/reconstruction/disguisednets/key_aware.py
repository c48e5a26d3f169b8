"""The key-aware bound on DisguisedNets: what an attacker holding the key (a leaked key store) recovers.

It is the ceiling the attacks without keys are measured against, not an attack on the data:

- **RMT**: ``undisguise`` with the key, less the noise's mean N/2 (the noise itself stays: nothing removes it).
- **AES, scale 1**: ``undisguise``, exact but for salt-and-pepper, which a 3×3 median takes out where a pixel is
  0 or 255 (as at every scale).
- **AES, scale f with codewords of one or two pixels** (16/f ≤ 2): the cells' means cannot be decrypted, but with
  the key every plaintext codeword can be encrypted: the full codebook (256 or 65,536 codewords per key). Several
  plaintexts give each output (about five at scale 8); the bound picks the one nearest an estimate of the image
  (the known-pair attack's recovery when it holds pairs as the attacks do, else the likeliest plaintexts blurred),
  with how often natural images hold each (the public photos' and the pairs' codewords) breaking near-ties.
  Longer codewords (scales 2 and 4) have 2³² or more plaintexts: no bound is offered there.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from instahide_ops.audits.progress import CancelToken, ProgressCallback, StageTracker
from instahide_ops.audits.reconstruction.attack import KEYS, AttackSettings, register_attack
from instahide_ops.audits.reconstruction.disguisednets.codebook import codebook_attack, codeword_length, codewords
from instahide_ops.audits.reconstruction.disguisednets.view import (
    DisguiseAttackResult,
    DisguisedNetsAttack,
    DisguisedView,
    codewords_span_rows,
    unit_range,
)
from instahide_ops.errors import InvalidInputError
from instahide_ops.images import resize_image
from instahide_ops.transforms.disguisednets import DisguisedNetsKey, DisguisedNetsParams, disguise, undisguise
from instahide_ops.transforms.disguisednets.blocks import from_blocks, to_blocks

MAX_CODEWORD_PIXELS = 2  # 256² plaintexts per key: the largest codebook the bound enumerates
MAX_CANDIDATES = 32  # the likeliest plaintexts of one output the bound weighs
BLUR_ROUNDS = 3
PRIOR_CROPS = 512  # crops of the public photos whose codewords weigh the candidates


def unsupported(params: DisguisedNetsParams) -> str | None:
    """Why the bound cannot run on ``params``, or None when it can."""
    if params.method == "aes" and params.scale > 1 and codeword_length(params) > MAX_CODEWORD_PIXELS:
        return (f"at scale {params.scale} a codeword is {codeword_length(params)} pixels, "
                f"256^{codeword_length(params)} plaintexts: too many to enumerate")
    return codewords_span_rows(params)


def _full_codebook(key: DisguisedNetsKey) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every plaintext codeword encrypted at every position: (scope ids, output ids, plaintexts (·, L) uint8).

    The scope is the target position with a key per position, else 0 (one key, one codebook).
    """
    params = key.params
    h, w, c = key.image_shape
    r, s = params.block
    length = codeword_length(params)
    values = np.stack(np.meshgrid(*[np.arange(256, dtype=np.uint8)] * length, indexing="ij"), -1).reshape(-1, length)
    per_block = c * r * (s // length)
    positions = (h // r) * (w // s)
    if len(key.aes_keys) > 1:  # every value in every position (each has its own key)
        images = -(-len(values) // per_block)
        slots = np.resize(values, (images * per_block, length))
        blocks = np.broadcast_to(slots.reshape(images, 1, per_block * length),
                                 (images, positions, per_block * length))
    else:  # one key: every value once, anywhere
        images = -(-len(values) // (per_block * positions))
        blocks = np.resize(values, (images, positions, per_block * length))
    plain_images = from_blocks(torch.from_numpy(np.ascontiguousarray(blocks)).reshape(images, positions, c, r, s),
                               h, w)
    keep = torch.zeros(images, h, w, 1, dtype=torch.uint8) if params.salt_pepper else None
    cipher = codewords(disguise(plain_images, key, noise=keep).numpy(), params)  # (n, P, K, L), target positions
    plain = codewords(plain_images.numpy(), params)  # source positions
    plain = plain[:, np.argsort(key.permutation)]  # the plaintext behind each target position
    n, p, k, _ = cipher.shape
    scopes = np.broadcast_to(np.arange(p)[None, :, None] if len(key.aes_keys) > 1 else np.zeros((1, 1, 1), int),
                             (n, p, k)).ravel()
    return scopes, _integers(cipher).ravel(), plain.reshape(-1, length)


def _integers(codes: np.ndarray) -> np.ndarray:
    """Codewords of L ≤ 2 bytes as integers (same leading shape)."""
    out = np.zeros(codes.shape[:-1], dtype=np.int64)
    for index in range(codes.shape[-1]):
        out = out * 256 + codes[..., index]
    return out


def _prior(params: DisguisedNetsParams, view: DisguisedView, image_shape: tuple[int, int, int]) -> np.ndarray:
    """(256^L,) weights of each plaintext codeword: 1 + how often the public photos' crops and the known pairs'
    originals hold it."""
    length = codeword_length(params)
    counts = np.ones(256 ** length)
    samples = []
    h, w, c = image_shape
    if view.photos:
        rng = np.random.default_rng(0)
        for index in range(PRIOR_CROPS):
            photo = view.photos[index % len(view.photos)]
            side = int(rng.integers(48, min(160, *photo.shape[:2]) + 1))
            y, x = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
            samples.append(resize_image(photo[y:y + side, x:x + side], h, w)[..., :c])
    if view.pairs is not None:
        samples.extend(view.pairs.originals.to(torch.uint8).numpy())
    if samples:
        counts += np.bincount(_integers(codewords(np.stack(samples), params)).ravel(), minlength=len(counts))
    return counts


def _decode_scaled(view: DisguisedView, key: DisguisedNetsKey) -> torch.Tensor:
    """AES at scale f: each disguised codeword → the plaintext, of those the key encrypts to it, nearest an estimate
    of the image (the known-pair codebook's recovery when the bound holds pairs, else a blur of the likeliest
    plaintexts), natural images' frequencies breaking near-ties."""
    params = view.params
    length = codeword_length(params)
    scopes, outputs, plaintexts = _full_codebook(key)
    prior = _prior(params, view, key.image_shape)[_integers(plaintexts)]
    slots = 256 ** length
    group = scopes * slots + outputs
    # Each output's candidates, likeliest first: sort by (group, -prior), rank within the group, keep the first few.
    order = np.lexsort((-prior, group))
    group, candidates, weights = group[order], plaintexts[order].astype(np.float32), prior[order]
    first = np.r_[True, group[1:] != group[:-1]]
    rank = np.arange(len(group)) - np.maximum.accumulate(np.where(first, np.arange(len(group)), 0))
    kept = rank < MAX_CANDIDATES
    table = np.full((int(scopes.max() + 1) * slots, MAX_CANDIDATES, length), np.inf, dtype=np.float32)
    table[group[kept], rank[kept]] = candidates[kept]
    penalty = np.full(table.shape[:2], np.inf, dtype=np.float32)
    penalty[group[kept], rank[kept]] = -np.log(weights[kept] / weights[kept].max()).astype(np.float32)

    targets = codewords(view.disguised.to(torch.uint8).numpy(), params)  # (N, P, K, L) at target positions
    n, p = targets.shape[:2]
    scope = np.arange(p)[None, :, None] if len(key.aes_keys) > 1 else np.zeros((1, 1, 1), int)
    lookup = scope * slots + _integers(targets)  # (N, P, K)
    options, costs = table[lookup], penalty[lookup]  # (N, P, K, MAX_CANDIDATES, L), (N, P, K, MAX_CANDIDATES)
    h, w, c = key.image_shape
    r, s = params.block
    back = np.argsort(key.permutation)  # the target position of each source position

    def image_of(chosen: np.ndarray) -> np.ndarray:  # (N, P, K, L) target order → (N, H, W, C) float32
        return from_blocks(torch.from_numpy(chosen[:, key.permutation].reshape(n, p, c, r, s)), h, w).numpy()

    def pick(estimate: np.ndarray) -> np.ndarray:  # the candidate nearest the estimate's codeword
        blocks = to_blocks(torch.from_numpy(np.ascontiguousarray(estimate, dtype=np.float32)), params.block)
        wanted = blocks.numpy().reshape(n, p, -1, length)[:, back]  # target order
        distance = np.nan_to_num(np.square(options - wanted[..., None, :]).sum(-1), posinf=np.inf)
        best = np.argmin(distance / 255.0 ** 2 * 50 + costs, axis=-1)
        return np.take_along_axis(options, best[..., None, None], axis=3)[..., 0, :]

    if view.pairs is not None:
        estimate = codebook_attack(view.disguised.cpu(), view.pairs.originals.cpu(), view.pairs.disguised.cpu(),
                                   params).recovered.numpy()
        return torch.from_numpy(image_of(pick(estimate)))
    decoded = image_of(options[..., 0, :])  # the likeliest plaintexts
    for _ in range(BLUR_ROUNDS):
        decoded = image_of(pick(np.stack([cv2.GaussianBlur(image, (5, 5), 1.0) for image in decoded])))
    return torch.from_numpy(decoded)


def _despeckle(images: torch.Tensor) -> torch.Tensor:
    """Salt-and-pepper taken out as the key holder would: each pixel at 0 or 255 replaced by its 3×3 median."""
    pixels = images.round().clamp(0, 255).to(torch.uint8).numpy()
    medians = np.stack([cv2.medianBlur(np.ascontiguousarray(image), 3) for image in pixels])
    speckled = (pixels == 0) | (pixels == 255)
    return torch.from_numpy(np.where(speckled, medians, pixels).astype(np.float32))


@register_attack
class KeyAware(DisguisedNetsAttack):
    """The bound: the attacker who holds the key."""

    name = "disguise_key_aware"
    title = "key-aware bound"
    threat = ("holds the key (a leaked key store) and whatever the audit's other attackers hold: an upper bound, "
              "not an attack")
    holds = frozenset({KEYS})
    bound = True

    def unsupported(self, params: DisguisedNetsParams) -> str | None:
        return unsupported(params)

    def stages(self, view: DisguisedView, settings: AttackSettings) -> dict[str, float]:
        return {"undisguise": 0.02}

    def run(self, view: DisguisedView, *, start: DisguiseAttackResult | None, settings: AttackSettings,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> DisguiseAttackResult:
        key = view.key
        if key is None:
            raise InvalidInputError("the key-aware bound needs the key", field="keys")
        reason = unsupported(view.params)
        if reason:
            raise InvalidInputError(f"no key-aware bound: {reason}", field="attacks")
        tracker = StageTracker(progress, cancel)
        with tracker.stage("undisguise"):
            if view.params.method == "rmt":
                recovered = undisguise(view.disguised, key) - view.params.noise / 2
            elif view.params.scale == 1:
                recovered = undisguise(view.disguised, key).float()
            else:
                recovered = _decode_scaled(view, key)
            if view.params.method == "aes" and view.params.salt_pepper:
                recovered = _despeckle(recovered)
        return DisguiseAttackResult(unit_range(recovered), key.permutation.copy(), dict(tracker.seconds),
                                    device=str(view.disguised.device))
