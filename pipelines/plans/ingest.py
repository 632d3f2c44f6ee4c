"""Ingest planning: where each frame goes in the archive, which chunks a batch touches, what is wrong.

Plain functions over source items and numpy arrays; no Beam, no store writes.
The ingest job (:mod:`nowcast.pipelines.jobs.ingest`) runs them on the
driver (placing and grouping frames) and on workers (checking one frame).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from nowcast.errors import InputError
from nowcast.pipelines.sources.base import SourceItem
from nowcast.pipelines.stores.archive import VALID, ArchiveInfo, FieldSpec, same_units, stat_names
from nowcast.pipelines.stores.timeaxis import format_time_step, time_index

# empty steps one ingest may add to an axis: two years of 5-minute steps, so a year-long axis with only
# its last day ingested (bench.scale's aged stores) passes (a time stamp decades off
# once grew an axis to millions of steps, and the ingest ran out of memory writing its chunks)
MAX_EMPTY_STEPS = 210_240


class IngestError(InputError):
    """A batch that cannot be ingested; the archive was left unchanged."""


@dataclasses.dataclass(frozen=True)
class ChunkTask:
    """One archive time chunk to (re)write, with the frames that go into it.

    ``rebuild``: the chunk is damaged (nowcast.pipelines.stores.integrity), so
    it is written from these frames alone, without reading what it holds.
    """

    first_index: int
    count: int
    frames: tuple[tuple[int, SourceItem], ...]
    rebuild: bool = False


def frame_indices(items: Sequence[SourceItem], start: np.datetime64,
                  step: np.timedelta64) -> list[tuple[int, SourceItem]]:
    """Archive index of every item; refuses items off the axis or before its start."""
    indexed = []
    for item in items:
        try:
            index = time_index(item.time, start, step)
        except ValueError as error:
            raise IngestError(f"{item.path}: {error}") from error
        if index < 0:
            raise IngestError(
                f"{item.path}: time {item.time} is before the archive start {start}; ingest "
                f"into a new archive created with start <= {item.time} (--start), or drop the file"
            )
        indexed.append((index, item))
    return sorted(indexed, key=lambda pair: pair[0])


def check_axis_growth(indexed: Sequence[tuple[int, SourceItem]], length: int, start: np.datetime64,
                      step: np.timedelta64) -> None:
    """Refuses frames that would add more than :data:`MAX_EMPTY_STEPS` empty steps to an axis of
    ``length`` slots (0: a new archive from ``start``), naming the widest gap: a wrong time stamp or
    ``--start`` rather than data.

    >>> item = lambda t: SourceItem(np.datetime64(t, "s"), f"{t[:4]}.nc")
    >>> step = np.timedelta64(300, "s")
    >>> check_axis_growth([(0, item("2024-01-01"))], 0, np.datetime64("2024-01-01", "s"), step)
    >>> check_axis_growth([(0, item("1800-01-01")), (70_000_000, item("2466-01-01"))], 0,
    ...                   np.datetime64("1800-01-01", "s"), step)
    Traceback (most recent call last):
    ...
    nowcast.pipelines.plans.ingest.IngestError: between 1800.nc (...) and 2466.nc (...) lie 69999999 empty ...
    """
    beyond = [(index, item) for index, item in indexed if index >= length]
    if not beyond:
        return
    empty = beyond[-1][0] + 1 - length - len({index for index, _ in beyond})
    if empty <= MAX_EMPTY_STEPS:
        return
    before = (f"the archive's last step ({start + (length - 1) * step})" if length
              else f"the new archive's start ({start})")
    edges = [(length - 1, before)] + [(index, f"{item.path} ({item.time})") for index, item in beyond]
    gap, first, second = max((b[0] - a[0] - 1, a[1], b[1]) for a, b in itertools.pairwise(edges))
    raise IngestError(f"between {first} and {second} lie {gap} empty {format_time_step(step)} steps; this "
                      f"ingest would add {empty} empty steps to the axis, more than the {MAX_EMPTY_STEPS} "
                      "(two years of 5-minute steps) one ingest may add. Is a time stamp wrong? Fix it, or "
                      "ingest those frames into an archive of their own")


def plan_chunks(indexed: Sequence[tuple[int, SourceItem]], time_chunk: int,
                length: int) -> list[ChunkTask]:
    """Groups indexed frames by archive time chunk (one task per touched chunk)."""
    by_chunk: dict[int, list[tuple[int, SourceItem]]] = {}
    for index, item in indexed:
        by_chunk.setdefault(index // time_chunk, []).append((index, item))
    tasks = []
    for chunk, frames in sorted(by_chunk.items()):
        first = chunk * time_chunk
        tasks.append(ChunkTask(first, min(time_chunk, length - first), tuple(frames)))
    return tasks


def check_frame(item: SourceItem, fields: Sequence[FieldSpec],
                grid_problem: str | None, data: dict[str, np.ndarray]) -> list[str]:
    """Problems with one frame's data (empty list if it can be ingested)."""
    problems = []
    if grid_problem:
        problems.append(f"{item.path}: grid differs from the archive's: {grid_problem}; "
                        "ingest it into an archive on its own grid")
    for field in fields:
        if field.name not in data:
            problems.append(f"{item.path}: variable {field.name!r} missing")
            continue
        values = data[field.name]
        infinite = int(np.isinf(values).sum())
        if infinite:  # they would pass the range checks below and poison every statistic downstream
            problems.append(f"{item.path}: {infinite} infinite values of {field.name}; mask them (NaN: "
                            "unobserved) or fix them before ingest")
            continue
        if field.valid_min is not None and np.nanmin(values, initial=np.inf) < field.valid_min:
            count = int(np.sum(values < field.valid_min))
            problems.append(
                f"{item.path}: {count} values of {field.name} below its valid_min {field.valid_min} "
                f"{field.units} (lowest {np.nanmin(values):g}); fix or mask them before ingest")
        if field.valid_max is not None and np.nanmax(values, initial=-np.inf) > field.valid_max:
            count = int(np.sum(values > field.valid_max))
            problems.append(
                f"{item.path}: {count} values of {field.name} above its valid_max {field.valid_max:g} "
                f"{field.units} (highest {np.nanmax(values):g}); fix or mask them before ingest, or move "
                "the file out to ingest its frame as missing")
    return problems


def check_field_names(fields: Sequence[FieldSpec], where: str) -> None:
    """Refuses a variable named like an array the archive keeps beside the variables (``valid``, a
    coordinate, another variable's statistics such as ``t_mean``): it failed in the write, after the
    new archive was created, with a Beam traceback or a damaged archive."""
    names = [field.name for field in fields]
    kept = {VALID, "time", "y", "x", "crs", "latitude", "longitude"}
    kept |= {stat for field in fields for stat in stat_names(field)}
    clashes = [name for name in names if name in kept]
    if clashes:
        raise IngestError(f"{where}: variables {clashes} are named like arrays the archive keeps beside its "
                          f"variables ({VALID}, the coordinates, and per variable <name>_mean, <name>_max, "
                          "<name>_finite_fraction, <name>_fraction_above); leave them out (--variables with "
                          "the others) or rename them in the files")


def check_fields(info: ArchiveInfo, fields: Sequence[FieldSpec], where: str) -> None:
    """Refuses a source whose variables or units differ from the archive's; ``where`` names the input."""
    missing = sorted({field.name for field in info.fields} - {field.name for field in fields})
    if missing:  # the write needs every variable of the archive's chunks: a KeyError after the axis grew
        raise IngestError(f"{where}: the archive {info.url} holds {[f.name for f in info.fields]}, this "
                          f"input lacks {missing}; ingest every variable the archive holds (--variables "
                          f"{' '.join(f.name for f in info.fields)}), or use another archive")
    for field in fields:
        stored = info.field(field.name)
        if not same_units(stored.units, field.units):
            raise IngestError(f"{where}: {field.name} is in {field.units!r} but the archive stores "
                              f"{stored.units!r}; convert the input or use another archive")
