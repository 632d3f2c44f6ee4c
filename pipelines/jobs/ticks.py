"""Ticks for the streaming jobs: an impulse every ``interval_s`` until a duration passes or a stop holds.

Beam's ``PeriodicImpulse`` ends only at its stop timestamp (and fails at once
when that is infinite, which is what "run until stopped" asked of it). The
watcher and the streaming scorer need two more ways to end cleanly: when the
caller sets a ``threading.Event`` (a service shutting down), and when a
condition over the job's own running totals holds (a test that stops as soon
as the work it expects is done, however slow the machine). After the last
tick the pipeline drains: whatever the polls emitted is still written before
``run`` returns.

A stop condition cannot travel inside the pipeline (an Event holds a lock,
which does not pickle), so it stays in this process in a small registry and
the DoFn carries its key. Both streaming jobs run on the in-process runner,
whose workers are threads of this process, so the key always resolves.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import apache_beam as beam
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.periodicsequence import ImpulseSeqGenRestrictionProvider
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from nowcast.files import write_atomically
from nowcast.pipelines.jobs.runners import RunnerOptions
from nowcast.processes import alive

MAX_INTERVAL_S = 86_400.0  # a day between polls: rarer polls are a schedule, not a stream
MAX_DURATION_S = 366 * 86_400.0  # a year; a longer run leaves the duration out and is stopped by a signal

StopCondition = Callable[[], bool]
T = TypeVar("T")
Stop = threading.Event | Callable[[T], bool] | None  # the streaming jobs' ``stop`` argument

_CONDITIONS: dict[str, StopCondition] = {}
_LOCK = threading.Lock()


@contextlib.contextmanager
def registered(condition: StopCondition | None) -> Iterator[str | None]:
    """Keeps ``condition`` reachable by the returned key while the pipeline runs (None: no key)."""
    if condition is None:
        yield None
        return
    key = uuid.uuid4().hex
    with _LOCK:
        _CONDITIONS[key] = condition
    try:
        yield key
    finally:
        with _LOCK:
            _CONDITIONS.pop(key, None)


def _should_stop(key: str | None) -> bool:
    if key is None:
        return False
    with _LOCK:
        condition = _CONDITIONS.get(key)
    if condition is None:
        raise RuntimeError("a stop condition ran outside the process that set it; the streaming jobs run "
                           "on the in-process runner only")
    return bool(condition())


_RESTRICTION = beam.DoFn.RestrictionParam(ImpulseSeqGenRestrictionProvider())
_WATERMARK = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())


class _TickUntil(beam.DoFn):
    """Beam's impulse loop (emit each tick once its time has come) with a stop check before every tick."""

    def __init__(self, stop_key: str | None) -> None:
        self.stop_key = stop_key

    @beam.DoFn.unbounded_per_element()
    def process(self, element, tracker=_RESTRICTION, watermark=_WATERMARK):
        start, _, interval = element
        index = tracker.current_restriction().start
        while True:
            if _should_stop(self.stop_key):
                tracker.try_claim(tracker.current_restriction().stop)  # claims past the end: done
                return
            at = start + interval * index
            due = Timestamp.of(at)
            if due > Timestamp.now():
                watermark.set_watermark(max(due, watermark.current_watermark() or due))
                tracker.defer_remainder(due)  # the runner calls again at the next tick
                return
            if not tracker.try_claim(index):
                return
            watermark.set_watermark(max(due, watermark.current_watermark() or due))
            yield beam.window.TimestampedValue(at, due)
            index += 1


def timing_problem(interval_s: float, duration_s: float | None) -> str | None:
    """What is wrong with a stream's ``interval_s`` and ``duration_s`` (None if nothing), naming the flags
    and the bounds."""
    if not 0 < interval_s <= MAX_INTERVAL_S:  # NaN fails too
        return (f"interval must be more than 0 and at most {MAX_INTERVAL_S:.0f} s (a day), got {interval_s} "
                "(--interval)")
    if duration_s is not None and not 0 < duration_s <= MAX_DURATION_S:
        return (f"duration must be more than 0 and at most {MAX_DURATION_S:.0f} s (a year), got {duration_s} "
                "(--duration); leave it out to run until Ctrl-C or SIGTERM")
    return None


def ticks(root: beam.Pipeline, interval_s: float, duration_s: float | None,
          stop_key: str | None = None) -> beam.PCollection:
    """A tick now and every ``interval_s`` after, until ``duration_s`` (None: no end) or the stop holds."""
    now = time.time()
    end = Timestamp.of(now + duration_s) if duration_s else MAX_TIMESTAMP
    return (root | "Start" >> beam.Create([(now, end, interval_s)])
            | "Tick" >> beam.ParDo(_TickUntil(stop_key)))


def run_streaming(prefix: str, result: Callable[..., T], zeros: dict[str, int],
                  build: Callable[[beam.Pipeline, str, str | None], object], stop: Stop[T]) -> T:
    """Runs a streaming job on the in-process runner; returns its totals as ``result(**totals)``.

    ``build(pipeline, status_path, stop_key)`` adds the job's steps: its polls
    write their running totals to ``status_path`` (:func:`write_totals`) and
    its :func:`ticks` take ``stop_key``, under which ``stop`` (an Event, or a
    condition over those totals) is checked before every tick. ``prefix``
    names the temporary folder that holds the status file.
    """
    runner, options = RunnerOptions(kind="inmemory", extra_args=("--streaming",)).build()
    remove_abandoned_state(prefix)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-") as state:
        status_path = os.path.join(state, "status.json")

        def totals() -> T:
            return result(**read_totals(status_path, zeros))

        with registered(stop_condition(stop, totals)) as stop_key:
            pipeline = beam.Pipeline(runner=runner, options=options)
            build(pipeline, status_path, stop_key)
            pipeline.run().wait_until_finish()
        return totals()


def remove_abandoned_state(prefix: str) -> None:
    """Removes the status folders of streaming jobs whose process is gone (a SIGKILLed watcher or
    follower left one in the temporary folder for good); a folder named by a live process stays."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        owner = name[len(prefix):].split("-", 1)[0]
        if name.startswith(prefix) and owner.isdigit() and not alive(int(owner)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def stop_condition(stop: Stop[T], totals: Callable[[], T]) -> StopCondition | None:
    """The jobs' ``stop`` argument as a check without arguments: an Event stops the job once set, a
    callable once it returns True for the job's running ``totals()``."""
    if stop is None:
        return None
    if isinstance(stop, threading.Event):
        return stop.is_set
    return lambda: stop(totals())


def write_totals(path: str, totals: dict[str, int]) -> None:
    """Replaces the status file at ``path`` in one step (a reader never sees half of it).

    The streaming jobs keep their running totals there rather than in Beam
    metrics: the FnApiRunner's metric merging recurses once per tick in long streams.
    """
    write_atomically(path, json.dumps(totals))


def read_totals(path: str, zeros: dict[str, int]) -> dict[str, int]:
    """The totals last written to ``path`` (``zeros`` before the first poll)."""
    totals = dict(zeros)
    if os.path.exists(path):
        with open(path) as handle:
            totals.update(json.load(handle))
    return totals
