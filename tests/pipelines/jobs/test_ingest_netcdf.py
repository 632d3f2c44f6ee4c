"""Generic CF NetCDF sensor fields: several variables of several files into one archive."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from nowcast.pipelines.jobs.ingest import IngestSpec, run
from nowcast.pipelines.sources import get_source
from nowcast.pipelines.stores.archive import open_archive
from tests.pipelines.sources.test_netcdf import sensor_dataset, write

pytestmark = pytest.mark.filterwarnings("ignore:You will likely lose important projection:UserWarning")


def test_two_variables_from_two_files_into_one_archive(tmp_path):
    first = sensor_dataset(["2024-03-01T00:00", "2024-03-01T00:10", "2024-03-01T00:20"], seed=1)
    second = sensor_dataset(["2024-03-01T00:40"], seed=2)  # 00:30 is missing
    write(first, tmp_path / "a.nc")
    write(second, tmp_path / "b.nc")
    source = get_source("netcdf", paths=str(tmp_path / "*.nc"), variables=("temperature", "humidity"))
    url = str(tmp_path / "sensors.zarr")
    result = run(IngestSpec(archive=url, source=source, time_step="PT10M", time_chunk=2))
    assert result.frames_written == 4
    ds = open_archive(url)
    assert ds.attrs["time_step"] == "PT10M"
    assert ds.sizes["time"] == 5
    assert ds["valid"].values.tolist() == [True, True, True, False, True]
    assert ds["temperature"].attrs["units"] == "K"
    assert ds["humidity"].attrs["units"] == "%"
    expected = xr.concat([first, second], "time")
    for name in ("temperature", "humidity"):
        np.testing.assert_allclose(ds[name].values[[0, 1, 2, 4]], expected[name].values.astype("float32"),
                                   equal_nan=True)
    assert np.isnan(ds["temperature"].values[3]).all()
    assert ds["temperature_mean"].values[0] == pytest.approx(np.nanmean(first["temperature"].values[0]))
