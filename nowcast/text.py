"""Words in messages and on pictures: counts in the number they have ("1 frame", "2 frames"), times in UTC."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, plural unless the count is one.

    >>> counted(1, "frame"), counted(3, "init time"), counted(1, "chunk read", "chunks read")
    ('1 frame', '3 init times', '1 chunk read')
    """
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def utc_stamp(value) -> str:
    """A time (``numpy.datetime64``, UTC) as the maps and messages show it: ``2024-01-01 00:05 UTC``.

    >>> import numpy as np
    >>> utc_stamp(np.datetime64("2024-01-01T00:05:30"))
    '2024-01-01 00:05 UTC'
    """
    import numpy as np

    return str(np.datetime_as_string(np.datetime64(value, "s"), unit="m")).replace("T", " ") + " UTC"
