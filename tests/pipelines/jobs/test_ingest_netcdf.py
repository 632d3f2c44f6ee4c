"""Generic CF NetCDF sensor fields: several variables of several files into one archive."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from nowcast.pipelines.jobs.ingest import IngestSpec, run
from nowcast.pipelines.plans.ingest import IngestError
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


@pytest.mark.fault("ingest", "one variable of a multi-variable frame has no data at all",
                   "the frame's other variables are kept and the frame stays valid (that variable is "
                   "unobserved, NaN); a warning names the file and the variable")
def test_a_variable_without_data_does_not_lose_the_frames_other_variables(tmp_path, caplog):
    data = sensor_dataset(["2024-03-01T00:00", "2024-03-01T00:10"], seed=3)
    data["humidity"][1] = np.nan  # a sensor that reported nothing at 00:10; temperature did
    write(data, tmp_path / "a.nc")
    source = get_source("netcdf", paths=str(tmp_path / "*.nc"), variables=("temperature", "humidity"))
    url = str(tmp_path / "sensors.zarr")
    with caplog.at_level("WARNING", logger="nowcast.pipelines.jobs.ingest"):
        result = run(IngestSpec(archive=url, source=source, time_step="PT10M"))
    assert result.frames_written == 2
    ds = open_archive(url)
    assert ds["valid"].values.tolist() == [True, True]
    np.testing.assert_allclose(ds["temperature"].values[1], data["temperature"].values[1].astype("float32"))
    assert np.isnan(ds["humidity"].values[1]).all()
    assert "a.nc at 2024-03-01T00:10:00 (humidity)" in caplog.text


@pytest.mark.fault("ingest", "infinite values in a NetCDF file",
                   "refused with the count, nothing written (they were read as NaN, stored without a word)")
def test_infinite_values_in_a_netcdf_file_are_refused(tmp_path):
    data = sensor_dataset(["2024-03-01T00:00", "2024-03-01T00:10"], seed=4)
    data["temperature"][1, 0, :3] = np.inf
    write(data, tmp_path / "a.nc")
    source = get_source("netcdf", paths=str(tmp_path / "*.nc"), variables=("temperature", "humidity"))
    url = tmp_path / "sensors.zarr"
    with pytest.raises(IngestError, match="3 infinite values of temperature"):
        run(IngestSpec(archive=str(url), source=source, time_step="PT10M"))
    assert not url.exists()
