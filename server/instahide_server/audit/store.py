"""Audits on disk: one SQLite table at ``<state-dir>/instahide.db`` (stdlib ``sqlite3``).

A row holds what an ``Audit`` message holds: id, state, times, the spec, the progress, the error and
the report (the serialized ``AuditReport``), plus the report's summary (the report without its large
fields) so that listing never reads the recovered images. Private images are never written here:
they live in the job's memory only, as long as the job.

One connection, shared by the event loop and the audit threads behind a lock; every write is its
own short transaction. WAL journaling keeps readers and the writer out of each other's way.

A database that cannot be used never stops the server: ``open_audit_store`` returns a
``DisabledAuditStore`` when the state directory is unusable (missing rights, not a folder), and every
read or write that fails later (a full disk, the ``max_bytes`` cap) raises ``AuditStoreError``, an
``Unavailable`` (UNAVAILABLE on the wire) whose message names the database. Encoding needs no state
directory and goes on either way.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import sqlite3
import threading
import time
from collections.abc import Iterator

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from instahide_client.instahide.v1 import audit_pb2, tensor_pb2

from instahide_server.audit import legacy
from instahide_server.errors import Unavailable

logger = logging.getLogger(__name__)

DB_NAME = "instahide.db"
ENDED_STATES = (audit_pb2.AUDIT_STATE_SUCCEEDED, audit_pb2.AUDIT_STATE_FAILED, audit_pb2.AUDIT_STATE_CANCELLED)
LIVE_STATES = (audit_pb2.AUDIT_STATE_QUEUED, audit_pb2.AUDIT_STATE_RUNNING)
NAME_PREFIX = "audits/"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audits (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: newest first is seq DESC
    id TEXT NOT NULL UNIQUE,
    state INTEGER NOT NULL,
    create_time_ns INTEGER NOT NULL,
    start_time_ns INTEGER,
    end_time_ns INTEGER,
    spec BLOB NOT NULL,
    progress BLOB NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    report BLOB,
    summary BLOB
);
CREATE INDEX IF NOT EXISTS audits_by_state ON audits (state, seq);
"""
_COLUMNS = "seq, id, state, create_time_ns, start_time_ns, end_time_ns, spec, progress, error"


SCHEMA_VERSION = 1  # PRAGMA user_version: 0 = specs and reports in the pre-families layout (legacy.py)


def _upgrade(db: sqlite3.Connection) -> None:
    """Rewrite rows of an older layout in today's (inside the caller's transaction)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version < 1:
        rows = db.execute("SELECT id, spec, report, summary FROM audits").fetchall()
        for audit_id, spec, report, summary in rows:
            db.execute("UPDATE audits SET spec = ?, report = ?, summary = ? WHERE id = ?",
                       (legacy.upgrade_spec(spec), None if report is None else legacy.upgrade_report(report),
                        None if summary is None else legacy.upgrade_report(summary), audit_id))
        if rows:
            logger.info("rewrote %d audits of the audit database in today's layout", len(rows))
    if version < SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def audit_name(audit_id: str) -> str:
    return NAME_PREFIX + audit_id


def summary_of(report: audit_pb2.AuditReport) -> audit_pb2.AuditReport:
    """A copy of ``report`` without its large fields: every tensor (recovered images) and every bytes field
    (pictures), in whatever kind or attack row they sit."""
    summary = audit_pb2.AuditReport()
    summary.CopyFrom(report)
    _strip_large(summary)
    return summary


def _strip_large(message: Message) -> None:
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_BYTES:
            message.ClearField(field.name)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            if field.message_type.full_name == tensor_pb2.Tensor.DESCRIPTOR.full_name:
                message.ClearField(field.name)
            elif field.is_repeated:
                for item in value:
                    _strip_large(item)
            else:
                _strip_large(value)


class AuditStoreError(Unavailable):
    """The audit database cannot be opened, read or written; the message names it and says why."""


class AuditStore:
    """The audits table; thread-safe. Every method raises ``AuditStoreError`` when SQLite fails."""

    available = True

    def __init__(self, connection: sqlite3.Connection, path: pathlib.Path) -> None:
        self._db = connection
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def open(cls, state_dir: pathlib.Path, *, max_bytes: int = 0) -> AuditStore:
        """Open (creating when needed) ``state_dir/instahide.db`` and check that it can be written.

        Args:
            state_dir: the folder of the database.
            max_bytes: cap on the database's size (0: none); writes that would grow it past the cap
                fail as they would on a full disk. A cap below the current size keeps that size.

        Raises:
            AuditStoreError: the folder cannot be created, or the database cannot be opened or written.
        """
        path = state_dir / DB_NAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
        except (OSError, sqlite3.Error) as exc:
            raise AuditStoreError(f"--state-dir {state_dir}: cannot open the audit database {path}: {exc}") from None
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            connection.execute("BEGIN IMMEDIATE")  # proves the database (and its folder, for the WAL) writable
            _upgrade(connection)
            connection.execute("COMMIT")
            if max_bytes > 0:
                page_size = connection.execute("PRAGMA page_size").fetchone()[0]
                connection.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page_size)}")
        except sqlite3.Error as exc:
            connection.close()
            raise AuditStoreError(f"--state-dir {state_dir}: the audit database {path} is not writable: "
                                  f"{exc}") from None
        return cls(connection, path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _locked(self, doing: str) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; a SQLite failure becomes an AuditStoreError naming the file."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                logger.error("the audit database %s failed while %s: %s", self.path, doing, exc)
                raise AuditStoreError(f"the audit database {self.path} failed while {doing}: {exc}") from None

    # Writes.

    def insert(self, audit: audit_pb2.Audit) -> None:
        """Add a new audit (its name, state, create time, spec and progress)."""
        with self._locked("adding an audit") as db:
            db.execute(
                "INSERT INTO audits (id, state, create_time_ns, spec, progress, error) VALUES (?, ?, ?, ?, ?, ?)",
                (_id_of(audit.name), audit.state, audit.create_time.ToNanoseconds(), audit.spec.SerializeToString(),
                 audit.progress.SerializeToString(), audit.error))

    def save(self, audit: audit_pb2.Audit) -> None:
        """Write an audit's state, times, progress, error and (when set) report."""
        report = summary = None
        if audit.HasField("report"):
            report = audit.report.SerializeToString()
            summary = summary_of(audit.report).SerializeToString()
        with self._locked("saving an audit") as db:
            db.execute(
                "UPDATE audits SET state = ?, start_time_ns = ?, end_time_ns = ?, progress = ?, error = ?, "
                "report = ?, summary = ? WHERE id = ?",
                (audit.state, _ns(audit, "start_time"), _ns(audit, "end_time"), audit.progress.SerializeToString(),
                 audit.error, report, summary, _id_of(audit.name)))

    def save_progress(self, audit_id: str, progress: audit_pb2.AuditProgress) -> None:
        with self._locked("saving progress") as db:
            db.execute("UPDATE audits SET progress = ? WHERE id = ?", (progress.SerializeToString(), audit_id))

    def delete(self, audit_id: str) -> bool:
        """Delete one audit; False when there was none."""
        with self._locked("deleting an audit") as db:
            return db.execute("DELETE FROM audits WHERE id = ?", (audit_id,)).rowcount > 0

    def mark_interrupted(self, error: str) -> int:
        """End every queued or running audit as FAILED with ``error``; returns how many."""
        now = time.time_ns()
        with self._locked("marking interrupted audits") as db:
            return db.execute(
                f"UPDATE audits SET state = ?, error = ?, end_time_ns = ? WHERE state IN {_in(LIVE_STATES)}",
                (audit_pb2.AUDIT_STATE_FAILED, error, now)).rowcount

    def prune(self, ended_before_ns: int) -> int:
        """Delete ended audits that ended before ``ended_before_ns``; returns how many."""
        with self._locked("deleting old audits") as db:
            return db.execute(
                f"DELETE FROM audits WHERE state IN {_in(ENDED_STATES)} AND end_time_ns < ?",
                (ended_before_ns,)).rowcount

    # Reads.

    def get(self, audit_id: str, *, summary_only: bool = False) -> audit_pb2.Audit | None:
        column = "summary" if summary_only else "report"
        with self._locked("reading an audit") as db:
            row = db.execute(f"SELECT {_COLUMNS}, {column} FROM audits WHERE id = ?", (audit_id,)).fetchone()
        return None if row is None else _audit(row)[1]

    def list(self, *, limit: int, before_seq: int | None = None, state: int = 0,
             ) -> list[tuple[int, audit_pb2.Audit]]:
        """Up to ``limit`` audits (summaries), newest first, older than ``before_seq``, in ``state`` (0: any)."""
        where, args = [], []
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        if state:
            where.append("state = ?")
            args.append(state)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._locked("listing audits") as db:
            rows = db.execute(f"SELECT {_COLUMNS}, summary FROM audits {clause} ORDER BY seq DESC LIMIT ?",
                                    (*args, limit)).fetchall()
        return [_audit(row) for row in rows]


class DisabledAuditStore:
    """Stands in for an ``AuditStore`` that could not be opened: every call raises its error."""

    available = False

    def __init__(self, error: AuditStoreError) -> None:
        self.error = error
        self.path = None

    def close(self) -> None:
        pass

    def refusal(self) -> AuditStoreError:
        """The error every call raises."""
        return AuditStoreError(f"audits are unavailable on this server: {self.error}; encoding is unaffected")

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise self.refusal()

    insert = save = save_progress = delete = mark_interrupted = prune = get = list = _refuse


def open_audit_store(state_dir: pathlib.Path, *, max_bytes: int = 0) -> AuditStore | DisabledAuditStore:
    """``AuditStore.open``, or, when the state directory cannot be used, a ``DisabledAuditStore``.

    An unusable state directory disables audits only, loudly: the server goes on encoding.
    """
    try:
        return AuditStore.open(state_dir, max_bytes=max_bytes)
    except AuditStoreError as exc:
        logger.error("AUDITS DISABLED: %s. Encoding goes on; every audit call answers UNAVAILABLE and the "
                     "audit service's health is NOT_SERVING until the server restarts with a usable --state-dir.",
                     exc)
        return DisabledAuditStore(exc)


def _audit(row: tuple) -> tuple[int, audit_pb2.Audit]:
    seq, audit_id, state, create_ns, start_ns, end_ns, spec, progress, error, report = row
    audit = audit_pb2.Audit(name=audit_name(audit_id), state=state, error=error)
    audit.create_time.FromNanoseconds(create_ns)
    if start_ns is not None:
        audit.start_time.FromNanoseconds(start_ns)
    if end_ns is not None:
        audit.end_time.FromNanoseconds(end_ns)
    audit.spec.ParseFromString(spec)
    audit.progress.ParseFromString(progress)
    if report is not None:
        audit.report.ParseFromString(report)
    return seq, audit


def _id_of(name: str) -> str:
    return name.removeprefix(NAME_PREFIX)


def _ns(audit: audit_pb2.Audit, field: str) -> int | None:
    return getattr(audit, field).ToNanoseconds() if audit.HasField(field) else None


def _in(values: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(v)) for v in values) + ")"
