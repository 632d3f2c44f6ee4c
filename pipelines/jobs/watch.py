"""The watcher: follows a folder and appends radar files to the archive as they arrive.

A tick fires every ``interval_s``; each firing lists the
folder, picks the frames that are not yet valid in the archive and ingests
them with the same plain functions as the batch job (in the worker, no nested
pipeline). A file that cannot be read yet (still being copied) is retried on
the next polls and rejected, with a warning, after ``max_attempts``; a file
that fails its checks never blocks the good ones. The watch ends after
``duration_s``, or as soon as its ``stop`` event is set or its ``stop``
condition holds for the running totals (:mod:`nowcast.pipelines.jobs.ticks`).
"""

from __future__ import annotations

import dataclasses
import logging

import apache_beam as beam

from nowcast.pipelines.jobs.ingest import IngestSpec, check_item, ingest_items, new_time_axis
from nowcast.pipelines.jobs.ticks import Stop, run_streaming, ticks, timing_problem, write_totals
from nowcast.pipelines.plans.ingest import IngestError, frame_indices
from nowcast.pipelines.sources import get_source
from nowcast.pipelines.sources.base import SourceError, SourceItem
from nowcast.pipelines.stores.archive import DEFAULT_TIME_CHUNK, read_info, time_chunk_problem, valid_flags
from nowcast.pipelines.stores.groups import exists

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 1000  # polls a file may fail before it is rejected


@dataclasses.dataclass(frozen=True)
class WatchSpec:
    """A folder of radar files to follow.

    Attributes:
        archive: archive URL (created by the first file if missing).
        directory: folder to watch (searched recursively).
        fmt: radar format (knmi, bom, fmi, mch, odim).
        interval_s: seconds between polls.
        duration_s: stop after this many seconds; None runs until stopped.
        time_step: step of a new archive (default: the format's).
        time_chunk: frames per chunk of a new archive.
        max_attempts: polls a file may fail before it is rejected.
    """

    archive: str
    directory: str
    fmt: str
    interval_s: float = 5.0
    duration_s: float | None = None
    time_step: str | None = None
    time_chunk: int = DEFAULT_TIME_CHUNK
    max_attempts: int = 3

    def __post_init__(self) -> None:
        problem = timing_problem(self.interval_s, self.duration_s)
        if problem:
            raise IngestError(problem)
        if problem := time_chunk_problem(self.time_chunk):
            raise IngestError(problem)
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise IngestError(f"max_attempts {self.max_attempts} must be 1..{MAX_ATTEMPTS} polls")
        get_source(self.fmt, directory=self.directory)


@dataclasses.dataclass(frozen=True)
class WatchResult:
    polls: int
    frames_written: int
    files_rejected: int

    def summary(self) -> str:
        return (f"watched {self.polls} polls: {self.frames_written} frames appended, "
                f"{self.files_rejected} files rejected")


def pending_items(items: list[SourceItem], archive: str) -> list[SourceItem]:
    """Items whose frame is not yet valid in the archive (all of them if it does not exist)."""
    if not exists(archive):
        return items
    info = read_info(archive)
    valid = valid_flags(archive)
    in_range = [item for item in items if item.time >= info.start]
    return [item for index, item in frame_indices(in_range, info.start, info.time_step)
            if index >= len(valid) or not valid[index]]


def on_the_axis(items: list[SourceItem],
                spec: IngestSpec) -> tuple[list[SourceItem], list[tuple[SourceItem, str]]]:
    """The items the archive's time axis can hold, and the others with why (off its step, before its start).

    A batch ingest refuses such a file with the whole batch; a watcher must not: it would stop (or, for a
    file before the start, skip it without a word) while good files keep arriving. A new archive's axis is
    the one ingest would give it (:func:`~nowcast.pipelines.jobs.ingest.new_time_axis`).
    """
    if not items:
        return items, []
    if exists(spec.archive):
        info = read_info(spec.archive)
        start, step = info.start, info.time_step
    else:
        start, step = new_time_axis(spec, items)
    placed, refused = [], []
    for item in items:
        try:
            frame_indices([item], start, step)
            placed.append(item)
        except IngestError as error:
            refused.append((item, str(error)))
    return placed, refused


ZEROS = {"polls": 0, "frames_written": 0, "files_rejected": 0}


class _Poll(beam.DoFn):
    """On each tick: list the folder, ingest what is new, record running totals in the status file."""

    def __init__(self, spec: WatchSpec, status_path: str) -> None:
        self.spec = spec
        self.status_path = status_path

    def setup(self) -> None:
        self.failures: dict[str, int] = {}
        self.given_up: set[str] = set()
        self.totals = dict(ZEROS)

    def process(self, _tick: float):
        written = poll_once(self.spec, self.failures, self.given_up)
        self.totals.update(polls=self.totals["polls"] + 1,
                           frames_written=self.totals["frames_written"] + written,
                           files_rejected=len(self.given_up))
        write_totals(self.status_path, self.totals)
        yield written


def poll_once(spec: WatchSpec, failures: dict[str, int], given_up: set[str]) -> int:
    """One poll: ingest every new, readable frame; returns frames written."""
    source = get_source(spec.fmt, directory=spec.directory)
    try:
        listed = source.items()
    except SourceError as error:  # empty folder, or a name that is not the format's
        log.warning("poll of %s: %s", spec.directory, error)
        return 0
    ingest_spec = IngestSpec(archive=spec.archive, source=source, time_step=spec.time_step,
                             time_chunk=spec.time_chunk, check=False)
    listed, misplaced = on_the_axis(listed, ingest_spec)
    for item, problem in misplaced:
        if item.path not in given_up:
            given_up.add(item.path)
            log.warning("rejected %s: %s", item.path, problem)
    todo = [item for item in pending_items(listed, spec.archive) if item.path not in given_up]
    if not todo:
        return 0
    grid = read_info(spec.archive).grid if exists(spec.archive) else None
    good = []
    for item in todo:
        try:
            grid = grid or source.read_grid(item)  # a new archive takes the first readable grid
            problems = check_item(source, item, grid, source.fields())["problems"]
        except SourceError as error:
            problems = [str(error)]
        if not problems:
            good.append(item)
            failures.pop(item.path, None)
            continue
        failures[item.path] = failures.get(item.path, 0) + 1
        if failures[item.path] >= spec.max_attempts:
            given_up.add(item.path)
            log.warning("rejected %s after %d attempts: %s", item.path, failures[item.path], problems)
    if not good:
        return 0
    result = ingest_items(ingest_spec, good, runner=None)
    log.info("stream: %s", result.summary())
    return result.frames_written


def build(root: beam.Pipeline, spec: WatchSpec, status_path: str,
          stop_key: str | None = None) -> beam.PCollection:
    """The streaming graph: a tick every ``interval_s`` driving a poll."""
    polls = ticks(root, spec.interval_s, spec.duration_s, stop_key)
    return polls | "Poll" >> beam.ParDo(_Poll(spec, status_path))


def run_watch(spec: WatchSpec,
              stop: Stop[WatchResult] = None) -> WatchResult:
    """Runs the watcher on the local runner until ``duration_s`` passes (or forever), or it is stopped.

    Args:
        spec: the folder and the archive.
        stop: an Event that ends the watch once set, or a condition over the running totals
            (checked before every poll) that ends it once true, e.g.
            ``lambda totals: totals.frames_written >= 8``. The poll in progress finishes first.
    """
    return run_streaming(
        "nowcast-watch-", WatchResult, ZEROS,
        lambda pipeline, status_path, stop_key: build(pipeline, spec, status_path, stop_key), stop)
