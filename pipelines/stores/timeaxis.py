"""Regular time axes: ISO 8601 steps and index arithmetic.

The archive's time axis is regular, so a frame's position follows from its
timestamp alone: ``index = (time - start) / step``. Keeping that arithmetic in
one place lets the ingest, window and scoring jobs agree without reading the
time coordinate.
"""

from __future__ import annotations

import contextlib
import datetime
import re
from typing import Any

import numpy as np

from nowcast.errors import InputError

TIME_UNITS = "seconds since 1970-01-01"  # how every store encodes its time coordinates
DEFAULT_TIME_CHUNK = 24  # frames per chunk of an archive's time axis (two hours of 5-minute frames)
MAX_TIME_CHUNK = 10_000  # a bound, so a typo cannot ask for a chunk no memory holds
_ISO_DURATION = re.compile(
    r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)


def parse_time_step(step: str) -> np.timedelta64:
    """Parses an ISO 8601 duration such as ``PT5M`` into a ``timedelta64[s]``.

    >>> parse_time_step("PT5M")
    np.timedelta64(300,'s')
    """
    match = _ISO_DURATION.match(step or "")
    if not match or not any(match.groupdict().values()) or step.endswith("T"):  # 'P1DT': T needs a time
        raise InputError(
            f"time step {step!r} is not an ISO 8601 duration such as 'PT5M' or 'PT1H'; "
            "give days, hours, minutes or seconds, e.g. 'PT10M'"
        )
    parts = {k: int(v or 0) for k, v in match.groupdict().items()}
    seconds = parts["days"] * 86400 + parts["hours"] * 3600 + parts["minutes"] * 60 + parts["seconds"]
    if seconds <= 0:
        raise InputError(f"time step {step!r} must be positive")
    return np.timedelta64(seconds, "s")


def format_time_step(step: np.timedelta64) -> str:
    """Formats a positive timedelta as the shortest ISO 8601 duration.

    >>> format_time_step(np.timedelta64(600, "s"))
    'PT10M'
    """
    seconds = int(step / np.timedelta64(1, "s"))
    if seconds <= 0:
        raise InputError(f"time step must be positive, got {step}")
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = "P" + (f"{days}D" if days else "")
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (
        f"{secs}S" if secs else ""
    )
    return text + ("T" + clock if clock else "")


def to_datetime64(value: Any) -> np.datetime64:
    """Normalises a timestamp (str, datetime, numpy) to ``datetime64[s]``, UTC; an offset in an ISO
    string is applied rather than left to numpy, which warns about it.

    >>> to_datetime64("2024-01-01T01:00+01:00"), to_datetime64("2024-01-01T00:00Z")
    (np.datetime64('2024-01-01T00:00:00'), np.datetime64('2024-01-01T00:00:00'))
    """
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # not a time Python reads: numpy says whether it reads it
            parsed = datetime.datetime.fromisoformat(value)
            # what Python read, not the text: numpy takes the basic form's "T0100" for a zone and warns
            value = parsed.astimezone(datetime.UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
    return np.datetime64(value, "s")


def time_index(time: object, start: object, step: np.timedelta64) -> int:
    """Position of ``time`` on the regular axis that begins at ``start``.

    Raises:
        ValueError: if ``time`` falls between two steps of the axis.
    """
    offset = to_datetime64(time) - to_datetime64(start)
    index, remainder = divmod(int(offset / np.timedelta64(1, "s")), int(step / np.timedelta64(1, "s")))
    if remainder:
        raise InputError(
            f"time {to_datetime64(time)} is not on the archive's {format_time_step(step)} axis "
            f"that starts at {to_datetime64(start)}; resample the input to that step first"
        )
    return index


def time_values(start: object, step: np.timedelta64, length: int, offset: int = 0) -> np.ndarray:
    """The timestamps ``start + (offset + i) * step`` for ``i < length``."""
    base = to_datetime64(start)
    return base + (np.arange(offset, offset + length, dtype="int64") * step)


def epoch_seconds(times: np.ndarray) -> np.ndarray:
    """Timestamps as int64 seconds since 1970-01-01 (:data:`TIME_UNITS`), as stores encode them."""
    return (np.asarray(times).astype("datetime64[s]") - np.datetime64(0, "s")).astype("int64")


def step_minutes(step: str | np.timedelta64) -> float:
    """A time step (ISO 8601 text or timedelta) in minutes, the unit lead times are reported in.

    >>> step_minutes("PT10M"), step_minutes(np.timedelta64(90, "s"))
    (10.0, 1.5)
    """
    delta = parse_time_step(step) if isinstance(step, str) else step
    return float(delta / np.timedelta64(1, "s")) / 60
