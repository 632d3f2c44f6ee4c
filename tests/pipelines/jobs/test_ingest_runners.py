"""The ingest job writes the same bytes on every runner."""

from __future__ import annotations

import pytest

from nowcast.pipelines.jobs.ingest import IngestSpec, run
from nowcast.pipelines.jobs.runners import RunnerError, RunnerOptions
from nowcast.pipelines.sources import get_source
from tests.pipelines.jobs.ingest_helpers import snapshot


@pytest.mark.slow
def test_inmemory_multiprocess_and_dask_write_identical_stores(tmp_path, dask_scheduler):
    source = get_source("synthetic", shape=(48, 40), n_frames=60, seed=5, missing=(7, 30))
    stores = {}
    for options in (RunnerOptions("inmemory"), RunnerOptions("multiprocess", workers=2),
                    RunnerOptions("dask", dask_address=dask_scheduler)):
        url = str(tmp_path / f"{options.kind}.zarr")
        result = run(IngestSpec(archive=url, source=source, time_chunk=8), options)
        assert result.frames_written == 58
        assert result.frames_missing == 2
        stores[options.kind] = snapshot(url)
    assert stores["inmemory"] == stores["multiprocess"] == stores["dask"]
    # the workers' check reports went beside the archive (a folder every worker can reach), then away
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dask.zarr", "inmemory.zarr", "multiprocess.zarr"]


def test_runner_options_are_validated():
    with pytest.raises(RunnerError, match="unknown runner"):
        RunnerOptions("spark")  # type: ignore[arg-type]
    with pytest.raises(RunnerError, match="dask_address"):
        RunnerOptions("dask")
    with pytest.raises(RunnerError, match="at least 1"):
        RunnerOptions("multiprocess", workers=0)
