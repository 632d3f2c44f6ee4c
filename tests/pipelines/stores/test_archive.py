"""The archive schema: creation, validation messages and the time axis."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nowcast.pipelines.stores.archive import (
    DEFAULT_TIME_CHUNK,
    PRECIP,
    ArchiveError,
    FieldSpec,
    check_chunk_size,
    create_archive,
    extend_time,
    frame_stats,
    open_archive,
    read_info,
    validate_archive,
)
from nowcast.pipelines.stores.timeaxis import format_time_step, parse_time_step, time_index
from tests.pipelines.jobs.ingest_helpers import make_grid


@pytest.fixture
def archive(tmp_path):
    url = str(tmp_path / "a.zarr")
    create_archive(url, make_grid(), [PRECIP], "2024-01-01T00:00", "PT5M", length=6, time_chunk=4)
    return url


def loaded(url):
    return open_archive(url).load()


def test_time_steps_round_trip():
    for text in ("PT5M", "PT10M", "PT1H", "P1D", "PT30S", "PT1H30M"):
        assert format_time_step(parse_time_step(text)) == text
    for text in ("5 minutes", "P1DT", "PT", "P"):  # a T with no time after it is no ISO 8601 duration
        with pytest.raises(ValueError, match="ISO 8601"):
            parse_time_step(text)
    start = np.datetime64("2024-01-01T00:00")
    assert time_index("2024-01-01T01:00", start, parse_time_step("PT5M")) == 12


def test_new_archive_follows_the_schema(archive):
    info = read_info(archive)
    assert (info.length, info.time_chunk, info.grid.shape) == (6, 4, (16, 20))
    ds = loaded(archive)
    assert ds["precip"].dims == ("time", "y", "x")
    assert np.isnan(ds["precip"].values).all()
    assert not ds["valid"].values.any()
    assert ds.attrs["Conventions"] == "CF-1.8"
    assert ds["crs"].attrs["grid_mapping_name"] == "polar_stereographic"
    assert str(info.end) == "2024-01-01T00:25:00"


@pytest.mark.parametrize(("breakage", "message"), [
    (lambda ds: ds.drop_vars("valid"), "'valid'"),
    (lambda ds: ds.assign_coords(time=ds.time.values[[0, 1, 1, 3, 4, 5]]), "appears twice"),
    (lambda ds: ds.assign_coords(time=ds.time.values[[0, 2, 1, 3, 4, 5]]), "not increasing"),
    (lambda ds: ds.assign_coords(time=ds.time.values + np.array([0, 0, 0, 0, 0, 60], "timedelta64[s]")),
     "irregular"),
    (lambda ds: ds.assign(precip=ds["precip"].transpose("y", "time", "x")), "transpose"),
    (lambda ds: ds.assign(precip=ds["precip"].astype("float64")), "float32"),
    (lambda ds: ds.assign(precip=ds["precip"].assign_attrs(units=None).drop_attrs()), "units"),
])
def test_validation_names_the_problem_and_the_fix(archive, breakage, message):
    with pytest.raises(ArchiveError, match=message):
        validate_archive(breakage(loaded(archive)))


def test_validation_against_expected_fields_and_grid(archive):
    ds = loaded(archive)
    with pytest.raises(ArchiveError, match="'temperature' is missing"):
        validate_archive(ds, fields=[FieldSpec("temperature", "K", "air temperature")])
    with pytest.raises(ArchiveError, match="expected 'mm/h'"):
        validate_archive(ds, fields=[FieldSpec("precip", "mm/h", "rain")])
    with pytest.raises(ArchiveError, match="grid differs"):
        validate_archive(ds, grid=make_grid(x0=2000.0))
    with pytest.raises(ArchiveError, match="shape"):
        validate_archive(ds, grid=make_grid(ny=10))
    validate_archive(ds, fields=[PRECIP], grid=make_grid())


@pytest.mark.fault("stores", "a missing archive; a time-axis extension stopped half way",
                   "reported with the fix; the next ingest completes it")
def test_missing_store_and_interrupted_extension_are_reported(tmp_path, archive):
    with pytest.raises(ArchiveError, match="no archive at"):
        read_info(str(tmp_path / "nothing.zarr"))
    import zarr

    zarr.open_group(archive, mode="r+")["precip"].resize((9, 16, 20))  # as if killed mid-extension
    with pytest.raises(ArchiveError, match=r"lengths \[\d+, \d+\]\): an ingest is extending it, or was "
                                           r"stopped while it did; if none runs, rerun one to complete it"):
        read_info(archive)
    assert extend_time(archive, 9).length == 9
    assert str(read_info(archive).end) == "2024-01-01T00:40:00"


@pytest.mark.fault("watch", "a missing frame's statistics in an archive a watcher extended, against the same "
                   "frames ingested in one batch", "NaN in both (finite_fraction read 0 in a rewritten chunk "
                   "and NaN past an old chunk's end: the two archives differed)")
def test_frame_stats_ignore_unobserved_pixels():
    frames = np.array([[[0.0, 2.0], [np.nan, 6.0]], [[np.nan, np.nan], [np.nan, np.nan]]], "float32")
    stats = frame_stats(PRECIP, frames)
    assert stats["precip_mean"][0] == pytest.approx(8 / 3)
    assert np.isnan(stats["precip_mean"][1])
    assert stats["precip_max"][0] == 6.0
    assert stats["precip_finite_fraction"][0] == 0.75
    assert np.isnan(stats["precip_finite_fraction"][1])  # as the others: the watcher's and batch's agree
    k = PRECIP.thresholds.index(5.0)
    assert stats["precip_fraction_above"][0, k] == pytest.approx(1 / 3)


def test_a_chunk_no_writer_could_hold_is_refused_before_the_store_is_made(tmp_path):
    """A writer decompresses a whole chunk to put a frame into it: 10,000 frames of 512 x 512 (9.8 GiB)
    would be asked of every writer; the default chunk of the largest synthetic grid still fits."""
    url = str(tmp_path / "big.zarr")
    with pytest.raises(ArchiveError, match=r"9\.8 GiB.*use --time-chunk 2048 or less"):
        create_archive(url, make_grid(512, 512), [PRECIP], "2024-01-01T00:00", "PT5M", length=6,
                       time_chunk=10_000)
    with pytest.raises(ArchiveError, match=r"must be 1\.\.10000 frames"):
        create_archive(url, make_grid(), [PRECIP], "2024-01-01T00:00", "PT5M", length=6, time_chunk=0)
    assert not (tmp_path / "big.zarr").exists()
    check_chunk_size(DEFAULT_TIME_CHUNK, (4096, 4096))


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_bucket")


@pytest.mark.fault("ingest", "an archive read while another ingest creates it (local and S3)",
                   "nothing or the whole archive is seen: the root metadata appears last")
def test_an_archive_appears_whole_or_not_at_all(where):
    """Four ingests started together into a new S3 archive: one read the root metadata of the archive
    another was creating before its arrays were there ("has no (time, y, x) variable")."""
    from nowcast.pipelines.stores.groups import created_whole, exists, filesystem

    url = f"{where}/whole.zarr"
    fs, path = filesystem(url)
    with created_whole(url) as staging:
        create_archive(staging, make_grid(), [PRECIP], "2024-01-01T00:00", "PT5M", length=6)
        assert exists(staging)
        assert not exists(url)
        assert not fs.exists(path)
    assert read_info(url).length == 6
    assert not fs.exists(filesystem(staging)[1])

    def stopped_before_publishing(url: str) -> str:
        with created_whole(url) as staging:
            create_archive(staging, make_grid(), [PRECIP], "2024-01-01T00:00", "PT5M", length=6)
            raise RuntimeError(staging)

    with pytest.raises(RuntimeError) as stopped:
        stopped_before_publishing(f"{where}/failed.zarr")
    assert not fs.exists(filesystem(f"{where}/failed.zarr")[1])
    assert not fs.exists(filesystem(str(stopped.value))[1])


CREATOR = """
import sys, time
from nowcast.pipelines.stores.archive import PRECIP, create_archive
from nowcast.pipelines.stores.groups import created_whole
from tests.pipelines.jobs.ingest_helpers import make_grid
with created_whole(sys.argv[1]) as staging:
    create_archive(staging, make_grid(), [PRECIP], "2024-01-01T00:00", "PT5M", length=6)
    print(staging, flush=True)
    time.sleep(600)
"""


@pytest.mark.fault("ingest", "a new archive's creation SIGKILLed while it builds its staging copy",
                   "the next creation there removes the dead one's staging folder, not a live one's")
def test_a_killed_creation_leaves_no_staging_folder_behind(tmp_path):
    url = str(tmp_path / "new.zarr")

    def creator() -> tuple[subprocess.Popen, Path]:
        process = subprocess.Popen([sys.executable, "-c", CREATOR, url], stdout=subprocess.PIPE, text=True,
                                   cwd=Path(__file__).resolve().parents[3])
        return process, Path(process.stdout.readline().strip())

    killed, dead_staging = creator()
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert (dead_staging / "zarr.json").exists()
    alive, live_staging = creator()  # the next creation, still running
    try:
        assert not dead_staging.exists()
        create_archive(url, make_grid(), [PRECIP], "2024-01-01T00:00", "PT5M", length=6)
        assert read_info(url).length == 6
        assert live_staging.is_dir()  # its creator still runs: not ours to remove
    finally:
        alive.kill()
        alive.wait()


def test_staging_of_another_pid_namespace_is_left_alone(tmp_path):
    """A container sharing this host name numbers its processes anew: its pid says nothing here."""
    from nowcast.processes import host_id

    url = str(tmp_path / "new.zarr")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    gone = int(finished.stdout)  # a pid of this namespace whose process has exited
    host = socket.gethostname()
    ours = tmp_path / f"new.zarr.creating-{host_id()}-{gone}-0123456789ab"
    other_namespace = tmp_path / f"new.zarr.creating-{host}.pidns1-{gone}-0123456789ab"
    for folder in (ours, other_namespace):
        folder.mkdir()
    create_archive(url, make_grid(), [PRECIP], "2024-01-01T00:00", "PT5M", length=6)
    assert not ours.exists()
    assert other_namespace.is_dir()


@pytest.mark.fault("stores", "an S3 store whose creation was killed or lost its endpoint part way",
                   "its staging copy beside the store is removed by the next creation on this host once "
                   "untouched for an hour (it was left for good, one more full copy each time); another "
                   "host's is left alone")
def test_staging_left_on_s3_by_a_dead_creator_is_removed(s3_bucket, monkeypatch):
    from nowcast.pipelines.stores import groups
    from nowcast.pipelines.stores.groups import filesystem
    from nowcast.processes import host_id

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    gone = int(finished.stdout)
    url = f"{s3_bucket}/runs/new.zarr"
    fs, path = filesystem(url)
    ours = f"{path}.creating-{host_id()}-{gone}-0123456789ab"
    other_host = f"{path}.creating-elsewhere.example-{gone}-0123456789ab"
    other_store = f"{path}2.creating-{host_id()}-{gone}-0123456789ab"  # beside another store: not ours
    fs.pipe({f"{ours}/zarr.json": b"{}", f"{ours}/rain/c/0": b"x", f"{other_host}/zarr.json": b"{}",
             f"{other_store}/zarr.json": b"{}"})
    create_archive(url, make_grid(), [PRECIP], "2024-01-01T00:00", "PT5M", length=6)
    assert fs.exists(f"{ours}/zarr.json")  # written a moment ago: another machine of this host id may own it
    monkeypatch.setattr(groups, "ABANDONED_S3_S", 0.0)
    fs.rm(path, recursive=True)
    create_archive(url, make_grid(), [PRECIP], "2024-01-01T00:00", "PT5M", length=6)
    assert read_info(url).length == 6
    assert not fs.exists(f"{ours}/zarr.json")
    assert not fs.exists(f"{ours}/rain/c/0")
    assert fs.exists(f"{other_host}/zarr.json")
    assert fs.exists(f"{other_store}/zarr.json")


@pytest.mark.fault("ingest", "an S3 archive whose creation stopped part way through its copy",
                   "recognised by its marker and created afresh: no member of the stopped one is left")
def test_a_creation_stopped_part_way_on_s3_is_replaced(s3_bucket):
    from nowcast.pipelines.stores.groups import PUBLISHING, filesystem, not_a_store

    url = f"{s3_bucket}/stopped.zarr"
    fs, path = filesystem(url)
    fs.pipe({f"{path}/{PUBLISHING}": b"", f"{path}/rain/zarr.json": b"{}"})  # a copy killed part way
    assert not_a_store(url) is None
    create_archive(url, make_grid(), [PRECIP], "2024-01-01T00:00", "PT5M", length=6)
    assert [f.name for f in read_info(url).fields] == [PRECIP.name]
    assert not fs.exists(f"{path}/rain")
    assert not fs.exists(f"{path}/{PUBLISHING}")


@pytest.mark.fault("stores", "an archive read (score, windows, summary) while a live ingest writes its time "
                   "values", "the reader waits the moment out and goes on; a stopped extension is still "
                   "refused, naming the fix")
def test_a_reader_waits_out_a_live_extension(archive):
    import threading

    import zarr

    from nowcast.pipelines.stores.groups import GROWING

    time_axis = zarr.open_group(archive, mode="r+")["time"]
    time_axis.attrs[GROWING] = int(time_axis.shape[0])  # as grow_axis marks it while it writes the values
    threading.Timer(0.3, lambda: time_axis.attrs.__delitem__(GROWING)).start()  # the writer ends
    assert read_info(archive).length == time_axis.shape[0]
    time_axis.attrs[GROWING] = int(time_axis.shape[0])  # and one that never ends: a stopped ingest
    with pytest.raises(ArchiveError, match=r"\(its time coordinate not yet all written\): an ingest is "
                                           r"extending it, or was stopped while it did"):
        read_info(archive)
