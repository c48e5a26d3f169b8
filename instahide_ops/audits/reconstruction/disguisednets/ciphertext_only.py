"""Level-1 on DisguisedNets as a registered attack: the attacker holds the disguised dataset, the public
parameters and public natural photos, nothing else. RMT: ``covariance`` (natural row statistics, the dataset-wide
jigsaw); AES-ECB: ``ecb_penguin`` (the neighbour graph of codewords, seriated, given grey levels, the jigsaw).

RMT is recovered up to one left–right mirror of the whole dataset when blocks were moved (natural images look alike
mirrored and nothing in the ciphertext tells the two apart), and grey AES images up to the direction of their grey
levels (which colour decides otherwise). The result carries the other reading (``alternatives``) and the audit
scores the better: one bit for the whole set, which an attacker settles by looking at a single recovery.
"""

from __future__ import annotations

import numpy as np
import torch

from instahide_ops.audits.progress import CancelToken, ProgressCallback, StageTracker
from instahide_ops.audits.reconstruction.attack import PHOTOS, AttackSettings, register_attack
from instahide_ops.audits.reconstruction.disguisednets.covariance import ciphertext_only_rmt
from instahide_ops.audits.reconstruction.disguisednets.ecb_penguin import ciphertext_only_aes
from instahide_ops.audits.reconstruction.disguisednets.view import (
    DisguiseAttackResult,
    DisguisedNetsAttack,
    DisguisedView,
    codewords_span_rows,
    unit_range,
)
from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.disguisednets.keys import DisguisedNetsParams


@register_attack
class CiphertextOnly(DisguisedNetsAttack):
    """Level-1: the disguised dataset and public photos."""

    name = "disguise_ciphertext_only"
    title = "ciphertext-only (Level-1)"
    threat = ("holds the disguised dataset, the configuration (block size, method) and public natural photos "
              "(the papers' Level-1), never the key nor any original")
    holds = frozenset({PHOTOS})

    def unsupported(self, params: DisguisedNetsParams) -> str | None:
        if params.method == "rmt" and params.matrix != "orthogonal" and params.block[0] < 2:
            return "a non-orthogonal matrix is read from a block's adjacent rows: blocks need two rows"
        return codewords_span_rows(params)

    def stages(self, view: DisguisedView, settings: AttackSettings) -> dict[str, float]:
        return {"ciphertext_only": 0.015}

    def check_images(self, params: DisguisedNetsParams, image_shape: tuple[int, int, int]) -> None:
        """InvalidInputError (field "attacks") for images this attack cannot read."""
        if params.method == "aes" and image_shape[2] != 3:
            raise InvalidInputError(f"{self.name} reads AES's grey levels from colour (red against blue); images "
                                    f"of {image_shape[2]} channels need it skipped", field="attacks")

    def run(self, view: DisguisedView, *, start: DisguiseAttackResult | None, settings: AttackSettings,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> DisguiseAttackResult:
        if not view.photos:
            raise InvalidInputError("the ciphertext-only attack needs public photos", field="photos")
        tracker = StageTracker(progress, cancel)
        params = view.params
        disguised = view.disguised.cpu()
        with tracker.stage("ciphertext_only") as report:
            if params.method == "rmt":
                found = ciphertext_only_rmt(disguised, params, view.photos)
                alternatives = [_mirrored(found.recovered, found.permutation, params)] if params.permute else []
            else:
                found = ciphertext_only_aes(disguised, params, view.photos)
                alternatives = []
                if found.direction_undecided:  # grey: the other direction is as likely
                    report(0.5)
                    other = ciphertext_only_aes(disguised, params, view.photos, grey_direction=-1.0)
                    alternatives = [(unit_range(other.recovered), other.permutation)]
        return DisguiseAttackResult(unit_range(found.recovered), found.permutation, dict(tracker.seconds),
                                    alternatives=tuple(alternatives))


def _mirrored(recovered: torch.Tensor, permutation: np.ndarray, params: DisguisedNetsParams):
    """The mirror reading of an RMT recovery: every image flipped left–right, and the permutation read from the
    mirrored positions (the attack's position i is the mirror of the true one)."""
    columns = recovered.shape[2] // params.block[1]
    cells = np.arange(len(permutation))
    mirror = cells // columns * columns + columns - 1 - cells % columns
    moved = np.empty_like(permutation)
    moved[mirror] = permutation
    return unit_range(recovered.flip(2)), moved
