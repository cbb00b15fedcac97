"""Errors that reach the user as one line.

Every failure caused by the user's input (a missing path, a bad config value,
an output that already exists) raises `UserError`. The CLI prints its message
on one line and exits non-zero without a traceback; Python callers can catch it.
"""


class UserError(Exception):
    """Bad input: the message says what was wrong and what to do."""

    exit_code = 2


class QualityError(UserError):
    """A transformed model failed its quality guard (see `compress.evaluate`)."""

    exit_code = 3


class DiskFullError(UserError):
    """The disk filled up while an output was written; the earlier output, if any, is intact."""

    exit_code = 4
