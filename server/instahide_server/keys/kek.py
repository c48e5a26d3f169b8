"""The key-encryption key (KEK): 32 random bytes that wrap every stored key with AES-GCM.

It lives in a file of its own (``--key-encryption-key-file``), base64 on one line, readable by the service user
only: by default beside the store under ``--state-dir``, in production mounted from a secret (every replica that
must disguise alike mounts the same one). On first start, with no store yet, a missing file is created from the OS
CSPRNG with mode 0600 and the log says so. With a store that already holds keys, a missing or different KEK
refuses the start: the service never silently makes new keys in place of ones it cannot open.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import pathlib
import stat

from instahide_server.config import ConfigError

logger = logging.getLogger(__name__)

KEK_BYTES = 32  # AES-256-GCM
DEFAULT_NAME = "key-encryption-key"


def read_kek(path: pathlib.Path) -> bytes:
    """The KEK in ``path``. Raises ConfigError naming the file (never its content) when it cannot be used."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--key-encryption-key-file {path}: cannot read it: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        kek = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        kek = b""
    if len(kek) != KEK_BYTES:
        raise ConfigError(f"--key-encryption-key-file {path}: expected {KEK_BYTES} bytes in base64 on one line "
                          f"(e.g. from `head -c {KEK_BYTES} /dev/urandom | base64`)")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("the key-encryption key %s is readable by others (mode %o); chmod 600 it", path,
                       stat.S_IMODE(mode))
    return kek


def create_kek(path: pathlib.Path) -> bytes:
    """A new KEK from the CSPRNG, written to ``path`` with mode 0600 (never over an existing file)."""
    kek = os.urandom(KEK_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(f"--key-encryption-key-file {path}: cannot create it: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(base64.b64encode(kek).decode("ascii") + "\n")
    logger.warning("created a new key-encryption key at %s (mode 0600): keep it with the key store, or give "
                   "every replica the same one, or the stored keys cannot be opened", path)
    return kek
