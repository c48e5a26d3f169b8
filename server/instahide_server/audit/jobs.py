"""The audit job runner: a bounded queue, a few worker threads, progress pushed to watchers.

Lifecycle of a job (all bookkeeping on the event loop; the audit itself in a worker thread):

  submit ─► QUEUED ─(a worker slot frees)─► RUNNING ─► SUCCEEDED | FAILED | CANCELLED

- ``submit`` refuses with RESOURCE_EXHAUSTED once ``queue_size`` audits are waiting (running ones
  do not count), and with UNAVAILABLE while the server shuts down.
- A job holds a worker slot (an ``asyncio.Semaphore`` of ``workers``; waiters are served in order)
  and runs its kind's audit (``kinds.AuditKind.run``) in the audit thread pool, never on the event loop.
- Progress comes from the worker thread and reaches the loop through ``call_soon_threadsafe``; it
  is sent to watchers at most every 0.1 s per stage (and at every stage change) and written to the
  store at most every 0.5 s. Fractions are kept non-decreasing (a sub-attack restarting its
  fraction does not move the audit backwards).
- Stopping: CancelAudit, the time limit and shutdown all set the job's ``CancelToken``; the attack
  raises ``AttackCancelled`` at its next progress report (well under a second). The job then ends
  CANCELLED (CancelAudit) or FAILED with "time limit exceeded" / "interrupted by shutdown".
- The private images live in the job object only, and are dropped the moment the job ends.
- At start, audits the store still shows queued or running (a crash, a SIGKILL) are marked FAILED
  "interrupted by restart"; ended audits older than the retention are deleted, then once an hour.
- The store failing (a full disk, an unusable state directory: ``store.AuditStoreError``) never
  breaks a job's lifecycle: a new audit is refused (UNAVAILABLE); a running one goes on; a finished
  report that cannot be written ends its audit FAILED "report not saved: ..."; a final state that
  cannot be written at all is kept in memory (``_unsaved``) and answered from there until restart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from instahide_client.instahide.v1 import audit_pb2

from instahide_ops.audits.progress import AttackCancelled, CancelToken
from instahide_ops.errors import InvalidInputError
from instahide_server.audit.kinds import Accepted, AuditKind
from instahide_server.audit.store import ENDED_STATES, AuditStore, AuditStoreError, DisabledAuditStore, audit_name
from instahide_server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from instahide_server.metrics import ServerMetrics

logger = logging.getLogger(__name__)

QUEUED, RUNNING = audit_pb2.AUDIT_STATE_QUEUED, audit_pb2.AUDIT_STATE_RUNNING
SUCCEEDED, FAILED, CANCELLED = (audit_pb2.AUDIT_STATE_SUCCEEDED, audit_pb2.AUDIT_STATE_FAILED,
                                audit_pb2.AUDIT_STATE_CANCELLED)
TIME_LIMIT_EXCEEDED = "time limit exceeded"
INTERRUPTED_BY_SHUTDOWN = "interrupted by shutdown"
INTERRUPTED_BY_RESTART = "interrupted by restart"
INTERNAL_ERROR = "internal error; the server log has the details"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
WATCH_INTERVAL_SECONDS = 0.1  # progress events sent to watchers, per stage
PERSIST_INTERVAL_SECONDS = 0.5  # progress written to the store
PRUNE_INTERVAL_SECONDS = 3600.0
CANCEL_WAIT_SECONDS = 30.0  # CancelAudit waits this long for a running audit to stop
_NAME = re.compile(r"audits/([0-9a-f]{32})")
_MAX_SEQ = 2**63 - 1  # SQLite's largest INTEGER (the store's row sequence)


def parse_name(name: str) -> str:
    """``audits/{id}`` → id. Raises InvalidArgument for anything else."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise InvalidArgument(f"name: expected audits/{{id}} with a 32-digit hex id, got {name!r}", "name")
    return match.group(1)


def default_workers(device: torch.device) -> int:
    """One audit per CUDA device, else one."""
    return max(1, torch.cuda.device_count()) if device.type == "cuda" else 1


@dataclass(eq=False)
class _Job:
    audit: audit_pb2.Audit  # the live state (no report); changed on the event loop only
    kind: AuditKind
    accepted: Accepted
    data: Any | None  # the private inputs; None once the job has ended
    cancel: CancelToken = field(default_factory=CancelToken)
    stop_reason: str | None = None  # why the token was set when not by CancelAudit
    watchers: set[asyncio.Queue] = field(default_factory=set)
    ending: bool = False  # set the moment ``_end`` starts (it awaits the store before ``ended`` is set)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    running_since: float | None = None  # time.monotonic() when it started running
    last_persisted: float = 0.0
    persist_failed: bool = False  # a progress write failed: stop trying for this job
    # Worker-thread side of the progress throttle.
    last_stage: str = ""
    last_sent: float = 0.0

    @property
    def id(self) -> str:
        return self.audit.name.removeprefix("audits/")


@dataclass(frozen=True)
class _Outcome:
    state: int
    error: str = ""
    report: audit_pb2.AuditReport | None = None


class AuditJobs:
    """Queues, runs, watches, cancels and lists audits; call from the event loop."""

    def __init__(self, store: AuditStore | DisabledAuditStore, *, workers: int, queue_size: int,
                 timeout_seconds: float, retention_days: float, metrics: ServerMetrics | None = None) -> None:
        self._store = store
        self._metrics = metrics if metrics is not None else ServerMetrics()  # unexported when not given
        self._workers = workers
        self._queue_size = queue_size
        self._timeout = timeout_seconds
        self._retention_days = retention_days
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="instahide-audit")
        self._live: dict[str, _Job] = {}
        self._unsaved: dict[str, audit_pb2.Audit] = {}  # ended audits whose final state the store refused
        self._tasks: set[asyncio.Task] = set()
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pruner: asyncio.Task | None = None
        self._closing = False

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def available(self) -> bool:
        """False when the audit database could not be opened: every audit call answers UNAVAILABLE."""
        return self._store.available

    def check_available(self) -> None:
        """Raise the store's error (UNAVAILABLE) when audits are disabled, before any work is done."""
        if isinstance(self._store, DisabledAuditStore):
            raise self._store.refusal()

    def recover(self) -> None:
        """Start-up housekeeping (blocking, quick): end what a previous process left live; prune."""
        if not self.available:
            return
        try:
            interrupted = self._store.mark_interrupted(INTERRUPTED_BY_RESTART)
            if interrupted:
                logger.warning("%d audits were queued or running when the server last stopped; marked FAILED "
                               "(%s)", interrupted, INTERRUPTED_BY_RESTART)
            self._prune()
        except AuditStoreError:  # logged by the store; audits that need the database will say so
            pass

    def start(self) -> None:
        """Bind to the running loop (call from it) and start the periodic retention pruning."""
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self._workers)
        if self._retention_days > 0:
            self._pruner = asyncio.create_task(self._prune_periodically())

    # Standard methods.

    def submit(self, kind: AuditKind, accepted: Accepted, data: Any) -> audit_pb2.Audit:
        """Queue an audit of ``kind`` (its spec accepted, its inputs read); returns it (QUEUED).

        Raises:
            Unavailable: the server is shutting down.
            ResourceExhausted: the queue is full.
        """
        if self._closing or self._loop is None:
            raise Unavailable("the server is shutting down; retry on another instance", "")
        waiting = sum(job.audit.state == QUEUED for job in self._live.values())
        if waiting >= self._queue_size:
            raise ResourceExhausted(f"the audit queue is full ({waiting} audits waiting); retry later", "")
        audit = audit_pb2.Audit(name=audit_name(uuid.uuid4().hex), state=QUEUED, spec=accepted.spec)
        audit.create_time.GetCurrentTime()
        self._store.insert(audit)
        job = _Job(audit=audit, kind=kind, accepted=accepted, data=data)
        self._live[job.id] = job
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._count_queued()
        logger.info("audit %s queued: %s", audit.name, kind.describe(accepted, data))
        return _copy(audit)

    def get(self, name: str, *, summary_only: bool = False) -> audit_pb2.Audit:
        audit_id = parse_name(name)
        job = self._live.get(audit_id)
        if job is not None:
            return _copy(job.audit)
        if audit_id in self._unsaved:
            return _copy(self._unsaved[audit_id])
        audit = self._store.get(audit_id, summary_only=summary_only)
        if audit is None:
            raise NotFound(f"name: no audit {name!r}", "name")
        return audit

    def list(self, *, page_size: int, page_token: str, state: int) -> tuple[list[audit_pb2.Audit], str]:
        """A page of audit summaries, newest first, and the next page's token ("" on the last page)."""
        if page_size < 0:
            raise InvalidArgument(f"page_size: must not be negative, got {page_size}", "page_size")
        if state not in audit_pb2.AuditState.values():
            raise InvalidArgument(f"state: unknown audit state {state}", "state")
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before = _parse_token(page_token, state) if page_token else None
        rows = self._store.list(limit=limit + 1, before_seq=before, state=state)
        page = rows[:limit]
        audits = []
        for _, audit in page:
            audit_id = audit.name.removeprefix("audits/")
            job = self._live.get(audit_id)
            if job is not None and job.audit.state == audit.state:
                audit = _copy(job.audit)
            elif audit_id in self._unsaved:
                audit = _copy(self._unsaved[audit_id])
            audits.append(audit)
        token = _make_token(page[-1][0], state) if len(rows) > limit else ""
        return audits, token

    async def cancel(self, name: str) -> audit_pb2.Audit:
        """Stop a queued (at once) or running (within seconds) audit; an ended one is returned as it is."""
        audit_id = parse_name(name)
        job = self._live.get(audit_id)
        if job is not None:
            if job.audit.state == QUEUED:
                await self._end(job, _Outcome(CANCELLED))
            else:
                job.cancel.cancel()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(job.ended.wait()), CANCEL_WAIT_SECONDS)
        return self.get(name, summary_only=True)

    def delete(self, name: str) -> None:
        audit_id = parse_name(name)
        job = self._live.get(audit_id)
        if job is not None:
            raise FailedPrecondition(f"name: audit {name!r} is {audit_pb2.AuditState.Name(job.audit.state)}; "
                                     "cancel it (and let it end) before deleting it", "name")
        deleted = self._store.delete(audit_id)
        if self._unsaved.pop(audit_id, None) is None and not deleted:
            raise NotFound(f"name: no audit {name!r}", "name")
        logger.info("audit %s deleted", name)

    async def watch(self, name: str) -> AsyncIterator[audit_pb2.WatchAuditResponse]:
        """The audit's current state, then every progress event until it ends (last: the final state)."""
        audit_id = parse_name(name)
        job = self._live.get(audit_id)
        if job is None:
            audit = self._unsaved.get(audit_id) or self._store.get(audit_id, summary_only=True)
            if audit is None:
                raise NotFound(f"name: no audit {name!r}", "name")
            yield _event(audit)
            return
        events: asyncio.Queue[audit_pb2.WatchAuditResponse] = asyncio.Queue()
        job.watchers.add(events)
        try:
            yield _event(job.audit)
            while True:
                event = await events.get()
                yield event
                if event.state in ENDED_STATES:
                    return
        finally:
            job.watchers.discard(events)

    async def shutdown(self, timeout: float) -> None:
        """Refuse new audits, stop every live one (FAILED "interrupted by shutdown") and close the store."""
        self._closing = True
        if self._pruner is not None:
            self._pruner.cancel()
        for job in list(self._live.values()):
            job.stop_reason = INTERRUPTED_BY_SHUTDOWN
            job.cancel.cancel()
            if job.audit.state == QUEUED:
                await self._end(job, _Outcome(FAILED, INTERRUPTED_BY_SHUTDOWN))
        pending = set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if pending:  # their threads still use the store: leave it open; the next start marks them
            logger.warning("%d audits did not stop in %gs; they will show as %r after the next start",
                           len(pending), timeout, INTERRUPTED_BY_RESTART)
        else:
            self._store.close()

    # The job itself.

    async def _run(self, job: _Job) -> None:
        assert self._slots is not None and self._loop is not None
        async with self._slots:
            if job.ending:  # cancelled (or shut down) while queued
                return
            job.audit.state = RUNNING
            job.audit.start_time.GetCurrentTime()
            job.running_since = time.monotonic()
            self._count_queued()
            with contextlib.suppress(AuditStoreError):  # logged by the store; the row stays QUEUED meanwhile
                self._store.save(job.audit)
            self._notify(job)
            logger.info("audit %s running", job.audit.name)
            timer = self._loop.call_later(self._timeout, self._expire, job)
            outcome = _Outcome(FAILED, INTERNAL_ERROR)
            try:
                outcome = await self._loop.run_in_executor(self._executor, self._execute, job)
            except asyncio.CancelledError:  # the loop is going away (shutdown)
                outcome = _Outcome(FAILED, job.stop_reason or INTERRUPTED_BY_SHUTDOWN)
                raise
            except Exception:  # the executor refused the job (shut down)
                logger.exception("audit %s could not run", job.audit.name)
            finally:
                timer.cancel()
                await asyncio.shield(self._end(job, outcome))

    def _execute(self, job: _Job) -> _Outcome:
        """Run the audit (worker thread)."""
        data = job.data
        assert data is not None
        try:
            report = job.kind.run(job.accepted, data, progress=self._progress_callback(job), cancel=job.cancel)
            if job.cancel.cancelled:  # stopped after the attack's last check: still honour it
                raise AttackCancelled("the audit was cancelled")
            return _Outcome(SUCCEEDED, report=report)
        except AttackCancelled:
            return _Outcome(CANCELLED) if job.stop_reason is None else _Outcome(FAILED, job.stop_reason)
        except (ServiceError, InvalidInputError) as exc:
            logger.info("audit %s failed: %s", job.audit.name, exc)
            return _Outcome(FAILED, str(exc))
        except Exception:
            logger.exception("audit %s failed unexpectedly", job.audit.name)
            return _Outcome(FAILED, INTERNAL_ERROR)

    def _progress_callback(self, job: _Job):
        loop = self._loop
        assert loop is not None

        def progress(stage: str, stage_fraction: float, fraction: float) -> None:  # worker thread
            now = time.monotonic()
            if stage == job.last_stage and now - job.last_sent < WATCH_INTERVAL_SECONDS and stage_fraction < 1.0:
                return
            job.last_stage, job.last_sent = stage, now
            loop.call_soon_threadsafe(self._on_progress, job, stage, stage_fraction, fraction)

        return progress

    def _on_progress(self, job: _Job, stage: str, stage_fraction: float, fraction: float) -> None:
        if job.ended.is_set() or job.audit.state != RUNNING:
            return
        current = job.audit.progress
        if stage == current.stage:
            stage_fraction = max(stage_fraction, current.stage_fraction)
        current.stage = stage
        current.stage_fraction = stage_fraction
        current.fraction = max(fraction, current.fraction)
        self._notify(job)
        now = time.monotonic()
        if now - job.last_persisted >= PERSIST_INTERVAL_SECONDS and not job.persist_failed:
            job.last_persisted = now
            try:
                self._store.save_progress(job.id, current)
            except AuditStoreError:  # logged by the store; watchers still get every event
                job.persist_failed = True

    def _expire(self, job: _Job) -> None:
        if not job.ended.is_set() and job.stop_reason is None:
            logger.warning("audit %s ran past its %gs time limit; stopping it", job.audit.name, self._timeout)
            job.stop_reason = TIME_LIMIT_EXCEEDED
            job.cancel.cancel()

    async def _end(self, job: _Job, outcome: _Outcome) -> None:
        """Record the final state (store first, then memory), tell the watchers and forget the inputs."""
        if job.ending:
            return
        job.ending = True
        job.data = None
        final = _copy(job.audit)
        final.state = outcome.state
        final.error = outcome.error
        final.end_time.GetCurrentTime()
        if outcome.report is not None:
            final.report.CopyFrom(outcome.report)
            final.progress.stage_fraction = 1.0
            final.progress.fraction = 1.0
        final = await self._persist_final(final)
        final.ClearField("report")  # the live copy stays small; readers go to the store from now on
        job.audit = final
        job.ended.set()
        self._notify(job)
        self._live.pop(job.id, None)
        self._count_ended(job, outcome if final.state == outcome.state else _Outcome(final.state, final.error))
        logger.info("audit %s %s%s", final.name, audit_pb2.AuditState.Name(final.state),
                    f": {final.error}" if final.error else "")

    async def _persist_final(self, final: audit_pb2.Audit) -> audit_pb2.Audit:
        """Write an ended audit; returns what was recorded (a report that could not be written fails it)."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._store.save, final)
            return final
        except AuditStoreError as exc:
            if not final.HasField("report"):
                error = exc
            else:  # the report is the large part: record the failure without it
                final.ClearField("report")
                final.state = FAILED
                final.error = f"report not saved: {exc}"
                try:
                    await loop.run_in_executor(None, self._store.save, final)
                    return final
                except AuditStoreError as again:
                    error = again
        logger.error("audit %s ended %s but could not be recorded (%s); it is answered from memory until the "
                     "server restarts", final.name, audit_pb2.AuditState.Name(final.state), error)
        self._unsaved[final.name.removeprefix("audits/")] = _copy(final)
        return final

    def _count_queued(self) -> None:
        self._metrics.audit_queue_depth.set(sum(job.audit.state == QUEUED for job in self._live.values()))

    def _count_ended(self, job: _Job, outcome: _Outcome) -> None:
        metrics = self._metrics
        metrics.audits.labels(audit_pb2.AuditState.Name(outcome.state).removeprefix("AUDIT_STATE_").lower()).inc()
        if job.running_since is not None:
            metrics.audit_seconds.observe(time.monotonic() - job.running_since)
        report = outcome.report
        if report is not None:  # only a succeeded audit has one
            for row in report.attacks:
                if row.HasField("reconstruction"):
                    metrics.audit_max_ssim.labels(attack=row.attack, bound=str(row.bound).lower()).observe(
                        row.reconstruction.max_ssim)
                elif row.HasField("membership"):
                    metrics.audit_membership_auc.labels(attack=row.attack).observe(row.membership.auc)
        self._count_queued()

    def _notify(self, job: _Job) -> None:
        event = _event(job.audit)
        for events in job.watchers:
            events.put_nowait(event)

    def _prune(self) -> int:
        if self._retention_days <= 0:
            return 0
        cutoff = time.time_ns() - int(self._retention_days * 86400 * 1e9)
        pruned = self._store.prune(cutoff)
        if pruned:
            logger.info("deleted %d audits that ended more than %g days ago", pruned, self._retention_days)
        return pruned

    async def _prune_periodically(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL_SECONDS)
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._prune)
            except Exception:
                logger.exception("pruning old audits failed")


def _event(audit: audit_pb2.Audit) -> audit_pb2.WatchAuditResponse:
    return audit_pb2.WatchAuditResponse(state=audit.state, progress=audit.progress, error=audit.error)


def _copy(audit: audit_pb2.Audit) -> audit_pb2.Audit:
    copy = audit_pb2.Audit()
    copy.CopyFrom(audit)
    return copy


def _make_token(seq: int, state: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}:{state}".encode()).decode()


def _parse_token(token: str, state: int) -> int:
    try:
        version, seq, token_state = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        if version != "v1":
            raise ValueError(version)
        seq_value, state_value = int(seq), int(token_state)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument("page_token: not a token this server made", "page_token") from None
    if not 0 < seq_value <= _MAX_SEQ:  # a forged number; SQLite cannot even compare one past int64
        raise InvalidArgument("page_token: not a token this server made", "page_token")
    if state_value != state:
        raise InvalidArgument("page_token: made for another state filter; list again from the first page",
                              "page_token")
    return seq_value
