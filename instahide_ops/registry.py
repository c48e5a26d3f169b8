"""Registries: named entries of one kind (transforms, attacks), registered once and looked up by name.

Looking up an unknown name raises ``InvalidInputError`` listing the known ones, so a typo in a request or a
flag reaches its user as a clear INVALID_ARGUMENT (opacus's accountant registry works the same way).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from instahide_ops.errors import InvalidInputError

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Entries by name, in registration order.

    Args:
        kind: what the entries are, for messages ("attack", "transform").
        field: the field an unknown name is blamed on (``InvalidInputError.field``).
    """

    def __init__(self, kind: str, *, field: str) -> None:
        self.kind = kind
        self._field = field
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, entry: Entry) -> Entry:
        """Add ``entry`` under ``name``; ValueError when the name is taken."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> Entry:
        """The entry named ``name``; InvalidInputError listing the known names when there is none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise InvalidInputError(f"unknown {self.kind} {name!r}; expected one of {sorted(self._entries)}",
                                    field=self._field) from None

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)
