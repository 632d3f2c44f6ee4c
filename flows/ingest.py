"""Prefect flow: ingest a batch of frames into the archive (a thin shell over pipelines.ingest)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from pipelines.ingest import IngestResult, IngestSpec, run
from pipelines.runners import RunnerOptions


@task(name="ingest-batch", retries=1, retry_delay_seconds=5)
def ingest_task(spec: IngestSpec, runner: RunnerOptions) -> IngestResult:
    """Runs the ingest job; a retry is safe because ingest is idempotent."""
    result = run(spec, runner)
    get_run_logger().info(result.summary())
    return result


@flow(name="ingest")
def ingest_flow(spec: IngestSpec, runner: RunnerOptions | None = None) -> IngestResult:
    """Ingests ``spec.source`` into ``spec.archive``."""
    return ingest_task(spec, runner or RunnerOptions())
