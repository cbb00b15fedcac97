"""Ctrl-C while the command line is starting: one line and exit 130, whatever is being imported.

Importing torch, transformers and friends takes seconds, and a KeyboardInterrupt raised inside
those imports does not always reach us: transformers' lazy modules turned one into
"ModuleNotFoundError: Could not import module 'AutoTokenizer'" (exit 1), and others were
swallowed so the command ran on (measured: 3 of 12 signals sent at 0-2.75 s into the imports).
So while compress starts, Ctrl-C only takes note; the first checkpoint after the imports
(`started()`: loading a model, staging an output, the first progress bar, or the end of the
command) stops with the one line, before anything was read or written. A second Ctrl-C stops at
once. After `started()`, Ctrl-C raises KeyboardInterrupt as usual, so the work phase cleans up
(staged outputs are removed; see compress.saving).
"""

from __future__ import annotations

import os
import signal
import sys

MESSAGE = "interrupted while starting; nothing was done\n"
_pending = False


def _take_note(signum, frame) -> None:
    global _pending
    if _pending:
        sys.stderr.write(MESSAGE)
        sys.stderr.flush()
        os._exit(130)
    _pending = True


def defer_ctrl_c() -> None:
    """From now until `started()`, Ctrl-C is held back (a second one exits at once)."""
    try:
        signal.signal(signal.SIGINT, _take_note)
    except ValueError:  # not the main thread (compress used as a library from a thread): leave it alone
        pass


def interrupted_while_starting() -> bool:
    return _pending


def started() -> None:
    """The imports are done: a held-back Ctrl-C stops here; later ones raise KeyboardInterrupt."""
    if signal.getsignal(signal.SIGINT) is not _take_note:
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if _pending:
        sys.stderr.write(MESSAGE)
        sys.stderr.flush()
        sys.exit(130)
