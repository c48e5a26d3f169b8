"""The key store of long-lived transform keys (DisguisedNets): the key-encryption key (kek.py), the wrapped keys on
disk (store.py), their material as bytes (material.py) and ``instahide.v1.KeyService`` (servicer.py)."""
