"""Keys on disk: ``<state-dir>/keys.db`` (SQLite), each key's material sealed with AES-GCM under the KEK.

A row holds a key's description in the clear (``material.KeyRecord``: owner, family, parameters, shape,
fingerprint, times) and its material sealed: a fresh 96-bit nonce, then AES-256-GCM of the packed material with
the key's name and owner as associated data, so a sealed blob moved to another row does not open. The store
keeps a check value (a constant sealed under the KEK) so that a wrong KEK is found at start, before any key is
needed. Unwrapped keys are cached in memory (least recently used out); deleting a key drops it from the cache, so
the next request with it answers NOT_FOUND.

An export is the record and the material sealed together under the KEK (other associated data than a row's):
opaque bytes that a server with the same KEK imports under the same name, so replicas disguise alike.

One connection behind a lock, shared by the event loop and the encoding threads; writes are short transactions.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import logging
import os
import pathlib
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.disguisednets import DisguisedNetsKey, DisguisedNetsParams, check_params, create_key
from instahide_server.config import ConfigError
from instahide_server.errors import (
    AlreadyExists,
    DataLoss,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from instahide_server.keys import kek as kek_file
from instahide_server.keys.material import FAMILY, KeyRecord, pack, unpack

logger = logging.getLogger(__name__)

DB_NAME = "keys.db"
NAME_PREFIX = "keys/"
NAME_PATTERN = re.compile(r"keys/[A-Za-z0-9_-]{1,64}")
NONCE_BYTES = 12
CACHE_SIZE = 256
MAX_MATERIAL_BYTES = 64 << 20  # one key's matrices; past it, CreateKey answers RESOURCE_EXHAUSTED
MAX_DISPLAY_NAME = 200
_CHECK_PLAINTEXT = b"instahide key store"
_EXPORT_MAGIC = b"IHKEY1"
_EXPORT_AAD = b"instahide key export v1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: newest first is seq DESC
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    record TEXT NOT NULL,  -- material.KeyRecord as JSON: no secrets
    sealed BLOB NOT NULL   -- nonce || AES-GCM(KEK, packed material, aad = name + owner)
);
CREATE INDEX IF NOT EXISTS keys_by_owner ON keys (owner, seq);
"""


class KeyStoreUnavailable(Unavailable):
    """No usable key store (the state directory could not be used); the message says why."""


def key_id(name: str, field: str) -> str:
    """The id in "keys/{key}"; InvalidArgument naming ``field`` for anything else."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(f"{field}: expected a key name \"keys/{{key}}\", got {name[:80]!r}", field)
    return name.removeprefix(NAME_PREFIX)


def _seal(kek: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(kek).encrypt(nonce, plaintext, aad)


def _open(kek: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext; InvalidTag when the KEK or the associated data differ, or the blob was altered."""
    return AESGCM(kek).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)


def _row_aad(record_id: str, owner: str) -> bytes:
    return f"instahide key {NAME_PREFIX}{record_id} owner {owner}".encode()


def _material_bytes(params: DisguisedNetsParams, image_shape: Sequence[int]) -> int:
    h, w, c = image_shape
    r, s = params.block
    positions = (h // r) * (w // s)
    if params.method == "aes":
        return positions * 8 + 16 * positions
    return positions * 8 + positions * (c if params.matrix_per_channel else 1) * s * s * 8


class KeyStore:
    """The keys table and its KEK; thread-safe."""

    available = True

    def __init__(self, db: sqlite3.Connection, path: pathlib.Path, kek: bytes) -> None:
        self._db = db
        self.path = path
        self._kek = kek
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[str, DisguisedNetsKey] = collections.OrderedDict()
        self._deletions = 0  # a key read while one was deleted is not cached: it may be the deleted one

    def __repr__(self) -> str:  # never the KEK
        return f"KeyStore({str(self.path)!r})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                with self._db:
                    yield self._db
            except sqlite3.Error as exc:
                raise KeyStoreUnavailable(f"the key store {self.path} failed: {exc}") from None

    # -- reading -----------------------------------------------------------------------------------------

    def _row(self, name: str, owner: str, field: str) -> tuple[KeyRecord, bytes]:
        record_id = key_id(name, field)
        with self._locked() as db:
            row = db.execute("SELECT record, sealed FROM keys WHERE id = ? AND owner = ?",
                             (record_id, owner)).fetchone()
        if row is None:  # the same answer for a key that is another principal's: its existence is theirs
            raise NotFound(f"{field}: no key {name!r} here (never created on this server, deleted, or not yours)",
                           field)
        return KeyRecord.from_json(row[0]), row[1]

    def get(self, name: str, owner: str, *, field: str = "name") -> KeyRecord:
        return self._row(name, owner, field)[0]

    def key(self, name: str, owner: str, *, field: str = "name") -> DisguisedNetsKey:
        """The unwrapped key (cached). NotFound for a key this owner does not have; DataLoss when it does not
        open."""
        cache_key = f"{owner}\0{name}"
        with self._lock:
            cached = self._cache.get(cache_key)
            if cached is not None:
                self._cache.move_to_end(cache_key)
                return cached
            deletions = self._deletions
        record, packed = self._material(name, owner, field)
        try:
            key = unpack(record, packed)
        except (ValueError, KeyError, InvalidInputError) as exc:
            raise self._data_loss(name, field, exc) from None
        with self._lock:
            if deletions != self._deletions:
                return key
            self._cache[cache_key] = key
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return key

    def _material(self, name: str, owner: str, field: str) -> tuple[KeyRecord, bytes]:
        """A key's record and its packed material, opened; DataLoss when the sealed blob does not open."""
        record, sealed = self._row(name, owner, field)
        try:
            return record, _open(self._kek, sealed, _row_aad(record.id, owner))
        except (InvalidTag, ValueError):
            raise self._data_loss(name, field, "wrong associated data or altered") from None

    def _data_loss(self, name: str, field: str, why: object) -> DataLoss:
        logger.error("key %s of the key store %s does not open: %s", name, self.path, why)
        return DataLoss(f"{field}: the stored key {name} does not open (the store was altered); delete it and "
                        "create or import it again", field)

    def list(self, owner: str, *, page_size: int, page_token: str) -> tuple[list[KeyRecord], str]:
        """A page of ``owner``'s keys, newest first, and the next page's token ("" on the last)."""
        after = _decode_token(page_token)
        with self._locked() as db:
            rows = db.execute("SELECT seq, record FROM keys WHERE owner = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                              (owner, after, page_size + 1)).fetchall()
        more = len(rows) > page_size
        rows = rows[:page_size]
        return [KeyRecord.from_json(r[1]) for r in rows], _encode_token(rows[-1][0]) if more else ""

    def counts(self) -> dict[str, int]:
        """Stored keys by family."""
        with self._locked() as db:
            rows = db.execute("SELECT json_extract(record, '$.family'), COUNT(*) FROM keys GROUP BY 1").fetchall()
        return {family: count for family, count in rows}

    # -- writing -----------------------------------------------------------------------------------------

    def create(self, owner: str, params: DisguisedNetsParams, image_shape: Sequence[int], *,
               seed: int | None = None, display_name: str = "") -> KeyRecord:
        """A new key from the CSPRNG (or ``seed``), stored sealed. InvalidInputError for parameters that cannot
        make one (its field is the parameter's)."""
        if len(display_name) > MAX_DISPLAY_NAME:
            raise InvalidArgument(f"display_name: at most {MAX_DISPLAY_NAME} characters, got {len(display_name)}",
                                  "display_name")
        shape = check_params(params, image_shape)
        size = _material_bytes(params, shape)
        if size > MAX_MATERIAL_BYTES:
            raise ResourceExhausted(f"image_shape: a key for {list(shape)} in {params.block[0]}×{params.block[1]} "
                                    f"blocks would hold {size} bytes of material, more than {MAX_MATERIAL_BYTES}; "
                                    "use larger blocks", "image_shape")
        key = create_key(params, shape, seed=seed)
        record = KeyRecord(secrets.token_hex(8), owner, FAMILY, key.params, key.image_shape, time.time_ns(),
                           key.fingerprint(), key.seeded, display_name)
        self._insert(record, key)
        logger.info("created key %s (%s %s, images %s, fingerprint %s…%s)", record.name, record.family,
                    params.method, list(shape), record.fingerprint[:12], ", seeded" if key.seeded else "")
        return record

    def _insert(self, record: KeyRecord, key: DisguisedNetsKey) -> None:
        sealed = _seal(self._kek, pack(key), _row_aad(record.id, record.owner))
        with self._locked() as db:
            db.execute("INSERT INTO keys (id, owner, record, sealed) VALUES (?, ?, ?, ?)",
                       (record.id, record.owner, record.to_json(), sealed))

    def delete(self, name: str, owner: str, *, field: str = "name") -> None:
        record_id = key_id(name, field)
        with self._locked() as db:
            deleted = db.execute("DELETE FROM keys WHERE id = ? AND owner = ?", (record_id, owner)).rowcount
            self._cache.pop(f"{owner}\0{name}", None)
            self._deletions += 1
        if not deleted:
            raise NotFound(f"{field}: no key {name!r} here (never created on this server, deleted, or not yours)",
                           field)
        logger.info("deleted key %s", name)

    def export(self, name: str, owner: str, *, field: str = "name") -> tuple[KeyRecord, bytes]:
        """The record and its material sealed together under the KEK, for a replica with the same KEK."""
        record, packed = self._material(name, owner, field)
        header = record.to_json().encode()
        plaintext = len(header).to_bytes(4, "big") + header + packed
        return record, _EXPORT_MAGIC + _seal(self._kek, plaintext, _EXPORT_AAD)

    def import_(self, wrapped: bytes, owner: str | None, *, field: str = "wrapped") -> KeyRecord:
        """Store an exported key under its name, owned by ``owner`` (None: whoever exported it). Importing the
        same key again is a no-op."""
        if not wrapped.startswith(_EXPORT_MAGIC):
            raise InvalidArgument(f"{field}: not an exported key (ExportKey's `wrapped`)", field)
        try:
            plaintext = _open(self._kek, wrapped[len(_EXPORT_MAGIC):], _EXPORT_AAD)
        except (InvalidTag, ValueError):
            raise InvalidArgument(f"{field}: the exported key does not open under this server's key-encryption key "
                                  "(replicas that share keys must share the KEK), or it was altered", field) from None
        size = int.from_bytes(plaintext[:4], "big")
        exported = KeyRecord.from_json(plaintext[4:4 + size].decode())
        owner = exported.owner if owner is None else owner
        record = KeyRecord(exported.id, owner, exported.family, exported.params, exported.image_shape,
                           exported.create_time_ns, exported.fingerprint, exported.seeded, exported.display_name)
        try:
            key = unpack(record, plaintext[4 + size:])
        except (ValueError, KeyError, InvalidInputError) as exc:
            raise InvalidArgument(f"{field}: the exported key is inconsistent: {exc}", field) from None
        with self._locked() as db:
            row = db.execute("SELECT owner, record FROM keys WHERE id = ?", (record.id,)).fetchone()
        if row is not None:
            if row[0] == owner and KeyRecord.from_json(row[1]).fingerprint == record.fingerprint:
                return KeyRecord.from_json(row[1])
            raise AlreadyExists(f"{field}: a different key named {record.name} is already here", field)
        self._insert(record, key)
        logger.info("imported key %s (fingerprint %s…)", record.name, record.fingerprint[:12])
        return record

    def import_dir(self, folder: pathlib.Path) -> int:
        """Import every exported key in ``folder`` (files from ``instahide keys export``), each owned by whoever
        exported it; keys already here are left as they are. Returns how many files were read.

        Raises:
            ConfigError: the folder cannot be read, or a file in it is not a key this KEK opens.
        """
        try:
            files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        except OSError as exc:
            raise ConfigError(f"--key-import-dir {folder}: {exc.strerror or exc}") from None
        for path in files:
            try:
                record = self.import_(path.read_bytes(), None)
            except (OSError, InvalidArgument, AlreadyExists) as exc:
                raise ConfigError(f"--key-import-dir: cannot import {path}: {exc}") from None
            logger.info("key %s present (from %s)", record.name, path.name)
        return len(files)

    def check_all(self) -> list[str]:
        """Names of stored keys whose material does not open (logged at start)."""
        with self._locked() as db:
            rows = db.execute("SELECT id, owner, sealed FROM keys").fetchall()
        broken = []
        for record_id, owner, sealed in rows:
            try:
                _open(self._kek, sealed, _row_aad(record_id, owner))
            except (InvalidTag, ValueError):
                broken.append(NAME_PREFIX + record_id)
        return broken

    def close(self) -> None:
        with self._lock:
            self._db.close()


class DisabledKeyStore:
    """Stands in when the state directory cannot be used: every call answers UNAVAILABLE, saying why."""

    available = False
    path = None

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise KeyStoreUnavailable(f"keys are unavailable on this server: {self.reason}")

    get = key = list = create = delete = export = import_ = _refuse

    def counts(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


def open_key_store(state_dir: pathlib.Path, kek_path: pathlib.Path | None,
                   import_dir: pathlib.Path | None = None) -> KeyStore | DisabledKeyStore:
    """Open (or create) the store under ``state_dir`` with the KEK in ``kek_path`` (default: beside it), and
    import the exported keys in ``import_dir`` (replicas that mount the same keys serve the same keys).

    Raises:
        ConfigError: a store that exists but is not a database, a missing KEK for a store that was sealed, a
            KEK that does not open it, or a key to import that it does not open. A state directory that cannot
            be used gives a ``DisabledKeyStore`` (and a key import folder then refuses the start).
    """
    path = state_dir / DB_NAME
    kek_path = kek_path if kek_path is not None else state_dir / kek_file.DEFAULT_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        reason = f"cannot use the state directory {state_dir}: {getattr(exc, 'strerror', None) or exc}"
        if import_dir is not None:
            raise ConfigError(f"--key-import-dir needs a key store, and {reason}") from None
        logger.warning("keys disabled: %s", reason)
        return DisabledKeyStore(reason)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        check = db.execute("SELECT value FROM meta WHERE name = 'kek_check'").fetchone()
    except sqlite3.OperationalError as exc:  # cannot open or write it (rights, a read-only folder)
        db.close()
        reason = f"cannot use the key store {path}: {exc}"
        if import_dir is not None:
            raise ConfigError(f"--key-import-dir needs a key store, and {reason}") from None
        logger.warning("keys disabled: %s", reason)
        return DisabledKeyStore(reason)
    except sqlite3.DatabaseError as exc:  # a file that is not a database
        db.close()
        raise ConfigError(f"the key store {path} cannot be read ({exc}); it is not a key store or it is "
                          "corrupt: restore it from a backup, or move it away to start an empty one") from None
    if check is not None and not kek_path.exists():
        db.close()
        raise ConfigError(f"the key store {path} holds keys sealed under a key-encryption key, but "
                          f"--key-encryption-key-file {kek_path} does not exist: give the file it was created "
                          "with (a new one would not open them)")
    kek = kek_file.read_kek(kek_path) if kek_path.exists() else kek_file.create_kek(kek_path)
    if check is None:
        with db:
            db.execute("INSERT INTO meta (name, value) VALUES ('kek_check', ?)",
                       (_seal(kek, _CHECK_PLAINTEXT, b"kek-check"),))
    else:
        try:
            _open(kek, check[0], b"kek-check")
        except (InvalidTag, ValueError):
            db.close()
            raise ConfigError(f"the key-encryption key in {kek_path} does not open the key store {path}: it was "
                              "sealed under another one; give the KEK it was created with") from None
    store = KeyStore(db, path, kek)
    if import_dir is not None:
        store.import_dir(import_dir)
    broken = store.check_all()
    if broken:
        logger.error("%d stored keys do not open and will answer DATA_LOSS: %s", len(broken), ", ".join(broken))
    return store


def _encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode()


def _decode_token(token: str) -> int:
    if not token:
        return 2**63 - 1
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if text.startswith("seq:"):
            return int(text[4:])
    except (ValueError, UnicodeDecodeError):
        pass
    raise InvalidArgument("page_token: not a token this server gave", "page_token")
