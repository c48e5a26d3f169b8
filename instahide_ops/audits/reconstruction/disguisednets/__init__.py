"""Attacks on DisguisedNets: what an attacker recovers from disguised images, at the papers' threat levels.

Level-2, the attacker holds m original/disguised pairs besides the disguised dataset: ``known_pairs`` (RMT: least
squares) and ``codebook`` (AES-ECB). The attacks take the disguised arrays and what the attacker holds, never a
key. They are functions today, not yet registered attacks of an audit kind.
"""
