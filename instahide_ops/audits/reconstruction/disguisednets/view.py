"""What an attacker on DisguisedNets sees, what its attack returns, and what every such attack shares.

Every attacker holds the disguised dataset and the configuration under audit (block size, method, matrix kind,
noise bound, scale: the public parameters, as Kerckhoffs would have it), never the key's material unless it is
the bound. Beyond that an attack ``holds`` (``attack.EVIDENCE``) what its threat level gives it: known
original/disguised pairs (``PAIRS``, the papers' Level-2), public photos (``PHOTOS``, the natural side of the
ciphertext-only statistics) or the key (``KEYS``, the bound).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from instahide_ops.audits.reconstruction.attack import KEYS, PAIRS, PHOTOS
from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.disguisednets.keys import AES_UNIT_BYTES, DisguisedNetsKey, DisguisedNetsParams


@dataclass(frozen=True)
class KnownPairs:
    """m of the owner's images and their disguises under the audited key: (m, H, W, C) each, on the 0–255
    scale (originals uint8; disguises float32 for RMT, uint8 for AES)."""

    originals: torch.Tensor
    disguised: torch.Tensor

    def __len__(self) -> int:
        return len(self.originals)

    def first(self, count: int) -> KnownPairs:
        """The first ``count`` pairs (the attacker holding fewer)."""
        return KnownPairs(self.originals[:count], self.disguised[:count])


@dataclass(frozen=True)
class DisguisedView:
    """Everything one attacker on DisguisedNets sees.

    Attributes:
        disguised: (N, H, W, C) the disguised dataset (float32 for RMT, uint8 for AES), 0–255 scale.
        params: the configuration under audit (public).
        pairs: known original/disguised pairs (``PAIRS``), else None.
        photos: public (H, W, 3) uint8 photos (``PHOTOS``), else None.
        key: the key (``KEYS``), else None.
    """

    disguised: torch.Tensor
    params: DisguisedNetsParams
    pairs: KnownPairs | None = None
    photos: Sequence[np.ndarray] | None = None
    key: DisguisedNetsKey | None = None

    def holding(self, evidence: Iterable[str]) -> DisguisedView:
        """The same view with only ``evidence`` left in."""
        held = set(evidence)
        return DisguisedView(self.disguised, self.params, self.pairs if PAIRS in held else None,
                             self.photos if PHOTOS in held else None, self.key if KEYS in held else None)

    def with_pairs(self, count: int) -> DisguisedView:
        """The same view holding only the first ``count`` pairs (a point of the pairs curve)."""
        if self.pairs is None:
            raise InvalidInputError("this view holds no pairs", field="pairs")
        return DisguisedView(self.disguised, self.params, self.pairs.first(count), self.photos, self.key)

    @property
    def evidence(self) -> frozenset[str]:
        """What this view holds."""
        present = {PAIRS: self.pairs, PHOTOS: self.photos, KEYS: self.key}
        return frozenset(name for name, value in present.items() if value is not None)


@dataclass(frozen=True)
class DisguiseAttackResult:
    """What an attack on DisguisedNets returns.

    Attributes:
        recovered: (N, H, W, C) float32 in [-1, 1], one recovery per disguised image, in its order (CPU).
        permutation: (P,) the block permutation the attack settled on (the key's convention), or None for an
            attack that never looks for one (the bound).
        stage_seconds: seconds per stage, in stage order.
        hit_rate: the share of disguised codewords a codebook decrypted (the AES papers' figure), or None.
        device: where it ran.
        alternatives: other readings of the whole set, each (recovered, permutation), that the disguised data
            cannot tell from this one (one bit for the whole set: RMT's left–right mirror, AES's grey direction);
            an attacker settles it by looking at one recovery, so the audit scores the best reading.
    """

    recovered: torch.Tensor
    permutation: np.ndarray | None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    hit_rate: float | None = None
    device: str = "cpu"
    alternatives: tuple[tuple[torch.Tensor, np.ndarray | None], ...] = ()


def unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """0–255 recoveries → float32 [-1, 1] on the CPU, as the scores take them."""
    return (pixels.detach().float().clamp(0, 255) / 127.5 - 1).cpu()


class DisguisedNetsAttack:
    """Defaults every attack on DisguisedNets shares (``attack.Attack``'s protocol, family ``disguised_nets``): it
    attacks every configuration and image shape, runs by default, starts from nothing and is no bound. An attack
    overrides what differs."""

    family = "disguised_nets"
    bound = False
    default = True
    starts_from = None

    def unsupported(self, params: DisguisedNetsParams) -> str | None:
        """Why it cannot attack ``params`` (the audit leaves it out, or refuses it when named), or None."""
        return None

    def check(self, image_shape: tuple[int, int, int]) -> None:
        pass

    def check_images(self, params: DisguisedNetsParams, image_shape: tuple[int, int, int]) -> None:
        """InvalidInputError (field "attacks") for images it cannot read."""


def codewords_span_rows(params: DisguisedNetsParams) -> str | None:
    """Why an AES attack cannot read ``params``' codewords (at scale f a block row's scaled units must be whole,
    s·f a multiple of 16), or None."""
    r, s = params.block
    if params.method == "aes" and params.scale > 1 and (s * params.scale) % AES_UNIT_BYTES:
        return f"at scale {params.scale} a {r}x{s} block's codewords span rows"
    return None
