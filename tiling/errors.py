"""Errors raised for bad input: one line that names the file and the problem."""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad user input (a file, a parameter, a combination of them).

    The message is meant to be shown to a user as it is, on one line: the CLI prints it without a traceback
    and exits non-zero. When the problem is tied to a file, pass ``path`` so the message starts with it.
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        text = " ".join(message.split())
        super().__init__(f"{self.path}: {text}" if self.path else text)
