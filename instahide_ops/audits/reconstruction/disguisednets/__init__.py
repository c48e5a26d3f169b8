"""Attacks on DisguisedNets: what an attacker recovers from disguised images, at the papers' threat levels.

``known_pairs``: Level-2, the attacker holds m original/disguised pairs besides the disguised dataset (RMT today).
The attacks take the disguised arrays and what the attacker holds, never a key.
"""
