"""The output defenses as data (``Defense``, parsed from "kind:value") and as functional torch ops."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from instahide_ops.errors import InvalidInputError

KINDS = ("argmax", "gauss", "topk", "round", "temperature")
MAX_DECIMALS = 8
GAUSS_FLOOR = 1e-6
"""Segmentations-Leak clamps the noisy posteriors here before renormalising, so none is zero or negative."""


@dataclass(frozen=True)
class Defense:
    """One output defense; refuses a bad kind or value with InvalidInputError(field="defense").

    Attributes:
        kind: one of ``KINDS``.
        value: gauss σ >= 0, topk's k >= 1 (at most the class count, checked when applied), round's decimals in
            [0, 8], temperature's T > 0; unused by argmax.
    """

    kind: str
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInputError(f"unknown defense {self.kind!r}; expected one of {list(KINDS)}", field="defense")
        value = self.value
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise InvalidInputError(f"{self.kind} needs a finite number, got {value!r}", field="defense")
        if self.kind == "gauss" and value < 0:
            raise InvalidInputError(f"gauss sigma must be >= 0, got {value:g}", field="defense")
        if self.kind == "topk" and (value != int(value) or value < 1):
            raise InvalidInputError(f"topk k must be an integer >= 1, got {value:g}", field="defense")
        if self.kind == "round" and (value != int(value) or not 0 <= value <= MAX_DECIMALS):
            raise InvalidInputError(f"round decimals must be an integer in [0, {MAX_DECIMALS}], got {value:g}",
                                    field="defense")
        if self.kind == "temperature" and value <= 0:
            raise InvalidInputError(f"temperature T must be > 0, got {value:g}", field="defense")

    def __str__(self) -> str:
        return self.kind if self.kind == "argmax" else f"{self.kind}:{self.value:g}"

    def check_classes(self, classes: int) -> None:
        """InvalidInputError (field "defense") when it cannot apply to outputs over ``classes`` classes."""
        if self.kind == "topk" and int(self.value) > classes:
            raise InvalidInputError(f"topk k = {int(self.value)} exceeds the {classes} classes", field="defense")


def parse_defense(text: str) -> Defense:
    """``Defense`` from its text form ("argmax", "gauss:0.1", "topk:3", "round:2", "temperature:2")."""
    kind, _, value = str(text).strip().partition(":")
    if kind == "argmax":
        if value:
            raise InvalidInputError(f"argmax takes no value, got {text!r}", field="defense")
        return Defense("argmax")
    if kind in KINDS and not value:
        raise InvalidInputError(f"{kind} needs a value ({kind}:VALUE), got {text!r}", field="defense")
    try:
        number = float(value) if value else 0.0
    except ValueError:
        raise InvalidInputError(f"expected a number after {kind}:, got {text!r}", field="defense") from None
    return Defense(kind, number)


SUMS_TO_ONE = 1e-3
"""How far an "auto" output row may sum from 1 and still read as probabilities."""


def as_probabilities(outputs: torch.Tensor, outputs_are: str = "auto") -> torch.Tensor:
    """Probabilities along dim 1 from ``outputs``: "logits" (softmax), "probabilities" (as given), or "auto"
    (probabilities when every value is >= 0 and every row sums to 1 within ``SUMS_TO_ONE``, logits otherwise).

    Raises:
        InvalidInputError: an unknown ``outputs_are`` (field "outputs_kind").
    """
    if outputs_are not in ("auto", "logits", "probabilities"):
        raise InvalidInputError(f"unknown outputs kind {outputs_are!r}", field="outputs_kind")
    if outputs_are == "auto":
        given = bool(outputs.min() >= 0) and bool((outputs.sum(1) - 1).abs().max() <= SUMS_TO_ONE)
        outputs_are = "probabilities" if given else "logits"
    return outputs if outputs_are == "probabilities" else torch.softmax(outputs, dim=1)


def apply_defense(probabilities: torch.Tensor, defense: Defense, *,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """What the owner releases under ``defense``: same shape, dtype and device as ``probabilities``.

    Args:
        probabilities: (N, C) or (N, C, h, w) floating point, each row (pixel) summing to 1 along dim 1.
        generator: the noise source of gauss (on any device; its draws move to the probabilities'), so a seeded
            generator gives the same release on CPU and CUDA; torch's default generator without one.

    Raises:
        InvalidInputError: field "defense" for topk's k above the class count, "outputs" for a tensor of
            another rank or an integer type.
    """
    if probabilities.ndim not in (2, 4) or not probabilities.is_floating_point():
        raise InvalidInputError(f"expected floating (N, C) or (N, C, h, w) probabilities, got "
                                f"{probabilities.dtype} of shape {list(probabilities.shape)}", field="outputs")
    defense.check_classes(probabilities.shape[1])
    if defense.kind == "argmax":
        return torch.zeros_like(probabilities).scatter_(1, probabilities.argmax(1, keepdim=True), 1.0)
    if defense.kind == "gauss":
        device = generator.device if generator is not None else probabilities.device
        noise = torch.randn(probabilities.shape, generator=generator, dtype=probabilities.dtype, device=device)
        noisy = (probabilities + defense.value * noise.to(probabilities.device)).clamp_min(GAUSS_FLOOR)
        return noisy / noisy.sum(1, keepdim=True)
    if defense.kind == "topk":
        k = int(defense.value)
        top, where = probabilities.topk(k, dim=1)
        kept = torch.zeros_like(probabilities).scatter_(1, where, top)
        return kept / kept.sum(1, keepdim=True)
    if defense.kind == "round":
        return probabilities.round(decimals=int(defense.value))
    return torch.softmax(probabilities.log() / defense.value, dim=1)
