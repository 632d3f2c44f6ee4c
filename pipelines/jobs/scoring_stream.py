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
import logging

import apache_beam as beam

from nowcast.pipelines.jobs.scoring import ScoreInitTimes, plan
from nowcast.pipelines.jobs.ticks import Stop, run_streaming, ticks, timing_problem, write_totals
from nowcast.pipelines.plans.scoring import ScoringError, ScoringSpec
from nowcast.pipelines.stores.lock import store_lock

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
    polls: int
    emitted: int

    def summary(self) -> str:
        return f"{self.polls} polls, {self.emitted} init times emitted for scoring"


ZEROS = {"polls": 0, "emitted": 0}
MAX_FAILED_POLLS = 10  # consecutive polls whose planning failed before the stream gives up


class _Poll(beam.DoFn):
    """On each impulse: plan, emit the new tasks, record totals in the status file."""

    def __init__(self, spec: ScoringSpec, status_path: str) -> None:
        self.spec, self.status_path = spec, status_path

    def setup(self) -> None:
        self.emitted: set[int] = set()
        self.polls = 0
        self.failed_in_a_row = 0

    def process(self, _tick: float):
        try:
            _, tasks, _ = plan(self.spec, exclude=self.emitted)
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
        write_totals(self.status_path, {"polls": self.polls, "emitted": len(self.emitted)})
        if tasks:
            log.info("stream: %d new init times", sum(len(t.indices) for t in tasks))
        yield from tasks


def build(root: beam.Pipeline, spec: StreamSpec, status_path: str, events_path: str | None = None,
          stop_key: str | None = None):
    """The streaming graph: tick -> poll -> read -> RunInference -> write."""
    model, _, _ = plan(spec.scoring)  # creates the store and fixes the model version for the run
    scoring = dataclasses.replace(spec.scoring, version=model.version)
    tasks = (ticks(root, spec.interval_s, spec.duration_s, stop_key)
             | "Poll" >> beam.ParDo(_Poll(scoring, status_path)))
    return tasks | "Score" >> ScoreInitTimes(scoring, model, events_path)


def run_stream(spec: StreamSpec, events_path: str | None = None,
               stop: Stop[StreamResult] = None) -> StreamResult:
    """Runs the stream on the local runner until ``duration_s`` passes (or forever), or it is stopped.

    The stream holds the forecast store's writers' lock while it runs
    (:mod:`nowcast.pipelines.stores.lock`): a batch run into the same store
    waits for it to end.

    Args:
        spec: the stream.
        events_path: if given, one JSON line per written init time is appended there
            (``init_index``, the worker's ``pid``, and the ``time`` it was written, Unix seconds).
        stop: an Event that ends the stream once set, or a condition over the running totals
            (checked before every poll) that ends it once true, e.g.
            ``lambda totals: totals.emitted >= 24``. Init times already emitted are written first.
    """
    # the stream is the forecast store's one writer for as long as it runs
    with store_lock(spec.scoring.forecasts, "scoring stream"):
        return run_streaming(
            "nowcast-score-stream-", StreamResult, ZEROS,
            lambda pipeline, status_path, stop_key: build(pipeline, spec, status_path, events_path, stop_key),
            stop)
