"""Every real radar event of ../shared/data/radar (24 frames each), ingested and checked against pysteps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyproj
import pytest
from pysteps.io import importers
from pysteps.utils import to_rainrate

from nowcast.pipelines.jobs.ingest import IngestSpec, run
from nowcast.pipelines.jobs.runners import RunnerOptions
from nowcast.pipelines.plans.ingest import IngestError
from nowcast.pipelines.sources import get_source
from nowcast.pipelines.stores.archive import open_archive, read_info

EVENTS = {  # event folder -> (format, direct pysteps importer call)
    "knmi/20100826": ("knmi", lambda p: importers.import_knmi_hdf5(p)),
    "bom/prcp-c10/66/20201031": ("bom", lambda p: importers.import_bom_rf3(p)),
    "fmi/pgm/20160928": ("fmi", lambda p: importers.import_fmi_pgm(p, gzipped=True)),
    "mch/20150515": ("mch", lambda p: importers.import_mch_gif(p, "AQC", "mm", 5.0)),
    "mch/20160711": ("mch", lambda p: importers.import_mch_gif(p, "AQC", "mm", 5.0)),
}
SLICE = 24  # consecutive files of each event: two archive chunks of 12


def event_slice(event: Path, folder: Path) -> Path:
    """A folder of links to ``SLICE`` consecutive files from the middle of an event (its rain): the whole
    events cost 250 s of CI on 2 cores, and every frame goes through the same reader and pipeline; the
    whole events are ingested by bench.skill and its CI smoke run reads from each of them."""
    files = sorted(p for p in event.iterdir() if p.is_file())
    middle = max(0, len(files) // 2 - SLICE // 2)
    folder.mkdir()
    for path in files[middle:middle + SLICE]:
        (folder / path.name).symlink_to(path)
    return folder


def pysteps_rain_rate(importer, path: str) -> tuple[np.ndarray, dict]:
    data, _, metadata = importer(path)
    data = np.ma.filled(data.astype("float64"), np.nan) if np.ma.isMaskedArray(data) else data
    rate, metadata = to_rainrate(data, metadata)
    rate = rate.astype("float32")
    rate[rate < 0] = np.nan  # BoM flags (raw -2 beside the -1 fill); see docs/sources.md
    return rate, metadata


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("event", sorted(EVENTS))
def test_event_ingests_equal_to_pysteps(tmp_path, radar_dir, event):
    fmt, importer = EVENTS[event]
    folder = event_slice(radar_dir / event, tmp_path / "input")
    files = sorted(folder.iterdir())
    source = get_source(fmt, directory=str(folder))
    url = str(tmp_path / "archive.zarr")
    # in this process: the readers are what is tested (the runners are, in test_ingest_runners.py), and
    # two worker processes cost 20 s of imports per event on CI's 2 cores
    result = run(IngestSpec(archive=url, source=source, time_chunk=12), RunnerOptions(kind="inmemory"))
    assert result.frames_written + result.frames_missing == len(files)

    ds = open_archive(url)
    info = read_info(url)
    items = source.items()
    assert ds.sizes["time"] == len(files)  # every event is gap-free at its native step
    np.testing.assert_array_equal(ds.time.values.astype("datetime64[s]"), [i.time for i in items])
    assert ds.attrs["time_step"] == {"bom": "PT10M"}.get(fmt, "PT5M")

    # every frame goes through the same reader, so a sample of them checks it: pysteps' own readers
    # take up to 0.6 s a file (BoM: Python loops over its geodata), so every 3rd frame, the first and
    # the last always among them
    sample = list(enumerate(files))[::3]
    sample += [] if sample[-1][0] == len(files) - 1 else [(len(files) - 1, files[-1])]
    for index, path in sample:
        expected, metadata = pysteps_rain_rate(importer, str(path))
        np.testing.assert_allclose(ds["precip"][index].values, expected, rtol=1e-6, equal_nan=True,
                                   err_msg=f"{path.name}")
    ny, nx = expected.shape
    # KNMI gives km (coordinates and ellipsoid axes); the archive stores metres, the CF default.
    scale = 1000.0 if metadata["cartesian_unit"] == "km" else 1.0
    if fmt == "bom":  # pysteps takes BoM's x1..x2 from the file's pixel-centre coordinates
        x = np.linspace(metadata["x1"], metadata["x2"], nx)
        y = np.linspace(metadata["y2"], metadata["y1"], ny)
    else:  # the other importers give the outer edges of the grid
        x = metadata["x1"] + (np.arange(nx) + 0.5) * (metadata["x2"] - metadata["x1"]) / nx
        y = metadata["y2"] - (np.arange(ny) + 0.5) * (metadata["y2"] - metadata["y1"]) / ny
    assert ds.x.attrs["units"] == "m"
    np.testing.assert_allclose(ds.x.values, x * scale)
    np.testing.assert_allclose(ds.y.values, y * scale)
    source_crs = pyproj.CRS.from_proj4(metadata["projection"])
    stored = info.grid.crs
    assert stored.ellipsoid.semi_major_metre == pytest.approx(source_crs.ellipsoid.semi_major_metre * scale)
    assert stored.ellipsoid.semi_minor_metre == pytest.approx(source_crs.ellipsoid.semi_minor_metre * scale)
    params = stored.to_dict()
    for key, value in source_crs.to_dict().items():
        if key in ("a", "b", "rf", "ellps", "datum", "towgs84", "no_defs", "type", "units"):
            continue
        value = value * scale if key in ("x_0", "y_0") else value
        # pysteps rounds BoM's angles to 3 decimals in its PROJ string; the file's grid mapping,
        # which the archive keeps, has them in full.
        close = pytest.approx(value, rel=1e-6, abs=1e-3) if isinstance(value, float) else value
        assert params.get(key) == close, key
    assert ds["crs"].attrs["grid_mapping_name"]
    assert "crs_wkt" in ds["crs"].attrs
    assert ds["precip"].attrs["units"] == "mm h-1"


@pytest.mark.fault("ingest", "a batch of files whose names state another step than the archive's: an hour's "
                   "MeteoSwiss accumulation into a 5-minute archive, or 5-minute files into a new archive "
                   "given --time-step PT10M",
                   "refused naming the file, both steps and the fix, nothing written (the hour's mean rate "
                   "went in as a 5-minute frame, and 5-minute amounts every 10 minutes made a 10-minute "
                   "archive, where the watcher refused both)")
def test_files_stating_another_step_than_the_archive_are_refused(radar_dir, tmp_path):
    files = sorted((radar_dir / "mch/20150515").iterdir())[:4]  # 15:45 to 16:00, 5-minute amounts
    five = tmp_path / "five"
    five.mkdir()
    for path in files[:2]:
        (five / path.name).symlink_to(path)
    archive = str(tmp_path / "archive.zarr")
    run(IngestSpec(archive=archive, source=get_source("radar", directory=str(five), fmt="mch")))
    hourly = tmp_path / "hourly"
    hourly.mkdir()
    (hourly / files[2].name.replace("_00005.", "_00060.")).symlink_to(files[2])
    before = open_archive(archive)["precip"].values.copy()
    with pytest.raises(IngestError, match=r"AQC151351555F_00060.801.gif states a step of PT1H, the "
                                          r"archive's is PT5M \(one accumulation period, or one product, per "
                                          r"archive\); nothing was written: ingest it into an archive of its "
                                          r"own"):
        run(IngestSpec(archive=archive, source=get_source("radar", directory=str(hourly), fmt="mch")))
    after = open_archive(archive)
    assert after.sizes["time"] == 2
    np.testing.assert_array_equal(after["precip"].values, before)

    every_ten = tmp_path / "every_ten"
    every_ten.mkdir()
    for path in files[::2]:
        (every_ten / path.name).symlink_to(path)
    new = tmp_path / "ten.zarr"
    with pytest.raises(IngestError, match=r"states a step of PT5M, --time-step is PT10M .*: leave "
                                          r"--time-step out to take the files' own; nothing was written"):
        run(IngestSpec(archive=str(new), source=get_source("radar", directory=str(every_ten), fmt="mch"),
                       time_step="PT10M"))
    assert not new.exists()
