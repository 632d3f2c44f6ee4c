"""Streaming ingest: a watch on the local runner while a writer drops files in.

The watches end on what they did (their running totals) or an event, never on
a clock: ``duration_s`` only bounds a run whose work never comes.
"""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest

from nowcast.pipelines.jobs.ingest import IngestSpec, run
from nowcast.pipelines.jobs.watch import WatchSpec, run_watch
from nowcast.pipelines.sources import get_source
from nowcast.pipelines.stores.archive import open_archive

LONGEST_S = 300.0  # a bound for a watch that never finishes its work, not an expectation


@pytest.mark.slow
def test_watch_appends_files_as_they_arrive(tmp_path, radar_dir):
    files = sorted((radar_dir / "knmi").rglob("*.h5"))[:8]
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "RAD_NL25_RAP_5min_201008260100.h5").write_bytes(b"not hdf5")

    def writer() -> None:
        time.sleep(1.0)
        for path in files:
            partial = incoming / (path.name + ".part")
            shutil.copy(path, partial)
            partial.rename(incoming / path.name)  # files land atomically, as with rsync
            time.sleep(0.4)

    thread = threading.Thread(target=writer)
    thread.start()
    archive = str(tmp_path / "archive.zarr")
    spec = WatchSpec(archive=archive, directory=str(incoming), fmt="knmi", interval_s=0.5,
                     duration_s=LONGEST_S, time_chunk=4)
    result = run_watch(spec, stop=lambda totals: totals.frames_written == len(files)
                       and totals.files_rejected == 1)
    thread.join()
    assert result.frames_written == len(files), f"the watch ran {LONGEST_S} s without the work done"
    assert result.files_rejected == 1  # the broken file, after max_attempts polls
    assert result.polls >= spec.max_attempts

    streamed = open_archive(archive)
    (tmp_path / "batch").mkdir()
    for path in files:
        shutil.copy(path, tmp_path / "batch" / path.name)
    batch_url = str(tmp_path / "batch.zarr")
    run(IngestSpec(archive=batch_url, source=get_source("knmi", directory=str(tmp_path / "batch")),
                   time_chunk=4))
    batch = open_archive(batch_url)
    assert streamed["valid"].values.all()
    assert streamed.sizes["time"] == len(files)
    np.testing.assert_array_equal(streamed["precip"].values, batch["precip"].values)
    np.testing.assert_array_equal(streamed["time"].values, batch["time"].values)


def test_a_watch_without_a_duration_ends_when_its_condition_holds(tmp_path):
    """Without ``duration_s`` the watch runs until stopped (it once failed at once: an infinite
    stop time overflowed Beam's timestamp); its ``stop`` condition sees the running totals."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="knmi",
                     interval_s=0.05)
    result = run_watch(spec, stop=lambda totals: totals.polls >= 3)
    assert (result.polls, result.frames_written, result.files_rejected) == (3, 0, 0)
    assert not (tmp_path / "archive.zarr").exists()


def test_a_set_event_ends_the_watch_before_its_next_poll(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    stop = threading.Event()
    stop.set()
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="knmi")
    assert run_watch(spec, stop=stop).polls == 0


@pytest.mark.fault("watch", "a file off the archive's time step, or before its start, among good ones",
                   "rejected with a warning naming it and the fix; the good files keep coming in (the "
                   "watcher once stopped on the first, and skipped the second without a word)")
def test_a_file_the_time_axis_cannot_hold_is_rejected_and_the_rest_ingested(tmp_path, radar_dir, caplog):
    from nowcast.pipelines.jobs.watch import poll_once

    files = sorted((radar_dir / "knmi").rglob("*.h5"))[:4]  # 00:00, 00:05, 00:10, 00:15
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for path in files[1:3]:
        shutil.copy(path, incoming / path.name)
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="knmi",
                     interval_s=1.0, duration_s=1.0, time_chunk=4)
    failures: dict[str, int] = {}
    given_up: set[str] = set()
    assert poll_once(spec, failures, given_up) == 2  # the archive starts at 00:05
    early = incoming / files[0].name
    off_step = incoming / files[3].name.replace("201008260015", "201008260017")
    for source, target in ((files[0], early), (files[3], off_step), (files[3], incoming / files[3].name)):
        shutil.copy(source, target)
    with caplog.at_level("WARNING", logger="nowcast.pipelines.jobs.watch"):
        assert poll_once(spec, failures, given_up) == 1  # 00:15 comes in
    assert given_up == {str(early), str(off_step)}
    assert "before the archive start" in caplog.text
    assert "not on the archive's PT5M axis" in caplog.text
    assert poll_once(spec, failures, given_up) == 0  # and neither is tried again
    assert open_archive(spec.archive)["valid"].values.tolist() == [True, True, True]
