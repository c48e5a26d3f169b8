"""What a membership audit is given: a model's outputs on a labelled audit set and which examples it trained on.

The owner uploads outputs, never the model: (N, C) logits or probabilities for classification, (N, C, h, w) for
segmentation with (N, h, w) label maps whose ``ignore_index`` pixels count nowhere (Segmentations-Leak). LiRA and
RMIA also take K reference models' outputs on the same examples with each one's in/out mask (Carlini et al. 2022,
"Membership Inference Attacks From First Principles"; Zarifzadeh et al. 2024, "Low-Cost High-Power Membership
Inference Attacks").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.defenses.defense import SUMS_TO_ONE

TASKS = ("classification", "segmentation")
OUTPUT_KINDS = ("auto", "logits", "probabilities")
MIN_EXAMPLES, MIN_PER_SIDE = 4, 2
_TINY = 1e-30  # floor of a probability before its log: a released 0 is still a finite, very low score


@dataclass(frozen=True)
class MembershipData:
    """What the owner uploads.

    Attributes:
        outputs: (N, C) logits or probabilities; or (N, C, h, w) segmentation posteriors or logits.
        labels: (N,) integer classes; or (N, h, w) label maps (``ignore_index`` pixels ignored).
        member: (N,) bool: the model trained on the example.
        reference_outputs: (K, N, C[, h, w]) K reference models' outputs on the same examples, or None.
        reference_member: (K, N) bool: reference model k trained on example n; given with ``reference_outputs``.
        ignore_index: the label of pixels that count nowhere (segmentation).
        outputs_are: "logits", "probabilities", or "auto": probabilities when every value is >= 0 and every
            row (every pixel's C values) sums to 1, logits otherwise. References are read the same way.

    ``check()`` raises InvalidInputError naming the field at fault: "outputs", "labels", "member",
    "reference_outputs", "reference_member", "ignore_index" or "outputs_are".
    """

    outputs: np.ndarray
    labels: np.ndarray
    member: np.ndarray
    reference_outputs: np.ndarray | None = None
    reference_member: np.ndarray | None = None
    ignore_index: int = 255
    outputs_are: str = "auto"

    @property
    def task(self) -> str:
        """"classification" for (N, C) outputs, "segmentation" for (N, C, h, w)."""
        return "segmentation" if np.ndim(self.outputs) == 4 else "classification"

    @property
    def examples(self) -> int:
        return len(self.outputs)

    @property
    def classes(self) -> int:
        return int(np.shape(self.outputs)[1])

    @property
    def references(self) -> int:
        """K, the number of reference models (0 without references)."""
        return 0 if self.reference_outputs is None else len(self.reference_outputs)

    @property
    def is_member(self) -> np.ndarray:
        """(N,) bool membership."""
        return np.asarray(self.member).astype(bool)

    @property
    def reference_is_member(self) -> np.ndarray | None:
        """(K, N) bool reference membership, or None."""
        return None if self.reference_member is None else np.asarray(self.reference_member).astype(bool)

    def check(self) -> None:
        """Raise InvalidInputError (``field`` names the input) for anything the attacks cannot take.

        Limits: N >= 4 with at least 2 members and 2 non-members; C >= 2; finite outputs; labels in [0, C)
        (or ``ignore_index``, with at least one other pixel an example); K >= 1 references with a (K, N) mask.
        """
        if self.outputs_are not in OUTPUT_KINDS:
            raise InvalidInputError(f"must be one of {list(OUTPUT_KINDS)}, got {self.outputs_are!r}",
                                    field="outputs_are")
        outputs = _float_array(self.outputs, "outputs")
        if outputs.ndim not in (2, 4) or outputs.shape[0] < MIN_EXAMPLES or outputs.shape[1] < 2:
            raise InvalidInputError(f"expected (N, C) or (N, C, h, w) with N >= {MIN_EXAMPLES} and C >= 2, got "
                                    f"shape {outputs.shape}", field="outputs")
        self._check_values(outputs, "outputs")
        n, c = outputs.shape[:2]
        labels = np.asarray(self.labels)
        expected = (n, *outputs.shape[2:])
        if labels.shape != expected or not np.issubdtype(labels.dtype, np.integer):
            raise InvalidInputError(f"expected integer labels of shape {expected}, got {labels.dtype} {labels.shape}",
                                    field="labels")
        if self.task == "segmentation":
            if not isinstance(self.ignore_index, int | np.integer) or 0 <= self.ignore_index < c:
                raise InvalidInputError(f"must be an integer outside the classes [0, {c}), got {self.ignore_index!r}",
                                        field="ignore_index")
            counted = labels != self.ignore_index
            if not counted.reshape(n, -1).any(axis=1).all():
                raise InvalidInputError("every example needs a pixel that is not ignore_index", field="labels")
            valid = labels[counted]
        else:
            valid = labels
        if valid.size and (valid.min() < 0 or valid.max() >= c):
            raise InvalidInputError(f"labels must be in [0, {c}), got [{valid.min()}, {valid.max()}]", field="labels")
        member = _mask(self.member, (n,), "member")
        members = int(member.sum())
        if min(members, n - members) < MIN_PER_SIDE:
            raise InvalidInputError(f"need at least {MIN_PER_SIDE} members and {MIN_PER_SIDE} non-members, got "
                                    f"{members} and {n - members}", field="member")
        self._check_references(outputs.shape)

    def _check_references(self, shape: tuple[int, ...]) -> None:
        if self.reference_outputs is None and self.reference_member is None:
            return
        if self.reference_outputs is None:
            raise InvalidInputError("reference_member needs reference_outputs", field="reference_outputs")
        if self.reference_member is None:
            raise InvalidInputError("reference_outputs need reference_member", field="reference_member")
        references = _float_array(self.reference_outputs, "reference_outputs")
        if references.ndim != len(shape) + 1 or references.shape[1:] != shape or len(references) < 1:
            raise InvalidInputError(f"expected (K, {', '.join(map(str, shape))}) with K >= 1, got "
                                    f"{references.shape}", field="reference_outputs")
        self._check_values(references, "reference_outputs")
        _mask(self.reference_member, (len(references), shape[0]), "reference_member")

    def _check_values(self, outputs: np.ndarray, field: str) -> None:
        if not np.isfinite(outputs).all():
            raise InvalidInputError("must be finite", field=field)
        if self.outputs_are == "probabilities" and outputs.min() < 0:
            raise InvalidInputError(f"probabilities must be >= 0, got {outputs.min()}", field=field)

    def log_probabilities(self) -> np.ndarray:
        """Log-probabilities along dim 1, shaped as ``outputs``: log-softmax of logits (exact, stable), the log of
        probabilities floored at 1e-30. float64 for classification, float32 for segmentation."""
        return self._log_probabilities(self.outputs)

    def probabilities(self) -> np.ndarray:
        """Probabilities along dim 1: the softmax of logits, probabilities as given."""
        return self._probabilities(self.outputs)

    def reference_log_probabilities(self) -> np.ndarray | None:
        """(K, N, C[, h, w]) the references' ``log_probabilities``, or None."""
        if self.reference_outputs is None:
            return None
        return np.stack([self._log_probabilities(outputs) for outputs in self.reference_outputs])

    def reference_probabilities(self) -> np.ndarray | None:
        """(K, N, C[, h, w]) the references' ``probabilities``, or None."""
        if self.reference_outputs is None:
            return None
        return np.stack([self._probabilities(outputs) for outputs in self.reference_outputs])

    def _log_probabilities(self, outputs: np.ndarray) -> np.ndarray:
        outputs = np.asarray(outputs, dtype=self._dtype)
        if self._are_probabilities(outputs):
            return np.log(np.maximum(outputs, _TINY))
        shifted = outputs - outputs.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    def _probabilities(self, outputs: np.ndarray) -> np.ndarray:
        outputs = np.asarray(outputs, dtype=self._dtype)
        return outputs if self._are_probabilities(outputs) else np.exp(self._log_probabilities(outputs))

    def _are_probabilities(self, outputs: np.ndarray) -> bool:
        if self.outputs_are != "auto":
            return self.outputs_are == "probabilities"
        return bool(outputs.min() >= 0 and np.abs(outputs.sum(axis=1) - 1).max() <= SUMS_TO_ONE)

    @property
    def _dtype(self) -> type:
        return np.float32 if self.task == "segmentation" else np.float64


def _float_array(values: object, field: str) -> np.ndarray:
    array = np.asarray(values)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InvalidInputError(f"expected numbers, got {array.dtype}", field=field)
    return array


def _mask(values: object, shape: tuple[int, ...], field: str) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != shape:
        raise InvalidInputError(f"expected shape {shape}, got {array.shape}", field=field)
    if array.dtype != bool and not (np.issubdtype(array.dtype, np.integer) and np.isin(array, (0, 1)).all()):
        raise InvalidInputError(f"expected booleans (or 0/1), got {array.dtype}", field=field)
    return array.astype(bool)
