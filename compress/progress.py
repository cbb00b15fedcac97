"""Progress bars and log verbosity, set once by the CLI (or a Python caller)."""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

log = logging.getLogger("compress")

_show_progress = True


def configure(quiet: bool = False, verbose: bool = False) -> None:
    """Quiet hides progress bars and info logs; verbose adds debug logs."""
    global _show_progress
    _show_progress = not quiet
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def progress(iterable=None, **kwargs):
    """tqdm on stderr, hidden when quiet."""
    kwargs.setdefault("disable", not _show_progress)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
