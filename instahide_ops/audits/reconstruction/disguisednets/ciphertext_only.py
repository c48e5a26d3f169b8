"""Level-1 on DisguisedNets as a registered attack: the attacker holds the disguised dataset, the public
parameters and public natural photos, nothing else. RMT: ``covariance`` (natural row statistics, the dataset-wide
jigsaw); AES-ECB: ``ecb_penguin`` (the neighbour graph of codewords, seriated, given grey levels, the jigsaw).

RMT is recovered up to one left–right mirror of the whole dataset when blocks were moved: natural images look alike
mirrored and nothing in the ciphertext tells the two apart. The result says so (``mirror_ambiguous``) and the
audit scores the better orientation: one bit for the whole set, which an attacker settles by looking at a single
recovery.
"""

from __future__ import annotations

from instahide_ops.audits.progress import CancelToken, ProgressCallback, StageTracker
from instahide_ops.audits.reconstruction.attack import PHOTOS, AttackSettings, register_attack
from instahide_ops.audits.reconstruction.disguisednets.covariance import ciphertext_only_rmt
from instahide_ops.audits.reconstruction.disguisednets.ecb_penguin import ciphertext_only_aes
from instahide_ops.audits.reconstruction.disguisednets.view import DisguiseAttackResult, DisguisedView, unit_range
from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.disguisednets.keys import AES_UNIT_BYTES, DisguisedNetsParams


@register_attack
class CiphertextOnly:
    """Level-1: the disguised dataset and public photos."""

    name = "disguise_ciphertext_only"
    title = "ciphertext-only (Level-1)"
    threat = ("holds the disguised dataset, the configuration (block size, method) and public natural photos "
              "(the papers' Level-1), never the key nor any original")
    family = "disguised_nets"
    holds = frozenset({PHOTOS})
    bound = False
    default = True
    starts_from = None

    def unsupported(self, params: DisguisedNetsParams) -> str | None:
        r, s = params.block
        if params.method == "aes" and params.scale > 1 and (s * params.scale) % AES_UNIT_BYTES:
            return f"at scale {params.scale} a {r}x{s} block's codewords span rows"
        if params.method == "rmt" and params.matrix != "orthogonal" and r < 2:
            return "a non-orthogonal matrix is read from a block's adjacent rows: blocks need two rows"
        return None

    def stages(self, view: DisguisedView, settings: AttackSettings) -> dict[str, float]:
        return {"ciphertext_only": 0.015}

    def check(self, image_shape: tuple[int, int, int]) -> None:
        pass

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
        with tracker.stage("ciphertext_only"):
            attack = ciphertext_only_rmt if view.params.method == "rmt" else ciphertext_only_aes
            found = attack(view.disguised.cpu(), view.params, view.photos)
        return DisguiseAttackResult(unit_range(found.recovered), found.permutation, dict(tracker.seconds),
                                    mirror_ambiguous=view.params.method == "rmt" and view.params.permute)
