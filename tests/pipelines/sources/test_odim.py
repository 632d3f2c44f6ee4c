"""ODIM_H5 composites: RMI's real files against pysteps, and small files written here with h5py.

The written files follow ODIM_H5 2.x as OPERA and the national services write
it (root Conventions, what/where/how groups, datasetN/dataM with gain, offset,
nodata and undetect), so each case checks one rule of the source against values
known by construction: frame times from what/date + what/time, undetect dry and
nodata NaN, the Z-R conversion, the quantity, the grid and the step.
"""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pyproj
import pytest

from nowcast.flows import cli
from nowcast.pipelines.sources import RadarSource, SourceError, detect_radar_format, get_source
from nowcast.pipelines.sources.odim import read_header
from nowcast.pipelines.stores.grid import Grid

pytestmark = [
    pytest.mark.filterwarnings("ignore:angle from rectified:UserWarning"),
    pytest.mark.filterwarnings("ignore:You will likely lose important projection:UserWarning"),
]

RMI = "rmi/radqpe/20210704"
PROJDEF = "+proj=laea +lat_0=55.0 +lon_0=10.0 +x_0=1950000.0 +y_0=-2100000.0 +units=m +ellps=WGS84"
X_EDGES = (1_000_000.0, 1_008_000.0)  # 8 pixels of 1 km
Y_EDGES = (-3_006_000.0, -3_000_000.0)  # 6 pixels
GAIN, OFFSET, NODATA, UNDETECT = 0.5, -32.0, 255, 0  # OPERA's usual 8-bit DBZH coding
# Raw 8-bit DBZH values: undetect, nodata, -31.5 and -30 dBZ (measurable, as in OPERA's CIRRUS
# composites), and light to heavy rain.
RAW_DBZH = np.array([
    [255, 255, 0, 0, 0, 0, 255, 255],
    [255, 0, 0, 1, 4, 0, 0, 255],
    [0, 0, 64, 90, 100, 64, 0, 0],
    [0, 4, 100, 130, 150, 110, 4, 0],
    [255, 0, 64, 100, 120, 64, 0, 255],
    [255, 255, 0, 0, 0, 0, 255, 255],
], dtype="uint8")


def hand_rate(raw: np.ndarray, a: float = 200.0, b: float = 1.6) -> np.ndarray:
    """Z = a R^b by hand: undetect 0 mm/h, nodata NaN, every detected value converted."""
    dbz = raw * GAIN + OFFSET
    rate = (10.0 ** (dbz / 10.0) / a) ** (1.0 / b)
    rate[raw == UNDETECT] = 0.0
    rate[raw == NODATA] = np.nan
    return rate.astype("float32")


def write_odim(path: Path, *, date: str = "20240501", time: str = "120000",
               datasets: tuple[tuple[str, np.ndarray, dict], ...] | None = None,
               how: dict | None = None, obj: str = "COMP", conventions: str = "ODIM_H5/V2_3") -> Path:
    """An ODIM_H5 cartesian composite on a small LAEA grid (OPERA's projection).

    ``datasets``: (quantity, raw array, what attributes) per dataset; default one
    8-bit DBZH dataset. Strings are fixed-length bytes, as in real files (pysteps
    decodes them).
    """
    if datasets is None:
        datasets = (("DBZH", RAW_DBZH, dict(gain=GAIN, offset=OFFSET, nodata=NODATA, undetect=UNDETECT)),)
    ny, nx = datasets[0][1].shape
    to_lonlat = pyproj.Transformer.from_crs(pyproj.CRS(PROJDEF), "EPSG:4326", always_xy=True)
    (x1, x2), (y1, y2) = X_EDGES, Y_EDGES
    corners = {name: to_lonlat.transform(x, y)
               for name, (x, y) in {"LL": (x1, y1), "UL": (x1, y2), "UR": (x2, y2), "LR": (x2, y1)}.items()}
    with h5py.File(path, "w") as f:
        f.attrs["Conventions"] = np.bytes_(conventions)
        what = f.create_group("what")
        for key, value in dict(object=obj, version="H5rad 2.3", date=date, time=time,
                               source="ORG:247").items():
            what.attrs[key] = np.bytes_(value)
        where = f.create_group("where")
        where.attrs["projdef"] = np.bytes_(PROJDEF)
        where.attrs["xsize"], where.attrs["ysize"] = np.int64(nx), np.int64(ny)
        where.attrs["xscale"], where.attrs["yscale"] = 1000.0, 1000.0
        for name, (lon, lat) in corners.items():
            where.attrs[f"{name}_lon"], where.attrs[f"{name}_lat"] = lon, lat
        if how:
            f.create_group("how").attrs.update(how)
        for number, (quantity, raw, attrs) in enumerate(datasets, start=1):
            dataset = f.create_group(f"dataset{number}")
            dataset_what = dataset.create_group("what")
            # The acquisition interval: deliberately not the nominal time.
            for key, value in dict(product="MAX", startdate=date, starttime="115001",
                                   enddate=date, endtime="115930").items():
                dataset_what.attrs[key] = np.bytes_(value)
            data = dataset.create_group("data1")
            data.create_dataset("data", data=raw, compression="gzip")
            data_what = data.create_group("what")
            data_what.attrs["quantity"] = np.bytes_(quantity)
            data_what.attrs.update(attrs)
    return path


@pytest.fixture
def dbzh_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "dbzh"
    folder.mkdir()
    write_odim(folder / "composite_a.h5")  # the name carries no time
    return folder


def test_dbzh_composite_equals_a_z_r_conversion_by_hand(dbzh_dir):
    source = get_source("radar", directory=str(dbzh_dir))
    assert source == RadarSource(str(dbzh_dir), "odim")
    (item,) = source.items()
    assert item.time == np.datetime64("2024-05-01T12:00:00", "s")  # what/date + what/time, not endtime
    frame = source.read(item)["precip"]
    expected = hand_rate(RAW_DBZH)
    assert frame.dtype == np.float32
    np.testing.assert_allclose(frame, expected, rtol=1e-6, equal_nan=True)
    assert (frame[RAW_DBZH == UNDETECT] == 0).all()  # undetect: observed and dry
    assert np.isnan(frame[RAW_DBZH == NODATA]).all()  # nodata: outside coverage
    assert np.isnan(frame).sum() == (RAW_DBZH == NODATA).sum()
    # -31.5 and -30 dBZ are measured, not undetect: tiny but not zero.
    assert (frame[(RAW_DBZH == 1) | (RAW_DBZH == 4)] > 0).all()


def test_pysteps_reading_of_undetect_is_corrected(dbzh_dir):
    """What pysteps returns, which the source's corrections rely on (see importers.import_odim)."""
    from pysteps.io.importers import import_odim_hdf5
    from pysteps.utils import to_rainrate

    path = str(dbzh_dir / "composite_a.h5")
    field, _, metadata = import_odim_hdf5(path, qty="DBZH")
    assert (metadata["unit"], metadata["transform"]) == ("dBZ", "dB")
    assert (field[RAW_DBZH == UNDETECT] == -30.0).all()  # the same value as a measured -30 dBZ
    assert (field[RAW_DBZH == 4] == -30.0).all()
    assert np.isnan(field[RAW_DBZH == NODATA]).all()
    # Its threshold is the frame's second-lowest value: -31.5 dBZ pixels read as dry, undetect as
    # the rate of -30 dBZ.
    rate, _ = to_rainrate(field, metadata)
    assert (rate[RAW_DBZH == 1] == 0).all()
    assert rate[RAW_DBZH == UNDETECT] == pytest.approx((1e-3 / 200.0) ** (1 / 1.6))


def test_z_r_relation_from_options_then_file_then_marshall_palmer(tmp_path):
    folder = tmp_path / "zr"
    folder.mkdir()
    write_odim(folder / "a.h5", how={"zr_a": 300.0, "zr_b": 1.4})
    (item,) = RadarSource(str(folder), "odim").items()
    np.testing.assert_allclose(RadarSource(str(folder), "odim").read(item)["precip"],
                               hand_rate(RAW_DBZH, 300.0, 1.4), rtol=1e-6, equal_nan=True)
    chosen = get_source("odim", directory=str(folder), zr_a=250, zr_b=1.5)
    np.testing.assert_allclose(chosen.read(item)["precip"], hand_rate(RAW_DBZH, 250.0, 1.5),
                               rtol=1e-6, equal_nan=True)


def test_rate_is_read_as_mm_per_hour_with_undetect_dry(tmp_path):
    folder = tmp_path / "rate"
    folder.mkdir()
    # 16-bit RATE with a nonzero offset: pysteps reads undetect as the offset (-0.01), which as a
    # negative rate would be NaN (unobserved) instead of dry.
    raw = np.where(RAW_DBZH == NODATA, 65535, RAW_DBZH.astype("uint16") * 10).astype("uint16")
    attrs = dict(gain=0.01, offset=-0.01, nodata=65535, undetect=0)
    write_odim(folder / "rate.hdf", datasets=(("RATE", raw, attrs),))
    source = RadarSource(str(folder), "odim")
    (item,) = source.items()
    frame = source.read(item)["precip"]
    expected = (raw * 0.01 - 0.01).astype("float32")
    expected[raw == 0] = 0.0
    expected[raw == 65535] = np.nan
    np.testing.assert_allclose(frame, expected, rtol=1e-6, equal_nan=True)
    with pytest.raises(SourceError, match=r"a Z-R relation \(--zr-a/--zr-b\) given.*RATE"):
        RadarSource(str(folder), "odim", zr_a=300.0).items()


@pytest.mark.fault("sources", "an ODIM float32 field whose nodata and undetect (doubles, e.g. 9999.9, "
                   "-8888.8) float32 cannot hold exactly",
                   "the sentinels are compared in the data's type: outside coverage NaN, undetect dry (the "
                   "outside was ingested as 9999.9 mm/h and every dry pixel as NaN, exit 0)")
def test_float_sentinels_are_compared_in_the_data_type(tmp_path):
    folder = tmp_path / "float"
    folder.mkdir()
    rate = np.where(RAW_DBZH == NODATA, 9999.9, np.where(RAW_DBZH == UNDETECT, -8888.8, RAW_DBZH / 10))
    write_odim(folder / "rate.h5", datasets=(("RATE", rate.astype("float32"),
                                              dict(gain=1.0, offset=0.0, nodata=9999.9, undetect=-8888.8)),))
    source = RadarSource(str(folder), "odim")
    frame = source.read(source.items()[0])["precip"]
    assert np.isnan(frame[RAW_DBZH == NODATA]).all()
    assert (frame[RAW_DBZH == UNDETECT] == 0).all()
    wet = (RAW_DBZH != NODATA) & (RAW_DBZH != UNDETECT)
    np.testing.assert_allclose(frame[wet], RAW_DBZH[wet] / 10, rtol=1e-6)


def test_quantity_rate_first_or_as_asked(tmp_path):
    folder = tmp_path / "both"
    folder.mkdir()
    rate = np.full(RAW_DBZH.shape, 250, dtype="uint8")  # 2.5 mm/h everywhere
    write_odim(folder / "both.h5", datasets=(
        ("DBZH", RAW_DBZH, dict(gain=GAIN, offset=OFFSET, nodata=NODATA, undetect=UNDETECT)),
        ("RATE", rate, dict(gain=0.01, offset=0.0, nodata=255, undetect=0))))
    (item,) = RadarSource(str(folder), "odim").items()
    np.testing.assert_allclose(RadarSource(str(folder), "odim").read(item)["precip"], 2.5, rtol=1e-6)
    as_dbzh = get_source("odim", directory=str(folder), quantity="dbzh")
    assert as_dbzh.quantity == "DBZH"
    np.testing.assert_allclose(as_dbzh.read(item)["precip"], hand_rate(RAW_DBZH), rtol=1e-6,
                               equal_nan=True)
    clone = pickle.loads(pickle.dumps(as_dbzh))
    assert clone == as_dbzh
    with pytest.raises(SourceError, match=r"one of \['RATE', 'DBZH'\]"):
        RadarSource(str(folder), "odim", quantity="ACRR")
    with pytest.raises(SourceError, match="quantity"):
        RadarSource(str(folder), "knmi", quantity="RATE")


@pytest.mark.fault("sources", "ODIM files of different quantities in one folder",
                   "refused naming the quantities")
def test_files_that_resolve_to_different_quantities_are_refused(tmp_path):
    write_odim(tmp_path / "a.h5", time="120000")
    rate = np.zeros(RAW_DBZH.shape, dtype="uint8")
    write_odim(tmp_path / "b.h5", time="120500", datasets=(
        ("DBZH", RAW_DBZH, dict(gain=GAIN, offset=OFFSET, nodata=NODATA, undetect=UNDETECT)),
        ("RATE", rate, dict(gain=0.01, offset=0.0, nodata=255, undetect=0))))
    with pytest.raises(SourceError, match=r"do not share a quantity.*quantity='DBZH'"):
        RadarSource(str(tmp_path), "odim").items()
    assert len(RadarSource(str(tmp_path), "odim", quantity="DBZH").items()) == 2


@pytest.mark.fault("sources", "ODIM reflectivity files ingested into, or watched into, an archive of rain "
                   "rates (each batch of one quantity)",
                   "the archive records its quantity (`ODIM RATE`); a file of another is refused by ingest "
                   "and rejected by the watcher, naming both (they were appended: dBZ read as mm/h, exit 0)")
def test_an_archive_keeps_one_odim_quantity(tmp_path, caplog):
    from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items
    from nowcast.pipelines.jobs.watch import Rejections, WatchSpec, poll_once
    from nowcast.pipelines.plans.ingest import IngestError

    rate = dict(gain=0.01, offset=0.0, nodata=255, undetect=0)
    folder = tmp_path / "rates"
    folder.mkdir()
    for minute in ("00", "05", "10"):
        write_odim(folder / f"r{minute}.h5", time=f"12{minute}00",
                   datasets=(("RATE", np.full(RAW_DBZH.shape, 100, "uint8"), rate),))
    reflectivity = tmp_path / "dbzh"
    reflectivity.mkdir()
    write_odim(reflectivity / "z15.h5", time="121500")
    url = str(tmp_path / "archive.zarr")
    source = RadarSource(str(folder), "odim")
    ingest_items(IngestSpec(archive=url, source=source), source.items(), None)
    other = RadarSource(str(reflectivity), "odim")
    with pytest.raises(IngestError, match=r"z15\.h5 is ODIM DBZH, the archive holds ODIM RATE"):
        ingest_items(IngestSpec(archive=url, source=other), other.items(), None)

    shutil.copy(reflectivity / "z15.h5", folder / "z15.h5")  # arrives among the rates
    spec = WatchSpec(archive=url, directory=str(folder), fmt="odim", interval_s=1.0, duration_s=1.0)
    rejections = Rejections(spec.max_attempts)
    with caplog.at_level("WARNING", logger="nowcast.pipelines.jobs.watch"):
        assert poll_once(spec, rejections) == 0
    assert str(folder / "z15.h5") in rejections.given_up
    assert "z15.h5 is ODIM DBZH, the archive holds ODIM RATE" in caplog.text


@pytest.mark.fault("sources", "a first ingest or watcher poll of a single ODIM file (the product's step "
                   "unknown: 5, 6, 10 or 15 min)",
                   "no step is guessed: ingest asks for --time-step and the watcher waits for a second file "
                   "(one frame took 5 min: a 6-min series was then refused, a 15-min one two thirds missing)")
def test_step_is_the_spacing_of_the_frames_and_none_for_one(tmp_path, dbzh_dir, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for minute in ("00", "10", "20", "40"):  # one frame missing: the step stays 10 min
        write_odim(folder / f"frame{minute}.hdf5", time=f"12{minute}00")
    source = RadarSource(str(folder), "odim")
    assert [str(item.time) for item in source.items()] == [
        "2024-05-01T12:00:00", "2024-05-01T12:10:00", "2024-05-01T12:20:00", "2024-05-01T12:40:00"]
    assert source.time_step() == np.timedelta64(600, "s")
    assert RadarSource(str(dbzh_dir), "odim").time_step() is None  # one frame
    archive = str(tmp_path / "one.zarr")
    assert cli.main(["ingest", "--input", str(dbzh_dir), "--format", "odim", "--archive", archive]) == 2
    assert "--time-step" in capsys.readouterr().err
    assert not os.path.exists(archive)
    assert cli.main(["ingest", "--input", str(dbzh_dir), "--format", "odim", "--archive", archive,
                     "--time-step", "PT15M"]) == 0


def test_an_archive_from_odim_files_gets_their_step(tmp_path):
    from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items
    from nowcast.pipelines.stores.archive import open_archive

    folder = tmp_path / "frames"
    folder.mkdir()
    for minute in ("00", "10", "20"):
        write_odim(folder / f"frame{minute}.h5", time=f"12{minute}00")
    source = RadarSource(str(folder), "odim")
    url = str(tmp_path / "archive.zarr")
    result = ingest_items(IngestSpec(archive=url, source=source, time_chunk=2), source.items(), None)
    assert result.frames_written == 3
    ds = open_archive(url)
    assert ds.attrs["time_step"] == "PT10M"
    np.testing.assert_allclose(ds["precip"][1].values, hand_rate(RAW_DBZH), rtol=1e-6, equal_nan=True)


@pytest.mark.fault("ingest", "a new archive from two ODIM files 10 minutes apart (a 5-minute feed with the "
                   "file between them missing?)",
                   "ingested at the one spacing, with a warning that later frames off it will be refused and "
                   "the fix (--time-step); three files spaced alike make no warning (it was silent)")
def test_a_step_told_by_one_spacing_is_warned_of(tmp_path, caplog):
    from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items

    folder = tmp_path / "frames"
    folder.mkdir()
    for minute in ("00", "10"):
        write_odim(folder / f"frame{minute}.h5", time=f"12{minute}00")
    source = RadarSource(str(folder), "odim")
    with caplog.at_level("WARNING", logger="nowcast.pipelines.jobs.ingest"):
        ingest_items(IngestSpec(archive=str(tmp_path / "a.zarr"), source=source), source.items(), None)
        assert "the new archive's time step PT10M is the one spacing of its first frames" in caplog.text
        assert "--time-step" in caplog.text
        caplog.clear()
        write_odim(folder / "frame20.h5", time="122000")
        source = RadarSource(str(folder), "odim")
        ingest_items(IngestSpec(archive=str(tmp_path / "b.zarr"), source=source), source.items(), None)
        assert "time step" not in caplog.text


def test_grid_from_the_header_equals_pysteps_metadata(dbzh_dir):
    from pysteps.io.importers import import_odim_hdf5

    source = RadarSource(str(dbzh_dir), "odim")
    (item,) = source.items()
    grid = source.read_grid(item)
    field, _, metadata = import_odim_hdf5(item.path, qty="DBZH")
    assert grid.shape == field.shape == RAW_DBZH.shape
    assert grid.mismatch(Grid.from_pysteps_metadata(metadata, field.shape)) is None
    np.testing.assert_allclose(grid.x, X_EDGES[0] + 500.0 + 1000.0 * np.arange(8), atol=1e-3)
    np.testing.assert_allclose(grid.y, Y_EDGES[1] - 500.0 - 1000.0 * np.arange(6), atol=1e-3)  # north first
    assert grid.crs.to_dict()["proj"] == "laea"


# -- the real RMI composites ---------------------------------------------------------------------


@pytest.mark.shared_data
def test_rmi_times_are_the_nominal_times_at_the_end_of_each_scan(radar_dir):
    source = RadarSource(str(radar_dir / RMI), "odim")
    items = source.items()
    assert len(items) == 39
    assert source.time_step() == np.timedelta64(300, "s")
    for item in items:
        name = os.path.basename(item.path)  # 20210704155000.rad.best.comp.rate.qpe.hdf
        assert item.time == _stamp(name[:14])
        with h5py.File(item.path) as f:
            what = f["dataset1/what"].attrs
            scan_end = _stamp((what["enddate"] + what["endtime"]).decode())
        # The scans end 30-50 s before the nominal time: the frame time ends the acquisition.
        assert np.timedelta64(0, "s") <= item.time - scan_end < np.timedelta64(60, "s")
    assert read_header(items[0].path).quantities == ("RATE",)


def _stamp(text: str) -> np.datetime64:
    return np.datetime64(datetime.strptime(text, "%Y%m%d%H%M%S"), "s")


@pytest.mark.shared_data
def test_rmi_undetect_is_dry_and_nodata_is_nan(radar_dir):
    source = RadarSource(str(radar_dir / RMI), "odim")
    item = source.items()[20]
    frame = source.read(item)["precip"]
    with h5py.File(item.path) as f:
        raw = f["dataset1/data1/data"][...]  # float32 mm/h; no undetect/nodata attributes:
    # pysteps' defaults apply (undetect = 0, nodata = NaN, stored as NaN)
    assert frame.shape == (700, 700)
    np.testing.assert_array_equal(np.isnan(frame), np.isnan(raw))
    assert 0.3 < np.isnan(frame).mean() < 0.36  # about a third of the grid is outside coverage
    assert (frame[raw == 0] == 0).all()
    np.testing.assert_array_equal(frame[raw > 0], raw[raw > 0])  # RATE is mm/h already


@pytest.mark.shared_data
def test_knmi_hdf5_is_not_taken_for_odim(radar_dir, tmp_path):
    knmi = sorted((radar_dir / "knmi").rglob("*.h5"))[0]
    rmi = sorted((radar_dir / RMI).glob("*.hdf"))[0]
    with pytest.raises(SourceError, match=rf"{knmi.name}: not an ODIM_H5 file.*knmi"):
        RadarSource(str(radar_dir / "knmi"), "odim").items()
    shutil.copy(knmi, tmp_path / knmi.name)
    shutil.copy(rmi, tmp_path / "latest.h5")  # an ODIM file named like nothing in particular
    with pytest.raises(SourceError, match=r"mixes radar formats \['knmi', 'odim'\]"):
        detect_radar_format(str(tmp_path))
    (tmp_path / knmi.name).unlink()
    assert detect_radar_format(str(tmp_path)) == "odim"


# -- bad files -----------------------------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.fault("sources", "a truncated or empty ODIM file",
                   "a source error naming the file")
def test_truncated_or_empty_odim_file_is_a_source_error_naming_it(radar_dir, tmp_path):
    good = sorted((radar_dir / RMI).glob("*.hdf"))[0]
    truncated = tmp_path / good.name
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=rf"{good.name}: cannot read its ODIM_H5 header.*truncated"):
        RadarSource(str(tmp_path), "odim").items()
    truncated.write_bytes(b"")
    with pytest.raises(SourceError, match=good.name):
        RadarSource(str(tmp_path), "odim").items()


def test_file_without_the_dataset_is_a_source_error_naming_it(tmp_path):
    path = write_odim(tmp_path / "empty.h5")
    with h5py.File(path, "a") as f:
        del f["dataset1"]
    with pytest.raises(SourceError, match=r"empty\.h5: holds neither RATE nor DBZH data"):
        RadarSource(str(tmp_path), "odim").items()


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f["what"].attrs.__delitem__("time"), r"bad\.h5: no valid nominal time"),
    (lambda f: f["what"].attrs.__setitem__("object", np.bytes_("PVOL")), r"bad\.h5: ODIM object 'PVOL'"),
    (lambda f: f.attrs.__setitem__("Conventions", np.bytes_("CF-1.7")), r"bad\.h5: not an ODIM_H5 file"),
    (lambda f: f["dataset1/data1/what"].attrs.__setitem__("quantity", np.bytes_("ACRR")),
     r"bad\.h5: holds neither RATE nor DBZH data \(its quantities: \['ACRR'\]\)"),
])
def test_unusable_header_is_a_source_error_naming_the_file(tmp_path, change, message):
    path = write_odim(tmp_path / "bad.h5")
    with h5py.File(path, "a") as f:
        change(f)
    with pytest.raises(SourceError, match=message):
        RadarSource(str(tmp_path), "odim").items()


def test_data_of_another_shape_is_a_source_error_naming_the_file(tmp_path):
    path = write_odim(tmp_path / "short.h5")
    with h5py.File(path, "a") as f:
        f["where"].attrs["xsize"] = np.int64(9)  # the header declares another grid than the data
    source = RadarSource(str(tmp_path), "odim")
    (item,) = source.items()
    expected = r"short\.h5: variable 'precip' has shape \(6, 8\), expected \(6, 9\)"
    with pytest.raises(SourceError, match=expected):
        source.read(item)


@pytest.mark.fault("sources", "an ODIM file with damaged data",
                   "a source error naming the file")
def test_damaged_data_is_a_source_error_naming_the_file(tmp_path):
    path = write_odim(tmp_path / "damaged.h5")
    source = RadarSource(str(tmp_path), "odim")
    (item,) = source.items()
    with h5py.File(path, "a") as f:  # the header stays readable, the data group loses its array
        del f["dataset1/data1/data"]
        f["dataset1/data1"].create_group("data")
    with pytest.raises(SourceError, match=r"damaged\.h5"):
        source.read(item)


def _moved(path: Path, edit) -> Path:
    """The default composite with ``edit(h5py file)`` applied."""
    write_odim(path)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def _coding_at_dataset_level(f) -> None:
    """What every data group shares moved up to its dataset's what, as ODIM allows."""
    data_what = f["dataset1/data1/what"].attrs
    for key in ("gain", "offset", "nodata", "undetect"):
        f["dataset1/what"].attrs[key] = data_what[key]
        del data_what[key]


@pytest.mark.fault("ingest", "an ODIM file whose gain, offset, nodata and undetect sit in the dataset's what "
                   "(inherited by its data groups)",
                   "read with that coding (raw counts were read as dBZ: 3e14 mm/h, nodata as rain, exit 0)")
def test_a_coding_held_by_the_dataset_is_inherited(tmp_path):
    _reads_as_the_composite(tmp_path, _coding_at_dataset_level)


def _reads_as_the_composite(tmp_path: Path, edit) -> None:
    """The default composite, edited, still reads as the Z-R conversion of its raw values by hand."""
    folder = tmp_path / "edited"
    folder.mkdir()
    _moved(folder / "a.h5", edit)
    source = RadarSource(str(folder), "odim")
    np.testing.assert_allclose(source.read(source.items()[0])["precip"], hand_rate(RAW_DBZH), rtol=1e-6,
                               equal_nan=True)


@pytest.mark.fault("ingest", "an ODIM file whose quantity (or another string) is a variable-length string, "
                   "h5py's default for a str",
                   "read as the fixed-length string it means (refused as corrupt: pysteps calls .decode())")
def test_variable_length_strings_are_read(tmp_path):
    def as_a_str(f):
        f["dataset1/data1/what"].attrs["quantity"] = "DBZH"  # h5py writes a str as a variable-length string

    _reads_as_the_composite(tmp_path, as_a_str)


@pytest.mark.fault("ingest", "an ODIM file whose what/date and what/time are numbers",
                   "exit 2 naming the file and the attributes (time 1000 was read as 10:00, not 00:10)")
def test_a_nominal_time_stored_as_a_number_is_refused(tmp_path):
    def numbers(f):
        f["what"].attrs["date"], f["what"].attrs["time"] = np.int64(20240501), np.int64(1000)

    _moved(tmp_path / "bad.h5", numbers)
    with pytest.raises(SourceError, match=r"bad\.h5: no valid nominal time .*date and time stored as "
                                          "numbers"):
        RadarSource(str(tmp_path), "odim").items()


def _reprojected(path: Path, projection: str, unit: float = 1.0) -> Path:
    """The default composite with its projection spelt ``projection`` (coordinates in ``unit`` metres)."""
    lon_lat = pyproj.Transformer.from_crs(pyproj.CRS(PROJDEF), "EPSG:4326", always_xy=True)
    lon, lat = lon_lat.transform(X_EDGES[0], Y_EDGES[1])
    crs = pyproj.CRS.from_user_input(projection)
    x, y = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    to_lonlat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    x2, y1 = x + 8000.0 / unit, y - 6000.0 / unit

    def spelt(f):
        where = f["where"].attrs
        where["projdef"] = np.bytes_(projection)
        for name, (cx, cy) in {"LL": (x, y1), "UL": (x, y), "UR": (x2, y), "LR": (x2, y1)}.items():
            where[f"{name}_lon"], where[f"{name}_lat"] = to_lonlat.transform(cx, cy)

    return _moved(path, spelt)


@pytest.mark.fault("ingest", "an ODIM projdef in km (+units=km), as an EPSG code, or in the deprecated "
                   "+init= form",
                   "the grid in metres and the right latitudes and longitudes (km coordinates were "
                   "labelled m, 9 degrees off); an EPSG code read (refused as a corrupt file); +init= read "
                   "without pyproj's FutureWarnings")
@pytest.mark.parametrize(("projection", "unit"), [
    (PROJDEF.replace("+units=m", "+units=km"), 1000.0), ("EPSG:3035", 1.0), ("+init=epsg:3035", 1.0)])
def test_projections_in_km_or_by_code_give_the_grid_in_metres(tmp_path, projection, unit):
    _reprojected(tmp_path / "a.h5", projection, unit)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        source = RadarSource(str(tmp_path), "odim")
        grid = source.read_grid(source.items()[0])
    assert grid.units == "m"
    np.testing.assert_allclose(np.diff(grid.x), 1000.0, rtol=1e-6)
    np.testing.assert_allclose(np.diff(grid.y), -1000.0, rtol=1e-6)
    lat_lon = grid.geographic_coords()
    expected = pyproj.Transformer.from_crs(pyproj.CRS(PROJDEF), "EPSG:4326", always_xy=True).transform(
        X_EDGES[0] + 500.0, Y_EDGES[1] - 500.0)
    np.testing.assert_allclose([lat_lon["longitude"][1][0, 0], lat_lon["latitude"][1][0, 0]], expected,
                               atol=1e-4)


@pytest.mark.fault("ingest", "an ODIM projdef that pyproj cannot read",
                   "exit 2 naming the file's where/projdef and the spellings that work (it was 'the file is "
                   "corrupt, truncated or of another format')")
def test_an_unreadable_projection_is_named(tmp_path):
    _moved(tmp_path / "bad.h5", lambda f: f["where"].attrs.__setitem__("projdef", np.bytes_("+proj=nothing")))
    source = RadarSource(str(tmp_path), "odim")
    item = source.items()[0]
    with pytest.raises(SourceError, match=r"bad\.h5: where/projdef: projection '\+proj=nothing' is not one "
                                          "pyproj can read"):
        source.read_grid(item)


@pytest.mark.fault("ingest", "an ODIM composite on a longitude/latitude grid (+proj=longlat)",
                   "x and y stored in degrees_east and degrees_north (they were labelled m)")
def test_a_longitude_latitude_grid_is_stored_in_degrees(tmp_path):
    from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items
    from nowcast.pipelines.stores.archive import open_archive

    folder = tmp_path / "lonlat"
    folder.mkdir()
    _reprojected(folder / "a.h5", "+proj=longlat +ellps=WGS84 +no_defs", unit=1000.0 / 0.01)
    url, source = str(tmp_path / "a.zarr"), RadarSource(str(folder), "odim")
    ingest_items(IngestSpec(archive=url, source=source, time_step="PT5M", time_chunk=2), source.items(), None)
    ds = open_archive(url)
    assert (ds["x"].attrs["units"], ds["y"].attrs["units"]) == ("degrees_east", "degrees_north")
    np.testing.assert_allclose(ds["longitude"].values[0], ds["x"].values, atol=1e-4)
    assert Grid.from_dataset(ds).units == "degrees"


@pytest.mark.fault("ingest", "frames at irregular spacings (5 and 10 minutes) into a new archive without "
                   "--time-step",
                   "exit 2 saying the frames are not on one step, which step was inferred and the smallest "
                   "spacing to give with --time-step; no archive (it spoke of 'the archive's axis' and said "
                   "to resample the input)")
def test_frames_off_the_inferred_step_name_the_time_step_option(tmp_path):
    from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items
    from nowcast.pipelines.plans.ingest import IngestError

    folder = tmp_path / "frames"
    folder.mkdir()
    for minute in ("00", "05", "10", "20", "30", "40"):
        write_odim(folder / f"frame{minute}.h5", time=f"12{minute}00")
    source = RadarSource(str(folder), "odim")
    url = tmp_path / "archive.zarr"
    with pytest.raises(IngestError, match=r"frame05\.h5: time .* not on one step \(the new archive took "
                                          r"PT10M, their most common spacing\); give the step with "
                                          r"--time-step \(their smallest spacing is PT5M"):
        ingest_items(IngestSpec(archive=str(url), source=source, time_chunk=2), source.items(), None)
    assert not url.exists()
    result = ingest_items(IngestSpec(archive=str(url), source=source, time_chunk=2, time_step="PT5M"),
                          source.items(), None)
    assert result.frames_written == 6


@pytest.mark.fault("command line", "a warning of a command in its default verbosity",
                   "one line, `warning: <message>`, as the command's errors read (it carried the time and "
                   "the module: `2026-12-07 19:37:07,842 WARNING nowcast.flows.train: ...`); -v keeps them")
def test_a_warning_reads_as_the_commands_errors_do(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "frames"
    folder.mkdir()
    for minute in ("00", "10"):  # one spacing: the new archive's step is warned of
        write_odim(folder / f"frame{minute}.h5", time=f"12{minute}00")
    command = [sys.executable, "-m", "nowcast.flows.cli", "ingest", "--input", str(folder), "--archive"]
    plain = subprocess.run([*command, str(tmp_path / "a.zarr")], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr.startswith("warning: the new archive's time step PT10M is the one"), plain.stderr
    verbose = subprocess.run([*command, str(tmp_path / "b.zarr"), "-v"], capture_output=True, text=True,
                             timeout=300)
    assert " WARNING nowcast.pipelines.jobs.ingest: the new archive's time step" in verbose.stderr


@pytest.mark.fault("sources", "an ODIM file whose projdef gives the Earth's axes in km (KNMI's "
                   "+a=6378.137), or names another planet's",
                   "the km projection is read as the same grid in metres; one with no transformation to "
                   "longitude and latitude is refused naming the projection and the fix (both were a pyproj "
                   "traceback in ingest and watch)")
def test_a_projection_in_km_is_rescaled_and_another_planet_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "km").mkdir()
    in_metres = write_odim(tmp_path / "m" / "a.h5")
    shutil.copy(in_metres, tmp_path / "km" / "a.h5")
    with h5py.File(tmp_path / "km" / "a.h5", "a") as f:  # WGS84's axes in km, the false origin too
        f["where"].attrs["projdef"] = np.bytes_("+proj=laea +lat_0=55.0 +lon_0=10.0 +x_0=1950.0 +y_0=-2100.0 "
                                                "+a=6378.137 +rf=298.257223563")
    grids = {}
    for name in ("m", "km"):
        source = RadarSource(str(tmp_path / name), "odim")
        (item,) = source.items()
        grids[name] = source.read_grid(item)
    assert grids["km"].units == "m"
    np.testing.assert_allclose(grids["km"].x, grids["m"].x, atol=1e-3)
    np.testing.assert_allclose(grids["km"].y, grids["m"].y, atol=1e-3)
    for key in ("latitude", "longitude"):
        np.testing.assert_allclose(grids["km"].geographic_coords()[key][1],
                                   grids["m"].geographic_coords()[key][1], atol=1e-6)
    with h5py.File(tmp_path / "km" / "a.h5", "a") as f:
        f["where"].attrs["projdef"] = np.bytes_("+proj=laea +lat_0=55.0 +lon_0=10.0 +R=1737400")  # the Moon
    source = RadarSource(str(tmp_path / "km"), "odim")
    (item,) = source.items()
    with pytest.raises(SourceError, match=r"a\.h5: projection '\+proj=laea .*\+R=1737400' has no "
                                          r"transformation to longitude and latitude on the Earth"):
        source.read_grid(item)


@pytest.mark.fault("sources", "an ODIM data group whose gain or offset is NaN",
                   "refused naming the file and its coding (it was stored as a valid frame of NaN and 0)")
def test_a_coding_that_is_not_a_number_is_refused(tmp_path):
    path = write_odim(tmp_path / "nan.h5")
    with h5py.File(path, "a") as f:
        f["dataset1/data1/what"].attrs["gain"] = np.nan
    source = RadarSource(str(tmp_path), "odim")
    (item,) = source.items()
    with pytest.raises(SourceError, match=r"nan\.h5: the DBZH data group's coding is gain nan, offset "):
        source.read(item)
