"""Turning exceptions into the one-line messages users see."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class DataError(ValueError):
    """A corpus problem, described in one line naming the file, line or config key."""
