"""Domain errors of instahide_ops, in one place."""

from __future__ import annotations


class InstaHideOpsError(Exception):
    """Base class of every error instahide_ops raises on purpose."""


class InvalidInputError(InstaHideOpsError, ValueError):
    """An argument is malformed or out of range; ``field`` names it (e.g. ``"images.shape"``)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message
