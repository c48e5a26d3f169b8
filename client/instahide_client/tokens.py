"""Bearer tokens read from files, shared by the CLI and the server."""

from __future__ import annotations

import os


def read_token_file(path: str | os.PathLike) -> str:
    """The token in ``path``, surrounding whitespace removed.

    Raises:
        ValueError: the file cannot be read or holds only whitespace (the message names the file,
            never its content).
    """
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {os.fspath(path)}: {exc.strerror or exc}") from None
    if not token:
        raise ValueError(f"the token file {os.fspath(path)} is empty")
    return token
