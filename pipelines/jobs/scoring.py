"""Scoring: forecasts of a registered model from archive.zarr into forecasts.zarr (batch job).

The job runs in two steps:

1. **Plan** (driver, metadata only): resolve the model version and check it
   against the archive (:func:`nowcast.model.registry.check_archive`), create the
   forecast store from its template or grow it to the archive's length
   (:mod:`nowcast.pipelines.stores.forecasts`), and pick the init times to
   score (:mod:`nowcast.pipelines.plans.scoring`): the selected ones (a list,
   a range, or every archive frame) whose ``t_in`` input frames are all
   valid and that are not yet ``written``. They are grouped by the archive
   time chunk of their last input frame. Their forecasts must fit on the
   store's disk (:func:`check_forecasts_space`); a new store is created only
   once they do.
2. **Score** (Beam, one element per archive time chunk): read that chunk's
   frames once, plus a halo of ``t_in - 1`` frames before it, cut the
   windows, run them through ``RunInference`` with the Keras handler of
   :mod:`nowcast.pipelines.jobs.handler` (model loaded once per worker, tiles
   of the model's patch blended over the grid, de-normalised and clipped to
   the variable's valid range), and write each init time's forecast, then its
   ``written`` flag, into its own chunks.

Forecasts are a deterministic function of the archive and the model (fixed
predict batch shapes), every write owns whole chunks and the flag comes last,
so a rerun after a crash scores only the missing init times and the store
ends byte-identical to an uninterrupted run; two overlapping runs at worst
score an init time twice, writing the same bytes.

The graph is Create (whose built-in reshuffle spreads the tasks over the
workers), ParDo and RunInference (itself ParDos), so it runs on the
FnApiRunner and on Beam's DaskRunner alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from nowcast.background import Background
from nowcast.pipelines.jobs.runners import RunnerOptions, run_pipeline
from nowcast.pipelines.plans.scoring import (
    ScoreTask,
    ScoringError,
    ScoringSpec,
    plan_tasks,
    scoreable,
    select_indices,
)
from nowcast.pipelines.stores.archive import ArchiveError, ArchiveInfo, read_info, valid_flags
from nowcast.pipelines.stores.forecasts import (
    ModelVersion,
    StoreIdentity,
    ensure_store,
    last_writer,
    remove_if_unwritten,
    remove_stale_temporaries,
    write_forecast,
    written_flags,
)
from nowcast.pipelines.stores.groups import (
    StoreError,
    array,
    exists,
    open_group,
    storage_errors,
    worker_errors,
)
from nowcast.pipelines.stores.integrity import StoreDamagedError, read_span
from nowcast.pipelines.stores.lock import Fence, held_fence, store_lock
from nowcast.pipelines.stores.space import check_space, compression_ratio, free_bytes
from nowcast.text import counted

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """The resolved model: identity for the store, plus what the readers need."""

    identity: StoreIdentity
    version: str
    sha256: str
    channels: tuple[str, ...]
    archive_description: dict[str, object]
    valid_range: tuple[float | None, float | None]

    @property
    def written_by(self) -> ModelVersion:
        """What each init time it scores records about it."""
        return ModelVersion(self.version, self.sha256)


@dataclasses.dataclass(frozen=True)
class ScoringResult:
    """Counts of one scoring run."""

    forecasts: str
    selected: int
    scored: int
    already_written: int
    missing_input: int
    tasks: int

    def summary(self) -> str:
        return (f"scored {counted(self.scored, 'init time')} into {self.forecasts} ({self.already_written} "
                f"already written, {self.missing_input} without complete input, "
                f"{counted(self.tasks, 'archive chunk')} read)")


def scheduled_version(spec: ScoringSpec) -> tuple[str, str | None]:
    """The version a scheduled run of ``spec`` scores with, and why it is not the promoted one (None
    when it is).

    A named version is used as it is. For ``latest``: the promoted version when it passes the registry's
    checks against the archive (checksum, manifest, the archive it was trained for); otherwise the
    version that wrote the store's newest forecast, when that one passes, so that a damaged or mistaken
    promotion does not stop the schedule (the reason goes to the run's log and report). Without such a
    version the promoted one's error is raised, as before.
    """
    from nowcast.model.registry import LATEST, RegistryError, verify_version, version_name

    if spec.version != LATEST:
        return spec.version, None
    archive = read_info(spec.archive).description()
    try:
        promoted = verify_version(spec.models, spec.model, LATEST, archive=archive)
    except RegistryError as error:
        refusal = error
    else:
        return version_name(promoted.path), None
    previous = last_writer(spec.forecasts)
    if previous is None:
        raise refusal
    try:
        verify_version(spec.models, spec.model, previous, archive=archive)
    except RegistryError:
        raise refusal from None
    return previous, (f"the promoted version of {spec.model} cannot score: {refusal}; scored with "
                      f"{previous}, the version that wrote the newest forecast, until a working version is "
                      "promoted (`nowcast models promote`)")


def resolve_model(spec: ScoringSpec, archive: ArchiveInfo) -> ModelRef:
    """Resolves ``latest``, checks the model against the archive, and describes the store it writes."""
    from nowcast.model.registry import check_archive, read_metadata, resolve_version, version_name

    path = resolve_version(spec.models, spec.model, spec.version)
    metadata = read_metadata(path)
    normalization = metadata.get("normalization") or {}
    channels = tuple(normalization.get("channels") or metadata.get("channels") or ())
    target = str(normalization.get("target") or metadata.get("target") or "")
    if not channels or not target:
        raise ScoringError(f"model {path} does not record its channels and target; "
                           "retrain it with nowcast.model.train")
    for name in (*channels, target):
        archive.field(name)
    description = archive.description()
    check_archive(metadata, description)
    field = archive.field(target)
    identity = StoreIdentity(model_name=spec.model, archive=archive.fingerprint(), target=target,
                             t_in=int(metadata["t_in"]), t_out=int(metadata["t_out"]))
    return ModelRef(identity=identity, version=version_name(path),
                    sha256=str(metadata.get("model_sha256", "")), channels=channels,
                    archive_description=description.to_dict(),
                    valid_range=(field.valid_min, field.valid_max))


def plan(spec: ScoringSpec, exclude: set[int] | None = None,
         follows: bool = False) -> tuple[ModelRef, list[ScoreTask], ScoringResult]:
    """Prepares the store and lists what to score; ``exclude`` drops indices already in flight; a stream
    ``follows`` the archive (:func:`~nowcast.pipelines.plans.scoring.select_indices`)."""
    archive = read_info(spec.archive)
    model = resolve_model(spec, archive)
    # a range off the archive is refused before any store changes
    selected = select_indices(spec, archive, follows)
    new = not exists(spec.forecasts)
    if not new:  # checked, and grown to the archive's length (metadata only)
        ensure_store(spec.forecasts, model.identity, archive)
    ok, written = _flags(spec, selected, model.identity.t_in, new)
    todo = selected[ok & (spec.overwrite | ~written)]
    if exclude:
        todo = np.asarray([i for i in todo if int(i) not in exclude], dtype="int64")
    check_forecasts_space(spec, model.identity, archive, len(todo))
    if new and not len(todo):  # nothing to score: no empty store that binds the path to this archive
        return model, [], _counts(spec, selected, ok, written, 0)
    if new:  # created only once the forecasts fit
        ensure_store(spec.forecasts, model.identity, archive)
    remove_stale_temporaries(spec.forecasts, model.identity.target, todo)
    tasks = plan_tasks(todo.tolist(), archive.time_chunk)
    counts = _counts(spec, selected, ok, written, len(tasks))
    return model, tasks, counts


def _counts(spec: ScoringSpec, selected: np.ndarray, ok: np.ndarray, written: np.ndarray,
            tasks: int) -> ScoringResult:
    """The plan's counts before anything is scored."""
    return ScoringResult(forecasts=spec.forecasts, selected=len(selected), scored=0,
                         already_written=int(np.sum(ok & written & (not spec.overwrite))),
                         missing_input=int(np.sum(~ok)), tasks=tasks)


def check_forecasts_space(spec: ScoringSpec, identity: StoreIdentity, archive: ArchiveInfo,
                          count: int) -> None:
    """Refuses, before any forecast is written (or a new store created), ``count`` init times whose
    forecasts do not fit on the store's disk: ``t_out`` frames each, stored in whole chunks and
    compressed as the archive's target is (unchecked where that is unknown, as for windows)."""
    if count <= 0 or free_bytes(spec.forecasts) is None:
        return
    ratio = compression_ratio(spec.archive, identity.target)
    if ratio is None:
        return
    (ny, nx), (chunk_y, chunk_x) = archive.grid.shape, archive.spatial_chunks
    pixels = -(-ny // chunk_y) * chunk_y * -(-nx // chunk_x) * chunk_x  # edge chunks: stored at full size
    need = count * identity.t_out * pixels * 4 * ratio
    detail = (f"{count} init times of {identity.t_out} leads on a {ny} x {nx} grid, "
              "compressed as the archive is")
    check_space(spec.forecasts, need, "scoring", detail,
                "score fewer init times (a shorter --start/--end range)")


def _flags(spec: ScoringSpec, selected: np.ndarray, t_in: int,
           new: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per selected init time: whether its inputs are complete, and whether it is written (never, in a
    ``new`` store).

    Reads only the flags between the first and the last selected init time
    (the inputs reach ``t_in - 1`` frames further back): a scheduled run's
    few newest init times cost the same reads in a store of any age.
    """
    if not len(selected):
        return np.zeros(0, bool), np.zeros(0, bool)
    first, stop = int(selected.min()), int(selected.max()) + 1
    back = max(first - t_in + 1, 0)
    ok = scoreable(valid_flags(spec.archive, back, stop), t_in)[selected - back]
    written = np.zeros(stop - first, bool) if new else written_flags(spec.forecasts, first, stop)
    return ok, written[selected - first]


# ---------------------------------------------------------------- reading windows (pure)

def read_windows(archive: str, channels: Sequence[str], t_in: int,
                 indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, window)`` for each init index, with one read of frames ``min - t_in + 1 .. max``.

    A window is ``(t_in, y, x, channel)`` float32 in physical units. A chunk
    that does not decode is named with the fix (:func:`read_span`).
    """
    first, last = min(indices) - t_in + 1, max(indices)
    if first < 0:
        raise ScoringError(f"init index {min(indices)} has fewer than {t_in} frames before it")
    group = open_group(archive, error=ArchiveError)
    frames = np.stack([read_span(archive, array(group, name), first, last + 1).astype("float32", copy=False)
                       for name in channels], axis=-1)
    for index in indices:
        offset = index - first
        yield int(index), np.ascontiguousarray(frames[offset - t_in + 1: offset + 1])


# ---------------------------------------------------------------- Beam

class _ReadWindows(beam.DoFn):
    """Reads one archive chunk (plus halo) and emits batches of ``(init index, window)`` pairs.

    Batches are formed here, from the windows of one chunk, rather than by
    RunInference's BatchElements: BatchElements emits its last partial batch
    from ``finish_bundle``, whose outputs Beam's DaskRunner (2.77) drops.
    """

    def __init__(self, archive: str, channels: tuple[str, ...], t_in: int, batch_size: int) -> None:
        self.archive, self.channels, self.t_in, self.batch_size = archive, channels, t_in, batch_size

    def process(self, task: ScoreTask):
        batch: list[tuple[int, np.ndarray]] = []
        for pair in read_windows(self.archive, self.channels, self.t_in, task.indices):
            batch.append(pair)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


class _WriteForecast(beam.DoFn):
    """Writes one init time's forecast then its flag; optionally appends an event line for it.

    Writes run on one background thread, so compressing and storing one
    forecast overlaps the model's next batch (docs/scoring.md). Each write
    still sets its flag only after its data; the bundle finishes only once
    every write has, and a failed write fails the bundle (which the runner
    retries; writes are idempotent). An index is emitted once its write is
    done.
    """

    def __init__(self, forecasts: str, target: str, model: ModelVersion,
                 events_path: str | None = None, fence: Fence | None = None) -> None:
        self.forecasts, self.target, self.model, self.events_path = forecasts, target, model, events_path
        self.fence = fence  # the store's lock, checked before each write

    def setup(self) -> None:
        self._writer = Background[int]("forecast-writer")

    def process(self, keyed: tuple[int, np.ndarray]) -> Iterator[int]:
        index, forecast = keyed
        self._writer.submit(self._write, int(index), forecast)
        yield from self._writer.finished()

    def finish_bundle(self) -> None:
        # no outputs here (Beam's DaskRunner drops them): wait, and raise the first failed write
        self._writer.wait()

    def teardown(self) -> None:
        self._writer.close()

    def _write(self, index: int, forecast: np.ndarray) -> int:
        if self.fence is not None:
            self.fence.check()
        write_forecast(self.forecasts, index, self.target, forecast, self.model)
        if self.events_path:
            event = {"init_index": index, "pid": os.getpid(), "time": time.time()}
            with open(self.events_path, "a") as handle:  # one short O_APPEND write per line
                handle.write(json.dumps(event) + "\n")
        return index


def make_handler(spec: ScoringSpec, model: ModelRef) -> ModelHandler:
    """The keyed RunInference handler for ``model``, fed batches already formed by the reader."""
    from nowcast.pipelines.jobs.handler import KerasForecastHandler

    return KeyedModelHandler(KerasForecastHandler(
        spec.models, spec.model, model.version, model.archive_description, overlap=spec.overlap,
        predict_batch_size=spec.predict_batch_size, max_batch_size=spec.batch_size,
        valid_range=model.valid_range, threads=spec.threads_per_worker)).with_no_batching()


class ScoreInitTimes(beam.PTransform):
    """Tasks -> windows -> RunInference -> writes; shared by the batch job and the streaming scorer.

    Output: the init indices whose forecast (and ``written`` flag) is in the store.
    """

    def __init__(self, spec: ScoringSpec, model: ModelRef, events_path: str | None = None) -> None:
        super().__init__()
        if model.identity.model_name != spec.model:
            raise ScoringError(f"the model was resolved for {model.identity.model_name!r}, the spec names "
                               f"{spec.model!r}: resolve it with plan(spec)")
        self.spec, self.model, self.events_path = spec, model, events_path
        self.fence = held_fence(spec.forecasts)  # built under the store's lock (scoring_errors)

    def expand(self, tasks: beam.PCollection) -> beam.PCollection:
        spec, model = self.spec, self.model
        return (tasks
                | "ReadWindows" >> beam.ParDo(_ReadWindows(spec.archive, model.channels, model.identity.t_in,
                                                           spec.batch_size))
                | "Forecast" >> RunInference(make_handler(spec, model))
                | "Write" >> beam.ParDo(_WriteForecast(spec.forecasts, model.identity.target,
                                                       model.written_by, self.events_path, self.fence)))


@contextlib.contextmanager
def scoring_errors(spec: ScoringSpec, purpose: str) -> Iterator[None]:
    """A scoring run (batch or stream) as the forecast store's one writer, with its errors as messages.

    Written flags share chunks: one writer at a time (the store's lock). A full or read-only disk, a
    damaged archive chunk or a model version damaged since planning is a message that names the fix.
    A run that fails before its first forecast removes the store it created, which would otherwise fix
    the model and archive of every later run at that path though it holds nothing.
    """
    from nowcast.model.registry import RegistryError  # keras: only where a model is used

    with (storage_errors(spec.forecasts, purpose), store_lock(spec.forecasts, purpose),
          worker_errors(StoreDamagedError, RegistryError)):
        try:
            yield
        except Exception:
            with contextlib.suppress(OSError, StoreError):  # best effort: the run's error is the news
                remove_if_unwritten(spec.forecasts)
            raise


def run(spec: ScoringSpec, runner: RunnerOptions | None = None,
        events_path: str | None = None) -> ScoringResult:
    """Scores the selected init times that are not yet written.

    Raises:
        ScoringError: a bad request; nothing was written.
        nowcast.model.registry.RegistryError: the model is missing or does not fit the archive.
        nowcast.pipelines.stores.forecasts.ForecastStoreError: the store holds another model's forecasts.
    """
    if runner is not None:
        runner.check_reachable()
    with scoring_errors(spec, "scoring"):
        model, tasks, counts = plan(spec)
        todo = [i for task in tasks for i in task.indices]
        log.info("scoring %d init times in %d archive chunks into %s", len(todo), len(tasks), spec.forecasts)
        if tasks:
            # Create's own reshuffle spreads tasks over the multi-process runner's workers;
            # Create(reshuffle=False) | Reshuffle() ran them one at a time there (docs/ingest.md).
            run_pipeline(runner or RunnerOptions(), lambda p: (
                p | "Tasks" >> beam.Create(list(tasks))
                | "Score" >> ScoreInitTimes(spec, model, events_path)))
    if not todo:
        return counts
    done = written_flags(spec.forecasts, min(todo), max(todo) + 1)
    return dataclasses.replace(counts, scored=int(np.sum(done[np.asarray(todo) - min(todo)])))
