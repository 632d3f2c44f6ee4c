"""Streaming scoring: follow the archive and forecast each new init time exactly once.

A tick fires every ``interval_s``; each firing plans like
the batch job (metadata only: the archive's ``valid`` flags, the store's
``written`` flags), grows the forecast store with the archive, and emits the
init times that became scoreable and were never emitted before. They flow
through the same read, RunInference and write steps as the batch job
(:class:`nowcast.pipelines.jobs.scoring.ScoreInitTimes`), so a streamed forecast is
byte-identical to a batch one.

Exactly once: the poll remembers what it emitted (an init time in flight is
not emitted again) and skips what is ``written`` (an init time finished
before a restart is not scored again); a restart after a crash re-emits only
init times whose flag never landed. Totals go to a small status file, not
Beam metrics (the FnApiRunner's metric merging recurses once per impulse in
long streams). The stream ends after ``duration_s``, or as soon as its
``stop`` event is set or its ``stop`` condition holds for the running totals
(:mod:`nowcast.pipelines.jobs.ticks`); what it emitted is written before it
returns.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time

import apache_beam as beam

from nowcast.pipelines.jobs.scoring import ScoreInitTimes, plan, scoring_errors
from nowcast.pipelines.jobs.ticks import Stop, run_streaming, ticks, timing_problem, write_totals
from nowcast.pipelines.plans.scoring import ScoringError, ScoringSpec
from nowcast.pipelines.stores.groups import worker_errors
from nowcast.text import counted

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """A scoring job that follows the archive.

    Attributes:
        scoring: what to score and where (``init_times``/``start``/``end`` must be unset:
            every new frame is scored).
        interval_s: seconds between polls of the archive.
        duration_s: stop after this many seconds; None runs until stopped.
    """

    scoring: ScoringSpec
    interval_s: float = 5.0
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.scoring.init_times is not None or self.scoring.end:
            raise ScoringError("a stream scores every new init time: drop init_times and end "
                               "(start may stay)")
        problem = timing_problem(self.interval_s, self.duration_s)
        if problem:
            raise ScoringError(problem)


@dataclasses.dataclass(frozen=True)
class StreamResult:
    """A stream's running totals; ``promoted`` is 1 once a poll found a newer ``latest`` than the one the
    run scores with (the run then ends, and :func:`run_stream` goes on with the new version)."""

    polls: int
    emitted: int
    promoted: int = 0

    def summary(self) -> str:
        return f"{counted(self.polls, 'poll')}, {counted(self.emitted, 'init time')} emitted for scoring"


ZEROS = {"polls": 0, "emitted": 0, "promoted": 0}
MAX_FAILED_POLLS = 10  # consecutive polls whose planning failed before the stream gives up


class _Poll(beam.DoFn):
    """On each impulse: plan, emit the new tasks, record totals in the status file."""

    def __init__(self, spec: ScoringSpec, status_path: str, follows_latest: bool,
                 refused: frozenset[str] = frozenset()) -> None:
        self.spec, self.status_path, self.follows_latest = spec, status_path, follows_latest
        self.refused = refused  # promoted versions that could not score this stream

    def setup(self) -> None:
        self.emitted: set[int] = set()
        self.polls = 0
        self.failed_in_a_row = 0
        self.promoted = 0

    def process(self, _tick: float):
        if self.promoted or (self.follows_latest and self._newer_version()):
            self.promoted = 1  # emit no more: the run ends, its work in flight written first
            self.polls += 1
            write_totals(self.status_path, {"polls": self.polls, "emitted": len(self.emitted), "promoted": 1})
            return
        try:
            _, tasks, _ = plan(self.spec, exclude=self.emitted, follows=True)
            self.failed_in_a_row = 0
        except (ValueError, OSError) as error:  # the stores' errors: an archive mid-extension or not
            self.failed_in_a_row += 1           # there yet; try again next poll (any other error is a bug)
            if self.failed_in_a_row >= MAX_FAILED_POLLS:
                raise ScoringError(f"{MAX_FAILED_POLLS} polls in a row failed, the last with: {error}; fix "
                                   "the archive or the forecast store and start the stream again") from error
            log.warning("poll skipped (%d in a row): %s", self.failed_in_a_row, error)
            tasks = []
        self.polls += 1
        for task in tasks:
            self.emitted.update(task.indices)
        write_totals(self.status_path, {"polls": self.polls, "emitted": len(self.emitted), "promoted": 0})
        if tasks:
            log.info("stream: %d new init times", sum(len(t.indices) for t in tasks))
        yield from tasks

    def _newer_version(self) -> bool:
        """Whether ``latest`` now names another version than the one this run scores with."""
        from nowcast.model.registry import RegistryError, promoted_version

        try:
            latest = promoted_version(self.spec.models, self.spec.model)
        except (RegistryError, OSError) as error:  # a promotion being written: look again next poll
            log.debug("latest of %s not read this poll: %s", self.spec.model, error)
            return False
        if latest is None or latest == self.spec.version or latest in self.refused:
            return False
        log.warning("%s/%s was promoted to latest: the stream goes on with it after the init times in "
                    "flight (scored with %s)", self.spec.model, latest, self.spec.version)
        return True


def build(root: beam.Pipeline, status_path: str, stop_key: str | None, *, spec: StreamSpec,
          events_path: str | None, duration_s: float | None, follows_latest: bool,
          refused: frozenset[str]):
    """The streaming graph: tick -> poll -> read -> RunInference -> write, for ``duration_s`` (what is
    left of the stream's duration; None: no end), with the version ``spec`` names."""
    model, _, _ = plan(spec.scoring, follows=True)  # creates the store, fixes the model version for the run
    scoring = dataclasses.replace(spec.scoring, version=model.version)
    tasks = (ticks(root, spec.interval_s, duration_s, stop_key)
             | "Poll" >> beam.ParDo(_Poll(scoring, status_path, follows_latest, refused)))
    return tasks | "Score" >> ScoreInitTimes(scoring, model, events_path)


def version_to_use(spec: ScoringSpec, working: str | None, refused: set[str]) -> str:
    """The version the stream's next run scores with: a named one as it is; for ``latest``, the promoted
    version unless it was refused (then ``working``, the last that scored)."""
    from nowcast.model.registry import LATEST, promoted_version  # keras: only where a model is used

    if spec.version != LATEST:
        return spec.version
    latest = promoted_version(spec.models, spec.model)
    if latest is None:
        return working or LATEST  # LATEST: the plan names the missing promotion
    return working if latest in refused and working else latest


def run_stream(spec: StreamSpec, events_path: str | None = None,
               stop: Stop[StreamResult] = None) -> StreamResult:
    """Runs the stream on the local runner until ``duration_s`` passes (or forever), or it is stopped.

    The stream holds the forecast store's writers' lock while it runs
    (:mod:`nowcast.pipelines.stores.lock`): a batch run into the same store
    waits for it to end. Its errors are the batch job's
    (:func:`~nowcast.pipelines.jobs.scoring.scoring_errors`): a stream that fails
    before its first forecast (a damaged model) leaves no store behind.

    A stream of ``latest`` follows promotions: once a poll finds that another
    version became ``latest``, the run ends after the init times in flight and
    a new run goes on with that version (a model is loaded once per run), each
    init time recording the version that wrote it. A stream of a named version
    keeps it.

    Args:
        spec: the stream.
        events_path: if given, one JSON line per written init time is appended there
            (``init_index``, the worker's ``pid``, and the ``time`` it was written, Unix seconds).
        stop: an Event that ends the stream once set, or a condition over the running totals
            (checked before every poll) that ends it once true, e.g.
            ``lambda totals: totals.emitted >= 24``. Init times already emitted are written first.
    """
    from nowcast.model.registry import LATEST, RegistryError  # keras: only where a model is used

    deadline = None if spec.duration_s is None else time.monotonic() + spec.duration_s
    done = StreamResult(0, 0)
    follows_latest = spec.scoring.version == LATEST
    working: str | None = None  # the version the last run scored with
    refused: set[str] = set()  # promoted versions that could not score this stream

    def so_far(run: StreamResult) -> StreamResult:
        return StreamResult(done.polls + run.polls, done.emitted + run.emitted)

    def stopped(run: StreamResult | None = None) -> bool:
        if isinstance(stop, threading.Event):
            return stop.is_set()
        return stop is not None and bool(stop(so_far(run or StreamResult(0, 0))))

    # the stream is the forecast store's one writer for as long as it runs
    with scoring_errors(spec.scoring, "scoring stream"):
        while True:
            version = version_to_use(spec.scoring, working, refused)
            pinned = dataclasses.replace(spec, scoring=dataclasses.replace(spec.scoring, version=version))
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:  # spent waiting for the store's lock: Beam's assertion, exit 1
                if not done.polls:
                    log.warning("the stream's %.0f s ran out before it could poll (it waited for %s's lock)",
                                spec.duration_s, spec.scoring.forecasts)
                return done
            graph = functools.partial(build, spec=pinned, events_path=events_path, duration_s=left,
                                      follows_latest=follows_latest, refused=frozenset(refused))
            try:
                with worker_errors(RegistryError):
                    run = run_streaming("nowcast-score-stream-", StreamResult, ZEROS, graph,
                                        lambda totals: bool(totals.promoted) or stopped(totals))
            except RegistryError as error:
                if working is None or version == working:
                    raise
                refused.add(version)  # a promoted version that cannot score: the forecasts go on
                log.error("%s/%s was promoted but cannot score this stream (%s); it goes on with %s until "
                          "another version is promoted", spec.scoring.model, version, error, working)
                continue
            working = version
            done = so_far(run)
            if not run.promoted or stopped() or (deadline is not None and deadline <= time.monotonic()):
                return done
