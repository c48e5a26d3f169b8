"""Output defenses by name, as the CLI and the Python client take them: ``"gauss:0.1"``, ``"argmax"``,
``"topk:3"``, ``"round:2"``, ``"temperature:2"``; and their ``OutputDefense`` messages.

The service checks every value again (ranges, k against the classes); this module only reads the text.
"""

from __future__ import annotations

import math
from typing import Any

from instahide_client.instahide.v1 import defenses_pb2

OUTPUT_KINDS = {"auto": defenses_pb2.OUTPUT_KIND_UNSPECIFIED, "logits": defenses_pb2.OUTPUT_KIND_LOGITS,
                "probabilities": defenses_pb2.OUTPUT_KIND_PROBABILITIES}
# name in text -> (message member, its parameter, the parameter's type)
_KINDS = {"gauss": ("gaussian", "sigma", float), "topk": ("top_k", "k", int), "round": ("rounding", "decimals", int),
          "temperature": ("temperature", "temperature", float)}
_NAMES = {member: name for name, (member, _, _) in _KINDS.items()}


def defense_message(defense: Any) -> defenses_pb2.OutputDefense:
    """The ``OutputDefense`` of ``"kind[:value]"`` text (or the message itself).

    Raises:
        ValueError: an unknown kind, a missing or malformed value.

    Examples:
        >>> defense_message("gauss:0.1").gaussian.sigma
        0.1
        >>> defense_message("argmax").WhichOneof("defense")
        'argmax'
    """
    if isinstance(defense, defenses_pb2.OutputDefense):
        return defense
    if not isinstance(defense, str):
        raise TypeError(f"a defense is text such as 'gauss:0.1' or an OutputDefense, got {type(defense).__name__}")
    kind, _, value = defense.strip().partition(":")
    if kind == "argmax":
        if value:
            raise ValueError(f"argmax takes no value, got {defense!r}")
        return defenses_pb2.OutputDefense(argmax=defenses_pb2.ArgmaxDefense())
    if kind not in _KINDS:
        raise ValueError(f"unknown defense {kind!r}; expected argmax, {', '.join(f'{k}:VALUE' for k in _KINDS)}")
    member, parameter, kind_type = _KINDS[kind]
    try:
        number = kind_type(value)
    except ValueError:
        example = "0.1" if kind_type is float else "2"
        raise ValueError(f"{kind} needs a {kind_type.__name__} value, e.g. {kind}:{example}; got {defense!r}") from None
    if kind_type is float and not math.isfinite(number):
        raise ValueError(f"{kind} needs a finite value, got {defense!r}")
    message = defenses_pb2.OutputDefense()
    setattr(getattr(message, member), parameter, number)
    return message


def defense_name(message: defenses_pb2.OutputDefense) -> str:
    """The text of an ``OutputDefense`` ("gauss:0.1", "argmax", ...)."""
    member = message.WhichOneof("defense")
    if member is None or member == "argmax":
        return member or ""
    parameter = _KINDS[_NAMES[member]][1]
    return f"{_NAMES[member]}:{getattr(getattr(message, member), parameter):g}"


def outputs_kind(name: str) -> int:
    """``OutputKind`` of "auto", "logits" or "probabilities"; ValueError otherwise."""
    if name not in OUTPUT_KINDS:
        raise ValueError(f"unknown outputs kind {name!r}; expected one of {', '.join(map(repr, OUTPUT_KINDS))}")
    return OUTPUT_KINDS[name]
