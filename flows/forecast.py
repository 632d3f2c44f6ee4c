"""Prefect flows: the scheduled forecast and the historical backfill (thin shells over the scoring job).

``forecast`` looks at the newest ``lookback`` init times of the archive, asks
the scoring planner which of them have complete input and are not yet
written, and scores only those: a run with nothing new does nothing.

``backfill`` plans a time range the same way, cuts the init times still to
do into chunks of ``chunk_size``, and scores each chunk as a task, at most
``concurrency`` at a time. The store's per-init-time ``written`` flag makes it
resumable: a rerun after a crash or a cancel plans only what is missing. A
progress artifact follows the chunks.

Every scoring job takes the forecast store's turn first
(:mod:`nowcast.flows.concurrency`): a scheduled forecast and an overlapping
backfill, or two backfills, score one after the other and each skips what
the other wrote, so no init time is written twice, even across a promotion.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from uuid import UUID

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed

from nowcast.errors import retry_unless_bad_input
from nowcast.flows.artifacts import artifact_key, publish_store
from nowcast.flows.concurrency import store_slot
from nowcast.flows.params import BackfillParams, ForecastParams, Runner, ScoreParams
from nowcast.pipelines.jobs import scoring
from nowcast.pipelines.plans.scoring import ScoringSpec
from nowcast.pipelines.stores.archive import read_info
from nowcast.pipelines.stores.timeaxis import time_values


@dataclasses.dataclass(frozen=True)
class Pending:
    """Init times still to score (ISO strings), with the planner's counts."""

    init_times: tuple[str, ...]
    selected: int
    already_written: int
    missing_input: int


@dataclasses.dataclass(frozen=True)
class ForecastRun:
    """What a scheduled forecast did: the init times it scored (none when nothing was new), the version
    that scored them, and why that is not the promoted one (None when it is)."""

    scored: int
    init_times: list[str]
    version: str = ""
    passed_over: str | None = None


@dataclasses.dataclass(frozen=True)
class BackfillRun:
    """What a backfill did, with the planner's counts for the range."""

    scored: int
    chunks: int
    already_written: int
    missing_input: int
    init_times: list[str]


def scoring_spec(params: ForecastParams | ScoreParams, **selection: Any) -> ScoringSpec:
    """The scoring job's spec for the init times ``selection`` names (``init_times``, ``start``/``end``)."""
    spec = ScoringSpec(archive=params.archive, forecasts=params.forecasts, models=params.models,
                       model=params.model_name, version=params.model_version, **selection)
    if isinstance(params, ScoreParams):
        spec = dataclasses.replace(spec, overwrite=params.overwrite, batch_size=params.batch_size)
    return spec


def iso_times(archive: str, indices: list[int]) -> tuple[str, ...]:
    """Archive indices as ISO init times."""
    info = read_info(archive)
    times = time_values(info.start, info.time_step, info.length)
    return tuple(str(np.datetime64(times[i], "s")) for i in indices)


@task(name="plan-init-times")
def plan_pending(spec: ScoringSpec) -> Pending:
    """Creates or grows the forecast store and lists the init times still to score."""
    _model, tasks, counts = scoring.plan(spec)
    indices = [i for t in tasks for i in t.indices]
    return Pending(init_times=iso_times(spec.archive, indices), selected=counts.selected,
                   already_written=counts.already_written, missing_input=counts.missing_input)


@task(name="score-init-times", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_unless_bad_input)
def score(spec: ScoringSpec, runner: Runner) -> scoring.ScoringResult:
    """Scores the listed init times in the store's turn (those written meanwhile are skipped)."""
    with store_slot(spec.forecasts):
        result = scoring.run(spec, runner.options())
    get_run_logger().info(result.summary())
    return result


def newest_range(archive: str, lookback: int) -> tuple[str, str]:
    """The last ``lookback`` init times of the archive as an ISO (start, end) range."""
    info = read_info(archive)
    first = max(0, info.length - lookback)
    start, end = iso_times(archive, [first, info.length - 1])
    return start, end


@flow(name="forecast")
def forecast_flow(params: ForecastParams) -> ForecastRun:
    """Scores the newest complete frames not yet forecast; a no-op when nothing is new. A promoted
    version that cannot score is passed over for the one that wrote the newest forecast, with a warning
    (:func:`~nowcast.pipelines.jobs.scoring.scheduled_version`)."""
    logger = get_run_logger()
    version, refusal = scoring.scheduled_version(scoring_spec(params))
    if refusal:
        logger.warning(refusal)
    params = params.model_copy(update={"model_version": version})
    start, end = newest_range(params.archive, params.lookback)
    pending = plan_pending(scoring_spec(params, start=start, end=end))
    if not pending.init_times:
        logger.info("nothing new to forecast in %s .. %s (%d already written, %d without complete input)",
                    start, end, pending.already_written, pending.missing_input)
        return ForecastRun(scored=0, init_times=[], version=version, passed_over=refusal)
    result = score(scoring_spec(params, init_times=pending.init_times), params.runner)
    create_markdown_artifact(
        key="forecast-latest",
        markdown=f"Forecast **{params.model_name}/{params.model_version}** for init times "
                 f"{', '.join(pending.init_times)}: {result.summary()}\n"
                 + (f"\n**Warning:** {refusal}\n" if refusal else ""),
        description="latest scheduled forecast")
    return ForecastRun(scored=result.scored, init_times=list(pending.init_times), version=version,
                       passed_over=refusal)


def chunked(values: tuple[str, ...], size: int) -> list[tuple[str, ...]]:
    """Consecutive chunks of at most ``size`` values."""
    return [values[i:i + size] for i in range(0, len(values), size)]


@flow(name="backfill")
def backfill_flow(params: BackfillParams) -> BackfillRun:
    """Scores every init time in [start, end] not yet written, chunk by chunk, with a progress artifact.
    ``latest`` is resolved once, at the start: a version promoted while the backfill runs does not split
    it between two models (it did, chunk by chunk, without a word). A promoted version that cannot score
    fails the backfill naming the damage (the schedule passes it over; a backfill is started by hand)."""
    from nowcast.model.registry import LATEST, promoted_version

    logger = get_run_logger()
    if params.model_version == LATEST:
        pinned = promoted_version(params.models, params.model_name)
        params = params.model_copy(update={"model_version": pinned or LATEST})  # none: scoring says so
    logger.info("backfill with %s/%s", params.model_name, params.model_version)
    pending = plan_pending(scoring_spec(params, start=params.start, end=params.end))
    chunks = chunked(pending.init_times, params.chunk_size)
    total = len(pending.init_times) + pending.already_written
    logger.info("backfill %s .. %s: %d init times to score in %d chunks (%d already written, %d without "
                "complete input)", params.start, params.end, len(pending.init_times), len(chunks),
                pending.already_written, pending.missing_input)
    done = pending.already_written
    # a sync call in a flow returns the id, not a coroutine
    progress_id: UUID = create_progress_artifact(  # type: ignore[assignment]
        progress=100.0 * done / total if total else 100.0, key=artifact_key("backfill-progress"),
        description=f"init times scored of {total} in range")
    running: list[PrefectFuture[scoring.ScoringResult]] = []
    queue, scored, already = list(chunks), 0, pending.already_written
    while queue or running:
        while queue and len(running) < params.concurrency:
            running.append(score.submit(scoring_spec(params, init_times=queue.pop(0)), params.runner))
        finished = next(as_completed(running))
        running.remove(finished)
        result = finished.result()
        scored += result.scored
        already += result.already_written  # unwritten when planned: another run wrote them meanwhile
        done += result.scored + result.already_written
        update_progress_artifact(progress_id, 100.0 * done / total if total else 100.0)
        logger.info("backfill progress: %d of %d init times written", done, total)
    publish_store("backfill-forecasts", params.forecasts, "forecasts.zarr")
    return BackfillRun(scored=scored, chunks=len(chunks), already_written=already,
                       missing_input=pending.missing_input, init_times=list(pending.init_times))
