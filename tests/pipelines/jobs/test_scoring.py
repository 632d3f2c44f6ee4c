"""Batch scoring: planning, the store read back with plain xarray, model.predict as the reference."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from nowcast.pipelines.jobs.scoring import read_windows, run
from nowcast.pipelines.plans.scoring import ScoringError, ScoringSpec, scoreable, select_indices
from nowcast.pipelines.stores.archive import open_archive, read_info
from nowcast.pipelines.stores.forecasts import ForecastStoreError, open_forecasts, written_flags
from tests.pipelines.jobs.scoring_helpers import (
    MODEL,
    append_frames,
    make_archive,
    save_tiny_model,
    synthetic_stats,
)

FRAMES, SIZE, CHUNK, T_IN, T_OUT, MISSING = 40, (32, 32), 8, 3, 2, (10,)
FULL = "full_grid"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 40-frame archive with frame 10 missing; a tiled (16x16 patch) and a full-grid model."""
    root = tmp_path_factory.mktemp("scoring")
    archive = make_archive(str(root / "archive.zarr"), FRAMES, SIZE, CHUNK, missing=MISSING)
    stats = synthetic_stats(FRAMES, SIZE)
    models = root / "models"
    save_tiny_model(models, archive, stats, patch=(16, 16), t_in=T_IN, t_out=T_OUT)
    save_tiny_model(models, archive, stats, patch=SIZE, t_in=T_IN, t_out=T_OUT, name=FULL)
    return root, archive, models


def direct_forecast(models, name, windows):
    """The reference: the registry's model called with model.predict on normalised windows."""
    from nowcast.model.data import Normalizer
    from nowcast.model.registry import load_model

    loaded = load_model(models, name, archive=None)
    normalizer = Normalizer.from_dict(loaded.metadata["normalization"])
    out = loaded.model.predict(normalizer.normalize_inputs(windows), verbose=0)[..., 0]
    return np.maximum(normalizer.denormalize(out, "precip"), 0.0)


# ---------------------------------------------------------------- planning (no Beam, no model)

def test_selection_by_list_and_range(setup):
    _, archive, models = setup
    info = read_info(archive)
    spec = ScoringSpec(archive=archive, forecasts="unused", models=str(models), model=MODEL,
                       init_times=("2024-01-01T01:00", "2024-01-01T00:10", "2024-01-01T00:10"))
    assert list(select_indices(spec, info)) == [2, 12]
    ranged = ScoringSpec(archive=archive, forecasts="unused", models=str(models), model=MODEL,
                         start="2024-01-01T00:12", end="2024-01-01T00:30")
    assert list(select_indices(ranged, info)) == [3, 4, 5, 6]
    with pytest.raises(ScoringError, match="not on the archive"):
        select_indices(ScoringSpec(archive, "f", str(models), MODEL, init_times=("2024-01-01T00:07",)), info)
    with pytest.raises(ScoringError, match="outside the archive"):
        select_indices(ScoringSpec(archive, "f", str(models), MODEL, init_times=("2030-01-01",)), info)
    with pytest.raises(ScoringError, match="either init_times or a start/end"):
        ScoringSpec(archive, "f", str(models), MODEL, init_times=("2024-01-01",), start="2024-01-01")
    with pytest.raises(ScoringError, match="batch_size"):
        ScoringSpec(archive, "f", str(models), MODEL, batch_size=0)


def test_windows_are_archive_slices_read_once_per_block(setup):
    _, archive, _ = setup
    frames = open_archive(archive)["precip"].values
    got = dict(read_windows(archive, ("precip",), T_IN, (8, 9, 15)))
    for index in (8, 9, 15):
        np.testing.assert_array_equal(got[index][..., 0], frames[index - T_IN + 1: index + 1])


# ---------------------------------------------------------------- the job

@pytest.mark.slow
def test_forecasts_equal_model_predict_on_the_same_windows(setup, monkeypatch):
    from nowcast.pipelines.jobs.handler import KerasForecastHandler

    loads = []
    original = KerasForecastHandler.load_model
    monkeypatch.setattr(KerasForecastHandler, "load_model", lambda self: loads.append(1) or original(self))
    root, archive, models = setup
    url = str(root / "full.zarr")
    result = run(ScoringSpec(archive=archive, forecasts=url, models=str(models), model=FULL, batch_size=3))
    assert len(loads) == 1
    assert result.tasks == 5
    expected_ok = scoreable(~np.isin(np.arange(FRAMES), MISSING), T_IN)
    assert result.scored == expected_ok.sum()
    assert result.missing_input == (~expected_ok).sum()

    ds = xr.open_zarr(url, consolidated=False)
    source = open_archive(archive)
    np.testing.assert_array_equal(ds["written"].values, expected_ok)
    np.testing.assert_array_equal(ds["init_time"].values, source["time"].values)
    np.testing.assert_array_equal(ds["lead_time"].values, np.array([5, 10], "timedelta64[m]"))
    assert ds.attrs["model_name"] == FULL
    assert ds.attrs["model_version"] == "v1"
    assert ds.attrs["archive"] == archive
    assert ds.attrs["Conventions"] == "CF-1.8"
    assert ds["precip"].attrs["units"] == "mm h-1"
    assert ds["precip"].attrs["grid_mapping"] == "crs"
    assert ds["init_time"].attrs["standard_name"] == "forecast_reference_time"
    assert ds["lead_time"].attrs["standard_name"] == "forecast_period"

    indices = np.flatnonzero(expected_ok)
    frames = source["precip"].values
    windows = np.stack([frames[i - T_IN + 1: i + 1] for i in indices])[..., None]
    expected = direct_forecast(models, FULL, windows)
    np.testing.assert_allclose(ds["precip"].values[indices], expected, rtol=1e-5, atol=1e-5)
    assert np.isnan(ds["precip"].values[~expected_ok]).all()
    assert (ds["precip"].values[indices] >= 0).all()
    assert run(ScoringSpec(archive=archive, forecasts=url, models=str(models), model=FULL)).scored == 0


def test_tiled_forecasts_match_the_tile_that_covers_a_pixel_alone(setup):
    root, archive, models = setup
    url = str(root / "tiled.zarr")
    run(ScoringSpec(archive=archive, forecasts=url, models=str(models), model=MODEL,
                    init_times=("2024-01-01T00:20", "2024-01-01T02:00")))
    ds = open_forecasts(url)
    indices = [4, 24]
    assert list(np.flatnonzero(ds["written"].values)) == indices
    assert ds.attrs["tiling"] == "tiles 16x16, overlap 4, linear-ramp blending"
    frames = open_archive(archive)["precip"].values
    windows = np.stack([frames[i - T_IN + 1: i + 1] for i in indices])[..., None]
    stored = ds["precip"].values[indices]
    # tile origins along each axis are 0, 12, 16: pixels 0..11 lie in the first tile only,
    # pixels 28..31 in the last only
    first = direct_forecast(models, MODEL, windows[:, :, :16, :16])
    last = direct_forecast(models, MODEL, windows[:, :, 16:, 16:])
    np.testing.assert_allclose(stored[..., :12, :12], first[..., :12, :12], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stored[..., 28:, 28:], last[..., 12:, 12:], rtol=1e-5, atol=1e-5)
    assert np.isfinite(stored).all()


def chunk_file(root, index):
    return root / "forecasts.zarr" / "precip" / "c" / str(index) / "0" / "0" / "0"


@pytest.mark.slow
def test_new_init_times_appended_and_history_filled(setup, tmp_path):
    _, _, models = setup
    archive = make_archive(str(tmp_path / "archive.zarr"), FRAMES, SIZE, CHUNK)
    # start from a 20-frame archive: rebuild it from scratch with only the first frames
    import shutil

    shutil.rmtree(archive)
    append_frames(archive, 20, FRAMES, SIZE, CHUNK)
    url = str(tmp_path / "forecasts.zarr")
    spec = ScoringSpec(archive=archive, forecasts=url, models=str(models), model=MODEL)
    run(ScoringSpec(**{**spec.__dict__, "start": "2024-01-01T01:00"}))
    assert list(np.flatnonzero(written_flags(url))) == list(range(12, 20))
    before = {i: chunk_file(tmp_path, i).stat().st_mtime_ns for i in range(12, 20)}

    append_frames(archive, FRAMES, FRAMES, SIZE, CHUNK)
    result = run(spec)
    assert result.scored == FRAMES - (T_IN - 1) - 8
    assert result.already_written == 8
    flags = written_flags(url)
    assert len(flags) == FRAMES
    assert flags[T_IN - 1:].all()
    assert not flags[: T_IN - 1].any()
    after = {i: chunk_file(tmp_path, i).stat().st_mtime_ns for i in range(12, 20)}
    assert before == after
    assert all(chunk_file(tmp_path, i).is_file() for i in before)


def test_store_refuses_another_model_version(setup, tmp_path):
    _root, archive, models = setup
    url = str(tmp_path / "forecasts.zarr")
    spec = ScoringSpec(archive=archive, forecasts=url, models=str(models), model=MODEL,
                       init_times=("2024-01-01T00:20",))
    run(spec)
    save_tiny_model(models, archive, synthetic_stats(FRAMES, SIZE), patch=(16, 16), t_in=T_IN, t_out=T_OUT,
                    version="v2", seed=5)
    try:
        with pytest.raises(ForecastStoreError, match="model_version: store has 'v1', this run 'v2'"):
            run(spec)
    finally:
        from nowcast.model.registry import promote_version

        promote_version(models, MODEL, "v1")


def test_cli_refuses_a_model_that_does_not_fit_the_archive(setup, tmp_path, capsys):
    from nowcast.pipelines.jobs.scoring import main

    _, _archive, models = setup
    other = make_archive(str(tmp_path / "small.zarr"), 8, (24, 24), CHUNK)
    code = main(["--archive", other, "--forecasts", str(tmp_path / "f.zarr"), "--models", str(models),
                 "--model", FULL])
    assert code == 2
    assert "grid: model trained on the whole (32, 32) grid, archive has (24, 24)" in capsys.readouterr().err
    assert main(["--archive", str(tmp_path / "none.zarr"), "--forecasts", str(tmp_path / "f.zarr"),
                 "--models", str(models), "--model", FULL]) == 2
    assert "no archive at" in capsys.readouterr().err


def test_a_rerun_removes_the_temporaries_a_killed_writer_left(setup, tmp_path):
    """zarr writes ``<chunk>.<uuid>.partial`` then renames it: the rerun deletes what a SIGKILL left."""
    _, archive, models = setup
    url = str(tmp_path / "forecasts.zarr")
    spec = ScoringSpec(archive=archive, forecasts=url, models=str(models), model=MODEL,
                       init_times=("2024-01-01T01:05",))
    run(spec)  # init time 13 written
    store = tmp_path / "forecasts.zarr"
    orphans = [store / "precip" / "c" / "14" / "0" / "0" / "0.d6b01fd1.partial",
               store / "written" / "c" / "14.d6b01fd1.partial"]
    kept = store / "written" / "c" / "13.0a1b2c3d.partial"  # an init time this run does not score
    for path in (*orphans, kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    run(ScoringSpec(**{**spec.__dict__, "init_times": ("2024-01-01T01:10",)}))
    assert list(np.flatnonzero(written_flags(url))) == [13, 14]
    assert not any(path.exists() for path in orphans)
    assert kept.exists()
