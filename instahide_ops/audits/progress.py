"""Progress reports and cancellation shared by every attack stage.

An attack calls ``tracker.stage(name)`` once per stage and ``report(fraction)`` inside its loops;
each report checks the cancel token, so a cancelled attack stops at its next report (within a
fraction of a second on the stages' loop granularity).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from instahide_ops.errors import InstaHideOpsError

ProgressCallback = Callable[[str, float], None]
"""Called with (stage name, fraction of that stage done in [0, 1])."""


class AttackCancelled(InstaHideOpsError):
    """The attack was stopped through its cancel token."""


class CancelToken:
    """A flag another thread sets to stop an attack at its next progress report."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise AttackCancelled("the attack was cancelled")


class StageTracker:
    """Times stages, forwards progress to a callback and honours a cancel token."""

    def __init__(self, callback: ProgressCallback | None = None, cancel: CancelToken | None = None) -> None:
        self._callback = callback
        self._cancel = cancel or CancelToken()
        self._stage = ""
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[Callable[[float], None]]:
        """Run one stage: yields ``report(fraction)``; the stage's seconds land in ``self.seconds``."""
        self._stage = name
        start = time.perf_counter()
        self.report(0.0)
        try:
            yield self.report
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.report(1.0)

    def report(self, fraction: float) -> None:
        """Say how far the current stage is; raises AttackCancelled once cancelled."""
        self._cancel.raise_if_cancelled()
        if self._callback is not None:
            self._callback(self._stage, min(max(float(fraction), 0.0), 1.0))
