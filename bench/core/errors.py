"""User-facing errors.

A :class:`UserError` is anything a user can cause (bad path, unknown name, broken file, bad
value). The CLI prints its message as one line and exits with status 2, without a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input; the message names the problem and the fix."""

    exit_code = 2
