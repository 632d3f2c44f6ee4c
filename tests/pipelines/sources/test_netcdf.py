"""NetCDF sources on CF files written here with xarray."""

from __future__ import annotations

import pickle

import numpy as np
import pyproj
import pytest
import xarray as xr

from nowcast.pipelines.sources import NetCDFSource, Source, SourceError, get_source

pytestmark = pytest.mark.filterwarnings("ignore:You will likely lose important projection:UserWarning")

CRS = pyproj.CRS.from_epsg(3035)  # ETRS89 LAEA Europe


def sensor_dataset(times: list[str], seed: int, ny: int = 12, nx: int = 17, y_name: str = "y",
                   x_name: str = "x") -> xr.Dataset:
    """Temperature and humidity over (time, y, x) with a CF grid mapping and a few NaNs."""
    rng = np.random.default_rng(seed)
    shape = (len(times), ny, nx)
    temperature = (280 + 10 * rng.random(shape)).astype("float32")
    temperature[:, 0, :3] = np.nan
    humidity = (100 * rng.random(shape)).astype("float64")
    humidity[-1, 5, 5] = np.nan
    y = 3_200_000.0 - 2000.0 * np.arange(ny)
    x = 4_000_000.0 + 2000.0 * np.arange(nx)
    ds = xr.Dataset(
        {
            "temperature": (("time", y_name, x_name), temperature,
                            {"units": "K", "long_name": "air temperature at 2 m",
                             "standard_name": "air_temperature", "valid_min": 180.0, "valid_max": 340.0,
                             "grid_mapping": "crs"}),
            "humidity": (("time", y_name, x_name), humidity,
                         {"units": "%", "long_name": "relative humidity", "grid_mapping": "crs"}),
            "station_count": (("time",), np.arange(len(times)), {"units": "1"}),
        },
        coords={
            "time": ("time", np.array(times, dtype="datetime64[ns]")),
            y_name: (y_name, y, {"standard_name": "projection_y_coordinate", "units": "m"}),
            x_name: (x_name, x, {"standard_name": "projection_x_coordinate", "units": "m"}),
        },
    )
    ds["crs"] = xr.DataArray(np.int32(0), attrs=CRS.to_cf())
    return ds


def write(ds: xr.Dataset, path, **encoding) -> str:
    ds.to_netcdf(path, engine="netcdf4", encoding=encoding or None)
    return str(path)


@pytest.fixture
def two_files(tmp_path):
    first = sensor_dataset(["2024-03-01T00:00", "2024-03-01T00:10", "2024-03-01T00:20"], seed=1)
    second = sensor_dataset(["2024-03-01T00:30", "2024-03-01T00:40"], seed=2)
    # Stored packed as int16 with a fill value, as many sensor archives are.
    packed = {"humidity": {"dtype": "int16", "scale_factor": 0.01, "_FillValue": -32768}}
    folder = tmp_path / "sensor"
    folder.mkdir()
    write(second, folder / "b.nc", **packed)
    write(first, folder / "a.nc")
    return folder, first, second


def test_multi_variable_files_round_trip(two_files):
    folder, first, second = two_files
    source = NetCDFSource(str(folder))
    items = source.items()
    assert [(i.path.rsplit("/", 1)[-1], i.index_in_file) for i in items] == [
        ("a.nc", 0), ("a.nc", 1), ("a.nc", 2), ("b.nc", 0), ("b.nc", 1)]
    expected_times = np.concatenate([first.time.values, second.time.values]).astype("datetime64[s]")
    np.testing.assert_array_equal([i.time for i in items], expected_times)
    assert source.time_step() == np.timedelta64(600, "s")
    for item, ds, index in zip(items, [first] * 3 + [second] * 2, [0, 1, 2, 0, 1], strict=True):
        frames = source.read(item)
        assert list(frames) == ["temperature", "humidity"]
        np.testing.assert_array_equal(frames["temperature"], ds.temperature.values[index])
        tolerance = 0.005 if ds is second else 0  # int16 packing rounds to 0.01
        np.testing.assert_allclose(frames["humidity"], ds.humidity.values[index].astype("float32"),
                                   atol=tolerance, rtol=0)
        assert np.isnan(frames["humidity"]).sum() == np.isnan(ds.humidity.values[index]).sum()
        assert all(frame.dtype == np.float32 for frame in frames.values())


def test_files_under_an_object_store_prefix_read_as_the_local_ones(two_files, s3_bucket):
    import fsspec

    folder = two_files[0]
    fs = fsspec.filesystem("s3")
    for name in ("a.nc", "b.nc"):
        fs.put_file(str(folder / name), f"{s3_bucket}/sensor/2024/{name}")
    remote, local = NetCDFSource(f"{s3_bucket}/sensor"), NetCDFSource(str(folder))
    remote_items, local_items = remote.items(), local.items()
    assert [(i.path, i.index_in_file) for i in remote_items] == [
        (f"{s3_bucket}/sensor/2024/{i.path.rsplit('/', 1)[-1]}", i.index_in_file) for i in local_items]
    assert remote.read_grid(remote_items[0]).mismatch(local.read_grid(local_items[0])) is None
    for mine, theirs in zip(remote_items, local_items, strict=True):
        for name, frame in remote.read(mine).items():
            np.testing.assert_array_equal(frame, local.read(theirs)[name])


def test_fields_come_from_the_attributes(two_files):
    folder, _, _ = two_files
    temperature, humidity = NetCDFSource(str(folder)).fields()
    assert (temperature.name, temperature.units, temperature.long_name) == (
        "temperature", "K", "air temperature at 2 m")
    assert temperature.standard_name == "air_temperature"
    assert (temperature.valid_min, temperature.valid_max) == (180.0, 340.0)
    assert (humidity.name, humidity.units, humidity.valid_min, humidity.standard_name) == (
        "humidity", "%", None, None)


def test_grid_from_coordinates_and_grid_mapping(two_files):
    folder, first, _ = two_files
    source = NetCDFSource(str(folder))
    grid = source.read_grid(source.items()[0])
    np.testing.assert_array_equal(grid.y, first.y.values)
    np.testing.assert_array_equal(grid.x, first.x.values)
    assert grid.crs.equals(CRS, ignore_axis_order=True)
    assert grid.units == "m"
    assert grid.mismatch(source.read_grid(source.items()[-1])) is None


def test_variable_selection_globs_and_lists(two_files):
    folder, _first, _ = two_files
    selected = NetCDFSource(str(folder / "*.nc"), variables=("humidity",))
    assert [f.name for f in selected.fields()] == ["humidity"]
    assert list(selected.read(selected.items()[0])) == ["humidity"]
    listed = get_source("netcdf", paths=[str(folder / "a.nc")], variables=["temperature"])
    assert isinstance(listed, Source)
    assert listed.name == "netcdf"
    assert len(listed.items()) == 3
    assert pickle.loads(pickle.dumps(listed)) == listed
    with pytest.raises(SourceError, match=r"pressure.*not found"):
        NetCDFSource(str(folder), variables=("pressure",)).fields()


def test_cf_projection_dim_names_and_other_dim_orders(tmp_path):
    ds = sensor_dataset(["2024-03-01T00:00"], seed=3, y_name="projection_y_coordinate",
                        x_name="projection_x_coordinate")
    ds = ds.transpose("time", "projection_x_coordinate", "projection_y_coordinate")
    source = NetCDFSource(write(ds, tmp_path / "t.nc"))
    (item,) = source.items()
    frame = source.read(item)["temperature"]
    assert frame.shape == (12, 17)
    np.testing.assert_array_equal(frame, ds.temperature.values[0].T)
    assert source.read_grid(item).shape == (12, 17)
    assert source.time_step() is None


@pytest.mark.fault("sources", "a NetCDF variable without units",
                   "a source error with the fix")
def test_missing_units_is_a_source_error_with_the_fix(tmp_path):
    ds = sensor_dataset(["2024-03-01T00:00"], seed=4)
    del ds["humidity"].attrs["units"]
    with pytest.raises(SourceError, match=r"'humidity' has no 'units'.*attrs\['units'\]"):
        NetCDFSource(write(ds, tmp_path / "t.nc")).fields()


def test_missing_grid_mapping_is_a_source_error(tmp_path):
    ds = sensor_dataset(["2024-03-01T00:00"], seed=5).drop_vars("crs")
    for name in ("temperature", "humidity"):
        del ds[name].attrs["grid_mapping"]
    source = NetCDFSource(write(ds, tmp_path / "t.nc"))
    with pytest.raises(SourceError, match="grid mapping"):
        source.read_grid(source.items()[0])


def test_bad_inputs_are_source_errors(tmp_path, two_files):
    folder, _, _ = two_files
    with pytest.raises(SourceError, match="no NetCDF files"):
        NetCDFSource(str(tmp_path / "empty" / "*.nc")).items()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no NetCDF files"):
        NetCDFSource(str(tmp_path / "empty")).items()
    data = (folder / "a.nc").read_bytes()
    (tmp_path / "empty" / "cut.nc").write_bytes(data[: len(data) // 3])
    with pytest.raises(SourceError, match=r"cut\.nc.*corrupt"):
        NetCDFSource(str(tmp_path / "empty")).items()
    duplicate = sensor_dataset(["2024-03-01T00:10"], seed=6)
    write(duplicate, folder / "c.nc")
    with pytest.raises(SourceError, match=r"2024-03-01T00:10:00 appears twice"):
        NetCDFSource(str(folder)).items()


def test_variable_without_time_y_x_is_a_source_error(tmp_path):
    ds = sensor_dataset(["2024-03-01T00:00"], seed=7)
    source = NetCDFSource(write(ds, tmp_path / "t.nc"), variables=("station_count",))
    with pytest.raises(SourceError, match=r"station_count.*expected \(time, y, x\)"):
        source.read(source.items()[0])


@pytest.mark.fault("sources", "a NetCDF file rewritten between listing and reading",
                   "a source error naming the file")
def test_a_file_rewritten_after_listing_is_a_source_error(two_files):
    folder, _, _ = two_files
    source = NetCDFSource(str(folder))
    item = source.items()[-1]
    write(sensor_dataset(["2024-03-01T01:00"], seed=8), folder / "b.nc")
    with pytest.raises(SourceError, match="changed after it was listed"):
        source.read(item)


def test_all_variables_means_those_of_the_first_file(two_files):
    folder, _, _ = two_files
    extra = sensor_dataset(["2024-03-01T00:50"], seed=9)
    extra["pressure"] = extra["humidity"].copy().assign_attrs(units="hPa")
    write(extra, folder / "c.nc")
    source = NetCDFSource(folder)  # a pathlib.Path works too
    assert [f.name for f in source.fields()] == ["temperature", "humidity"]
    assert list(source.read(source.items()[-1])) == ["temperature", "humidity"]
    write(sensor_dataset(["2024-03-01T01:00"], seed=10).drop_vars("humidity"), folder / "d.nc")
    with pytest.raises(SourceError, match=r"d\.nc: variables \['humidity'\] not found"):
        source.read(NetCDFSource(folder).items()[-1])


def test_auto_detection_takes_a_folder_of_netcdf_files_as_netcdf(two_files, tmp_path):
    from nowcast.pipelines.sources import detect_format, folder_source

    folder = two_files[0]
    assert detect_format(str(folder)) == "netcdf"
    assert isinstance(folder_source(str(folder)), NetCDFSource)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="or CF NetCDF files"):
        detect_format(str(tmp_path / "empty"))


@pytest.mark.fault("command line", "`ingest --input` of one NetCDF file or a pattern (`'in/*.nc'`)",
                   "ingested, as the NetCDF source reads either (the file was refused as 'not a folder, "
                   "create it'; the pattern then as 'does not exist'); a radar format given a file names its "
                   "folder")
def test_one_netcdf_file_or_a_pattern_is_ingested_from_the_command_line(two_files, tmp_path, capsys):
    from nowcast.flows import cli
    from nowcast.pipelines.stores.archive import read_info

    folder = two_files[0]
    assert cli.main(["ingest", "--input", str(folder / "a.nc"), "--archive", str(tmp_path / "one.zarr")]) == 0
    assert read_info(str(tmp_path / "one.zarr")).length == 3
    assert cli.main(["ingest", "--input", f"{folder}/*.nc", "--archive", str(tmp_path / "all.zarr")]) == 0
    assert read_info(str(tmp_path / "all.zarr")).length == 5
    capsys.readouterr()
    assert cli.main(["ingest", "--input", str(folder / "a.nc"), "--format", "knmi", "--archive",
                     str(tmp_path / "knmi.zarr")]) == 2
    assert f"radar files are read from their folder: give '{folder}'" in capsys.readouterr().err
    assert not (tmp_path / "knmi.zarr").exists()


@pytest.mark.fault("sources", "a NetCDF batch mixing degC and K",
                   "refused inside the batch, before any archive exists")
def test_a_batch_whose_files_disagree_on_units_is_refused(tmp_path):
    """A hostile-user find: one file in degC and one in K went into one variable (mean 152 degC)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    first = sensor_dataset(["2024-03-01T00:00", "2024-03-01T00:10"], seed=1)
    second = sensor_dataset(["2024-03-01T00:20"], seed=2)
    first["temperature"] = first.temperature - 273.15
    first["temperature"].attrs.update(units="degC", grid_mapping="crs")
    write(first, folder / "a.nc")
    write(second, folder / "b.nc")
    refused = r"b\.nc: variable 'temperature' is in 'K' but .*a\.nc has it in 'degC'"
    with pytest.raises(SourceError, match=refused):
        NetCDFSource(str(folder)).items()


@pytest.mark.fault("sources", "a radar product in HDF5 groups (KNMI) renamed .nc among NetCDF files",
                   "a source error naming the file and that it holds no variables at its root, with the fix "
                   "(its own name and format); it said 'variables are []'")
def test_a_radar_file_with_a_netcdf_name_is_named_as_such(tmp_path, radar_dir):
    import shutil

    knmi = sorted((radar_dir / "knmi").rglob("*.h5"))[0]
    shutil.copy(knmi, tmp_path / "renamed.nc")
    with pytest.raises(SourceError, match=r"renamed\.nc: no \(time, y, x\) variable to ingest; it holds no "
                                          r"variables at its root: a radar product .* give it its own name"):
        NetCDFSource(str(tmp_path)).fields()


def _on_angular_grid(ds: xr.Dataset, crs: pyproj.CRS, x_units: str, y_units: str) -> xr.Dataset:
    """``ds`` moved onto a grid in degrees (0.01 apart) with ``crs``'s CF grid mapping."""
    ds = ds.assign_coords(y=("y", 52.0 - 0.01 * np.arange(ds.sizes["y"]), {"units": y_units}),
                          x=("x", 4.0 + 0.01 * np.arange(ds.sizes["x"]), {"units": x_units}))
    ds["crs"] = xr.DataArray(np.int32(0), attrs=crs.to_cf())
    return ds


@pytest.mark.fault("ingest", "NetCDF on a longitude/latitude grid (x in degrees_east) appended to, and on "
                   "a rotated-pole grid",
                   "every batch appends (each later one was refused: 'coordinate units degrees_east instead "
                   "of degrees'); a rotated pole's x and y keep grid_longitude/grid_latitude (they were "
                   "labelled true longitude and latitude)")
@pytest.mark.parametrize(("crs", "units", "names"), [
    (pyproj.CRS("EPSG:4326"), ("degrees_east", "degrees_north"), ("longitude", "latitude")),
    (pyproj.CRS.from_cf({"grid_mapping_name": "rotated_latitude_longitude", "grid_north_pole_latitude": 39.25,
                         "grid_north_pole_longitude": -162.0}), ("degrees", "degrees"),
     ("grid_longitude", "grid_latitude"))], ids=["lonlat", "rotated"])
def test_grids_in_degrees_append_and_keep_their_names(tmp_path, crs, units, names):
    from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items
    from nowcast.pipelines.stores.archive import open_archive

    url = str(tmp_path / "a.zarr")
    for part, times in enumerate((["2024-03-01T00:00", "2024-03-01T00:10"], ["2024-03-01T00:20"])):
        folder = tmp_path / f"part{part}"
        folder.mkdir()
        write(_on_angular_grid(sensor_dataset(times, seed=part), crs, *units), folder / "a.nc")
        source = NetCDFSource(str(folder), variables=["temperature"])
        ingest_items(IngestSpec(archive=url, source=source, time_chunk=2, time_step="PT10M"),
                     source.items(), None)
    ds = open_archive(url)
    assert ds.sizes["time"] == 3
    assert (ds["x"].attrs["standard_name"], ds["y"].attrs["standard_name"]) == names
    assert (ds["x"].attrs["units"], ds["y"].attrs["units"]) == units


@pytest.mark.fault("ingest", "NetCDF times in a float encoding ('hours since 1900-01-01', float32 hours)",
                   "read to the nearest second (00:05 decoded as 00:04:59.9999995 was cut to 00:04:59: the "
                   "files were refused as off a 5-minute step)")
@pytest.mark.parametrize(("units", "dtype"), [("hours since 1900-01-01 00:00:00", "float64"),
                                              ("days since 1970-01-01", "float64"),
                                              ("hours since 2024-03-01", "float32")])
def test_float_encoded_times_are_read_to_the_nearest_second(tmp_path, units, dtype):
    times = [f"2024-03-01T00:{m:02d}" for m in range(0, 60, 5)]
    ds = sensor_dataset(times, seed=3)
    ds["time"].encoding.update(units=units, dtype=dtype)
    write(ds, tmp_path / "a.nc")
    items = NetCDFSource(str(tmp_path)).items()
    np.testing.assert_array_equal([item.time for item in items], np.array(times, "datetime64[s]"))


@pytest.mark.fault("ingest", "NetCDF valid_min/valid_max of a packed variable (in packed units, as CF says), "
                   "valid_range, or a bound that is not a number",
                   "the bounds unpacked and valid_range read (a packed 0..10000 range refused good data and "
                   "let 10000 degC through; a valid_range let -7 mm/h in); a text bound named with the fix "
                   "(a ValueError traceback)")
def test_valid_bounds_are_physical(tmp_path):
    ds = sensor_dataset(["2024-03-01T00:00"], seed=4)
    ds["temperature"].attrs.update(valid_min=np.int16(0), valid_max=np.int16(10000))
    packed = {"dtype": "int16", "scale_factor": 0.01, "add_offset": 250.0, "_FillValue": np.int16(-32767)}
    write(ds, tmp_path / "a.nc", temperature=packed)
    fields = {field.name: field for field in NetCDFSource(str(tmp_path)).fields()}
    assert (fields["temperature"].valid_min, fields["temperature"].valid_max) == pytest.approx((250.0, 350.0))
    ranged = sensor_dataset(["2024-03-01T00:00"], seed=4)
    ranged["humidity"].attrs["valid_range"] = np.array([0.0, 100.0], "float32")
    write(ranged, tmp_path / "a.nc")
    humidity = {field.name: field for field in NetCDFSource(str(tmp_path)).fields()}["humidity"]
    assert (humidity.valid_min, humidity.valid_max) == (0.0, 100.0)
    ranged["humidity"].attrs["valid_range"] = "n/a"
    write(ranged, tmp_path / "a.nc")
    with pytest.raises(SourceError, match=r"a\.nc: variable 'humidity' has valid_range 'n/a', not a number"):
        NetCDFSource(str(tmp_path)).fields()


@pytest.mark.fault("ingest", "a truncated NetCDF3 (classic) file",
                   "refused naming the file as truncated (netCDF-C read the missing end as zeros: the frame "
                   "was ingested as 0 mm/h and flagged valid, exit 0)")
@pytest.mark.parametrize("fmt", ["NETCDF3_CLASSIC", "NETCDF3_64BIT"])
def test_a_truncated_classic_file_is_refused(tmp_path, fmt):
    path = tmp_path / "a.nc"
    sensor_dataset(["2024-03-01T00:00", "2024-03-01T00:10"], seed=5).to_netcdf(path, format=fmt)
    assert len(NetCDFSource(str(tmp_path)).items()) == 2  # whole, it reads
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(SourceError, match=r"a\.nc: cannot open it as NetCDF \(ValueError: the file is "
                                          r"shorter than its NetCDF3 header says: truncated"):
        NetCDFSource(str(tmp_path)).items()


@pytest.mark.fault("ingest", "a NetCDF variable named like an array the archive keeps (`valid`, `t_mean` "
                   "beside `t`), or a later batch without one of the archive's variables (`--variables`)",
                   "exit 2 naming the variables and the fix, nothing created and nothing grown (a Beam "
                   "traceback or a damaged new archive; a KeyError after the time axis grew)")
def test_variable_names_the_archive_cannot_hold_are_refused_first(tmp_path):
    from nowcast.pipelines.jobs.ingest import IngestSpec, run
    from nowcast.pipelines.plans.ingest import IngestError
    from nowcast.pipelines.stores.archive import read_info

    ds = sensor_dataset(["2024-03-01T00:00", "2024-03-01T00:10"], seed=6)
    folder = tmp_path / "clash"
    folder.mkdir()
    write(ds.rename({"humidity": "temperature_mean"}), folder / "a.nc")
    url = tmp_path / "a.zarr"
    with pytest.raises(IngestError, match=r"variables \['temperature_mean'\] are named like arrays"):
        run(IngestSpec(archive=str(url), source=NetCDFSource(str(folder)), time_chunk=2))
    assert not url.exists()
    whole = tmp_path / "whole"
    whole.mkdir()
    write(ds, whole / "a.nc")
    run(IngestSpec(archive=str(url), source=NetCDFSource(str(whole)), time_chunk=2))
    later = tmp_path / "later"
    later.mkdir()
    write(sensor_dataset(["2024-03-01T00:20"], seed=7), later / "b.nc")
    with pytest.raises(IngestError, match=r"lacks \['humidity'\]; ingest every variable the archive holds "
                                          r"\(--variables humidity temperature\)"):
        run(IngestSpec(archive=str(url), source=NetCDFSource(str(later), variables=["temperature"]),
                       time_chunk=2))
    assert read_info(str(url)).length == 2


@pytest.mark.fault("sources", "NetCDF over (time, lat, lon) with no grid-mapping variable, as CF allows for "
                   "latitude and longitude; a variable with a level dimension too",
                   "read on a WGS84 longitude/latitude grid, north first whichever way the file runs (was "
                   "'no (time, y, x) variable', naming no dimension); the extra dimension named with the "
                   "names that are read and the fix")
def test_latitude_longitude_dims_are_a_grid(tmp_path):
    ds = sensor_dataset(["2024-03-01T00:00", "2024-03-01T00:10"], seed=9)[["temperature"]]
    ds = ds.drop_vars(["y", "x"]).rename(y="lat", x="lon").assign_coords(
        lat=("lat", np.linspace(50.0, 51.1, 12), {"units": "degrees_north"}),  # south first
        lon=("lon", np.linspace(3.0, 6.2, 17), {"units": "degrees_east"}))
    del ds["temperature"].attrs["grid_mapping"]
    source = NetCDFSource(write(ds, tmp_path / "t.nc"))
    item = source.items()[0]
    np.testing.assert_array_equal(source.read(item)["temperature"], ds.temperature.values[0])
    grid = source.read_grid(item)
    assert grid.shape == (12, 17)
    assert pyproj.CRS.from_cf(grid.crs_attrs).is_geographic
    np.testing.assert_allclose(grid.y, ds.lat.values)

    levels = ds.expand_dims(level=[850.0, 500.0], axis=1)
    wanted = r"temperature \('time', 'level', 'lat', 'lon'\); expected \(time, y, x\), with y/x named y/x, "
    with pytest.raises(SourceError, match=wanted + r".*lat/lon.*ds.isel\(level=0\)"):
        NetCDFSource(write(levels, tmp_path / "levels.nc")).items()


@pytest.mark.fault("sources", "NetCDF times on a climate model's calendar (noleap, 360_day)",
                   "refused naming the calendar and the conversion (was 'no decodable time coordinate', "
                   "which the file has)")
@pytest.mark.parametrize("calendar", ["noleap", "360_day"])
def test_a_model_calendar_is_named(tmp_path, calendar):
    ds = sensor_dataset(["2024-03-01T00:00", "2024-03-01T00:10"], seed=10)
    path = write(ds, tmp_path / "t.nc", time={"units": "minutes since 2024-03-01", "calendar": calendar})
    with pytest.raises(SourceError, match=rf"'time' is on the '{calendar}' calendar.*convert_calendar"):
        NetCDFSource(path).items()


@pytest.mark.fault("ingest", "NetCDF values outside the variable's own valid_min/valid_max",
                   "read as missing (NaN), as CF defines them and netCDF4 reads them (every file was "
                   "refused); infinities stay refused by the ingest check")
def test_values_outside_the_valid_range_are_missing(tmp_path, caplog):
    ds = sensor_dataset(["2024-03-01T00:00"], seed=5)
    temperature = ds["temperature"].values
    temperature[0, 3, :4] = [100.0, 400.0, np.inf, 300.0]  # below, above, infinite, inside 180..340
    write(ds, tmp_path / "a.nc")
    source = NetCDFSource(str(tmp_path))
    (item,) = source.items()
    with caplog.at_level("WARNING"):
        read = source.read(item)["temperature"]
    assert "a.nc: temperature: 2 values outside its valid range [180.0, 340.0] read as missing" in caplog.text
    assert np.isnan(read[3, :2]).all()
    assert read[3, 2] == np.inf
    assert read[3, 3] == 300.0
    inside = np.isfinite(temperature[0]) & (temperature[0] >= 180) & (temperature[0] <= 340)
    np.testing.assert_array_equal(read[inside], temperature[0][inside])
