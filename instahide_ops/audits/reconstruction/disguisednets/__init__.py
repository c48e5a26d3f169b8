"""Attacks on DisguisedNets: what an attacker recovers from disguised images, at the papers' threat levels.

Every module here that defines an attack registers it on import (family ``disguised_nets``); the attacks see a
``view.DisguisedView``. Level-2, the attacker holds m original/disguised pairs: ``known_pairs`` (RMT: least
squares; AES-ECB: the codebook of ``codebook``). The bound: ``key_aware``. ``audit`` runs them on a simulated
deployment and scores them.
"""

from instahide_ops.audits.reconstruction.disguisednets import key_aware, known_pairs  # noqa: F401  (registers)
