"""The windows job: cut the archive into (inputs, targets) training sequences.

The driver plans every window from metadata (:mod:`nowcast.pipelines.plans.windows`)
and creates windows.zarr at its final size (:mod:`nowcast.pipelines.stores.windows`)
at a staging path beside the output, which takes the output's place only
once complete (:func:`staged`): an interrupted or failed run leaves the
previous store as it was. Beam then gets one element per task (a few whole
sample chunks whose source chunks are read once), spreads those small
elements over the workers with a Reshuffle, and each worker reads, cuts and
writes its chunks (:mod:`.window_tasks`). Only plans, keys and small
statistics move between workers, never frames (docs/windows.md says why).
The train normalisation statistics are combined per variable with an
associative combiner and written by the last step.

Example:
    >>> job = WindowJob(archive="archive.zarr", output="windows.zarr",
    ...                 spec=WindowSpec(channels=("precip",), target="precip", t_in=12, t_out=6))
    >>> result = run(job, RunnerOptions(kind="multiprocess", workers=2))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from nowcast.pipelines.jobs.runners import RunnerOptions, counters, run_pipeline
from nowcast.pipelines.jobs.window_tasks import (
    Stats,
    finish_all,
    log1p_variables,
    merge_stats,
    partial_stats,
    run_task,
)
from nowcast.pipelines.plans.window_spec import WindowSpec, WindowSpecError
from nowcast.pipelines.plans.windows import (
    DEFAULT_MAX_SOURCE_CHUNKS,
    SKIP_REASONS,
    Task,
    WindowPlan,
    check_some_window,
    plan_from_archive,
)
from nowcast.pipelines.stores.groups import created_whole, storage_errors, worker_errors
from nowcast.pipelines.stores.integrity import StoreDamagedError
from nowcast.pipelines.stores.lock import held_fence, store_lock
from nowcast.pipelines.stores.space import check_space, compression_ratio, free_bytes
from nowcast.pipelines.stores.windows import (
    WindowsLayout,
    WindowsStore,
    check_replaceable,
    create_windows_store,
    record_stored_chunks,
    write_normalization,
)

NAMESPACE = "windows"
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WindowJob:
    """The windows job's configuration, validated once.

    Attributes:
        archive: archive.zarr URL.
        output: windows.zarr URL.
        spec: the windowing.
        max_source_chunks: archive chunks one task reads (memory bound per
            worker: this many time chunks of every variable used).
        overwrite: replace an existing windows.zarr.
    """

    archive: str
    output: str
    spec: WindowSpec
    max_source_chunks: int = DEFAULT_MAX_SOURCE_CHUNKS
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.spec, WindowSpec):
            raise WindowSpecError(f"spec must be a WindowSpec, got {type(self.spec).__name__}")
        if self.archive.rstrip("/") == self.output.rstrip("/"):
            raise WindowSpecError("output must differ from the archive; windows.zarr is a separate store")
        if self.max_source_chunks < 1:
            raise WindowSpecError(f"max_source_chunks must be at least 1, got {self.max_source_chunks}")

    def prepare(self, into: str | None = None) -> WindowPlan:
        """Plans the job (metadata only) and creates windows.zarr at its final size.

        Args:
            into: where to create it (default ``output``); :func:`run` gives a
                staging path beside the output (:func:`staged`), so a store at the
                output is replaced only once the new one is complete.
        """
        plan = plan_from_archive(self.archive, self.spec, self.max_source_chunks)
        check_some_window(plan)
        check_windows_space(self.archive, self.output, plan.layout())
        create_windows_store(into or self.output, plan.layout(), overwrite=self.overwrite)
        log.info("windows: %d planned, %d emitted, skipped %s; %d tasks, read amplification %.3f",
                 plan.counts["planned"], plan.counts["emitted"], plan.counts["skipped"], len(plan.tasks),
                 plan.read_amplification())
        return plan


@dataclasses.dataclass(frozen=True)
class WindowResult:
    """What a run did: the plan's counts, the stored normalisation, Beam counters."""

    counts: dict[str, Any]
    normalization: dict[str, dict[str, float | int | None]]
    metrics: dict[str, int]
    read_amplification: float

    def summary(self) -> str:
        """One paragraph for a log or the command line."""
        counts = self.counts
        skipped = ", ".join(f"{k} {v}" for k, v in counts["skipped"].items())
        samples = ", ".join(f"{k} {v}" for k, v in counts["samples"].items())
        return (f"windows: {counts['planned']} planned, {counts['emitted']} emitted, skipped: {skipped}; "
                f"samples: {samples}; read amplification {self.read_amplification:.3f}")


class _CountPlan(beam.DoFn):
    """Reports the plan's window counts as Beam counters (once, from one element)."""

    def process(self, counts: dict[str, Any]) -> Iterator[None]:
        Metrics.counter(NAMESPACE, "windows_planned").inc(int(counts["planned"]))
        skipped = counts["skipped"]
        for reason in SKIP_REASONS:
            Metrics.counter(NAMESPACE, f"windows_skipped_{reason}").inc(int(skipped[reason]))
        return iter(())


class _WriteTask(beam.DoFn):
    """Reads one task's source chunks, writes its sample chunks, yields partial stats per variable."""

    def __init__(self, archive: str, output: str, plan: WindowPlan) -> None:
        self.archive, self.output, self.plan = archive, output, plan
        self.windows = Metrics.counter(NAMESPACE, "windows_emitted")
        self.samples = Metrics.counter(NAMESPACE, "samples_written")
        self.bytes_read = Metrics.counter(NAMESPACE, "bytes_read")
        self.bytes_written = Metrics.counter(NAMESPACE, "bytes_written")

    def process(self, task: Task) -> Iterator[tuple[str, tuple[int, Stats]]]:
        began = time.perf_counter()
        stats, tallies = run_task(self.archive, self.output, task, self.plan)
        self.windows.inc(tallies["windows"])
        self.samples.inc(tallies["samples"])
        self.bytes_read.inc(tallies["bytes_read"])
        self.bytes_written.inc(tallies["bytes_written"])
        seconds = time.perf_counter() - began
        log.info("windows: task %d/%d wrote %d samples (%.0f MB) in %.1f s (%.0f MB/s)",
                 task.index + 1, len(self.plan.tasks), tallies["samples"],
                 tallies["bytes_written"] / 1e6, seconds, tallies["bytes_written"] / 1e6 / max(seconds, 1e-9))
        for name, part in stats.items():
            yield name, (task.index, part)


class MergeStats(beam.CombineFn):
    """Merges one variable's partial statistics, always in task order.

    The accumulator is the list of ``(task index, partial)`` pairs, so adding
    and merging are associative and commutative whatever the runner does; the
    merge itself runs once, sorted by task, so every runner gives the same
    floating-point result (and byte-identical stores).
    """

    def create_accumulator(self) -> list[tuple[int, Stats]]:
        return []

    def add_input(self, accumulator: list[tuple[int, Stats]],
                  element: tuple[int, Stats]) -> list[tuple[int, Stats]]:
        accumulator.append(element)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list[tuple[int, Stats]]]) -> list[tuple[int, Stats]]:
        return [pair for accumulator in accumulators for pair in accumulator]

    def extract_output(self, accumulator: list[tuple[int, Stats]]) -> Stats:
        return merge_stats(part for _, part in sorted(accumulator, key=lambda pair: pair[0]))


class _WriteNormalization(beam.DoFn):
    def __init__(self, output: str) -> None:
        self.output = output

    def process(self, stats: Mapping[str, Stats]) -> Iterator[dict[str, dict[str, float | int | None]]]:
        normalization = finish_all(stats)
        write_normalization(self.output, normalization)
        yield normalization


class CutWindows(beam.PTransform):
    """Writes a planned windowing into its (already created) windows.zarr.

    Output: one element, the normalisation statistics written to the store.
    """

    def __init__(self, job: WindowJob, plan: WindowPlan) -> None:
        super().__init__()
        if plan.spec != job.spec or plan.info.url != job.archive:
            raise WindowSpecError("the plan was made for another job; plan with job.prepare()")
        self.job, self.plan = job, plan

    def expand(self, root: beam.pvalue.PBegin) -> beam.PCollection:
        plan = self.plan
        _ = (root | "Counts" >> beam.Create([plan.counts]) | "CountPlan" >> beam.ParDo(_CountPlan()))
        # every variable gets statistics, even when no task holds train frames
        seeds = root | "EmptyStats" >> beam.Create([(name, (-1, _empty(name, plan)))
                                                    for name in plan.spec.variables])
        partials = (
            root
            | "Tasks" >> beam.Create(plan.tasks)
            | "Spread" >> beam.Reshuffle()
            | "WriteTasks" >> beam.ParDo(_WriteTask(self.job.archive, self.job.output, plan))
        )
        return (
            (partials, seeds)
            | "AllPartials" >> beam.Flatten()
            | "MergePerVariable" >> beam.CombinePerKey(MergeStats())
            | "AllVariables" >> beam.CombineGlobally(beam.combiners.ToDictCombineFn()).without_defaults()
            | "WriteNormalization" >> beam.ParDo(_WriteNormalization(self.job.output))
        )


def check_windows_space(archive: str, output: str, layout: WindowsLayout) -> None:
    """Refuses, before windows.zarr is created, a plan whose samples do not fit on the output's disk
    (their frames, compressed as the archive's target compresses; unchecked where that is unknown)."""
    ratio = compression_ratio(archive, layout.target) if free_bytes(output) is not None else None
    if ratio is None:
        return
    samples = sum(len(index) for index in layout.splits.values())
    frames = samples * (layout.t_in * len(layout.channels) + layout.t_out)
    need = frames * layout.patch_shape[0] * layout.patch_shape[1] * 4 * ratio
    check_space(output, need, "windows", f"{samples} samples of {frames // max(samples, 1)} patches "
                f"{layout.patch_shape[0]} x {layout.patch_shape[1]}, compressed as the archive is",
                "cut fewer windows (a larger stride or patch stride)")


def _empty(name: str, plan: WindowPlan) -> Stats:
    return partial_stats(np.zeros(0, dtype="float32"), log1p=name in log1p_variables(plan))


@contextlib.contextmanager
def staged(job: WindowJob) -> Iterator[WindowJob]:
    """The job writing to a staging path beside its output; the store appears at the output on success.

    Whatever stops the job part way (an interrupt, a kill, a damaged archive
    chunk) leaves the output as it was: the previous store, or nothing.
    Under the store's lock, a full disk and a damaged archive chunk become
    messages with their fix.
    """
    with (storage_errors(job.output, "windows", "a rerun cuts the windows anew, replacing the store whole"),
          store_lock(job.output, "windows"),
          worker_errors(StoreDamagedError)):
        check_replaceable(job.output, job.overwrite)
        fence = held_fence(job.output)
        with created_whole(job.output, replace=True) as staging:
            yield dataclasses.replace(job, output=staging, overwrite=False)
            record_stored_chunks(staging)
            if fence is not None:  # not over the store of a writer that took it while this one was paused
                fence.check()


def run(job: WindowJob, runner_options: RunnerOptions | None = None) -> WindowResult:
    """Plans, creates windows.zarr and runs the job to completion; reports what it did."""
    runner_options = runner_options or RunnerOptions()
    runner_options.check_reachable()
    with staged(job) as building:
        plan = job.prepare(into=building.output)
        if uncovered := plan.uncovered():
            log.warning("%s", uncovered)
        result = run_pipeline(runner_options,
                              lambda pipeline: pipeline | "CutWindows" >> CutWindows(building, plan))
    stored = WindowsStore(job.output, "train")
    return WindowResult(counts=plan.counts, normalization=stored.normalization,
                        metrics=counters(result, NAMESPACE), read_amplification=plan.read_amplification())


def run_in_process(job: WindowJob) -> WindowResult:
    """The same job without Beam: one process, tasks one after another.

    The reference the Beam runs must match, and the benchmark's limit (zarr
    and numpy alone, same plan, same codec).
    """
    with staged(job) as building:
        plan = job.prepare(into=building.output)
        parts: dict[str, list[Stats]] = {name: [_empty(name, plan)] for name in plan.spec.variables}
        totals: dict[str, int] = {}
        for task in plan.tasks:
            stats, tallies = run_task(building.archive, building.output, task, plan)
            for name, part in stats.items():
                parts[name].append(part)
            for key, value in tallies.items():
                totals[key] = totals.get(key, 0) + value
        normalization = finish_all({name: merge_stats(values) for name, values in parts.items()})
        write_normalization(building.output, normalization)
    return WindowResult(counts=plan.counts, normalization=normalization, metrics=totals,
                        read_amplification=plan.read_amplification())
