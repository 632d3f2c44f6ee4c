"""Prefect flow: ingest new frames into the archive (a thin shell over nowcast.pipelines.jobs.ingest).

On a schedule it reads a folder of radar or NetCDF files (searched
recursively, so dated subfolders work; local or an object-store prefix such
as ``s3://bucket/incoming``) and ingests only the files whose frame is not
yet valid in the archive, so a run with nothing new
does nothing. Without a folder it ingests the synthetic generator (the demo).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

from prefect import flow, get_run_logger, task

from nowcast.errors import retry_unless_bad_input
from nowcast.flows.artifacts import artifact_key, publish_store
from nowcast.flows.params import IngestParams
from nowcast.flows.progress import count_now, count_true, progress
from nowcast.pipelines.jobs.ingest import IngestResult, IngestSpec, ingest_items
from nowcast.pipelines.jobs.watch import on_the_axis, pending_items
from nowcast.pipelines.sources import folder_source, get_source, other_inputs
from nowcast.pipelines.sources.base import Source, list_files, not_a_local_folder, sorted_unique
from nowcast.pipelines.stores.archive import valid_flags
from nowcast.pipelines.stores.groups import object_store_errors

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class IngestRun:
    """What a scheduled ingest did (``time_length`` is None when nothing was new)."""

    archive: str
    frames_written: int
    time_length: int | None


def source_for(params: IngestParams, time_step: str | None = None) -> Source:
    """The source the parameters name: a folder of files, or the synthetic generator (every
    ``time_step``, default 5 minutes: the step a new archive of its frames gets)."""
    if not params.input_dir:
        return get_source("synthetic", shape=(params.synthetic_size, params.synthetic_size),
                          n_frames=params.synthetic_frames, start=params.synthetic_start, seed=params.seed,
                          density=params.synthetic_density, **({"time_step": time_step} if time_step else {}))
    return folder_source(params.input_dir, params.format)


def warn_of_other_inputs(source: Source, directory: str | None, logger: Any = log) -> None:
    """Warns of input files under ``directory`` that ``source`` leaves out (another format's)."""
    others = other_inputs(source, directory) if directory else []
    if others:
        logger.warning("%d files under %s are not %s files and are not ingested (e.g. %s); ingest them "
                       "with their own --format, into an archive of their own", len(others), directory,
                       source.name, others[0])


def _holds_no_file(input_dir: str | None) -> bool:
    """Whether ``input_dir`` is a folder (or prefix) with no file in it yet, searched recursively as the
    sources search; a file or a pattern (the NetCDF source reads either) is left to its source."""
    if not input_dir or not_a_local_folder(input_dir):
        return False
    return not list_files(input_dir, ("",))


@task(name="ingest-new-frames", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input)
def ingest_new(params: IngestParams) -> IngestResult | None:
    """Ingests the frames not yet valid in the archive; None when there are none."""
    with object_store_errors(params.input_dir, params.archive):
        return _ingest_new(params)


def _ingest_new(params: IngestParams) -> IngestResult | None:
    logger = get_run_logger()
    if _holds_no_file(params.input_dir):
        logger.info("no files in %s: nothing to ingest", params.input_dir)
        return None
    source = source_for(params)
    warn_of_other_inputs(source, params.input_dir, logger)
    spec = IngestSpec(archive=params.archive, source=source, time_chunk=params.time_chunk)
    placed, refused = on_the_axis(sorted_unique(source.items()), spec)
    for item, problem in refused:  # as the watcher does: the other files still go in, every run says it
        logger.warning("not ingested: %s", problem if item.path in problem else f"{item.path}: {problem}")
    items = pending_items(placed, params.archive)
    if not items:
        logger.info("every frame of %s %sis already in %s: nothing to ingest", source.name,
                    "that the archive's time axis can hold " if refused else "", params.archive)
        return None
    valid = functools.partial(valid_flags, params.archive)
    with progress("ingest frames", len(items), count_true(valid, count_now(valid)), enabled=False,
                  artifact=artifact_key("ingest-progress")):
        result = ingest_items(spec, items, params.runner.options())
    logger.info(result.summary())
    return result


@flow(name="ingest")
def ingest_flow(params: IngestParams) -> IngestRun:
    """Ingests new frames into ``params.archive``; a no-op when nothing is new."""
    result = ingest_new(params)
    if result is not None:
        publish_store("ingest-archive", params.archive, "archive.zarr")
    return IngestRun(archive=params.archive, frames_written=result.frames_written if result else 0,
                     time_length=result.time_length if result else None)
