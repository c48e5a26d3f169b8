"""Membership-inference audits: how well an attacker tells a model's training examples from others by its outputs.

- ``data``: what the owner uploads (``MembershipData``: outputs, labels, membership, optional reference models).
- ``attack``: what an attack is (``MembershipAttack``), sees (``MembershipView``) and returns
  (``MembershipResult``), and the registry (``register_membership_attack``, ``choose_membership_attacks``).
- every other module defines attacks and registers them on import, so a new attack is a new module here (and its
  test).
"""

from instahide_ops.audits.membership.attack import (
    MEMBERSHIP_ATTACKS,
    MembershipAttack,
    MembershipResult,
    MembershipView,
    choose_membership_attacks,
    get_membership_attack,
    membership_attack_names,
    register_membership_attack,
)
from instahide_ops.audits.membership.data import TASKS, MembershipData

__all__ = [
    "MEMBERSHIP_ATTACKS",
    "TASKS",
    "MembershipAttack",
    "MembershipData",
    "MembershipResult",
    "MembershipView",
    "choose_membership_attacks",
    "get_membership_attack",
    "membership_attack_names",
    "register_membership_attack",
]
