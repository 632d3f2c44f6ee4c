"""Scoring survives SIGKILL and overlapping runs: the store ends byte-identical to one clean run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

import pytest

from nowcast.pipelines.jobs.scoring import ScoringSpec, run
from nowcast.pipelines.stores.forecasts import written_flags
from tests.pause import kill_at_points, kill_points, pause_env, paused_pid
from tests.pipelines.jobs.ingest_helpers import snapshot
from tests.pipelines.jobs.scoring_helpers import MODEL, make_archive, save_tiny_model, synthetic_stats

FRAMES, SIZE, CHUNK, T_IN = 120, (48, 48), 8, 3

pytestmark = [pytest.mark.usefixtures("short_lock_lease"),  # a killed run's lease ends in 10 s
              pytest.mark.xdist_group(__name__)]  # its module fixture is built once, on one worker


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Archive, model, and the store of one uninterrupted run."""
    root = tmp_path_factory.mktemp("scoring-crash")
    archive = make_archive(str(root / "archive.zarr"), FRAMES, SIZE, CHUNK)
    models = root / "models"
    save_tiny_model(models, archive, synthetic_stats(FRAMES, SIZE), patch=(16, 16), t_in=T_IN)
    url = root / "clean.zarr"
    run(spec(archive, models, url))
    return archive, models, snapshot(str(url))


def spec(archive, models, forecasts) -> ScoringSpec:
    return ScoringSpec(archive=str(archive), forecasts=str(forecasts), models=str(models), model=MODEL,
                       batch_size=2)


def command(archive, models, forecasts) -> list[str]:
    return [sys.executable, "-m", "nowcast.flows.cli", "score", "--archive", str(archive), "--forecasts",
            str(forecasts), "--models", str(models), "--model-name", MODEL, "--batch-size", "2"]


def flags_on_disk(url) -> int:
    folder = url / "written" / "c"
    return len(os.listdir(folder)) if folder.is_dir() else 0


@pytest.mark.slow
@pytest.mark.fault("score", "SIGKILL part way through batch scoring, twice, at seeded points",
                   "the rerun ends byte-identical to an uninterrupted run")
def test_sigkill_then_rerun_is_byte_identical(clean, tmp_path):
    archive, models, expected = clean
    url = tmp_path / "crashed.zarr"
    total = FRAMES - (T_IN - 1)
    done = []

    def part_way(_: int) -> None:
        done.append(int(written_flags(str(url)).sum()))
        assert 0 < done[-1] < total, f"kill did not land part way ({done[-1]}/{total} init times)"

    # each run is killed at its N-th flag write, the next resumes (seeded points: tests.pause.kill_points)
    kill_at_points(command(archive, models, url), tmp_path, r"^written/c/", kill_points(30), part_way)
    assert done == sorted(done), f"a resumed run lost init times: {done}"
    done_at_kill = done[-1]
    assert snapshot(str(url)) != expected

    rerun = run(spec(archive, models, url))
    assert rerun.scored == total - done_at_kill
    assert rerun.already_written == done_at_kill
    assert snapshot(str(url)) == expected


@pytest.mark.slow
@pytest.mark.fault("score", "two scoring runs over overlapping init times at once",
                   "the second waits for the first (the store lock), then finds everything written; "
                   "the store equals a single clean run")
def test_two_overlapping_runs_leave_the_clean_store(clean, tmp_path):
    archive, models, expected = clean
    url = tmp_path / "shared.zarr"
    paused, go = tmp_path / "paused", tmp_path / "go"
    # the other run stops after two init times, holding the lock, until this one is seen waiting for it
    other = subprocess.Popen(command(archive, models, url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=pause_env(paused, r"^written/c/", 2, go=go))
    paused_pid(paused, other)
    waiting = _LogEvent("waiting for")
    lock_log = logging.getLogger("nowcast.pipelines.stores.lock")
    lock_log.addHandler(waiting)
    results: list = []
    this_run = threading.Thread(target=lambda: results.append(run(spec(archive, models, url))))
    try:
        this_run.start()  # waits for the other run's lock, then plans
        assert waiting.seen.wait(300), "this run never waited for the other run's lock"
        go.touch()
        this_run.join(timeout=600)
    finally:
        go.touch()
        lock_log.removeHandler(waiting)
    assert results, "this run failed or never ended"
    mine = results[0]
    _, err = other.communicate(timeout=300)
    assert other.returncode == 0, err[-3000:]
    assert mine.scored == 0  # it planned once the other had written everything: nothing raced
    assert mine.already_written == FRAMES - (T_IN - 1)
    assert snapshot(str(url)) == expected


class _LogEvent(logging.Handler):
    """``seen`` is set once a record whose message contains ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()
