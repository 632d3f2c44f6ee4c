"""Batch scoring: planning, the store read back with plain xarray, model.predict as the reference."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import xarray as xr

from nowcast.pipelines.jobs.scoring import read_windows, run
from nowcast.pipelines.plans.scoring import ScoringError, ScoringSpec, scoreable, select_indices
from nowcast.pipelines.stores import groups
from nowcast.pipelines.stores.archive import open_archive, read_info
from nowcast.pipelines.stores.forecasts import ForecastStoreError, open_forecasts, written_flags
from tests.pipelines.jobs.scoring_helpers import (
    MODEL,
    append_frames,
    make_archive,
    save_tiny_model,
    synthetic_stats,
)

pytestmark = pytest.mark.xdist_group(__name__)  # its module fixture is built once, on one worker

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
    from nowcast.model.normalization import Normalizer
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
    assert set(ds["model_version"].values[np.flatnonzero(expected_ok)]) == {"v1"}  # per init time
    assert set(ds["model_version"].values[~expected_ok]) == {""}
    sha = json.loads((models / FULL / "v1" / "metadata.json").read_text())["model_sha256"]
    assert set(ds["model_sha256"].values[np.flatnonzero(expected_ok)]) == {sha}
    assert ds.attrs["archive"] == read_info(archive).fingerprint()  # what it is, not where it lies
    assert ds.attrs["archive_url"] == archive
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


def _plain_xarray_length(url: str) -> int:
    """The store's length as plain ``xr.open_zarr`` sees it; any warning (no consolidated metadata) fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(url)
    return ds.sizes.get("init_time", ds.sizes.get("time", 0))


def test_stores_open_in_plain_xarray_and_a_lagging_consolidation_catches_up(setup, tmp_path, monkeypatch):
    """Consolidated metadata follows every growth; a writer stopped before it leaves an older view."""
    _, _, models = setup
    archive = str(tmp_path / "archive.zarr")
    append_frames(archive, 20, FRAMES, SIZE, CHUNK)
    url = str(tmp_path / "forecasts.zarr")
    spec = ScoringSpec(archive=archive, forecasts=url, models=str(models), model=MODEL)
    run(spec)
    assert _plain_xarray_length(archive) == _plain_xarray_length(url) == 20

    def stopped(group):
        raise KeyboardInterrupt("writer stopped before consolidating")

    append_frames(archive, 28, FRAMES, SIZE, CHUNK)  # the archive grows and consolidates
    assert _plain_xarray_length(archive) == 28
    monkeypatch.setattr(groups, "consolidate", stopped)
    with pytest.raises(KeyboardInterrupt):
        run(spec)  # dies right after growing the forecast store
    monkeypatch.undo()
    assert len(written_flags(url)) == 28  # the jobs see the store as it is
    assert _plain_xarray_length(url) == 20  # plain readers: the store as it was, one change behind
    assert run(spec).scored == 8
    assert _plain_xarray_length(url) == 28


def test_a_promoted_version_continues_the_store_and_each_init_time_keeps_its_version(setup, tmp_path):
    """A retrained model writes the next init times; those written keep the version that wrote them."""
    _root, archive, models = setup
    url = str(tmp_path / "forecasts.zarr")
    first = ("2024-01-01T00:20",)
    run(ScoringSpec(archive=archive, forecasts=url, models=str(models), model=MODEL, init_times=first))
    save_tiny_model(models, archive, synthetic_stats(FRAMES, SIZE), patch=(16, 16), t_in=T_IN, t_out=T_OUT,
                    version="v2", seed=5)
    try:
        spec = ScoringSpec(archive=archive, forecasts=url, models=str(models), model=MODEL,
                           init_times=(*first, "2024-01-01T00:25"))
        assert run(spec).scored == 1  # the new init time only: 00:20 stays v1's
    finally:
        from nowcast.model.registry import promote_version

        promote_version(models, MODEL, "v1")
    ds = open_forecasts(url)
    assert ds["model_version"].values[[4, 5]].tolist() == ["v1", "v2"]
    shas = [json.loads((models / MODEL / v / "metadata.json").read_text())["model_sha256"]
            for v in ("v1", "v2")]
    assert ds["model_sha256"].values[[4, 5]].tolist() == shas


@pytest.mark.fault("score", "forecasts of another model or archive into one store",
                   "refused naming both; store unchanged")
def test_store_refuses_another_model_or_another_archive(setup, tmp_path):
    _root, archive, models = setup
    url = str(tmp_path / "forecasts.zarr")
    run(ScoringSpec(archive=archive, forecasts=url, models=str(models), model=MODEL,
                    init_times=("2024-01-01T00:20",)))
    with pytest.raises(ForecastStoreError, match=f"model_name: store has '{MODEL}', this run '{FULL}'"):
        run(ScoringSpec(archive=archive, forecasts=url, models=str(models), model=FULL,
                        init_times=("2024-01-01T00:20",)))
    other = make_archive(str(tmp_path / "other.zarr"), FRAMES, SIZE, CHUNK,
                         start="2024-01-02T00:00")
    with pytest.raises(ForecastStoreError, match="archive: store has"):
        run(ScoringSpec(archive=other, forecasts=url, models=str(models), model=MODEL,
                        init_times=("2024-01-02T00:20",)))


def test_a_copied_pair_of_stores_still_fits(setup, tmp_path):
    """The store names its archive by fingerprint: copies of both, elsewhere, go on together."""
    _root, archive, models = setup
    url = str(tmp_path / "a" / "forecasts.zarr")
    run(ScoringSpec(archive=archive, forecasts=url, models=str(models), model=MODEL,
                    init_times=("2024-01-01T00:20",)))
    shutil.copytree(archive, tmp_path / "b" / "archive.zarr")
    shutil.copytree(url, tmp_path / "b" / "forecasts.zarr")
    copy = tmp_path / "b"
    copied = ScoringSpec(archive=str(copy / "archive.zarr"), forecasts=str(copy / "forecasts.zarr"),
                         models=str(models), model=MODEL, init_times=("2024-01-01T00:20", "2024-01-01T00:25"))
    assert run(copied).scored == 1


@pytest.mark.fault("score", "a forecast store scored, shown or evaluated against another archive of the same "
                   "grid, start and step (another event, another seed, data ingested again)",
                   "refused naming the frame that differs (the fingerprint names what an archive is, not "
                   "what it holds: one store took forecasts of both, and evaluate scored them against the "
                   "wrong frames, exit 0)")
def test_an_archive_of_the_same_grid_and_axis_with_other_data_is_refused(setup, tmp_path):
    from nowcast.pipelines.stores.archive import read_info
    from nowcast.pipelines.stores.forecasts import check_made_from, read_store_info

    _root, archive, models = setup
    url = str(tmp_path / "forecasts.zarr")
    run(ScoringSpec(archive=archive, forecasts=url, models=str(models), model=MODEL,
                    init_times=("2024-01-01T00:20",)))
    other = make_archive(str(tmp_path / "other.zarr"), FRAMES, SIZE, CHUNK, seed=7)
    assert read_info(other).fingerprint() == read_info(archive).fingerprint()
    refused = r"holds forecasts of another archive than .*other\.zarr: .* frame at 2024-01-01T\S+ is not the"
    with pytest.raises(ForecastStoreError, match=refused):
        run(ScoringSpec(archive=other, forecasts=url, models=str(models), model=MODEL,
                        init_times=("2024-01-01T00:25",)))
    with pytest.raises(ForecastStoreError, match=refused):  # show and evaluate read through it
        check_made_from(read_store_info(url), read_info(other), other)
    check_made_from(read_store_info(url), read_info(archive), archive)
    assert run(ScoringSpec(archive=archive, forecasts=url, models=str(models), model=MODEL,
                           init_times=("2024-01-01T00:25",))).scored == 1


def test_a_damaged_probe_frame_skips_the_archive_check_and_blocks_nothing(setup, tmp_path, caplog):
    """The probe's chunk damaged or gone: runs whose windows do not read it go on (with a warning), the
    damage is not called another archive, and the jobs that read it name the damage."""
    from nowcast.pipelines.stores.forecasts import read_store_info

    _root, archive, models = setup
    copy = str(tmp_path / "archive.zarr")
    shutil.copytree(archive, copy)
    url = str(tmp_path / "forecasts.zarr")
    run(ScoringSpec(archive=copy, forecasts=url, models=str(models), model=MODEL,
                    init_times=("2024-01-01T02:30",)))
    chunk = tmp_path / "archive.zarr" / "precip" / "c" / str(read_store_info(url).probe["index"] // CHUNK)
    for damage in ("garbage", "gone"):
        for path in chunk.rglob("*"):
            if path.is_file():
                path.write_bytes(b"garbage") if damage == "garbage" else path.unlink()
        caplog.clear()
        later = f"2024-01-01T02:{35 + 5 * (damage == 'gone'):02d}"
        assert run(ScoringSpec(archive=copy, forecasts=url, models=str(models), model=MODEL,
                               init_times=(later,))).scored == 1
        assert "the check that" in caplog.text
        assert "is skipped" in caplog.text


@pytest.mark.fault("score", "a model that does not fit the archive, from the command line",
                   "exit 2 naming the mismatch")
def test_cli_refuses_a_model_that_does_not_fit_the_archive(setup, tmp_path, capsys):
    from nowcast.flows.cli import main

    _, _archive, models = setup
    other = make_archive(str(tmp_path / "small.zarr"), 8, (24, 24), CHUNK)
    code = main(["score", "--archive", other, "--forecasts", str(tmp_path / "f.zarr"), "--models",
                 str(models), "--model-name", FULL])
    assert code == 2
    assert "grid: model trained on the whole (32, 32) grid, archive has (24, 24)" in capsys.readouterr().err
    assert main(["score", "--archive", str(tmp_path / "none.zarr"), "--forecasts", str(tmp_path / "f.zarr"),
                 "--models", str(models), "--model-name", FULL]) == 2
    assert "no archive at" in capsys.readouterr().err
    assert not (tmp_path / "f.zarr").exists()


@pytest.mark.fault("score", "temporaries left by a killed writer",
                   "the next run removes them")
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


@pytest.mark.fault("score", "a --start/--end range wholly outside the archive (score or backfill), or a "
                   "--start after its end and no --end (score)",
                   "exit 2 naming the archive's time range, before any forecast store is created")
def test_a_range_outside_the_archive_is_refused_before_any_store_exists(setup, tmp_path, capsys):
    from nowcast.flows.cli import main

    _, archive, models = setup
    forecasts = str(tmp_path / "f.zarr")
    for command in ("score", "backfill"):
        code = main([command, "--archive", archive, "--forecasts", forecasts, "--models", str(models),
                     "--model-name", MODEL, "--start", "2030-01-01T00:00", "--end", "2030-01-01T01:00"])
        assert code == 2
        err = capsys.readouterr().err
        assert "covers 2024-01-01T00:00:00 .. 2024-01-01T03:15:00" in err
        assert "Traceback" not in err
        assert not groups.exists(forecasts)
    # a start after the archive's end and no end (backfill needs one): scored nothing with exit 0
    assert main(["score", "--archive", archive, "--forecasts", forecasts, "--models", str(models),
                 "--model-name", MODEL, "--start", "2030-01-01T00:00"]) == 2
    assert "covers 2024-01-01T00:00:00 .. 2024-01-01T03:15:00" in capsys.readouterr().err
    assert not groups.exists(forecasts)
    partly = ScoringSpec(archive, forecasts, str(models), MODEL, start="2024-01-01T03:05", end="2030-01-01")
    assert list(select_indices(partly, read_info(archive))) == [37, 38, 39]
    following = ScoringSpec(archive, forecasts, str(models), MODEL, start="2030-01-01T00:00")
    assert list(select_indices(following, read_info(archive), follows=True)) == []  # a stream waits


@pytest.mark.fault("score", "an archive chunk that does not decode, read while scoring",
                   "exit 2 naming the chunk, its times and the fix (check, then ingest --repair); a new "
                   "forecast store that got no forecast is not left behind")
def test_a_damaged_archive_chunk_is_named_and_leaves_no_empty_store(setup, tmp_path, capsys):
    from nowcast.flows.cli import main

    _, archive, models = setup
    damaged = tmp_path / "archive.zarr"
    shutil.copytree(archive, damaged)
    (damaged / "precip" / "c" / "1" / "0" / "0").write_bytes(b"not zstd at all")
    forecasts = str(tmp_path / "f.zarr")
    code = main(["score", "--archive", str(damaged), "--forecasts", forecasts, "--models", str(models),
                 "--model-name", MODEL, "--start", "2024-01-01T00:40", "--end", "2024-01-01T00:50"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "precip chunk 1/0/0 (2024-01-01T00:40 .. 2024-01-01T01:15)" in err
    assert f"nowcast check {damaged}" in err
    assert "--repair" in err
    assert "Traceback" not in err
    assert not groups.exists(forecasts)


@pytest.mark.fault("score", "a range with nothing to score (no complete input window) into a new store",
                   "exit 0 with the counts, and no empty store that would bind the path to this archive")
def test_nothing_to_score_creates_no_store(setup, tmp_path, capsys):
    from nowcast.flows.cli import main

    _, archive, models = setup
    forecasts = str(tmp_path / "f.zarr")
    for command in ("score", "backfill"):  # frame 10 is missing: 00:50 .. 01:00 have no complete input
        code = main([command, "--archive", archive, "--forecasts", forecasts, "--models", str(models),
                     "--model-name", MODEL, "--start", "2024-01-01T00:50", "--end", "2024-01-01T01:00"])
        assert code == 0, capsys.readouterr().err
        assert "without complete input" in capsys.readouterr().out
        assert not groups.exists(forecasts)
        assert not (tmp_path / "f.zarr").exists()


@pytest.mark.fault("score", "a run interrupted while it creates a new forecast store",
                   "no store is left (it is built beside the path and moved into place): the rerun scores")
def test_an_interrupted_creation_leaves_no_store(setup, tmp_path, monkeypatch):
    from nowcast.pipelines.stores import forecasts as forecast_store

    _, archive, models = setup
    url = str(tmp_path / "f.zarr")
    spec = ScoringSpec(archive, url, str(models), MODEL, init_times=("2024-01-01T00:30",))
    real = forecast_store.consolidate
    monkeypatch.setattr(forecast_store, "consolidate", lambda group: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # as SIGINT arrives after the arrays, before the root is whole
        run(spec)
    assert not (tmp_path / "f.zarr").exists()
    assert not list(tmp_path.glob("f.zarr.creating-*"))
    monkeypatch.setattr(forecast_store, "consolidate", real)
    assert run(spec).scored == 1


@pytest.mark.fault("score", "a version folder copied or renamed (its metadata still names the old version)",
                   "scored under the folder's name, the one `latest` and the listings use (scoring looked "
                   "for the old folder and called it incomplete)")
def test_a_renamed_version_folder_scores_under_its_folder_name(setup, tmp_path):
    from nowcast.model.registry import promote_version

    _, archive, models = setup
    registry = tmp_path / "models"
    (registry / MODEL).mkdir(parents=True)
    shutil.copytree(models / MODEL / "v1", registry / MODEL / "v7")
    promote_version(registry, MODEL, "v7")
    url = str(tmp_path / "f.zarr")
    assert run(ScoringSpec(archive, url, str(registry), MODEL, init_times=("2024-01-01T00:30",))).scored == 1
    assert open_forecasts(url)["model_version"].values[6] == "v7"
