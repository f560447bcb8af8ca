"""The messages users see: exceptions turned into one line, command-line parsers that fail in one line, and counts
with their noun in the right number."""

from __future__ import annotations

import argparse
from typing import Optional


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty. An OSError about a path
    reads 'PATH: reason' (or 'PATH → PATH2: reason' for a rename) rather than Python's "[Errno 2] …: 'PATH'"."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        path = f"{error.filename} → {error.filename2}" if error.filename2 is not None else str(error.filename)
        return f"{path}: {error.strerror}"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class DataError(ValueError):
    """A corpus problem, described in one line naming the file, line or config key."""


class UsageError(ValueError):
    """A bad option or value on a command line: the command prints it as one line on stderr and exits with 2.
    ``prog`` names the command when the error comes from its parser (the ``nmt`` dispatcher prints it first)."""

    def __init__(self, message: str, prog: Optional[str] = None) -> None:
        super().__init__(message)
        self.prog = prog


class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise UsageError (one line) instead of printing the usage block and exiting;
    ``--help`` still prints the help and exits 0. A command that does not catch it leaves it to ``nmt.cli.main``."""

    def error(self, message: str) -> None:
        raise UsageError(message, self.prog)


def plural(count: int, one: str, many: Optional[str] = None) -> str:
    """``count`` and its noun (with its verb, if given), e.g. '1 thread', '2 threads', or with ``many``
    plural(1, 'line is', 'lines are') → '1 line is'. ``many`` defaults to ``one`` + 's'."""
    return f"{count} {one if count == 1 else (many or one + 's')}"
