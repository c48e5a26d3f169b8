"""Reconstruction audits: how much of the private images an attacker recovers from their disguised versions.

- ``attack``: what an attack is (``Attack``), what it sees (``AttackerView``), what it returns (``AttackResult``)
  and the registry (``register_attack``, ``get_attack``, ``attack_names``, ``choose_attacks``).
- ``audit``: the audit as one call (``audit_deployment``, ``audit_encodings``) and its ``LeakageReport``.
- ``scores``: the InstaHide Challenge's scores (SSIM equal to scikit-image's).
- one subpackage per transform family attacked (``instahide/``): every module in it that defines an attack
  registers it on import, so a new attack is a new module there (and its test).
"""

from instahide_ops.audits.reconstruction import disguisednets, instahide  # noqa: F401  (register their attacks)
from instahide_ops.audits.reconstruction.attack import (
    ATTACKS,
    EVIDENCE,
    Attack,
    AttackerView,
    AttackResult,
    AttackSettings,
    KeyMapping,
    attack_names,
    choose_attacks,
    get_attack,
    register_attack,
)
from instahide_ops.audits.reconstruction.audit import (
    AttackReport,
    Deployment,
    LeakageReport,
    audit_deployment,
    audit_encodings,
)

__all__ = [
    "ATTACKS",
    "EVIDENCE",
    "Attack",
    "AttackReport",
    "AttackResult",
    "AttackSettings",
    "AttackerView",
    "Deployment",
    "KeyMapping",
    "LeakageReport",
    "attack_names",
    "audit_deployment",
    "audit_encodings",
    "choose_attacks",
    "get_attack",
    "register_attack",
]
