"""What a Level-2 attacker holds, checked once for every attack: the disguised set and m original/disguised pairs."""

from __future__ import annotations

import torch

from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.disguisednets.keys import DisguisedNetsParams, check_params


def check_pairs(disguised: torch.Tensor, pair_originals: torch.Tensor, pair_disguised: torch.Tensor,
                params: DisguisedNetsParams, *, method: str, other: str) -> tuple[int, int, int]:
    """(H, W, C) of the images when the attacker's holdings fit an attack on ``method``; InvalidInputError naming
    ``method`` (pointing at ``other``, the attack that reads it), ``pairs`` or the parameter otherwise."""
    if params.method != method:
        raise InvalidInputError(f"this attack reads {method.upper()}; {params.method.upper()} takes {other}",
                                field="method")
    if pair_originals.ndim != 4 or len(pair_originals) == 0:
        raise InvalidInputError(f"expected at least one pair (m, H, W, C), got {list(pair_originals.shape)}",
                                field="pairs")
    if pair_originals.shape != pair_disguised.shape or pair_originals.shape[1:] != disguised.shape[1:]:
        raise InvalidInputError(f"pairs {list(pair_originals.shape)} / {list(pair_disguised.shape)} and disguised "
                                f"images {list(disguised.shape)} disagree", field="pairs")
    return check_params(params, disguised.shape[1:])
