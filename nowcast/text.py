"""Counts in messages, in the number they have: "1 frame", "2 frames"."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, plural unless the count is one.

    >>> counted(1, "frame"), counted(3, "init time"), counted(1, "chunk read", "chunks read")
    ('1 frame', '3 init times', '1 chunk read')
    """
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
