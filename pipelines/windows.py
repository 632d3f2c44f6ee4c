"""The windows job: cut the archive into (inputs, targets) training sequences.

The driver plans every window from metadata (:mod:`pipelines.window_plan`) and
creates windows.zarr at its final size (:mod:`pipelines.window_store`). Beam
then gets one element per task (a few whole output chunks whose source chunks
are read once), spreads those small elements over the workers with a
Reshuffle, and each worker reads, cuts and writes its chunks. Only plans,
keys and small statistics ever move between workers, never frames: pushing
frames through a shuffle made the FnApiRunner hold them all in its parent
process (13 windows/s, 15-22 GB RSS, measured here). Train normalisation
statistics are combined with a GroupByKey of per-task partial sums, which
every runner (DaskRunner included) supports.

Example:
    >>> job = WindowJob(archive="archive.zarr", output="windows.zarr",
    ...                 spec=WindowSpec(channels=("precip",), target="precip", t_in=12, t_out=6))
    >>> result = run(job, RunnerOptions(kind="multiprocess", workers=2))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np
import zarr
from apache_beam.metrics import Metrics

from pipelines.runners import RunnerOptions
from pipelines.stores import zarr_store
from pipelines.window_plan import (
    DEFAULT_MAX_SOURCE_CHUNKS,
    SKIP_REASONS,
    Task,
    WindowPlan,
    plan_from_archive,
)
from pipelines.window_spec import WindowSpec, WindowSpecError
from pipelines.window_store import (
    Stats,
    create_windows_store,
    log1p_variables,
    merge_stats,
    partial_stats,
    run_task,
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


@dataclasses.dataclass(frozen=True)
class WindowResult:
    """What a run did: the plan's counts, the stored normalisation, Beam counters."""

    counts: dict[str, object]
    normalization: dict[str, object]
    metrics: dict[str, int]
    read_amplification: float

    def summary(self) -> str:
        """One paragraph for a log or the command line."""
        counts = self.counts
        skipped = ", ".join(f"{k} {v}" for k, v in counts["skipped"].items())  # type: ignore[union-attr]
        samples = ", ".join(f"{k} {v}" for k, v in counts["samples"].items())  # type: ignore[union-attr]
        return (f"windows: {counts['planned']} planned, {counts['emitted']} emitted, skipped: {skipped}; "
                f"samples: {samples}; read amplification {self.read_amplification:.3f}")


class _CountPlan(beam.DoFn):
    """Reports the plan's window counts as Beam counters (once, from one element)."""

    def process(self, counts: dict[str, object]) -> Iterator[None]:
        Metrics.counter(NAMESPACE, "windows_planned").inc(int(counts["planned"]))
        skipped = counts["skipped"]
        for reason in SKIP_REASONS:
            Metrics.counter(NAMESPACE, f"windows_skipped_{reason}").inc(int(skipped[reason]))  # type: ignore[index]
        return iter(())


class _WriteTask(beam.DoFn):
    """Reads one task's source chunks, writes its output chunks, yields partial stats."""

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


def _merge_variable(item: tuple[str, Iterable[tuple[int, Stats]]]) -> tuple[None, tuple[str, Stats]]:
    # merged in task order, so every runner gives the same floating-point result
    name, parts = item
    return None, (name, merge_stats(part for _, part in sorted(parts, key=lambda p: p[0])))


class _WriteNormalization(beam.DoFn):
    def __init__(self, output: str) -> None:
        self.output = output

    def process(self, item: tuple[None, Iterable[tuple[str, Stats]]]) -> Iterator[dict[str, object]]:
        yield write_normalization(self.output, dict(item[1]))


class CutWindows(beam.PTransform):
    """Writes a planned windowing into its (already created) windows.zarr.

    Output: one element, the normalisation statistics written to the store.
    """

    def __init__(self, job: WindowJob, plan: WindowPlan) -> None:
        super().__init__()
        self.job, self.plan = job, plan

    def expand(self, root: beam.pvalue.PBegin) -> beam.PCollection:
        plan = self.plan
        _ = (root | "Counts" >> beam.Create([plan.counts]) | "CountPlan" >> beam.ParDo(_CountPlan()))
        empty = [(name, (-1, _empty(name, plan))) for name in plan.spec.variables]
        partials = (
            root
            | "Tasks" >> beam.Create(plan.tasks)
            | "Spread" >> beam.Reshuffle()
            | "WriteTasks" >> beam.ParDo(_WriteTask(self.job.archive, self.job.output, plan))
        )
        seeds = root | "EmptyStats" >> beam.Create(empty)
        return (
            (partials, seeds)
            | "AllPartials" >> beam.Flatten()
            | "ByVariable" >> beam.GroupByKey()
            | "Merge" >> beam.Map(_merge_variable)
            | "Together" >> beam.GroupByKey()
            | "WriteNormalization" >> beam.ParDo(_WriteNormalization(self.job.output))
        )


def _empty(name: str, plan: WindowPlan) -> Stats:
    return partial_stats(np.zeros(0, dtype="float32"), log1p=name in log1p_variables(plan))


def build(root: beam.Pipeline | beam.pvalue.PBegin, job: WindowJob) -> beam.PCollection:
    """Plans ``job`` (metadata only), creates windows.zarr, and adds the writing steps.

    Planning and the template happen here, in the driver, so workers only
    write whole chunks of arrays that already have their final shape.

    Returns:
        A PCollection with one element: the stored normalisation statistics.
    """
    return _build(root, job)[0]


def _build(root: beam.Pipeline | beam.pvalue.PBegin, job: WindowJob) -> tuple[beam.PCollection, WindowPlan]:
    plan = plan_from_archive(job.archive, job.spec, job.max_source_chunks)
    create_windows_store(job.output, plan, overwrite=job.overwrite)
    log.info("windows: %d planned, %d emitted, skipped %s; %d tasks, read amplification %.3f",
             plan.counts["planned"], plan.counts["emitted"], plan.counts["skipped"], len(plan.tasks),
             plan.read_amplification())
    begin = root if isinstance(root, beam.pvalue.PBegin) else beam.pvalue.PBegin(root)
    return begin | "CutWindows" >> CutWindows(job, plan), plan


def run(job: WindowJob, runner_options: RunnerOptions | None = None) -> WindowResult:
    """Runs the windows job to completion and reports what it did."""
    runner, options = (runner_options or RunnerOptions()).build()
    pipeline = beam.Pipeline(runner=runner, options=options)
    _, plan = _build(pipeline, job)
    result = pipeline.run()
    result.wait_until_finish()
    client = getattr(result, "client", None)  # the DaskRunner's own client to the cluster
    if client is not None:
        client.close()
    attrs = dict(zarr.open_group(zarr_store(job.output, read_only=True), mode="r", zarr_format=3).attrs)
    return WindowResult(counts=attrs["counts"], normalization=attrs["normalization"],
                        metrics=_counters(result), read_amplification=plan.read_amplification())


def run_in_process(job: WindowJob) -> WindowResult:
    """The same job without Beam: one process, tasks one after another.

    The reference the Beam runs must match, and the benchmark's limit (zarr
    and numpy alone, same plan, same codec).
    """
    plan = plan_from_archive(job.archive, job.spec, job.max_source_chunks)
    create_windows_store(job.output, plan, overwrite=job.overwrite)
    parts: dict[str, list[Stats]] = {name: [_empty(name, plan)] for name in plan.spec.variables}
    totals: dict[str, int] = {}
    for task in plan.tasks:
        stats, tallies = run_task(job.archive, job.output, task, plan)
        for name, part in stats.items():
            parts[name].append(part)
        for key, value in tallies.items():
            totals[key] = totals.get(key, 0) + value
    normalization = write_normalization(job.output, {k: merge_stats(v) for k, v in parts.items()})
    return WindowResult(counts=plan.counts, normalization=normalization, metrics=totals,
                        read_amplification=plan.read_amplification())


def _counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """Committed counter values; empty where the runner has no metrics (DaskRunner)."""
    try:
        query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    except NotImplementedError:
        return {}
    return {c.key.metric.name: int(c.committed or 0) for c in query["counters"]}
