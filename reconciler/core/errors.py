"""Error types shared by every module.

``UserError`` is what a user-facing command raises for a problem the user can fix (bad input, missing file,
server down): the CLI prints its message, never a traceback, and exits with ``exit_code``.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. ``str(err)`` is the whole message shown to them."""

    exit_code: int = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
