"""Membership-inference audits: how well an attacker tells a model's training examples from others by its outputs.

- ``data``: what the owner uploads (``MembershipData``: outputs, labels, membership, optional reference models).
- ``attack``: what an attack is (``MembershipAttack``), sees (``MembershipView``) and returns
  (``MembershipResult``), and the registry (``register_membership_attack``, ``choose_membership_attacks``).
- ``metrics``: ROC, AUC, advantage and TPR at low FPR (``membership_metrics``).
- ``statistics``: the per-example statistics attacks score with (loss, entropy, LiRA's logit-scaled confidence).
- ``audit``: the audit as one call (``audit_membership``) and its ``MembershipReport``, defenses re-audited.
- ``thresholds``, ``learned``, ``reference``, ``segmentation``: the attacks, registered on import (threshold
  attacks, TF-Privacy's trained attacks, LiRA and RMIA with reference models, Segmentations-Leak's CNNs), so a new
  attack is a new module here (and its test).
"""

# Each import registers its module's attacks; audits run them in this order, cheapest first.
from instahide_ops.audits.membership import thresholds  # noqa: F401

# isort: split
from instahide_ops.audits.membership import learned  # noqa: F401

# isort: split
from instahide_ops.audits.membership import reference  # noqa: F401

# isort: split
from instahide_ops.audits.membership import segmentation  # noqa: F401

# isort: split

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
from instahide_ops.audits.membership.audit import (
    DefenseReport,
    MembershipAttackReport,
    MembershipReport,
    audit_membership,
)
from instahide_ops.audits.membership.data import TASKS, MembershipData
from instahide_ops.audits.membership.metrics import FPRS, MembershipMetrics, membership_metrics

__all__ = [
    "FPRS",
    "MEMBERSHIP_ATTACKS",
    "TASKS",
    "DefenseReport",
    "MembershipAttack",
    "MembershipAttackReport",
    "MembershipData",
    "MembershipMetrics",
    "MembershipReport",
    "MembershipResult",
    "MembershipView",
    "audit_membership",
    "choose_membership_attacks",
    "get_membership_attack",
    "membership_attack_names",
    "membership_metrics",
    "register_membership_attack",
]
