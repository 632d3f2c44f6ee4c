"""The scoring job writes the same bytes on the FnApiRunner (in memory, 2 processes) and the DaskRunner."""

from __future__ import annotations

import pytest

from nowcast.pipelines.jobs.runners import RunnerOptions
from nowcast.pipelines.jobs.scoring import ScoringSpec, run, scoreable
from nowcast.pipelines.stores.archive import valid_flags
from tests.pipelines.jobs.ingest_helpers import snapshot
from tests.pipelines.jobs.scoring_helpers import MODEL, make_archive, save_tiny_model, synthetic_stats

FRAMES, SIZE, CHUNK = 32, (32, 32), 8


@pytest.mark.slow
def test_inmemory_multiprocess_and_dask_runners_write_identical_stores(tmp_path, dask_scheduler):
    archive = make_archive(str(tmp_path / "archive.zarr"), FRAMES, SIZE, CHUNK, missing=(20,))
    models = tmp_path / "models"
    save_tiny_model(models, archive, synthetic_stats(FRAMES, SIZE), patch=(16, 16))
    stores = {}
    for runner in (RunnerOptions(kind="inmemory"), RunnerOptions(kind="multiprocess", workers=2),
                   RunnerOptions(kind="dask", dask_address=dask_scheduler)):
        url = str(tmp_path / f"forecasts-{runner.kind}.zarr")
        result = run(ScoringSpec(archive=archive, forecasts=url, models=str(models), model=MODEL,
                                 batch_size=3), runner)
        assert result.scored == scoreable(valid_flags(archive), 3).sum() > 0
        stores[runner.kind] = snapshot(url)
    assert stores["inmemory"] == stores["multiprocess"] == stores["dask"]
