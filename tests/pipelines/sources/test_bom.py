"""BoM Rainfields3 products other than prcp-c10, from small files written like the real ones.

The writer copies the variables and attributes of a real ``prcp-cscn`` file
(``2_20180616_100000.prcp-cscn.nc`` of the pySTEPS data: int16 precipitation in
kg m-2 with scale 0.05 and fill -32768, valid_time and start_time 6 min apart,
x/y in km, an Albers ``proj`` grid mapping) on a small grid, so each case
checks the source against pysteps' own importer and hand-made values.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from nowcast.pipelines.sources import RadarSource, SourceError, detect_radar_format, get_source
from nowcast.pipelines.sources.radar import bom_product

pytestmark = [
    pytest.mark.filterwarnings("ignore:angle from rectified:UserWarning"),
    pytest.mark.filterwarnings("ignore:You will likely lose important projection:UserWarning"),
]

NY, NX = 6, 8
FILL = -32768
# Raw int16 values (x 0.05 = kg m-2 = mm over the accumulation period), fill where unobserved.
RAW = np.array([
    [FILL, FILL, 0, 0, 0, 0, FILL, FILL],
    [FILL, 0, 1, 2, 4, 0, 0, FILL],
    [0, 0, 10, 20, 40, 10, 0, 0],
    [0, 3, 60, 120, 200, 30, 2, 0],
    [FILL, 0, 5, 10, 20, 5, 0, FILL],
    [FILL, FILL, 0, 0, 0, 0, FILL, FILL],
], dtype="int16")


def write_rainfields(path: Path, valid: str, period_minutes: int | None = 6, units: str = "kg m-2",
                     raw: np.ndarray = RAW) -> Path:
    """A Rainfields3-like file valid at ``valid`` (end of the period); no start_time without a period."""
    valid_s = int(np.datetime64(valid, "s").astype("int64"))
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        ds.setncatts({"Conventions": "CF-1.6", "title": "Bias Corrected Radar Accumulation",
                      "institution": "Commonwealth of Australia, Bureau of Meteorology (ABN 92 637 533 532)",
                      "source": "rainfields 3.0.28", "station_id": np.uint32(2), "station_name": "Melb"})
        ds.createDimension("x", NX)
        ds.createDimension("y", NY)
        seconds = "seconds since 1970-01-01 00:00:00 UTC"
        valid_time = ds.createVariable("valid_time", "i8")
        valid_time.setncatts({"long_name": "Valid time", "standard_name": "time", "units": seconds})
        valid_time.assignValue(valid_s)
        if period_minutes is not None:
            start_time = ds.createVariable("start_time", "i8")
            start_time.setncatts({"long_name": "Accumulation start time", "units": seconds})
            start_time.assignValue(valid_s - 60 * period_minutes)
        proj = ds.createVariable("proj", "i1")
        proj.setncatts({"grid_mapping_name": "albers_conical_equal_area", "semi_major_axis": 6378137.0,
                        "inverse_flattening": 298.257222101, "standard_parallel": np.array([-18.0, -36.0]),
                        "longitude_of_central_meridian": 144.752, "latitude_of_projection_origin": -37.852,
                        "false_easting": 0.0, "false_northing": 0.0})
        x = ds.createVariable("x", "f4", ("x",))
        x.setncatts({"units": "km", "standard_name": "projection_x_coordinate",
                     "valid_min": np.float32(-2.0), "valid_max": np.float32(1.5)})
        x[:] = -2.0 + 0.5 * np.arange(NX)
        y = ds.createVariable("y", "f4", ("y",))
        y.setncatts({"units": "km", "standard_name": "projection_y_coordinate",
                     "valid_min": np.float32(-1.0), "valid_max": np.float32(1.5)})
        y[:] = 1.5 - 0.5 * np.arange(NY)  # north first
        precipitation = ds.createVariable("precipitation", "i2", ("y", "x"), zlib=True, complevel=6,
                                          fill_value=np.int16(FILL))
        precipitation.setncatts({"grid_mapping": "proj", "long_name": "Accumulated precipitation",
                                 "standard_name": "precipitation_amount", "units": units,
                                 "scale_factor": 0.05, "add_offset": 0.0})
        precipitation.set_auto_maskandscale(False)
        precipitation[:] = raw
    return path


def direct_read(path: str) -> np.ndarray:
    """pysteps' BoM importer, then to_rainrate, as float32 (negative flags as NaN, as the source)."""
    from pysteps.io.importers import import_bom_rf3
    from pysteps.utils import to_rainrate

    field, _, metadata = import_bom_rf3(path)
    assert (metadata["unit"], metadata["accutime"]) == ("mm", 6)  # what pysteps reports for prcp-cscn
    rate, _ = to_rainrate(np.ma.filled(np.ma.asarray(field, dtype="float64"), np.nan), metadata)
    rate = rate.astype("float32")
    rate[rate < 0] = np.nan
    return rate


@pytest.fixture
def cscn_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "prcp-cscn"
    folder.mkdir()
    for minute in ("00", "06", "12", "24"):  # 10:18 missing
        write_rainfields(folder / f"2_20180616_10{minute}00.prcp-cscn.nc", f"2018-06-16T10:{minute}")
    return folder


def test_cscn_accumulations_read_as_pysteps_reads_them(cscn_dir):
    source = get_source("radar", directory=str(cscn_dir))
    assert source == RadarSource(str(cscn_dir), "bom")
    items = source.items()
    assert [str(item.time) for item in items] == [
        "2018-06-16T10:00:00", "2018-06-16T10:06:00", "2018-06-16T10:12:00", "2018-06-16T10:24:00"]
    assert source.time_step() == np.timedelta64(360, "s")
    frame = source.read(items[0])["precip"]
    np.testing.assert_array_equal(frame, direct_read(items[0].path))
    # By hand: 0.05 mm per raw unit over 6 minutes, i.e. x 10 for mm/h; fill is unobserved.
    expected = np.where(RAW == FILL, np.nan, RAW * 0.05 * 10).astype("float32")
    np.testing.assert_allclose(frame, expected, rtol=1e-6, equal_nan=True)
    grid = source.read_grid(items[0])
    assert grid.shape == (NY, NX)
    np.testing.assert_allclose(grid.x, (-2.0 + 0.5 * np.arange(NX)) * 1000.0)
    np.testing.assert_allclose(grid.y, (1.5 - 0.5 * np.arange(NY)) * 1000.0)
    assert grid.crs.to_dict()["proj"] == "aea"


def test_product_step_is_known_or_the_spacing_of_the_files(tmp_path):
    assert bom_product("66_20201031_000000.prcp-c10.nc") == "prcp-c10"
    assert bom_product("2_20180616_100000.prcp-cscn.nc") == "prcp-cscn"
    one = tmp_path / "one"
    one.mkdir()
    write_rainfields(one / "2_20180616_100000.prcp-cscn.nc", "2018-06-16T10:00")
    assert RadarSource(str(one), "bom").time_step() == np.timedelta64(360, "s")  # known product
    other = tmp_path / "other"
    other.mkdir()
    write_rainfields(other / "2_20180616_100000.prcp-c30.nc", "2018-06-16T10:00", period_minutes=30)
    # A product of unknown step with one file: no step (ingest then asks for --time-step).
    assert RadarSource(str(other), "bom").time_step() is None
    for stamp in ("1030", "1100", "1145"):  # 11:15 missing: the most common spacing wins
        write_rainfields(other / f"2_20180616_{stamp}00.prcp-c30.nc", f"2018-06-16T{stamp[:2]}:{stamp[2:]}",
                         period_minutes=30)
    assert RadarSource(str(other), "bom").time_step() == np.timedelta64(1800, "s")
    frame = RadarSource(str(other), "bom").read(RadarSource(str(other), "bom").items()[0])["precip"]
    np.testing.assert_allclose(frame, np.where(RAW == FILL, np.nan, RAW * 0.05 * 2), rtol=1e-6,
                               equal_nan=True)  # 30-min amounts: x 2


@pytest.mark.shared_data
@pytest.mark.fault("sources", "a folder mixing two BoM products",
                   "refused until one product is picked")
def test_mixed_products_are_refused_until_one_is_picked(radar_dir, cscn_dir):
    c10 = sorted((radar_dir / "bom").rglob("*.prcp-c10.nc"))[:2]
    for path in c10:
        shutil.copy(path, cscn_dir / path.name)
    assert detect_radar_format(str(cscn_dir)) == "bom"
    mixed = RadarSource(str(cscn_dir), "bom")
    with pytest.raises(SourceError, match=r"mixes BoM Rainfields3 products \(2 prcp-c10, 4 prcp-cscn\); "
                                          r"give the folder of one product, or name one: --product "
                                          r"prcp-c10 \(product='prcp-c10' in Python\)"):
        mixed.items()
    with pytest.raises(SourceError, match="mixes BoM"):
        mixed.time_step()
    cscn = get_source("bom", directory=str(cscn_dir), product="prcp-cscn")
    assert len(cscn.items()) == 4
    assert cscn.time_step() == np.timedelta64(360, "s")
    tens = RadarSource(str(cscn_dir), "bom", product="prcp-c10")
    assert [item.path.rsplit("/", 1)[1] for item in tens.items()] == [p.name for p in c10]
    assert tens.time_step() == np.timedelta64(600, "s")
    with pytest.raises(SourceError, match="no bom files of product prcp-c60"):
        RadarSource(str(cscn_dir), "bom", product="prcp-c60").items()
    with pytest.raises(SourceError, match="product"):
        RadarSource(str(cscn_dir), "fmi", product="prcp-c10")


def test_rates_are_read_as_mm_per_hour_and_other_units_refused(tmp_path):
    rate = write_rainfields(tmp_path / "2_20180616_100000.prcp-rate.nc", "2018-06-16T10:00",
                            period_minutes=None, units="mm h-1")
    source = RadarSource(str(tmp_path), "bom")
    (item,) = source.items()
    np.testing.assert_allclose(source.read(item)["precip"], np.where(RAW == FILL, np.nan, RAW * 0.05),
                               rtol=1e-6, equal_nan=True)
    rate.unlink()
    write_rainfields(tmp_path / "2_20180616_100000.prcp-dbz.nc", "2018-06-16T10:00", units="dBZ")
    (item,) = source.items()
    with pytest.raises(SourceError, match=r"prcp-dbz\.nc: variable precipitation has units 'dBZ'"):
        source.read(item)


def test_amount_without_its_period_is_a_source_error_naming_the_file(tmp_path):
    write_rainfields(tmp_path / "2_20180616_100000.prcp-cscn.nc", "2018-06-16T10:00", period_minutes=None)
    source = RadarSource(str(tmp_path), "bom")
    (item,) = source.items()
    with pytest.raises(SourceError, match=r"prcp-cscn\.nc: precipitation is an amount.*no accumulation"):
        source.read(item)


@pytest.mark.fault("sources", "a BoM file whose x/y units are spelt 'metres' or 'meters', whose times are "
                   "in minutes since 1970, or whose start_time is after its valid_time",
                   "the first two read as pysteps reads them (they were refused as corrupt, or as renamed "
                   "from 1970); the third refused naming both times (its rain had become unobserved, exit 0)")
def test_cf_spellings_of_units_and_times_are_read_and_a_reversed_period_refused(tmp_path):
    reference = write_rainfields(tmp_path / "2_20180616_100000.prcp-cscn.nc", "2018-06-16T10:00")
    expected = RadarSource(str(tmp_path), "bom")
    (item,) = expected.items()
    frame, grid = expected.read(item)["precip"], expected.read_grid(item)
    for folder, edit in (("metres", _units_in_metres), ("minutes", _times_in_minutes)):
        (tmp_path / folder).mkdir()
        edit(shutil.copy(reference, tmp_path / folder / reference.name))
        source = RadarSource(str(tmp_path / folder), "bom")
        (item,) = source.items()
        np.testing.assert_array_equal(source.read(item)["precip"], frame)
        assert source.read_grid(item).mismatch(grid) is None
    (tmp_path / "reversed").mkdir()
    reversed_period = shutil.copy(reference, tmp_path / "reversed" / reference.name)
    with netCDF4.Dataset(reversed_period, "a") as ds:
        ds["start_time"].assignValue(int(ds["valid_time"][...]) + 360)
    source = RadarSource(str(tmp_path / "reversed"), "bom")
    (item,) = source.items()
    with pytest.raises(SourceError, match=r"start_time 2018-06-16T10:06:00 is after valid_time "
                                          r"2018-06-16T10:00:00, so its amounts have no accumulation period"):
        source.read(item)


def _units_in_metres(path: str) -> None:
    with netCDF4.Dataset(path, "a") as ds:
        for name in ("x", "y"):
            ds[name][:] = ds[name][:] * 1000.0
            ds[name].units = "metres" if name == "x" else "meters"


def _times_in_minutes(path: str) -> None:
    with netCDF4.Dataset(path, "a") as ds:
        for name in ("valid_time", "start_time"):
            ds[name].assignValue(int(ds[name][...]) // 60)
            ds[name].units = "minutes since 1970-01-01 00:00:00 UTC"
