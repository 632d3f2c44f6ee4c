"""Streaming scoring: a run on the local runner while frames are ingested.

The streams end on what they did (their running totals), never on a clock:
``duration_s`` only bounds a run whose work never comes.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nowcast.model.registry import RegistryError
from nowcast.pipelines.jobs.scoring import ScoringError, ScoringSpec, run, scoreable
from nowcast.pipelines.jobs.scoring_stream import StreamSpec, run_stream
from nowcast.pipelines.stores.archive import valid_flags
from nowcast.pipelines.stores.forecasts import PROBE, open_forecasts, written_flags
from tests.pipelines.jobs.ingest_helpers import snapshot
from tests.pipelines.jobs.scoring_helpers import (
    MODEL,
    append_frames,
    make_archive,
    save_tiny_model,
    synthetic_stats,
)

FRAMES, SIZE, CHUNK = 30, (32, 32), 8
LONGEST_S = 300.0  # a bound for a stream that never finishes its work, not an expectation


def after_all_emitted(expected: int, more_polls: int):
    """A stop condition: ``more_polls`` polls after the stream emitted ``expected`` init times (those
    polls must find nothing new to score: nothing is emitted twice)."""
    polls_at_last: list[int] = []

    def done(totals) -> bool:
        if totals.emitted >= expected and not polls_at_last:
            polls_at_last.append(totals.polls)
        return bool(polls_at_last) and totals.polls >= polls_at_last[0] + more_polls

    return done


@pytest.mark.slow
def test_stream_scores_each_new_init_time_once_and_like_the_batch_job(tmp_path):
    full = make_archive(str(tmp_path / "full.zarr"), FRAMES, SIZE, CHUNK)
    models = tmp_path / "models"
    save_tiny_model(models, full, synthetic_stats(FRAMES, SIZE))
    archive = str(tmp_path / "archive.zarr")
    append_frames(archive, 6, FRAMES, SIZE, CHUNK)

    def writer() -> None:  # the ingest side: frames land while the stream runs
        time.sleep(2.0)
        for upto in [*range(8, FRAMES, 3), FRAMES]:
            append_frames(archive, upto, FRAMES, SIZE, CHUNK)
            time.sleep(0.3)

    thread = threading.Thread(target=writer)
    thread.start()
    events = tmp_path / "events.jsonl"
    spec = ScoringSpec(archive=archive, forecasts=str(tmp_path / "stream.zarr"), models=str(models),
                       model=MODEL)
    result = run_stream(StreamSpec(spec, interval_s=0.5, duration_s=LONGEST_S), events_path=str(events),
                        stop=after_all_emitted(FRAMES - 2, more_polls=3))
    thread.join()

    expected = np.flatnonzero(scoreable(valid_flags(archive), 3))
    assert len(valid_flags(archive)) == FRAMES
    assert len(expected) == FRAMES - 2
    assert result.emitted == len(expected), f"the stream ran {LONGEST_S} s without the work done"
    scored = [json.loads(line)["init_index"] for line in events.read_text().splitlines()]
    assert sorted(scored) == list(expected)  # every init time exactly once, all written before the end
    np.testing.assert_array_equal(np.flatnonzero(written_flags(spec.forecasts)), expected)

    batch_url = str(tmp_path / "batch.zarr")
    shutil.copytree(spec.forecasts, tmp_path / "stream-copy.zarr")
    run(ScoringSpec(**{**spec.__dict__, "forecasts": batch_url}))
    batch, stream = snapshot(batch_url), snapshot(str(tmp_path / "stream-copy.zarr"))
    assert {k: v for k, v in batch.items() if k != "zarr.json"} == \
        {k: v for k, v in stream.items() if k != "zarr.json"}
    # the root metadata alike but for the archive frame each store checks against: the first wet one when
    # it was made, 6 frames into the archive for the stream and all 40 for the batch
    roots = [json.loads((Path(url) / "zarr.json").read_text())
             for url in (batch_url, tmp_path / "stream-copy.zarr")]
    probes = [root["attributes"].pop(PROBE) for root in roots]
    assert roots[0] == roots[1]
    assert probes[0]["index"] >= probes[1]["index"]


def test_stream_refuses_a_bounded_selection(tmp_path):
    spec = ScoringSpec(archive="a", forecasts="f", models="m", model=MODEL, end="2024-01-01")
    with pytest.raises(ScoringError, match="every new init time"):
        StreamSpec(spec)
    every = ScoringSpec(archive="a", forecasts="f", models="m", model=MODEL)
    for interval in (0, float("inf"), float("nan"), 86_401):
        with pytest.raises(ScoringError, match=r"interval must be more than 0 and at most 86400 s"):
            StreamSpec(every, interval_s=interval)
    for duration in (0, float("inf"), 366 * 86_400 + 1):  # inf once overflowed Beam's timestamp
        with pytest.raises(ScoringError, match=r"leave it out to run until Ctrl-C or SIGTERM"):
            StreamSpec(every, duration_s=duration)


def test_a_stream_without_a_duration_ends_when_its_event_is_set(tmp_path):
    """Without ``duration_s`` the stream runs until stopped (it once failed at once: an infinite stop
    time overflowed Beam's timestamp); a set event ends it from another thread."""
    archive = make_archive(str(tmp_path / "archive.zarr"), 8, SIZE, CHUNK)
    models = tmp_path / "models"
    save_tiny_model(models, archive, synthetic_stats(FRAMES, SIZE))
    spec = ScoringSpec(archive=archive, forecasts=str(tmp_path / "stream.zarr"), models=str(models),
                       model=MODEL)
    stop = threading.Event()
    events = tmp_path / "events.jsonl"

    def shut_down_once_scored() -> None:  # a service's shutdown, from another thread
        deadline = time.monotonic() + LONGEST_S
        while not stop.is_set() and time.monotonic() < deadline:
            if events.exists() and len(events.read_text().splitlines()) >= 6:
                stop.set()
            time.sleep(0.05)

    thread = threading.Thread(target=shut_down_once_scored)
    thread.start()
    try:
        result = run_stream(StreamSpec(spec, interval_s=0.05), events_path=str(events), stop=stop)
    finally:
        stop.set()
        thread.join()
    assert result.emitted == 6
    assert written_flags(spec.forecasts).sum() == 6
    assert len(events.read_text().splitlines()) == 6


@pytest.mark.fault("score", "`score --follow --duration D` that waits for the store's lock (a batch run "
                   "writing, a killed writer's lease) for longer than D",
                   "ends with 0 polls and a warning that its duration ran out while it waited (Beam's "
                   "'assert start <= end' traceback, exit 1)")
def test_a_stream_whose_duration_runs_out_waiting_for_the_lock_ends_quietly(tmp_path, caplog):
    from nowcast.pipelines.stores.lock import store_lock

    archive = make_archive(str(tmp_path / "archive.zarr"), 8, SIZE, CHUNK)
    models = tmp_path / "models"
    save_tiny_model(models, archive, synthetic_stats(FRAMES, SIZE))
    spec = ScoringSpec(archive=archive, forecasts=str(tmp_path / "stream.zarr"), models=str(models),
                       model=MODEL)
    held, release = threading.Event(), threading.Event()

    def batch_writer() -> None:  # another run holds the store's lock for longer than the stream's duration
        with store_lock(spec.forecasts, "score"):
            held.set()
            release.wait(LONGEST_S)

    writer = threading.Thread(target=batch_writer)
    writer.start()
    try:
        held.wait(LONGEST_S)
        threading.Timer(2.0, release.set).start()
        result = run_stream(StreamSpec(spec, interval_s=0.05, duration_s=0.5))
    finally:
        release.set()
        writer.join()
    assert (result.polls, result.emitted) == (0, 0)
    assert "ran out before it could poll" in caplog.text


@pytest.mark.fault("score", "a store error, or a bug, in the scoring stream's poll",
                   "store errors retried a bounded number of polls; a bug fails the stream")
def test_a_poll_retries_store_errors_a_while_and_never_hides_a_bug(tmp_path, monkeypatch):
    """Polling once caught every Exception and retried it forever, hiding real bugs."""
    from nowcast.pipelines.jobs import scoring_stream

    poll = scoring_stream._Poll(spec=None, status_path=str(tmp_path / "status.json"),  # type: ignore[arg-type]
                                follows_latest=False)
    poll.setup()
    monkeypatch.setattr(scoring_stream, "plan", lambda *a, **k: (_ for _ in ()).throw(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        list(poll.process(0.0))

    def store_error(*args, **kwargs):
        raise FileNotFoundError("archive.zarr/precip/zarr.json (mid-extension)")

    monkeypatch.setattr(scoring_stream, "plan", store_error)
    for _ in range(scoring_stream.MAX_FAILED_POLLS - 1):
        assert list(poll.process(0.0)) == []  # skipped: the next poll may find the store complete
    with pytest.raises(ScoringError, match="polls in a row failed"):
        list(poll.process(0.0))


@pytest.mark.fault("score", "`score --follow` with a model version damaged after saving",
                   "the registry's error naming the file and the fix; no forecast store left behind (the "
                   "stream once left an empty one that fixed the damaged version for every later run)")
def test_a_stream_whose_model_cannot_load_leaves_no_store(tmp_path):
    archive = make_archive(str(tmp_path / "archive.zarr"), 8, SIZE, CHUNK)
    models = tmp_path / "models"
    save_tiny_model(models, archive, synthetic_stats(FRAMES, SIZE))
    saved = next(models.rglob("model.keras"))
    saved.write_bytes(saved.read_bytes()[:1000])
    spec = ScoringSpec(archive=archive, forecasts=str(tmp_path / "stream.zarr"), models=str(models),
                       model=MODEL)
    with pytest.raises(RegistryError, match="modified or corrupted after saving"):
        run_stream(StreamSpec(spec, interval_s=0.2, duration_s=LONGEST_S))
    assert not (tmp_path / "stream.zarr").exists()


@pytest.mark.slow
@pytest.mark.fault("score", "a version promoted while `score --follow` runs, then one that cannot score "
                   "(damaged after saving)",
                   "the stream goes on with the first after the init times in flight (it kept the old one "
                   "until restarted, without a word), and keeps it over the second, naming why; each init "
                   "time records the version that wrote it")
def test_a_stream_of_latest_goes_on_with_a_version_promoted_while_it_runs(tmp_path, caplog):
    archive = str(tmp_path / "archive.zarr")
    append_frames(archive, 10, FRAMES, SIZE, CHUNK)
    models = tmp_path / "models"
    save_tiny_model(models, archive, synthetic_stats(FRAMES, SIZE))
    spec = ScoringSpec(archive=archive, forecasts=str(tmp_path / "stream.zarr"), models=str(models),
                       model=MODEL)
    events = tmp_path / "events.jsonl"
    steps: list[str] = []

    def promote_then_extend(totals) -> bool:  # the train flow's promotions, while frames arrive
        if totals.emitted >= 8 and not steps:
            save_tiny_model(models, archive, synthetic_stats(FRAMES, SIZE), seed=2, version="v2")
            append_frames(archive, 16, FRAMES, SIZE, CHUNK)
            steps.append("v2")
        elif totals.emitted >= 14 and steps == ["v2"]:
            damaged = save_tiny_model(models, archive, synthetic_stats(FRAMES, SIZE), seed=3, version="v3")
            (Path(damaged) / "model.keras").write_bytes(b"cut short")
            append_frames(archive, 20, FRAMES, SIZE, CHUNK)
            steps.append("v3")
        return totals.emitted >= 18

    with caplog.at_level("WARNING", logger="nowcast.pipelines.jobs.scoring_stream"):
        result = run_stream(StreamSpec(spec, interval_s=0.2, duration_s=LONGEST_S), events_path=str(events),
                            stop=promote_then_extend)
    assert result.emitted == 18, f"the stream ran {LONGEST_S} s without the work done"
    versions = open_forecasts(spec.forecasts)["model_version"].values
    assert versions[2:10].tolist() == ["v1"] * 8
    assert versions[10:20].tolist() == ["v2"] * 10  # after the first promotion, and over the second
    assert "tiny/v2 was promoted to latest" in caplog.text
    assert "tiny/v3 was promoted but cannot score this stream" in caplog.text
    scored = [json.loads(line)["init_index"] for line in events.read_text().splitlines()]
    assert sorted(scored) == list(range(2, 20))  # each once, across the runs
