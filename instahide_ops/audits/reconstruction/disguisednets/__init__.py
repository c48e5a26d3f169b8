"""Attacks on DisguisedNets: what an attacker recovers from disguised images, at the papers' threat levels.

Every module here that defines an attack registers it on import (family ``disguised_nets``); the attacks see a
``view.DisguisedView`` and never a key, but the bound's.

- Level-1, the disguised dataset and public photos: ``ciphertext_only`` (RMT: ``covariance``, natural row
  statistics; AES-ECB: ``ecb_penguin``, the codewords' neighbour graph; both place blocks with ``jigsaw``).
- Level-2, also m original/disguised pairs: ``known_pairs`` (RMT: least squares; AES-ECB: ``codebook``).
- The bound, the key: ``key_aware``.

``audit`` runs them on a simulated deployment and scores them.
"""

from instahide_ops.audits.reconstruction.disguisednets import (  # noqa: F401  (they register their attacks)
    ciphertext_only,
    key_aware,
    known_pairs,
)
