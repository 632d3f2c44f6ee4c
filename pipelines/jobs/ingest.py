"""Ingest: frames from a source (radar files, NetCDF, synthetic) into archive.zarr.

The job runs in three steps, each safe to repeat:

1. **Check** (Beam, one element per frame, skipped for trusted sources): read
   every frame, compare its grid with the archive's and its values with the
   field's physical range. Any problem refuses the whole batch before a byte
   is written, so a bad file never leaves a half-updated archive.
2. **Prepare** (driver, metadata only): create the archive from a template,
   or extend its time axis to cover the batch.
3. **Write** (Beam, one element per archive time chunk): read the frames of
   that chunk, merge them with frames already in the chunk, write the whole
   chunk, its statistics and finally its ``valid`` flags. No frame data is
   shuffled: elements carry only file names.

Steps 2 and 3 hold the archive's writers' lock
(:mod:`nowcast.pipelines.stores.lock`): two ingests into one archive run one
after the other, the second planning from what the first wrote.

A frame already ``valid`` is skipped unless ``overwrite`` is set, so reruns
and appends write only what is new, and a rerun after a crash redoes exactly
the chunks whose flags were never set. Since every chunk is written whole
from deterministic inputs, the store ends byte-identical to an uninterrupted
run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from typing import TypedDict

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from nowcast.pipelines.jobs.runners import RunnerOptions, run_pipeline
from nowcast.pipelines.plans.ingest import (
    ChunkTask,
    IngestError,
    check_axis_growth,
    check_field_names,
    check_fields,
    check_frame,
    frame_indices,
    plan_chunks,
)
from nowcast.pipelines.sources.base import (
    FolderSource,
    Source,
    SourceError,
    SourceItem,
    most_common_spacing,
    sorted_unique,
    step_from_spacing,
)
from nowcast.pipelines.stores.archive import (
    DEFAULT_TIME_CHUNK,
    FRAME_DIMS,
    VALID,
    ZSTD_LEVEL,
    ArchiveError,
    ArchiveInfo,
    FieldSpec,
    InterruptedExtensionError,
    check_chunk_size,
    complete_extension,
    create_archive,
    extend_time,
    read_info,
    time_chunk_problem,
    valid_flags,
    write_block,
)
from nowcast.pipelines.stores.grid import Grid
from nowcast.pipelines.stores.groups import (
    CHECK,
    array,
    arrays_along,
    check_suffix,
    consolidate_if_behind,
    dimension_names,
    exists,
    filesystem,
    is_local,
    local_path,
    open_group,
    remove_untouched,
    storage_errors,
)
from nowcast.pipelines.stores.integrity import time_chunk_stored, unreadable
from nowcast.pipelines.stores.lock import Fence, held_fence, store_lock
from nowcast.pipelines.stores.space import check_frames_fit, free_bytes
from nowcast.pipelines.stores.timeaxis import (
    epoch_seconds,
    format_time_step,
    parse_time_step,
    time_index,
    time_values,
    to_datetime64,
)
from nowcast.text import counted

log = logging.getLogger(__name__)
NAMESPACE = "nowcast.ingest"
# the Beam counter of each count write_chunk returns
WRITE_COUNTERS = {"written": "frames_written", "skipped": "frames_skipped", "missing": "frames_missing",
                  "chunks": "chunks_written", "bytes": "bytes_written"}


@dataclasses.dataclass(frozen=True)
class IngestSpec:
    """What to ingest where; validated once, at construction.

    Attributes:
        archive: archive URL; created on first ingest.
        source: where frames come from (nowcast.pipelines.sources).
        time_step: ISO 8601 step of the archive when it is created; defaults to
            the source's native step.
        start: first timestamp of a new archive; defaults to the first frame.
            Frames before an existing archive's start are refused.
        time_chunk: frames per chunk of a new archive.
        spatial_chunks: (y, x) chunk of a new archive; default the whole grid.
        overwrite: rewrite frames that are already valid (default: skip them).
        check: read and check every frame before writing (default: unless the
            source is trusted, like the synthetic generator).
        repair: rewrite only the archive's damaged time chunks
            (nowcast.pipelines.stores.integrity) from this batch's frames.
    """

    archive: str
    source: Source
    time_step: str | None = None
    start: str | None = None
    time_chunk: int = DEFAULT_TIME_CHUNK
    spatial_chunks: tuple[int, int] | None = None
    overwrite: bool = False
    check: bool | None = None
    repair: bool = False

    def __post_init__(self) -> None:
        if self.repair and self.overwrite:
            raise IngestError("give --repair or --overwrite, not both: --repair rewrites only damaged chunks")
        if problem := time_chunk_problem(self.time_chunk):
            raise IngestError(problem)
        if self.time_step is not None:
            parse_time_step(self.time_step)
        if self.start is not None:
            try:
                to_datetime64(self.start)
            except ValueError as error:
                raise IngestError(f"--start {self.start!r} is not a timestamp; give one like "
                                  "2024-01-01T00:00 (UTC)") from error

    @property
    def needs_check(self) -> bool:
        return (not getattr(self.source, "trusted", False)) if self.check is None else self.check


@dataclasses.dataclass(frozen=True)
class IngestResult:
    """Counts of one ingest run."""

    archive: str
    frames_in_batch: int
    frames_written: int
    frames_skipped: int
    frames_missing: int
    chunks_written: int
    time_length: int
    repair: bool = False

    def summary(self) -> str:
        if self.repair:  # the counts of the damaged chunks only: "0 already present" read as data lost
            if not self.chunks_written:
                return f"repair: no damaged chunk in {self.archive}; nothing was rewritten"
            return (f"repaired {counted(self.chunks_written, 'damaged chunk')} of {self.archive} "
                    f"({counted(self.frames_written, 'frame')} rewritten, {self.frames_missing} missing or "
                    "all-NaN)")
        return (f"ingested {counted(self.frames_written, 'frame')} into {self.archive} "
                f"({self.frames_skipped} already present, {self.frames_missing} missing or all-NaN, "
                f"{counted(self.chunks_written, 'chunk')} written; archive now "
                f"{counted(self.time_length, 'step')})")


# ---------------------------------------------------------------- the work of one element

class FrameReport(TypedDict):
    """One frame's check, as a worker writes it (JSON): which frame, its problems, whether it is all-NaN,
    and its variables without data."""

    item: str
    problems: list[str]
    all_nan: bool
    empty: list[str]


def check_item(source: Source, item: SourceItem, grid: Grid, fields: Sequence[FieldSpec]) -> FrameReport:
    """Reads one frame and reports its problems, whether it is all-NaN, and its variables without data."""
    try:
        grid_problem = grid.mismatch(source.read_grid(item))
        data = source.read(item)
        problems = check_frame(item, fields, grid_problem, data)
        empty = sorted(name for name, v in data.items() if not np.isfinite(v).any())
        all_nan = len(empty) == len(data)
    except SourceError as error:
        problems, empty, all_nan = [str(error)], [], False
    return {"item": f"{item.path} at {item.time}", "problems": problems, "all_nan": all_nan,
            "empty": [] if all_nan else empty}


def write_chunk(archive: str, source: Source, task: ChunkTask, overwrite: bool) -> dict[str, int]:
    """Merges a chunk's new frames with its valid ones and writes it whole.

    Returns counts (written, skipped, missing, chunks, bytes). Writes nothing
    when every frame of the task is already valid and ``overwrite`` is off.
    """
    group = open_group(archive, "r+", error=ArchiveError)
    region = slice(task.first_index, task.first_index + task.count)
    present = (np.zeros(task.count, bool) if task.rebuild
               else np.asarray(array(group, VALID)[region], dtype=bool))
    todo = [(i, item) for i, item in task.frames
            if overwrite or task.rebuild or not present[i - task.first_index]]
    counts = {"written": 0, "skipped": len(task.frames) - len(todo), "missing": 0, "chunks": 0, "bytes": 0}
    if todo:
        fields = {name: arr for name, arr in group.arrays() if dimension_names(arr) == FRAME_DIMS}
        blocks = {name: (np.asarray(arr[region]) if present.any()
                         else np.full((task.count, *arr.shape[1:]), np.nan, "float32"))
                  for name, arr in fields.items()}
        for index, item in todo:
            offset = index - task.first_index
            data = source.read(item)
            # a frame with data in any variable is kept: one empty variable is unobserved, not a lost frame
            has_data = any(np.isfinite(data[name]).any() for name in fields)
            for name in fields:
                blocks[name][offset] = data[name]
            present[offset] = has_data
            counts["written" if has_data else "missing"] += 1
        counts["bytes"] = write_block(archive, task.first_index, blocks, present)
        counts["chunks"] = 1
    log.info("chunk at %d: %s", task.first_index, counts)
    return counts


# ---------------------------------------------------------------- Beam

class _CheckFrame(beam.DoFn):
    """Checks one frame and records the report as a small JSON object under ``report_dir`` (any URL)."""

    def __init__(self, source: Source, fields: tuple[FieldSpec, ...], grid: Grid,
                 report_dir: str) -> None:
        self.source = source
        self.fields = fields
        self.grid = grid
        self.report_dir = report_dir
        self.checked = Metrics.counter(NAMESPACE, "frames_checked")

    def process(self, item: SourceItem) -> Iterator[int]:
        report = check_item(self.source, item, self.grid, self.fields)
        self.checked.inc()
        # a name's bytes as the file system gave them (a name that is not UTF-8 was a UnicodeEncodeError)
        name = hashlib.sha1(os.fsencode(f"{item.path}#{item.index_in_file}")).hexdigest() + ".json"
        fs, folder = filesystem(self.report_dir)
        fs.makedirs(folder, exist_ok=True)  # a local folder must exist; on an object store a no-op
        with fs.open(f"{folder}/{name}", "w") as handle:
            json.dump(report, handle)
        yield len(report["problems"])


class CheckFrames(beam.PTransform):
    """Reads and checks every item once; each report lands as a JSON object under ``report_dir``."""

    def __init__(self, spec: IngestSpec, items: Sequence[SourceItem], fields: tuple[FieldSpec, ...],
                 grid: Grid, report_dir: str) -> None:
        super().__init__()
        if not items:
            raise IngestError(f"source {spec.source.name} has no frames to check")
        self.items, self.check = list(items), _CheckFrame(spec.source, fields, grid, report_dir)

    def expand(self, root: beam.pvalue.PBegin) -> beam.PCollection:
        return root | "Items" >> beam.Create(self.items) | "Check" >> beam.ParDo(self.check)


class _WriteChunk(beam.DoFn):
    """Reads the frames of one archive time chunk and writes the chunk whole."""

    def __init__(self, archive: str, source: Source, overwrite: bool, fence: Fence | None = None) -> None:
        self.archive = archive
        self.source = source
        self.overwrite = overwrite
        self.fence = fence  # the archive's lock, checked before each chunk
        self.counters = {count: Metrics.counter(NAMESPACE, name) for count, name in WRITE_COUNTERS.items()}

    def process(self, task: ChunkTask) -> Iterator[dict[str, int]]:
        if self.fence is not None:
            self.fence.check()
        counts = write_chunk(self.archive, self.source, task, self.overwrite)
        for name, counter in self.counters.items():
            counter.inc(counts[name])
        yield counts


class WriteChunks(beam.PTransform):
    """The write step: one element per archive time chunk, each chunk written whole by one worker."""

    def __init__(self, spec: IngestSpec, tasks: Sequence[ChunkTask]) -> None:
        super().__init__()
        starts = [task.first_index for task in tasks]
        if len(set(starts)) != len(starts):
            raise IngestError("two tasks write one archive chunk (a planning bug); plan with plan_chunks")
        self.tasks = list(tasks)
        self.write = _WriteChunk(spec.archive, spec.source, spec.overwrite, held_fence(spec.archive))

    def expand(self, root: beam.pvalue.PBegin) -> beam.PCollection:
        # Create's own reshuffle spreads elements over the multi-process runner's workers; a
        # Create(reshuffle=False) | Reshuffle() ran them one at a time there (docs/ingest.md).
        return root | "ChunkTasks" >> beam.Create(self.tasks) | "WriteChunks" >> beam.ParDo(self.write)


# ---------------------------------------------------------------- the job

def reference_grid(spec: IngestSpec, first: SourceItem, info: ArchiveInfo | None) -> Grid:
    """The grid every frame must be on: the archive's (``info``, read once before the checks, which other
    writers may be extending meanwhile), or the batch's first frame's for a new archive."""
    return info.grid if info is not None else spec.source.read_grid(first)


ABANDONED_CHECK_S = 3600.0  # a check folder untouched for this long is a killed run's: while a run checks,
# each frame's report lands within seconds of the previous one


def check_reports_url(archive: str) -> str:
    """Where one run's check reports go: beside the archive, where every worker can write.

    Workers may be other machines (a Dask cluster, Flink, Dataflow) that share
    nothing with the launcher but the store, so not the launcher's temporary
    folder. The folder is unique to the run and removed once read.

    >>> check_reports_url("s3://bucket/archive.zarr").startswith("s3://bucket/archive.zarr.check-")
    True
    """
    base = archive if not is_local(archive) else local_path(archive)
    return f"{base.rstrip('/')}{check_suffix()}"


def check_batch(spec: IngestSpec, items: Sequence[SourceItem], fields: tuple[FieldSpec, ...],
                grid: Grid, runner: RunnerOptions | None) -> list[str]:
    """Reads every frame once; raises IngestError listing problems; returns the all-NaN frames.

    With ``runner`` None the frames are checked in this process (used by the
    watcher, which runs inside a Beam worker already).
    """
    if runner is None:
        reports = [check_item(spec.source, item, grid, fields) for item in items]
    else:
        remove_untouched(spec.archive, CHECK, ABANDONED_CHECK_S)  # a run killed while it checked left them
        report_dir = check_reports_url(spec.archive)
        fs, path = filesystem(report_dir)
        try:
            run_pipeline(runner, lambda p: p | "CheckFrames" >> CheckFrames(spec, items, fields, grid,
                                                                            report_dir))
            names = fs.ls(path, detail=False) if fs.exists(path) else []
            reports = [json.loads(fs.cat_file(name)) for name in names]
        finally:
            if fs.exists(path):
                fs.rm(path, recursive=True)
    problems = sorted(p for report in reports for p in report["problems"])
    if len(reports) != len(items):
        problems.append(f"only {len(reports)} of {len(items)} frames were checked")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise IngestError(f"{len(problems)} problem(s) in the input; nothing was written:\n  {shown}{more}")
    partial = sorted(f"{r['item']} ({', '.join(r['empty'])})" for r in reports if r["empty"])
    if partial:
        log.warning("%d frame(s) have variables without any data, stored as unobserved (NaN) beside the "
                    "frame's other variables: %s", len(partial), "; ".join(partial[:5]))
    return sorted(r["item"] for r in reports if r["all_nan"])  # a file may hold several frames


SERIES = "source_series"  # archive attribute: the radar and product of its files, where names state them


def file_series(source: Source, path: str) -> str | None:
    """The radar and product ``path``'s name states (radar sources' ``file_series``); None if it states
    none."""
    stated = getattr(source, "file_series", None)
    return stated(path) if stated is not None else None


def archive_series(url: str) -> str | None:
    """The radar and product the archive at ``url`` records (:data:`SERIES`); None when it records none."""
    series = open_group(url, error=ArchiveError).attrs.get(SERIES)
    return str(series) if series is not None else None


def series_problem(recorded: str | None, source: Source, path: str) -> str | None:
    """Why the file ``path`` does not belong in an archive of ``recorded`` (None: it does, or
    either states none)."""
    series = file_series(source, path)
    if recorded is None or series is None or series == recorded:
        return None
    return (f"{os.path.basename(path)} is {series}, the archive holds {recorded} (one radar and "
            "product per archive): ingest it into an archive of its own")


def stated_step_problem(source: Source, path: str, step: np.timedelta64, whose: str = "the archive's"
                        ) -> str | None:
    """Why the file ``path`` does not belong on a time axis of ``step`` (``whose`` step it is): its name
    states another (an accumulation period of KNMI or MeteoSwiss, a BoM product's step); None when it
    states none or that one."""
    stated = source.file_step(path) if isinstance(source, FolderSource) else None
    if stated is None or stated == step:
        return None
    return (f"{os.path.basename(path)} states a step of {format_time_step(stated)}, {whose} is "
            f"{format_time_step(step)} (one accumulation period, or one product, per archive)")


def prepare_archive(spec: IngestSpec, items: Sequence[SourceItem], fields: tuple[FieldSpec, ...],
                    created_meanwhile: bool = False) -> ArchiveInfo:
    """Creates the archive or extends its time axis so every item has a slot.

    ``created_meanwhile``: another writer created the archive after this batch
    was checked against its own first frame, so the grid is compared again.
    """
    last = max(item.time for item in items)
    if not exists(spec.archive):
        start, step = new_time_axis(spec, items)
        grid = spec.source.read_grid(items[0])
        length = time_index(last, start, step) + 1 if last >= start else 1
        series = file_series(spec.source, items[0].path)
        return create_archive(spec.archive, grid, fields, start, step, max(length, 1),
                              time_chunk=spec.time_chunk, spatial_chunks=spec.spatial_chunks,
                              attrs={"source": spec.source.name, **({SERIES: series} if series else {})})
    if created_meanwhile:
        problem = read_info(spec.archive).grid.mismatch(spec.source.read_grid(items[0]))
        if problem:
            raise IngestError(f"the batch is on another grid than {spec.archive} ({problem}); nothing was "
                              "written: ingest it into a new archive")
    group = open_group(spec.archive, error=ArchiveError)
    start = to_datetime64(group.attrs["time_start"])
    step = parse_time_step(str(group.attrs["time_step"]))
    if spec.time_step and parse_time_step(spec.time_step) != step:
        raise IngestError(f"archive {spec.archive} has step {format_time_step(step)}, "
                          f"not {spec.time_step}; ingest into a new archive")
    needed = time_index(last, start, step) + 1 if last >= start else 0
    lengths = {arr.shape[0] for arr in arrays_along(group, "time").values()}
    current = array(group, "time").shape[0]
    if needed > current or len(lengths) > 1:
        return extend_time(spec.archive, max(needed, current))
    consolidate_if_behind(open_group(spec.archive, "r+", error=ArchiveError))  # a stopped writer's lag
    return read_info(spec.archive)


def check_start(start: str | None, archive: str, archive_start: np.datetime64) -> None:
    """Refuses a ``--start`` other than an existing archive's (it was once ignored without a word)."""
    if start and to_datetime64(start) != archive_start:
        raise IngestError(f"--start {start} sets a new archive's first time; {archive} starts at "
                          f"{archive_start}: leave --start out (frames go where their times are), or ingest "
                          "into a new archive")


def new_time_axis(spec: IngestSpec, items: Sequence[SourceItem]) -> tuple[np.datetime64, np.timedelta64]:
    """The start and step a new archive gets: ``--start`` or the first frame's time, ``--time-step`` or
    the source's own step."""
    step = parse_time_step(spec.time_step) if spec.time_step else spec.source.time_step()
    if step is None:
        raise IngestError("the source gives no time step (a single frame of a product whose step is not "
                          "known has no spacing to take it from): give the input's step, e.g. --time-step "
                          "PT5M; nothing was written")
    start = to_datetime64(spec.start) if spec.start else min(item.time for item in items)
    return start, step


def check_new_axis(spec: IngestSpec, items: Sequence[SourceItem]) -> None:
    """Refuses frames a new archive's time axis cannot hold before the archive is created: a refusal
    after it would leave an empty archive whose axis then binds every rerun."""
    start, step = new_time_axis(spec, items)
    if spec.time_step and (problem := stated_step_problem(spec.source, items[0].path, step, "--time-step")):
        raise IngestError(f"{problem}: leave --time-step out to take the files' own; nothing was "
                          "written")  # 5-minute amounts every 10 minutes made a 10-minute archive
    if not spec.time_step and step_from_spacing(spec.source):
        _, seen = most_common_spacing(item.time for item in items)
        if seen == 1:  # a later frame between them is refused for ever (off the step)
            log.warning("the new archive's time step %s is the one spacing of its first frames: if the "
                        "input's step is shorter (a frame missing between them), later frames will be "
                        "refused; then ingest into a new archive with --time-step", format_time_step(step))
    try:
        check_axis_growth(frame_indices(items, start, step), 0, start, step)
    except IngestError as error:
        options = (("start", spec.start), ("time-step", spec.time_step))
        given = [f"--{option} {value}" for option, value in options if value]
        if not given and isinstance(error.__cause__, ValueError):  # off the step it inferred
            times = np.unique(np.array([item.time for item in items], dtype="datetime64[s]"))
            raise IngestError(
                f"{str(error).split('; ')[0]}: the input's frames are not on one step (the new archive took "
                f"{format_time_step(step)}, their most common spacing); give the step with --time-step "
                f"(their smallest spacing is {format_time_step(np.diff(times).min())}; the steps without a "
                "frame are then ingested as missing); nothing was written") from error
        if not given:
            raise
        raise IngestError(f"{error} (the new archive's axis comes from {' and '.join(given)}: give values "
                          "the frames' times fall on, or leave them out to take the input's own); nothing "
                          "was written") from error


def run(spec: IngestSpec, runner: RunnerOptions | None = None) -> IngestResult:
    """Ingests every item of ``spec.source`` into ``spec.archive`` with a Beam runner.

    Raises:
        IngestError: the batch has a problem; the archive is unchanged.
        SourceError: the source cannot be listed (empty folder, unknown names).
    """
    items = sorted_unique(spec.source.items())
    return ingest_items(spec, items, runner or RunnerOptions())


def check_new_chunks(spec: IngestSpec, first: SourceItem) -> None:
    """Refuses a new archive whose chunks a writer could not hold in memory, before any frame is checked
    (an unreadable first item is left to the batch's check, which reports every bad file)."""
    try:
        shape = spec.spatial_chunks or spec.source.read_grid(first).shape
    except SourceError:
        return
    check_chunk_size(spec.time_chunk, shape)


def ingest_items(spec: IngestSpec, items: Sequence[SourceItem],
                 runner: RunnerOptions | None) -> IngestResult:
    """Checks, prepares and writes ``items``; in this process when ``runner`` is None."""
    if not items:
        raise IngestError(f"source {spec.source.name} has no frames to ingest")
    if runner is not None:
        runner.check_reachable()
    fields = tuple(spec.source.fields())
    check_field_names(fields, items[0].path)
    existed = exists(spec.archive)  # whole once it exists: created in one step (created_whole)
    if spec.repair and not existed:  # created an empty archive, exit 0: "no damaged chunk"
        raise IngestError(f"--repair rewrites the damaged chunks of an archive; there is none at "
                          f"{spec.archive}: check the path, or ingest without --repair to create it")
    info = _settled_info(spec.archive) if existed else None
    if info is not None:
        check_fields(info, fields, items[0].path)
        check_start(spec.start, spec.archive, info.start)
        problem = series_problem(archive_series(spec.archive), spec.source, items[0].path)
        if problem:  # items() holds one series and one period: its first file speaks for all
            raise IngestError(f"{problem}; nothing was written")
        problem = stated_step_problem(spec.source, items[0].path, info.time_step)
        if problem:
            raise IngestError(f"{problem}; nothing was written: ingest it into an archive of its own")
        # the first frame's grid before the axis: another network's files years away were refused for the
        # empty steps they would add, not for being another network's
        problem = info.grid.mismatch(spec.source.read_grid(items[0]))
        if problem:  # the check step compares every other frame's grid
            size = f" (--size {info.grid.shape[0]})" if spec.source.name == "synthetic" else ""
            raise IngestError(f"the frames are on another grid than {spec.archive} ({problem}); nothing was "
                              f"written: ingest them into a new archive, or give the archive's grid{size}")
        check_axis_growth(frame_indices(items, info.start, info.time_step), info.length, info.start,
                          info.time_step)
    else:
        check_new_chunks(spec, items[0])
        check_new_axis(spec, items)
    check_disk_space(spec, items, info)
    if spec.needs_check:  # its reports go beside the archive: a read-only one was a Beam traceback
        grid = reference_grid(spec, items[0], info)  # an input's read error is the input's, not the archive's
        with storage_errors(spec.archive, "ingest"):
            all_nan = check_batch(spec, items, fields, grid, runner)
        if all_nan:
            log.warning("%d all-NaN frames will be stored as missing (valid=false): %s",
                        len(all_nan), all_nan[:5])
    # writers merge into shared chunks: one at a time; a full or read-only disk is a message
    with storage_errors(spec.archive, "ingest"), store_lock(spec.archive, "ingest"):
        if exists(spec.archive) and not spec.repair:  # before the axis grows: a refusal changes nothing
            check_chunks_to_merge(spec.archive, items)
        if spec.repair:  # rewrites damaged chunks only: the axis stays (a refused repair had grown it)
            info = _existing_info(spec.archive)
        else:
            info = prepare_archive(spec, items, fields, created_meanwhile=not existed and spec.needs_check)
        check_fields(info, fields, items[0].path)
        indexed = frame_indices(items, info.start, info.time_step)
        if spec.repair:  # the valid flags may be among the damaged chunks: not read before
            tasks = repair_tasks(spec, [(i, item) for i, item in indexed if i < info.length], info)
            before = np.zeros(info.length, bool)
            if later := sum(i >= info.length for i, _ in indexed):  # dropped without a word
                log.warning("%d frame(s) of the input lie past the archive's end and were not written: a "
                            "repair rewrites damaged chunks only; ingest them without --repair", later)
        else:
            tasks = plan_chunks(indexed, info.time_chunk, info.length)
            before = valid_flags(spec.archive)
        log.info("ingest: %d frames in %d chunks into %s", len(items), len(tasks), spec.archive)
        if runner is None:
            fence = held_fence(spec.archive)
            for task in tasks:
                if fence is not None:
                    fence.check()
                write_chunk(spec.archive, spec.source, task, spec.overwrite)
        else:
            run_pipeline(runner, lambda p: p | "WriteChunks" >> WriteChunks(spec, tasks))
        after = valid_flags(spec.archive)
    indices = np.array([i for task in tasks for i, _ in task.frames], dtype="int64")
    pending = spec.overwrite | ~before[indices]
    return IngestResult(
        archive=spec.archive, frames_in_batch=len(items),
        frames_written=int(np.sum(after[indices] & pending)),
        frames_skipped=int(np.sum(~pending)),
        frames_missing=int(np.sum(~after[indices])),
        chunks_written=len({i // info.time_chunk for i in indices[pending]}),
        time_length=int(after.shape[0]),
        repair=spec.repair,
    )


def check_disk_space(spec: IngestSpec, items: Sequence[SourceItem], info: ArchiveInfo | None) -> None:
    """Refuses, before any work, a batch whose new frames do not fit on the archive's disk (estimated
    from the first, middle and last new frame as the archive compresses them)."""
    if spec.repair or free_bytes(spec.archive) is None:
        return
    pending = list(items)
    if info is not None and not spec.overwrite:
        present = valid_flags(spec.archive)
        pending = [item for index, item in frame_indices(items, info.start, info.time_step)
                   if index >= present.shape[0] or not present[index]]
    samples = []
    for item in sorted({pending[0], pending[len(pending) // 2], pending[-1]} if pending else set()):
        with contextlib.suppress(SourceError):  # a bad file is the batch check's to report
            samples.append(spec.source.read(item))
    check_frames_fit(spec.archive, len(pending), samples, ZSTD_LEVEL, "ingest",
                     "ingest fewer frames at a time (synthetic data: fewer --frames or a smaller --size)")


def check_chunks_to_merge(archive: str, items: Sequence[SourceItem]) -> None:
    """Refuses, before any write, to merge new frames into a chunk of ``archive`` that cannot be read or
    is missing.

    A damaged chunk would otherwise fail in a worker with a codec's traceback;
    a missing one read as fill values and lost its valid frames (12 frames
    stored as NaN, still flagged valid, exit 0). Only chunks that hold valid
    frames are read, and a run that only appends new chunks reads none.
    """
    info = _existing_info(archive)
    valid = valid_flags(archive)
    held = -(-info.length // info.time_chunk) * info.time_chunk  # an append can merge into the last chunk
    on_axis = [(i, item) for i, item in frame_indices(items, info.start, info.time_step) if i < held]
    tasks = plan_chunks(on_axis, info.time_chunk, info.length)
    group = open_group(archive, error=ArchiveError)
    fields = [arr for _, arr in group.arrays() if dimension_names(arr) == FRAME_DIMS]
    for task in tasks:
        if not valid[task.first_index:task.first_index + task.count].any():
            continue
        for arr in fields:
            chunk = (task.first_index // arr.chunks[0], *([0] * (arr.ndim - 1)))
            problem = unreadable(arr, chunk)
            problem = f"cannot be read: {problem}" if problem else (
                None if time_chunk_stored(archive, arr, chunk[0]) else
                "is missing: frames in it are flagged valid but it has no chunk object")
            if problem:
                raise ArchiveError(
                    f"chunk {'/'.join(map(str, chunk))} of {archive}/{arr.basename} (time index "
                    f"{task.first_index}) {problem}; nothing was written. "
                    f"`nowcast check {archive}` lists every damaged chunk and "
                    "`nowcast ingest ... --repair` rewrites them from the source files")


def repair_tasks(spec: IngestSpec, indexed: Sequence[tuple[int, SourceItem]],
                 info: ArchiveInfo) -> list[ChunkTask]:
    """The damaged time chunks of the archive, each rebuilt from the batch's frames that fall in it.

    Refuses when a damaged chunk has frames flagged valid that the batch does
    not have (they would be lost), or when a damaged chunk is not along time.
    """
    from nowcast.pipelines.stores.integrity import check_store

    report = check_store(spec.archive)
    other = [d for d in report.damaged if d.array not in _time_arrays(spec.archive)]
    if other:
        raise IngestError(f"--repair rewrites chunks along time; {spec.archive} has other damage:\n"
                          + report.text())
    chunk = info.time_chunk
    damaged = {d.first // chunk for d in report.damaged}
    tasks = [dataclasses.replace(task, rebuild=True) for task in
             plan_chunks([(i, item) for i, item in indexed if i // chunk in damaged], chunk, info.length)]
    flags_damaged = any(d.array == VALID for d in report.damaged)
    valid = None if flags_damaged else valid_flags(spec.archive)
    given = {i for task in tasks for i, _ in task.frames}
    lost = [i for c in sorted(damaged) for i in range(c * chunk, min((c + 1) * chunk, info.length))
            if (valid is None or valid[i]) and i not in given]
    if lost and valid is not None:
        times = [str(time_values(info.start, info.time_step, info.length)[i])[:16] for i in lost[:10]]
        raise IngestError(f"--repair needs every frame of the damaged chunks; the input lacks {len(lost)} "
                          f"valid frame(s) of them ({', '.join(times)}{' ...' if len(lost) > 10 else ''}): "
                          "give the folder holding them. Nothing was written")
    if lost:
        log.warning("the valid flags of the damaged chunks are damaged too: %d slot(s) of them not in the "
                    "input will read as missing", len(lost))
    if any(d.array == "time" for d in report.damaged):
        rewrite_time_coordinate(spec.archive, info)
    log.info("repair: rewriting %d damaged chunk(s) of %s", len(tasks), spec.archive)
    return tasks


def _time_arrays(archive: str) -> set[str]:
    return set(arrays_along(open_group(archive, error=ArchiveError), "time"))


def rewrite_time_coordinate(archive: str, info: ArchiveInfo) -> None:
    """Writes the time coordinate again from the archive's start and step (its values are implied)."""
    group = open_group(archive, "r+", error=ArchiveError)
    array(group, "time")[:] = epoch_seconds(time_values(info.start, info.time_step, info.length))


def _settled_info(url: str) -> ArchiveInfo:
    """The layout before this run holds the lock: an extension part way, another ingest's still going or
    a stopped one's, is waited out or repaired under the lock, never repaired beside its writer (the lock
    waits out a live one: no reader's waits here)."""
    try:
        return read_info(url, waits=())
    except InterruptedExtensionError:
        with store_lock(url, "ingest"):
            return _existing_info(url)


def _existing_info(url: str) -> ArchiveInfo:
    """The layout under the lock: an extension a stopped ingest left part way is completed first."""
    try:
        return read_info(url, waits=())
    except InterruptedExtensionError:
        return complete_extension(url)
