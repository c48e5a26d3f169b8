"""Reconstruction attacks on InstaHide, by name.

``create_attack("ciphertext_only")`` is what an audit runs: it sees only the encodings, their mixed
labels and the public parameters. ``create_attack("key_aware")`` is the bound for an attacker who
also holds each encoding's private indices and coefficients (a leaked key store, a broken PRNG).
``create_attack("pool_aware")`` continues either for an attacker who also holds the public pool the
encodings mixed in (public by design; the bundled default pool is rebuilt by anyone), and
``create_attack("photo_aware")`` continues the ciphertext-only attack for one who holds only the photos
the pool was cut from.
"""

from __future__ import annotations

from collections.abc import Callable

from instahide_ops.audits.progress import AttackCancelled, CancelToken, ProgressCallback, StageTracker
from instahide_ops.audits.reconstruction.attack import AttackResult

_ATTACKS: dict[str, Callable[..., AttackResult]] = {}


def register_attack(name: str) -> Callable[[Callable[..., AttackResult]], Callable[..., AttackResult]]:
    """Decorator: make an attack function available to ``create_attack(name)``."""

    def register(function: Callable[..., AttackResult]) -> Callable[..., AttackResult]:
        if name in _ATTACKS:
            raise ValueError(f"attack {name!r} is already registered")
        _ATTACKS[name] = function
        return function

    return register


def create_attack(name: str) -> Callable[..., AttackResult]:
    """The attack registered under ``name``; raises ValueError listing the known names."""
    try:
        return _ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; expected one of {sorted(_ATTACKS)}") from None


def attack_names() -> list[str]:
    return sorted(_ATTACKS)


# Registration happens on import of the modules below.
from instahide_ops.audits.reconstruction.instahide import ciphertext_only, key_aware, photo_aware, pool_aware  # noqa: E402, F401

__all__ = [
    "AttackCancelled",
    "AttackResult",
    "CancelToken",
    "ProgressCallback",
    "StageTracker",
    "attack_names",
    "create_attack",
    "register_attack",
]
