"""Every store opens with plain xarray, without a warning, and carries what a reader needs to use it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

import nowcast
from nowcast.pipelines.jobs import windows as windows_job
from nowcast.pipelines.jobs.scoring import run as score
from nowcast.pipelines.plans.scoring import ScoringSpec
from nowcast.pipelines.plans.window_spec import SplitSpec, WindowSpec
from tests.pipelines.jobs.scoring_helpers import (
    MODEL,
    append_frames,
    make_archive,
    save_tiny_model,
    synthetic_stats,
)

pytestmark = pytest.mark.xdist_group(__name__)  # its module fixture is built once, on one worker

FRAMES, SIZE = 40, (32, 32)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(archive, windows, forecasts): the stores of one small run, forecasts grown once after creation."""
    root = tmp_path_factory.mktemp("readable")
    archive = make_archive(str(root / "archive.zarr"), FRAMES - 8, SIZE, time_chunk=8)
    models = root / "models"
    save_tiny_model(models, archive, synthetic_stats(FRAMES, SIZE))
    forecasts = str(root / "forecasts.zarr")
    spec = ScoringSpec(archive=archive, forecasts=forecasts, models=str(models), model=MODEL,
                       start="2024-01-01T01:00")
    score(spec)
    append_frames(archive, FRAMES, FRAMES, SIZE)
    score(spec)  # grows the init-time axis: valid_time must grow with it
    windows = str(root / "windows.zarr")
    job = windows_job.WindowJob(archive=archive, output=windows, spec=WindowSpec(
        channels=("precip",), target="precip", t_in=3, t_out=2, split=SplitSpec(block="PT1H")))
    windows_job.run(job)
    return archive, windows, forecasts


def test_plain_xarray_opens_every_store_without_a_warning(stores):
    archive, windows, forecasts = stores
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for url in (archive, forecasts):
            ds = xr.open_zarr(url)
            assert {"latitude", "longitude", "crs"} <= set(ds.coords), url
            assert ds["latitude"].dims == ("y", "x")
        for split in ("train", "val", "test"):
            xr.open_zarr(windows, group=split)


def test_forecasts_carry_valid_time_and_the_grid_mapping(stores):
    archive, _, forecasts = stores
    ds = xr.open_zarr(forecasts)
    expected = ds["init_time"].values[:, None] + ds["lead_time"].values[None, :]
    assert ds["valid_time"].dims == ("init_time", "lead_time")
    assert (ds["valid_time"].values == expected).all()  # the rows added when the store grew too
    assert ds.sizes["init_time"] == FRAMES
    rain = ds["precip"].isel(init_time=-1, lead_time=0)
    assert rain.attrs["grid_mapping"] == "crs"
    assert "crs" in rain.coords  # selecting a variable keeps its grid mapping
    lat = xr.open_zarr(archive)["latitude"].values
    assert np.isfinite(lat).all()
    assert np.allclose(ds["latitude"].values, lat)


def test_open_forecasts_gives_written_init_times_only(stores):
    _, _, forecasts = stores
    ds = nowcast.open_forecasts(forecasts)
    every = nowcast.open_forecasts(forecasts, written_only=False)
    assert ds["written"].values.all()
    assert 0 < ds.sizes["init_time"] < every.sizes["init_time"]
    assert np.isfinite(ds["precip"].values).all()


def test_a_forecast_plots_on_latitude_longitude_and_scores_on_valid_time(stores, tmp_path):
    """Matplotlib alone (no cartopy) draws it; an RMSE is computed the WeatherBench2 way: the forecast
    and the archive aligned on valid_time, with no index arithmetic by the reader."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archive, _, forecasts = stores
    ds = nowcast.open_forecasts(forecasts)
    truth = xr.open_zarr(archive)["precip"]
    fig, ax = plt.subplots()
    field = ds["precip"].isel(init_time=0, lead_time=0)
    ax.pcolormesh(field["longitude"], field["latitude"], field, shading="auto")
    fig.savefig(tmp_path / "map.png")
    plt.close(fig)
    assert (tmp_path / "map.png").stat().st_size > 1000

    scored = ds.isel(init_time=np.flatnonzero(ds["valid_time"].values[:, -1] <= truth["time"].values[-1]))
    aligned = truth.sel(time=scored["valid_time"])  # dims: init_time, lead_time, y, x
    rmse = np.sqrt(((scored["precip"] - aligned) ** 2).mean(["init_time", "y", "x"])).values
    assert rmse.shape == (ds.sizes["lead_time"],)
    forecast, valid = scored["precip"].values, scored["valid_time"].values
    by_hand = [np.sqrt(np.mean([(forecast[i, k] - truth.sel(time=valid[i, k]).values) ** 2
                                for i in range(len(valid))])) for k in range(valid.shape[1])]
    assert np.allclose(rmse, by_hand, rtol=1e-5)
