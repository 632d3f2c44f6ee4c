"""Radar sources against pysteps' own importers on the real composites in ../shared/data/radar."""

from __future__ import annotations

import os
import pickle
import re
import shutil
from datetime import datetime
from pathlib import Path

import netCDF4
import numpy as np
import pyproj
import pytest

from nowcast.pipelines.sources import RadarSource, Source, SourceError, detect_radar_format, get_source
from nowcast.pipelines.sources.importers import import_radar
from nowcast.pipelines.sources.radar import FORMATS
from nowcast.pipelines.stores.grid import Grid

pytestmark = [
    pytest.mark.shared_data,
    # pyproj, when the archive's CF grid mapping is written (nowcast.pipelines.sources.base silences
    # these outside pytest, which resets warning filters per test).
    pytest.mark.filterwarnings("ignore:angle from rectified:UserWarning"),
    pytest.mark.filterwarnings("ignore:You will likely lose important projection:UserWarning"),
]

# (format, event folder relative to the radar data root)
EVENTS = [
    ("knmi", "knmi/20100826"),
    ("bom", "bom/prcp-c10/66/20201031"),
    ("fmi", "fmi/pgm/20160928"),
    ("mch", "mch/20150515"),
    ("mch", "mch/20160711"),
    ("odim", "rmi/radqpe/20210704"),
]
FORMAT_DIRS = {"knmi": "knmi", "bom": "bom", "fmi": "fmi", "mch": "mch", "odim": "rmi"}
# Formats timed by their file names (ODIM's times are in the files: see test_odim.py).
NAMED = sorted(fmt for fmt in FORMAT_DIRS if not FORMATS[fmt].time_in_file)
# Where each composite lies (lat, lon of the grid centre, within a few degrees): checks the CRS.
CENTRES = {"knmi": (52.0, 5.0), "bom": (-27.7, 153.2), "fmi": (64.5, 26.0), "mch": (46.5, 8.0),
           "odim": (50.7, 4.4)}


def direct_read(fmt: str, path: str) -> tuple[np.ndarray, dict]:
    """What a user would do by hand: the pysteps importer, then to_rainrate, as float32."""
    from pysteps.io import importers
    from pysteps.utils import to_rainrate

    calls = {
        "knmi": lambda: importers.import_knmi_hdf5(path),
        "bom": lambda: importers.import_bom_rf3(path),
        "fmi": lambda: importers.import_fmi_pgm(path, gzipped=True),
        "mch": lambda: importers.import_mch_gif(path, product="AQC", unit="mm", accutime=5.0),
        "odim": lambda: importers.import_odim_hdf5(path),  # RMI: quantity RATE, mm/h
    }
    field, _, metadata = calls[fmt]()
    field = np.ma.filled(np.ma.asarray(field, dtype="float64"), np.nan)
    rate, _ = to_rainrate(field, metadata)
    rate = rate.astype("float32")
    rate[rate < 0] = np.nan  # the source's one documented rule: negative rates are flags
    return rate, metadata


def event_files(radar_dir: Path, event: str, fmt: str) -> list[str]:
    return sorted(str(p) for p in (radar_dir / event).rglob("*")
                  if p.is_file() and p.name.endswith(FORMATS[fmt].suffixes))


@pytest.mark.parametrize(("fmt", "event"), EVENTS)
def test_items_follow_the_file_names_at_the_native_step(radar_dir, fmt, event):
    source = RadarSource(str(radar_dir / event), fmt)
    items = source.items()
    files = event_files(radar_dir, event, fmt)
    assert sorted(item.path for item in items) == files
    times = np.array([item.time for item in items])
    assert times.dtype == np.dtype("datetime64[s]")
    # Each event here is complete: consecutive files are one native step apart.
    assert np.all(np.diff(times) == source.time_step())


@pytest.mark.parametrize(("fmt", "name", "expected"), [
    ("knmi", "RAD_NL25_RAP_5min_201008260000.h5", "2010-08-26T00:00"),
    ("bom", "66_20201031_235000.prcp-c10.nc", "2020-10-31T23:50"),
    ("fmi", "201609281445_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "2016-09-28T14:45"),
    ("mch", "AQC151351545F_00005.801.gif", "2015-05-15T15:45"),  # day 135 of 2015
    ("mch", "AQC161932045V_00005.801.gif", "2016-07-11T20:45"),  # day 193 of leap year 2016
    ("bom", "2_20180616_100600.prcp-cscn.nc", "2018-06-16T10:06"),  # any Rainfields3 product
])
def test_times_are_parsed_from_names(fmt, name, expected):
    assert FORMATS[fmt].parse_time(name) == np.datetime64(expected, "s")
    assert FORMATS[fmt].parse_time("x" + name) is None


def test_odim_times_are_not_taken_from_names():
    # ODIM names differ by service; the time is the file's what/date + what/time (test_odim.py).
    assert FORMATS["odim"].parse_time("20210704155000.rad.best.comp.rate.qpe.hdf") is None


def test_bom_name_time_is_the_file_valid_time(radar_dir):
    source = RadarSource(str(radar_dir / "bom"), "bom")
    for item in source.items()[::47]:
        with netCDF4.Dataset(item.path) as ds:
            valid = np.datetime64(int(ds["valid_time"][...]), "s")
        assert item.time == valid


def test_bom_negative_flags_read_as_unobserved(radar_dir):
    source = RadarSource(str(radar_dir / "bom"), "bom")
    (item,) = [i for i in source.items() if i.path.endswith("66_20201031_174000.prcp-c10.nc")]
    with netCDF4.Dataset(item.path) as ds:
        ds["precipitation"].set_auto_maskandscale(False)
        raw = ds["precipitation"][:]
    frame = source.read(item)["precip"]
    assert (raw == -2).sum() == 7  # a flag beside the -1 fill value; pysteps reads it as -0.6 mm/h
    assert np.isnan(frame[raw < 0]).all()
    assert np.isnan(frame).sum() == (raw < 0).sum()
    assert (frame[raw >= 0] >= 0).all()


def test_all_formats_are_listed_in_time_order(radar_dir):
    counts = {}
    for fmt, folder in FORMAT_DIRS.items():
        items = RadarSource(str(radar_dir / folder), fmt).items()
        assert items == sorted(items)
        counts[fmt] = len(items)
    expected = {fmt: len(event_files(radar_dir, folder, fmt))
                for fmt, folder in FORMAT_DIRS.items()}
    assert counts == expected


def _subset(items):
    return [items[0], items[len(items) // 2], items[-1]]


@pytest.mark.parametrize(("fmt", "event"), EVENTS)
def test_frames_equal_a_direct_pysteps_read(radar_dir, fmt, event):
    source = RadarSource(str(radar_dir / event), fmt)
    for item in _subset(source.items()):
        frames = source.read(item)
        assert list(frames) == ["precip"]
        frame = frames["precip"]
        expected, _ = direct_read(fmt, item.path)
        assert frame.dtype == np.float32
        assert frame.shape == expected.shape
        np.testing.assert_array_equal(frame, expected)  # NaN == NaN here
        assert np.nanmin(frame) >= 0


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(FORMAT_DIRS))
def test_every_file_equals_a_direct_pysteps_read(radar_dir, fmt):
    source = RadarSource(str(radar_dir / FORMAT_DIRS[fmt]), fmt)
    items = source.items()
    # pysteps' own BoM importer takes ~0.5-1 s a file: compare every 24th BoM file with it
    # (the rest are read and checked for shape and range only) to keep the suite short.
    compare_every = 24 if fmt == "bom" else 1
    for number, item in enumerate(items):
        frame = source.read(item)["precip"]
        assert frame.dtype == np.float32, item.path
        assert frame.ndim == 2, item.path
        assert not np.nanmin(frame) < 0, item.path
        if number % compare_every == 0 or item is items[-1]:
            expected, _ = direct_read(fmt, item.path)
            np.testing.assert_array_equal(frame, expected, err_msg=item.path)


@pytest.mark.parametrize(("fmt", "event"), EVENTS)
def test_grid_matches_the_pysteps_metadata(radar_dir, fmt, event):
    source = RadarSource(str(radar_dir / event), fmt)
    item = source.items()[0]
    grid = source.read_grid(item)
    field, metadata = direct_read(fmt, item.path)
    assert grid.shape == field.shape
    assert grid.units == "m"
    scale = 1000.0 if metadata["cartesian_unit"] == "km" else 1.0  # KNMI: km in pysteps
    dx, dy = float(metadata["xpixelsize"]), float(metadata["ypixelsize"])
    # pysteps gives the outermost pixel centres for BoM and the grid edges for the others.
    inset = 0.0 if fmt == "bom" else 0.5
    ny, nx = field.shape
    x = float(metadata["x1"]) + (np.arange(nx) + inset) * dx
    y = (float(metadata["y1"]) + (np.arange(ny) + inset) * dy)[::-1]  # yorigin upper: north first
    np.testing.assert_allclose(grid.x, x * scale, rtol=0, atol=1e-3 * dx * scale)
    np.testing.assert_allclose(grid.y, y * scale, rtol=0, atol=1e-3 * dy * scale)
    # Same places on Earth: inverse-project corner pixels with both definitions.
    corners = (np.array([0, -1, 0, -1]), np.array([0, 0, -1, -1]))
    lon, lat = pyproj.Proj(grid.crs)(grid.x[corners[0]], grid.y[corners[1]], inverse=True)
    lon_ps, lat_ps = pyproj.Proj(metadata["projection"])(x[corners[0]], y[corners[1]], inverse=True)
    tolerance = 2e-3 if fmt == "bom" else 1e-6  # pysteps rounds BoM's projection to 3 decimals
    np.testing.assert_allclose(lon, lon_ps, atol=tolerance)
    np.testing.assert_allclose(lat, lat_ps, atol=tolerance)
    to_lonlat = pyproj.Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    lon_c, lat_c = to_lonlat.transform(grid.x.mean(), grid.y.mean())
    assert (lat_c, lon_c) == pytest.approx(CENTRES[fmt], abs=3.0)
    # The CF grid mapping the archive stores describes the same grid.
    stored = Grid(y=grid.y, x=grid.x, crs_attrs=dict(grid.crs_attrs), units=grid.units)
    assert stored.mismatch(grid) is None


@pytest.mark.parametrize("fmt", ["fmi", "mch", "bom", "odim"])
def test_header_grid_equals_the_grid_of_a_full_read(radar_dir, fmt):
    source = RadarSource(str(radar_dir / FORMAT_DIRS[fmt]), fmt)
    items = source.items()
    for item in (items[0], items[-1]):
        field, metadata = import_radar(fmt, item.path)
        header = source.read_grid(item)
        assert header.shape == field.shape
        if fmt != "bom":
            assert header.mismatch(Grid.from_pysteps_metadata(metadata, field.shape)) is None


@pytest.mark.parametrize("fmt", NAMED)  # ODIM: refused when listed, see test_odim.py
@pytest.mark.fault("sources", "a truncated or empty radar file",
                   "a source error naming the file")
def test_truncated_or_empty_file_is_a_source_error_naming_it(radar_dir, tmp_path, fmt):
    good = RadarSource(str(radar_dir / FORMAT_DIRS[fmt]), fmt).items()[0].path
    folder = tmp_path / fmt
    folder.mkdir()
    truncated = folder / os.path.basename(good)
    data = Path(good).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    source = RadarSource(str(folder), fmt)
    (item,) = source.items()
    with pytest.raises(SourceError, match=os.path.basename(good)) as error:
        source.read(item)
    assert "corrupt" in str(error.value)
    truncated.write_bytes(b"")
    with pytest.raises(SourceError, match=os.path.basename(good)):
        source.read(item)


@pytest.mark.fault("sources", "a radar file whose name carries no time",
                   "a source error naming the file")
def test_unparsable_name_is_a_source_error(radar_dir, tmp_path):
    good = RadarSource(str(radar_dir / "knmi"), "knmi").items()[0].path
    shutil.copy(good, tmp_path / os.path.basename(good))
    shutil.copy(good, tmp_path / "RAD_NL25_RAP_5min_latest.h5")
    (tmp_path / "README.txt").write_text("other files are ignored")
    with pytest.raises(SourceError, match=r"RAD_NL25_RAP_5min_latest\.h5.*rename"):
        RadarSource(str(tmp_path), "knmi").items()


@pytest.mark.fault("sources", "two radar files for one time",
                   "a source error naming both")
def test_same_time_twice_is_a_source_error(radar_dir, tmp_path):
    good = RadarSource(str(radar_dir / "mch"), "mch").items()[0].path
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(good, tmp_path / sub / os.path.basename(good))
    with pytest.raises(SourceError, match="appears twice"):
        RadarSource(str(tmp_path), "mch").items()


@pytest.mark.fault("sources", "an empty or missing input folder",
                   "a source error naming the folder")
def test_empty_or_missing_folder_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="no knmi files"):
        RadarSource(str(tmp_path), "knmi").items()
    with pytest.raises(SourceError, match="does not exist"):
        RadarSource(str(tmp_path / "nowhere"), "knmi").items()


def test_format_detection(radar_dir, tmp_path):
    for fmt, folder in FORMAT_DIRS.items():
        assert detect_radar_format(str(radar_dir / folder)) == fmt
    with pytest.raises(SourceError, match="mixes radar formats"):
        detect_radar_format(str(radar_dir))
    (tmp_path / "notes.h5").write_text("not a radar file")
    with pytest.raises(SourceError) as error:
        detect_radar_format(str(tmp_path))
    for fmt in FORMATS:
        assert fmt in str(error.value)


def test_unknown_format_and_kind_are_source_errors(radar_dir):
    with pytest.raises(SourceError, match="knmi"):
        RadarSource(str(radar_dir / "knmi"), "nexrad")
    with pytest.raises(SourceError, match="synthetic"):
        get_source("nexrad")
    with pytest.raises(SourceError, match="directory"):
        get_source("knmi", folder=str(radar_dir))


def test_registry_builds_picklable_radar_sources(radar_dir):
    detected = get_source("radar", directory=str(radar_dir / "fmi"))
    named = get_source("fmi", directory=str(radar_dir / "fmi"))
    assert detected == named == RadarSource(str(radar_dir / "fmi"), "fmi")
    assert isinstance(detected, Source)
    assert detected.name == "fmi"
    assert detected.time_step() == np.timedelta64(300, "s")
    clone = pickle.loads(pickle.dumps(detected))
    item = detected.items()[5]
    np.testing.assert_array_equal(clone.read(item)["precip"], detected.read(item)["precip"])


def test_items_from_a_relative_folder_stay_readable_elsewhere(radar_dir, tmp_path, monkeypatch):
    good = RadarSource(str(radar_dir / "mch"), "mch").items()[0].path
    (tmp_path / "sub").mkdir()
    shutil.copy(good, tmp_path / "sub" / os.path.basename(good))
    monkeypatch.chdir(tmp_path)
    (item,) = RadarSource("sub", "mch").items()
    assert os.path.isabs(item.path)
    monkeypatch.chdir(radar_dir)  # a worker started in another folder
    np.testing.assert_array_equal(RadarSource("sub", "mch").read(item)["precip"], direct_read("mch", good)[0])


@pytest.mark.parametrize(("fmt", "event"), EVENTS[:4] + EVENTS[5:], ids=lambda v: v.replace("/", "-"))
def test_files_under_an_object_store_prefix_read_as_the_local_ones(fmt, event, radar_dir, s3_bucket):
    """Files arriving on S3 (moto's real S3 API): found recursively, hidden ones skipped, each frame and
    grid equal to the local file's, for every format (detection included)."""
    import fsspec

    fs = fsspec.filesystem("s3")
    local = sorted(p for p in (radar_dir / event).rglob("*")
                   if p.is_file() and not p.name.startswith("."))[:2]
    prefix = f"{s3_bucket}/incoming"
    for path in local:
        fs.put_file(str(path), f"{prefix}/{event}/{path.name}")
    fs.pipe_file(f"{prefix}/{event}/.partial-upload", b"not yet")
    assert detect_radar_format(prefix) == fmt
    remote_source = get_source(fmt, directory=prefix)
    local_source = get_source(fmt, directory=str(local[0].parent))
    remote_items, local_items = remote_source.items(), local_source.items()[:2]
    assert [item.path for item in remote_items] == [f"{prefix}/{event}/{p.name}" for p in local]
    assert [item.time for item in remote_items] == [item.time for item in local_items]
    assert remote_source.read_grid(remote_items[0]).mismatch(local_source.read_grid(local_items[0])) is None
    np.testing.assert_array_equal(remote_source.read(remote_items[1])["precip"],
                                  local_source.read(local_items[1])["precip"])


@pytest.mark.fault("sources", "an empty S3 prefix; an object given as a folder",
                   "a source error naming the URL")
def test_an_empty_object_store_prefix_has_no_files_and_a_file_is_not_a_folder(s3_bucket):
    import fsspec

    from nowcast.pipelines.sources.base import list_files

    assert list_files(f"{s3_bucket}/incoming", ("",)) == []  # nothing has arrived yet
    fsspec.filesystem("s3").pipe_file(f"{s3_bucket}/a-file", b"x")
    with pytest.raises(SourceError, match="is a file"):
        list_files(f"{s3_bucket}/a-file", ("",))


def copied_into(folder: Path, paths) -> Path:
    """``folder``, created, with a copy of each of ``paths`` under its own name."""
    folder.mkdir()
    for path in paths:
        shutil.copy(path, folder / path.name)
    return folder


# per format: a file's name and the same file's name at another time
RENAMED = {"bom": ("bom", "_001000.", "_005000."), "knmi": ("knmi", "201008260010", "201008260050"),
           "fmi": ("fmi", "201609281500", "201609281540")}


@pytest.mark.fault("ingest", "a BoM, KNMI or FMI file renamed or copied under another time",
                   "refused naming the file, the time in its name and the time it states inside (it was "
                   "stored at the name's time, exit 0)")
@pytest.mark.parametrize("fmt", sorted(RENAMED))
def test_a_file_named_at_another_time_than_its_own_is_refused(fmt, radar_dir, tmp_path):
    folder_name, stamp, other = RENAMED[fmt]
    (original,) = [p for p in (radar_dir / folder_name).rglob("*") if stamp in p.name]
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(original, folder / original.name)
    shutil.copy(original, folder / original.name.replace(stamp, other))
    source = get_source(fmt, directory=str(folder))
    right, renamed = source.items()
    assert np.isfinite(source.read(right)["precip"]).any()
    with pytest.raises(SourceError, match=rf"{re.escape(str(renamed.path))}: its name says .*:[45]0:00, the "
                                          r"file itself .*:[01]0:00 \(a file renamed"):
        source.read(renamed)


@pytest.mark.fault("ingest", "a KNMI file whose name states another accumulation period than the file "
                   "(a 5-minute file named `_60min_`, or an hour's accumulation named `_5min_`)",
                   "refused naming both periods (its amounts were converted to mm/h with the name's period: "
                   "12 times too low or too high, exit 0)")
def test_a_knmi_file_named_with_another_period_than_its_own_is_refused(radar_dir, tmp_path):
    import h5py

    (original,) = [p for p in (radar_dir / "knmi").rglob("*") if "201008260010" in p.name]
    folder = tmp_path / "in"
    folder.mkdir()
    hourly = folder / original.name.replace("_5min_", "_60min_")
    shutil.copy(original, hourly)
    source = get_source("knmi", directory=str(folder))
    with pytest.raises(SourceError, match=rf"{re.escape(str(hourly))}: its name says an accumulation of 60 "
                                          r"min, the file itself 5 min"):
        source.read(source.items()[0])
    hourly.unlink()
    renamed = folder / original.name  # `_5min_`, but the file now says an hour
    shutil.copy(original, renamed)
    with h5py.File(renamed, "r+") as f:
        f["overview"].attrs["product_datetime_start"] = np.array([b"25-AUG-2010;23:10:00.000"])
    source = get_source("knmi", directory=str(folder))
    with pytest.raises(SourceError, match="its name says an accumulation of 5 min, the file itself 60 min"):
        source.read(source.items()[0])


@pytest.mark.fault("ingest", "a folder mixing KNMI products or composites (RAP with RAC, NL25 with NL21) "
                   "or BoM radars, or such a batch into an archive of another", "refused naming the series "
                   "found (ingested as one series, exit 0); the archive records its series")
def test_files_of_several_radars_or_products_are_not_one_series(radar_dir, tmp_path):
    from nowcast.pipelines.jobs.ingest import IngestError, IngestSpec, ingest_items

    knmi = sorted((radar_dir / "knmi").rglob("*.h5"))[:3]
    folder, later = tmp_path / "knmi", tmp_path / "later"
    for target in (folder, later):
        target.mkdir()
    shutil.copy(knmi[0], folder / knmi[0].name)
    shutil.copy(knmi[1], folder / knmi[1].name.replace("_RAP_", "_RAC_"))
    with pytest.raises(SourceError, match=r"mixes knmi radars or products \(1 RAD_NL25_RAC, 1 RAD_NL25_RAP"):
        get_source("knmi", directory=str(folder)).items()
    (folder / knmi[1].name.replace("_RAP_", "_RAC_")).unlink()
    brackets = copied_into(tmp_path / "knmi[a]", knmi[:2])  # a folder, though its name reads as a pattern
    assert len(get_source("knmi", directory=str(brackets)).items()) == 2
    source = get_source("knmi", directory=str(folder))
    archive = str(tmp_path / "a.zarr")
    ingest_items(IngestSpec(archive=archive, source=source), source.items(), None)
    shutil.copy(knmi[2], later / knmi[2].name.replace("_NL25_", "_NL21_"))
    other = get_source("knmi", directory=str(later))
    with pytest.raises(IngestError, match=r"is RAD_NL21_RAP, the archive holds RAD_NL25_RAP .*: ingest it "
                                          r"into an archive of its own; nothing was written$"):
        ingest_items(IngestSpec(archive=archive, source=other), other.items(), None)
    bom = sorted((radar_dir / "bom").rglob("*prcp-c10.nc"))[:2]
    stations = tmp_path / "bom"
    stations.mkdir()
    shutil.copy(bom[0], stations / bom[0].name)
    shutil.copy(bom[1], stations / ("71" + bom[1].name[2:]))
    with pytest.raises(SourceError, match=r"mixes bom radars or products \(1 66 prcp-c10, 1 71 prcp-c10"):
        get_source("bom", directory=str(stations)).items()


@pytest.mark.fault("ingest", "a pipe (FIFO), or a link to one, named like a radar file in the input folder",
                   "passed over with a warning naming it; the files beside it are ingested (ingest and watch "
                   "hung for ever on it, deaf to SIGTERM and SIGINT, watch past its --duration)")
def test_a_pipe_named_like_a_radar_file_is_passed_over(radar_dir, tmp_path, caplog):
    from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items
    from nowcast.pipelines.stores.archive import read_info

    folder = copied_into(tmp_path / "in", sorted((radar_dir / "bom").rglob("*prcp-c10.nc"))[:2])
    first = sorted(folder.iterdir())[0].name
    pipe = folder / first.replace("0000.prcp", "0020.prcp").replace("_000000.", "_002000.")
    os.mkfifo(pipe)
    os.symlink(pipe, folder / first.replace("_000000.", "_003000."))
    source = get_source("bom", directory=str(folder))
    assert [os.path.basename(item.path) for item in source.items()] == sorted(
        p.name for p in folder.iterdir() if p.is_file())
    assert sum("is not a file (a pipe, socket or device)" in r.message for r in caplog.records) == 2
    source.items()  # listed again: said once a process, not at each listing (6 times in one ingest)
    assert sum("is not a file (a pipe, socket or device)" in r.message for r in caplog.records) == 2
    result = ingest_items(IngestSpec(archive=str(tmp_path / "a.zarr"), source=source), source.items(), None)
    assert result.frames_written == 2
    assert read_info(str(tmp_path / "a.zarr")).length >= 2


@pytest.mark.fault("ingest", "an input folder holding a linked folder (a day's files linked in), a link "
                   "to a folder above it, a link to itself named like a radar file, a file whose name is "
                   "not UTF-8, or a zarr store",
                   "the linked folder's files are ingested, each real folder walked once, the self-link "
                   "refused naming it (exit 2) and the odd name ingested (the linked folder was passed over "
                   "without a word; the self-link was an OSError traceback that ended a watch; the name a "
                   "UnicodeEncodeError traceback)")
def test_linked_folders_link_loops_and_odd_names(radar_dir, tmp_path):
    from nowcast.pipelines.jobs.ingest import IngestSpec, ingest_items

    knmi = sorted((radar_dir / "knmi").rglob("*.h5"))
    folder = copied_into(tmp_path / "in", knmi[:2])
    day = copied_into(tmp_path / "day", knmi[2:4])
    (folder / "day").symlink_to(day)
    (day / "up").symlink_to(folder)  # a loop through the linked folder
    (folder / "parent").symlink_to(tmp_path)  # up to the folders above the input: never walked
    copied_into(tmp_path / "beside", knmi[5:6])
    source = get_source("knmi", directory=str(folder))
    assert [os.path.basename(item.path) for item in source.items()] == [path.name for path in knmi[:4]]
    loop = folder / knmi[4].name
    loop.symlink_to(loop.name)
    source = get_source("knmi", directory=str(folder))
    assert len(source.items()) == 5  # listed: the read names it
    with pytest.raises(SourceError, match=rf"{re.escape(str(loop))}: cannot read it"):
        source.read(source.items()[-1])
    loop.unlink()
    (folder / "fc.zarr" / "precip").mkdir(parents=True)  # a store written into the input folder
    (folder / "fc.zarr" / "zarr.json").write_text("{}")
    (folder / "fc.zarr" / "precip" / "RAD_NL25_RAP_5min_201008260100.h5").write_text("a chunk, by its name")
    assert len(get_source("knmi", directory=str(folder)).items()) == 4  # a store holds no input

    odd = tmp_path / "odd"
    odd.mkdir()
    rmi = sorted((radar_dir / "rmi").rglob("*.hdf"))[:2]
    shutil.copy(rmi[0], odd / rmi[0].name)
    shutil.copy(rmi[1], os.path.join(os.fsencode(odd), b"radar_\xff\xfe_" + os.fsencode(rmi[1].name)))
    source = get_source("odim", directory=str(odd))
    result = ingest_items(IngestSpec(archive=str(tmp_path / "a.zarr"), source=source), source.items(), None)
    assert result.frames_written == 2


@pytest.mark.fault("ingest", "a folder ingested with a named --format that also holds another format's files",
                   "a warning counts and names them (they were left out without a word); sidecar files "
                   "(README, checksums) are not counted")
def test_another_formats_files_in_the_folder_are_named(radar_dir, tmp_path, caplog):
    from nowcast.flows import cli
    from nowcast.pipelines.sources import other_inputs

    knmi = sorted((radar_dir / "knmi").rglob("*.h5"))[:2]
    gifs = sorted((radar_dir / "mch").rglob("*.gif"))[:2]
    folder = copied_into(tmp_path / "mixed", [*knmi, *gifs])
    (folder / "README.txt").write_text("from the radar's FTP")
    source = get_source("knmi", directory=str(folder))
    assert other_inputs(source, str(folder)) == [str(folder / path.name) for path in gifs]
    assert other_inputs(get_source("mch", directory=str(folder)), str(folder)) == [
        str(folder / path.name) for path in knmi]
    with caplog.at_level("WARNING", logger="nowcast.flows.ingest"):
        assert cli.main(["ingest", "--input", str(folder), "--format", "knmi", "--archive",
                         str(tmp_path / "archive.zarr")]) == 0
    assert f"2 files under {folder} are not knmi files and are not ingested" in caplog.text
    assert gifs[0].name in caplog.text


@pytest.mark.parametrize(("fmt", "five_minutes", "an_hour"), [("mch", "_00005.", "_00060."),
                                                               ("knmi", "_5min_", "_60min_")])
@pytest.mark.fault("sources", "MeteoSwiss AQC or KNMI RAD_NL25 files of another accumulation period than 5 "
                   "minutes (_00060, _60min_: an hour's amount), or of several periods in one folder",
                   "the period in the name converts the amount to mm/h and is the archive's step (an hour's "
                   "amount was read as 5 minutes', 12 times the rate); several periods refused naming them")
def test_the_accumulation_period_comes_from_the_name(radar_dir, tmp_path, fmt, five_minutes, an_hour):
    five = RadarSource(str(radar_dir / fmt), fmt).items()[0].path
    hourly = tmp_path / "hourly"
    hourly.mkdir()
    renamed = hourly / os.path.basename(five).replace(five_minutes, an_hour)
    shutil.copy(five, renamed)
    if fmt == "knmi":  # the file states its period too: an hour's, as its name
        import h5py

        with h5py.File(renamed, "r+") as f:
            end = np.datetime64(datetime.strptime(f["overview"].attrs["product_datetime_end"][0].decode(),
                                                  "%d-%b-%Y;%H:%M:%S.%f"))
            start = (end - np.timedelta64(1, "h")).astype(datetime).strftime("%d-%b-%Y;%H:%M:%S.000").upper()
            f["overview"].attrs["product_datetime_start"] = np.array([start.encode()])
    as_hourly = RadarSource(str(hourly), fmt)
    assert as_hourly.time_step() == np.timedelta64(3600, "s")
    as_five = RadarSource(str(radar_dir / fmt), fmt)
    np.testing.assert_allclose(as_hourly.read(as_hourly.items()[0])["precip"] * 12,
                               as_five.read(as_five.items()[0])["precip"], rtol=1e-6, equal_nan=True)
    shutil.copy(five, hourly)
    with pytest.raises(SourceError, match=rf"{fmt} accumulations of other periods than one \(the period in "
                                          r"the names: 1 of 5 min, 1 of 60 min\)"):
        RadarSource(str(hourly), fmt).items()


@pytest.mark.fault("sources", "CF NetCDF files whose names look like BoM Rainfields3 names",
                   "the read error says the format came from the names and to name it with --format "
                   "(netcdf); "
                   "it only said to download or delete the files")
def test_files_named_like_another_format_point_at_the_format_option(tmp_path):
    import xarray as xr

    ds = xr.Dataset({"rain": (("time", "y", "x"), np.ones((1, 4, 5), "float32"), {"units": "mm h-1"})},
                    coords={"time": [np.datetime64("2020-10-31T00:00")], "y": np.arange(4.0),
                            "x": np.arange(5.0)})
    ds.to_netcdf(tmp_path / "12_20201031_000000.obs.nc")
    source = RadarSource(str(tmp_path), detect_radar_format(str(tmp_path)))
    assert source.fmt == "bom"
    with pytest.raises(SourceError, match=r"if the folder holds another format \(its names look like "
                                          r"bom's\), "
                                          r"name it with --format \(netcdf for CF NetCDF files\)"):
        source.read(source.items()[0])


def _rewritten_fmi(original: Path, target: Path, obstime: bytes | None = None, hail: bool = False) -> Path:
    """A copy of an FMI composite with its ``obstime`` line spelt ``obstime``, or with one covered pixel at
    raw 208 (72 dBZ: hail)."""
    import gzip

    with gzip.open(original) as handle:
        data = handle.read()
    if obstime is not None:
        data = re.sub(rb"# obstime \S+", b"# obstime " + obstime, data, count=1)
    if hail:
        header = [line for line in data.split(b"\n") if not line.startswith(b"#")]
        width, height = map(int, header[1].split()[:2])  # P5, then "width height", then the maximum
        start = len(data) - width * height
        pixels = np.frombuffer(data[start:], dtype=np.uint8).reshape(height, width).copy()
        pixels[tuple(np.argwhere((pixels > 70) & (pixels < 255))[0])] = 208
        data = data[:start] + pixels.tobytes()
    with gzip.open(target, "wb") as handle:
        handle.write(data)
    return target


@pytest.mark.fault("sources", "times a file states in other spellings (KNMI without fractional seconds, "
                   "FMI's obstime in ISO 8601, or one not foreseen); a reflectivity composite with a hail "
                   "pixel above 1000 mm/h",
                   "the times read (they were refused as corrupt files) or, unforeseen, the check skipped; "
                   "the hail pixel capped at 1000 mm/h with a warning (it refused the batch)")
def test_stated_times_in_other_spellings_and_hail_are_read(radar_dir, tmp_path, caplog):
    (original,) = (radar_dir / "fmi").rglob("201609281500_*")
    folder = tmp_path / "fmi"
    folder.mkdir()
    _rewritten_fmi(original, folder / original.name, obstime=b"2016-09-28T15:00Z")
    _rewritten_fmi(original, folder / original.name.replace("1500_", "1505_"), obstime=b"tomorrow")
    _rewritten_fmi(original, folder / original.name.replace("1500_", "1510_"), obstime=b"2016-09-28T15:00Z")
    hail = _rewritten_fmi(original, folder / original.name.replace("1500_", "1515_"), b"201609281515", True)
    source = get_source("fmi", directory=str(folder))
    iso, unforeseen, moved, hailed = source.items()
    expected = source.read(iso)["precip"]
    np.testing.assert_array_equal(expected, direct_read("fmi", str(original))[0])
    np.testing.assert_array_equal(source.read(unforeseen)["precip"], expected)
    with pytest.raises(SourceError, match=r"its name says 2016-09-28T15:10:00, the file itself "
                                          r"2016-09-28T15:00:00"):
        source.read(moved)
    with caplog.at_level("WARNING"):
        capped = source.read(hailed)["precip"]
    assert np.nanmax(capped) == 1000.0
    assert f"{hail}: 1 pixels above 1000 mm/h (hail or clutter) capped at it" in caplog.text
    assert np.array_equal(capped[capped < 1000], expected[capped < 1000])
    (knmi,) = (radar_dir / "knmi").rglob("*201008260010*")
    copied = shutil.copy(knmi, tmp_path / knmi.name)
    import h5py

    with h5py.File(copied, "a") as f:  # KNMI's own spelling has .000 after the seconds
        for edge in ("start", "end"):
            stamp = f["overview"].attrs[f"product_datetime_{edge}"][0].decode().split(".")[0]
            f["overview"].attrs[f"product_datetime_{edge}"] = np.array([stamp.encode()])
    source = get_source("knmi", directory=str(tmp_path))
    (item,) = [item for item in source.items() if item.path.endswith(knmi.name)]
    np.testing.assert_array_equal(source.read(item)["precip"], direct_read("knmi", str(knmi))[0])
