"""The watcher: follows a folder and appends radar files to the archive as they arrive.

A tick fires every ``interval_s``; each firing lists the
folder, picks the frames that are not yet valid in the archive and ingests
them with the same plain functions as the batch job (in the worker, no nested
pipeline). A file that cannot be read yet (still being copied) is retried on
the next polls and rejected, with a warning, after ``max_attempts``; a file
that fails its checks never blocks the good ones: files are listed one by
one, two files at the same time are both held back (with a warning) until one
is removed, and a rejected file is tried again once it changes (size or
modification time: copied again, repaired). The watch ends after
``duration_s``, or as soon as its ``stop`` event is set or its ``stop``
condition holds for the running totals (:mod:`nowcast.pipelines.jobs.ticks`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam

from nowcast.errors import InputError
from nowcast.pipelines.jobs.ingest import (
    IngestSpec,
    archive_series,
    check_item,
    check_start,
    file_series,
    ingest_items,
    new_time_axis,
    series_problem,
    stated_step_problem,
)
from nowcast.pipelines.jobs.ticks import Stop, run_streaming, ticks, timing_problem, write_totals
from nowcast.pipelines.plans.ingest import IngestError, frame_indices
from nowcast.pipelines.sources import FORMATS, folder_source
from nowcast.pipelines.sources.base import (
    FolderSource,
    SourceError,
    SourceItem,
    file_signature,
    most_common_spacing,
    most_common_step,
    step_from_spacing,
)
from nowcast.pipelines.stores.archive import DEFAULT_TIME_CHUNK, read_info, time_chunk_problem, valid_flags
from nowcast.pipelines.stores.groups import exists
from nowcast.pipelines.stores.timeaxis import format_time_step, parse_time_step
from nowcast.text import counted

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 1000  # polls a file may fail before it is rejected
WATCH_FORMATS = (*FORMATS, "netcdf")


@dataclasses.dataclass(frozen=True)
class WatchSpec:
    """A folder of radar files to follow.

    Attributes:
        archive: archive URL (created by the first file if missing).
        directory: folder to watch (searched recursively).
        fmt: radar format (knmi, bom, fmi, mch, odim) or netcdf.
        interval_s: seconds between polls.
        duration_s: stop after this many seconds; None runs until stopped.
        time_step: step of a new archive (default: the format's).
        time_chunk: frames per chunk of a new archive.
        start: first time of a new archive (default: the first file's of the first poll that finds any;
            a file from before it that arrives later is refused, as before an existing archive's start).
        max_attempts: polls a file may fail before it is rejected.
        radar: the radar source's options (``product``, ``quantity``, ``zr_a``, ``zr_b``).
    """

    archive: str
    directory: str
    fmt: str
    interval_s: float = 5.0
    duration_s: float | None = None
    time_step: str | None = None
    time_chunk: int = DEFAULT_TIME_CHUNK
    start: str | None = None
    max_attempts: int = 3
    radar: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = timing_problem(self.interval_s, self.duration_s)
        if problem:
            raise IngestError(problem)
        if problem := time_chunk_problem(self.time_chunk):
            raise IngestError(problem)
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise IngestError(f"max_attempts {self.max_attempts} must be 1..{MAX_ATTEMPTS} polls")
        if self.time_step is not None:  # checked at the first file, after polling began
            try:
                parse_time_step(self.time_step)
            except InputError as error:
                raise IngestError(f"--time-step: {error}") from None
        if self.fmt not in WATCH_FORMATS:
            raise IngestError(f"watch --format {self.fmt!r}: a watched folder holds one of "
                              f"{', '.join(WATCH_FORMATS)}; name its format")
        if self.radar:  # checked before polling begins
            folder_source(self.directory, self.fmt, **self.radar)


@dataclasses.dataclass(frozen=True)
class WatchResult:
    polls: int
    frames_written: int
    files_rejected: int

    def summary(self) -> str:
        return (f"watched {counted(self.polls, 'poll')}: {counted(self.frames_written, 'frame')} appended, "
                f"{counted(self.files_rejected, 'file')} rejected")


def pending_items(items: list[SourceItem], archive: str) -> list[SourceItem]:
    """Items whose frame is not yet valid in the archive (all of them if it does not exist); the items
    are on its axis (:func:`on_the_axis`)."""
    if not exists(archive):
        return items
    info = read_info(archive)
    valid = valid_flags(archive)
    return [item for index, item in frame_indices(items, info.start, info.time_step)
            if index >= len(valid) or not valid[index]]


def on_the_axis(items: list[SourceItem],
                spec: IngestSpec) -> tuple[list[SourceItem], list[tuple[SourceItem, str]]]:
    """The items the archive's time axis can hold, and the others with why (off its step, before its start,
    or a file whose name states another step: a KNMI or MeteoSwiss accumulation of another period, a BoM
    product of another step).

    A batch ingest refuses such a file with the whole batch; a watcher must not: it would stop (or, for a
    file before the start, skip it without a word) while good files keep arriving. A new archive's axis is
    the one ingest would give it (:func:`~nowcast.pipelines.jobs.ingest.new_time_axis`). An hour's
    accumulation that arrived among 5-minute ones was ingested as a 5-minute frame (its mean rate over the
    hour), where the batch job refuses periods mixed.
    """
    if not items:
        return items, []
    if exists(spec.archive):
        info = read_info(spec.archive)
        start, step = info.start, info.time_step
        series = archive_series(spec.archive)
    else:
        start, step = new_time_axis(spec, items)
        series = file_series(spec.source, items[0].path)  # the one the new archive records
    placed, refused = [], []
    for item in items:
        try:
            problem = series_problem(series, spec.source, item.path)  # a RAC file among RAP ones
        except SourceError as error:  # an ODIM file read for its quantity, gone or rewritten since
            problem = str(error)
        if problem:
            refused.append((item, problem))
            continue
        problem = stated_step_problem(spec.source, item.path, step)
        if problem:
            refused.append((item, f"{problem}; watch its folder into an archive of its own"))
            continue
        try:
            frame_indices([item], start, step)
            placed.append(item)
        except IngestError as error:
            refused.append((item, str(error)))
    return placed, refused


WATCHED_AFTER_WRITE = 2000  # files whose changes after their ingest are told: a week of 5-minute files


@dataclasses.dataclass
class Rejections:
    """The files a watcher holds back: failed polls per file, and those given up on with the signature
    (:func:`~nowcast.pipelines.sources.base.file_signature`) they had then."""

    max_attempts: int
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    given_up: dict[str, tuple[object, ...] | None] = dataclasses.field(default_factory=dict)
    count: int = 0
    warned: set[str] = dataclasses.field(default_factory=set)
    # frames (path, index in the file) without an observed pixel, stored as missing: not read again until
    # their file changes (they stay not valid, so each poll rewrote their chunk)
    empty: dict[tuple[str, int], tuple[object, ...] | None] = dataclasses.field(default_factory=dict)
    # files whose frames were written, as they were then: one sent again, corrected, was ignored unsaid
    ingested: dict[str, tuple[object, ...] | None] = dataclasses.field(default_factory=dict)

    def failed(self, path: str, problem: SourceError | str) -> None:
        """One more failed poll of ``path``; after ``max_attempts`` it is given up on, with a warning."""
        self.failures[path] = self.failures.get(path, 0) + 1
        if self.failures[path] >= self.max_attempts:
            self.refuse(path, f"{problem} (after {self.failures[path]} attempts)")

    def refuse(self, path: str, problem: str) -> None:
        if path not in self.given_up:
            self.given_up[path] = _signature(path)
            self.count += 1
            log.warning("rejected %s: %s; it is tried again if it changes", path, problem)

    def passed(self, path: str) -> None:
        self.failures.pop(path, None)

    def written(self, paths: Iterable[str]) -> None:
        """The files of frames just written, each as it is now; the newest :data:`WATCHED_AFTER_WRITE`
        only (a re-send comes within hours; each is looked at on every poll)."""
        self.ingested.update((path, _signature(path)) for path in paths)
        for path in list(self.ingested)[:-WATCHED_AFTER_WRITE]:
            del self.ingested[path]

    def stored_empty(self, item: SourceItem) -> None:
        """``item``'s frame holds no observed pixel and was stored as missing: said once, not read again
        unless its file changes."""
        if (item.path, item.index_in_file) not in self.empty:
            self.empty[(item.path, item.index_in_file)] = _signature(item.path)
            log.warning("%s holds no observed pixel at %s (all NaN): stored as missing (valid=false); it is "
                        "read again if the file changes", item.path, item.time)

    def sent_again(self, paths: Iterable[str], pending: set[str]) -> None:
        """Tells of each of ``paths`` whose frames were written and that changed since: the archive keeps
        what was read first (a corrected re-send was ignored without a word). A file with frames still
        ``pending`` is growing (a NetCDF file a frame longer), not sent again."""
        for path in [path for path in paths if path in self.ingested]:
            now = _signature(path)
            if now is None:  # removed since the listing: cleaning up after ingest changes nothing
                continue
            if now != self.ingested[path]:
                self.ingested[path] = now
                if path not in pending:
                    log.warning("%s was written again after its frames were ingested; the archive keeps "
                                "what was read first: if it was corrected, ingest its folder with "
                                "--overwrite (or the file alone, moved into a folder of its own)", path)

    def listed(self, paths: list[str]) -> list[str]:
        """The listed paths not held back; a given-up file, or an empty frame's, that changed since, or
        vanished, is forgotten."""
        present = set(paths)
        for path in list(self.given_up):
            if path not in present:
                del self.given_up[path]
            elif _signature(path) != self.given_up[path]:  # a copy still arriving, or a file replaced
                del self.given_up[path]
                self.failures.pop(path, None)
                self.count -= 1  # the summary counts the files rejected for good
                log.info("%s changed since it was rejected: trying it again", path)
        for frame in list(self.empty):
            if frame[0] not in present or _signature(frame[0]) != self.empty[frame]:
                del self.empty[frame]
        return [path for path in paths if path not in self.given_up]

    def warn_once(self, message: str) -> None:
        if message not in self.warned:
            self.warned.add(message)
            log.warning("%s", message)


def _signature(path: str) -> tuple[object, ...] | None:
    try:
        return file_signature(path)
    except OSError:  # removed between the listing and now
        return None


def listed_items(source: FolderSource, rejections: Rejections) -> list[SourceItem]:
    """The frames of the folder's files, file by file, sorted by time.

    A file whose frames cannot be listed (no time in its name, an unreadable header) counts as a failed
    poll of that file alone; a time that two inputs claim is held back, with one warning, until one of them
    is removed: the batch job refuses the whole batch for either, which would stop a watcher for good.
    """
    try:
        paths = rejections.listed(source.files())
    except SourceError as error:  # no folder yet, or no file of the format in it: said once, not every poll
        rejections.warn_once(f"poll of {getattr(source, 'directory', source.name)}: {error}")
        return []
    items = []
    for path in paths:
        try:
            items += source.file_items(path)
        except SourceError as error:
            rejections.failed(path, error)
    by_time: dict[object, list[SourceItem]] = defaultdict(list)
    for item in items:
        by_time[item.time].append(item)
    for time, claims in by_time.items():
        if len(claims) > 1:
            inputs = " and ".join(f"{item.path} (#{item.index_in_file})" if item.index_in_file else item.path
                                  for item in claims)
            rejections.warn_once(f"time {time} appears in {inputs}: neither is ingested until one is "
                                 "removed")
    return sorted(claims[0] for claims in by_time.values() if len(claims) == 1)


ZEROS = {"polls": 0, "frames_written": 0, "files_rejected": 0}


class _Poll(beam.DoFn):
    """On each tick: list the folder, ingest what is new, record running totals in the status file."""

    def __init__(self, spec: WatchSpec, status_path: str) -> None:
        self.spec = spec
        self.status_path = status_path

    def setup(self) -> None:
        self.rejections = Rejections(self.spec.max_attempts)
        self.totals = dict(ZEROS)

    def process(self, _tick: float):
        written = poll_once(self.spec, self.rejections)
        self.totals.update(polls=self.totals["polls"] + 1,
                           frames_written=self.totals["frames_written"] + written,
                           files_rejected=self.rejections.count)
        write_totals(self.status_path, self.totals)
        yield written


def poll_once(spec: WatchSpec, rejections: Rejections) -> int:
    """One poll: ingest every new, readable frame; returns frames written."""
    source = folder_source(spec.directory, spec.fmt, **spec.radar)
    assert isinstance(source, FolderSource)
    listed = listed_items(source, rejections)
    step = _step(spec, source, listed)
    if listed and step is None and not exists(spec.archive):
        rejections.warn_once(f"{spec.directory}: too few frames so far to tell the input's time step (a "
                             "spacing seen twice: one alone may span a missing frame): waiting for more, or "
                             "give --time-step")
        return 0
    ingest_spec = IngestSpec(archive=spec.archive, source=source, time_step=step, time_chunk=spec.time_chunk,
                             start=None if exists(spec.archive) else spec.start, check=False)
    listed, misplaced = on_the_axis(listed, ingest_spec)
    for item, problem in misplaced:
        rejections.refuse(item.path, problem)
    pending = pending_items(listed, spec.archive)
    rejections.sent_again(dict.fromkeys(item.path for item in listed), {item.path for item in pending})
    todo = [item for item in pending if item.path not in rejections.given_up
            and (item.path, item.index_in_file) not in rejections.empty]
    if not todo:
        return 0
    grid = read_info(spec.archive).grid if exists(spec.archive) else None
    good: list[SourceItem] = []
    empty: list[SourceItem] = []  # frames without an observed pixel
    for item in todo:
        try:
            grid = grid or source.read_grid(item)  # a new archive takes the first readable grid
            report = check_item(source, item, grid, source.fields())
            problems = report["problems"]
        except SourceError as error:
            problems = [str(error)]
        if problems:
            rejections.failed(item.path, "; ".join(problems))
        else:
            good.append(item)
            rejections.passed(item.path)
            if report["all_nan"]:
                empty.append(item)
    if not good:
        return 0
    try:
        result = ingest_items(ingest_spec, good, runner=None)
    except SourceError:  # a file changed or vanished since its check: file by file, that one held back
        return sum(_ingest_file(ingest_spec, [item for item in good if item.path == path], rejections)
                   for path in dict.fromkeys(item.path for item in good))
    for item in empty:
        rejections.stored_empty(item)
    rejections.written(item.path for item in good if item not in empty)
    log.info("stream: %s", result.summary())
    return result.frames_written


def _ingest_file(spec: IngestSpec, items: list[SourceItem], rejections: Rejections) -> int:
    """Ingests one file's frames; a file that cannot be read now counts as a failed poll of it alone."""
    try:
        result = ingest_items(spec, items, runner=None)
    except SourceError as error:
        rejections.failed(items[0].path, error)
        return 0
    rejections.written([items[0].path])
    log.info("stream: %s", result.summary())
    return result.frames_written


def _step(spec: WatchSpec, source: FolderSource, listed: list[SourceItem]) -> str | None:
    """The time step a new archive gets: ``spec``'s, the format's, or the most common spacing of the files
    listed readable in this poll once it is seen twice (a NetCDF source's own step reads every file, a
    half-written one too, and stopped the watcher; ODIM files at 16:00 and 16:10 made a 10-minute archive
    that refused 16:05 for ever); None for an existing archive, whose step is its own, and while the
    spacing is not yet told."""
    if spec.time_step or exists(spec.archive):
        return spec.time_step
    if step_from_spacing(source):
        step, seen = most_common_spacing(item.time for item in listed)
        return format_time_step(step) if step is not None and seen >= 2 else None
    try:
        step = source.time_step()
    except SourceError:
        step = most_common_step(item.time for item in listed)
    return format_time_step(step) if step is not None else None


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
    if spec.start and exists(spec.archive):  # before polling begins
        check_start(spec.start, spec.archive, read_info(spec.archive).start)
    return run_streaming(
        "nowcast-watch-", WatchResult, ZEROS,
        lambda pipeline, status_path, stop_key: build(pipeline, spec, status_path, stop_key), stop)
