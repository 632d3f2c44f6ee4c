"""Streaming ingest: a bounded watch on the local runner while a writer drops files in."""

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
    result = run_watch(WatchSpec(archive=archive, directory=str(incoming), fmt="knmi",
                                 interval_s=0.5, duration_s=9.0, time_chunk=4))
    thread.join()
    assert result.polls >= 10
    assert result.frames_written == len(files)
    assert result.files_rejected == 1  # the broken file, after max_attempts polls

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
