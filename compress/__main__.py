"""`python -m compress` is the same as the `compress` command."""

from .cli import entry_point

entry_point()
