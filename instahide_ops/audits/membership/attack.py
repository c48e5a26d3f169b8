"""What a membership attack is: what it sees, what it returns, and the registry that names it.

An attack scores every example of the audit set (higher: more likely a member). A class with a name, registered
with ``@register_membership_attack``; audits, the service and the CLI find it by that name, so a new attack is
one module in this package plus its test. Attacks that train (TF-Privacy's logistic regression and MLP,
Segmentations-Leak's CNNs) train and score on disjoint folds, so every score is out-of-fold. Attacks that need
reference models' outputs (LiRA, RMIA) run only on data that carries them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from instahide_ops.audits.membership.data import TASKS, MembershipData
from instahide_ops.audits.progress import CancelToken
from instahide_ops.errors import InvalidInputError
from instahide_ops.registry import Registry


@dataclass(frozen=True)
class MembershipView:
    """What every membership attacker sees: the outputs, the labels and (for the attacks that train on part of
    the set, as TF-Privacy's do) the membership of the examples it does not score; ``seed`` makes folds and
    training reproducible (None: fresh randomness)."""

    data: MembershipData
    seed: int | None = None


@dataclass(frozen=True)
class MembershipResult:
    """What an attack returns.

    Attributes:
        scores: (N,) float64, higher = more likely a member; every example scored out-of-fold.
        seconds: the attack's wall time.
    """

    scores: np.ndarray
    seconds: float


class MembershipAttack(Protocol):
    """A membership-inference attack, as audits run it.

    Class attributes:
        name: the registry name ("lira_online"); title: its name for people ("LiRA (online)").
        threat: what its attacker holds and does, in a sentence.
        tasks: the tasks (of ``data.TASKS``) it attacks.
        needs_references: it needs reference models' outputs (``MembershipData.reference_outputs``).
        default: audits run it unless told otherwise (where the data allows).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    threat: ClassVar[str]
    tasks: ClassVar[frozenset[str]]
    needs_references: ClassVar[bool]
    default: ClassVar[bool]

    def run(self, view: MembershipView, *, cancel: CancelToken | None = None) -> MembershipResult:
        """Score every example of ``view.data``; raise AttackCancelled once ``cancel`` is set."""
        ...


MEMBERSHIP_ATTACKS: Registry[MembershipAttack] = Registry("membership attack", field="attacks")


def register_membership_attack(cls: type) -> type:
    """Class decorator: make the attack available by its ``name`` (its tasks must be of ``data.TASKS``)."""
    unknown = set(cls.tasks) - set(TASKS)
    if not cls.tasks or unknown:
        raise ValueError(f"membership attack {cls.name!r} attacks {sorted(cls.tasks)}, not among {list(TASKS)}")
    MEMBERSHIP_ATTACKS.register(cls.name, cls())
    return cls


def get_membership_attack(name: str) -> MembershipAttack:
    """The attack registered under ``name``; InvalidInputError listing the known names otherwise."""
    return MEMBERSHIP_ATTACKS.get(name)


def membership_attack_names(task: str | None = None) -> list[str]:
    """Every registered attack's name (of those attacking ``task``, or all), in the order audits run them."""
    return [attack.name for attack in MEMBERSHIP_ATTACKS if task is None or task in attack.tasks]


def choose_membership_attacks(data: MembershipData, attacks: Sequence[str] = (), extra: Sequence[str] = (),
                              skipped: Sequence[str] = ()) -> list[MembershipAttack]:
    """The attacks an audit of ``data`` runs, in registration order.

    Args:
        attacks: exactly these; empty means the defaults for the data's task, those needing references only
            when the data carries references.
        extra: run these beside the defaults (only with ``attacks`` empty).
        skipped: leave these defaults out (only with ``attacks`` empty).

    Raises:
        InvalidInputError (field "attacks"): an unknown name, ``extra``/``skipped`` beside ``attacks``, an attack
            named that does not attack the data's task or that needs references the data lacks, or nothing left.
    """
    if attacks and (extra or skipped):
        raise InvalidInputError("extra and skipped attacks change the defaults; with attacks named, name them all",
                                field="attacks")
    task, has_references = data.task, data.reference_outputs is not None
    for name in (*attacks, *extra, *skipped):
        attack = get_membership_attack(name)
        if task not in attack.tasks:
            raise InvalidInputError(f"{name} does not attack {task}; its attacks are {membership_attack_names(task)}",
                                    field="attacks")
    named = set(attacks) | set(extra)
    for name in named:
        if get_membership_attack(name).needs_references and not has_references:
            raise InvalidInputError(f"{name} needs reference models' outputs (reference_outputs and "
                                    "reference_member), which this audit does not have", field="attacks")
    chosen = named if attacks else named | {
        attack.name for attack in MEMBERSHIP_ATTACKS if attack.default and task in attack.tasks
        and (has_references or not attack.needs_references) and attack.name not in skipped}
    if not chosen:
        raise InvalidInputError("no attack left to run", field="attacks")
    return [attack for attack in MEMBERSHIP_ATTACKS if attack.name in chosen]
