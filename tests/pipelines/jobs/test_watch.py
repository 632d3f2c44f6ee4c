"""Streaming ingest: a watch on the local runner while a writer drops files in.

The watches end on what they did (their running totals) or an event, never on
a clock: ``duration_s`` only bounds a run whose work never comes.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest

from nowcast.pipelines.jobs.ingest import IngestSpec, run
from nowcast.pipelines.jobs.watch import Rejections, WatchSpec, poll_once, run_watch
from nowcast.pipelines.plans.ingest import IngestError
from nowcast.pipelines.sources import get_source
from nowcast.pipelines.stores.archive import open_archive

LONGEST_S = 300.0  # a bound for a watch that never finishes its work, not an expectation


@pytest.mark.slow
def test_watch_appends_files_as_they_arrive(tmp_path, radar_dir, caplog):
    files = sorted((radar_dir / "knmi").rglob("*.h5"))[:8]
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "RAD_NL25_RAP_5min_201008260100.h5").write_bytes(b"not hdf5")

    def writer() -> None:
        time.sleep(1.0)
        for path in files:
            partial = incoming / (path.name + ".part")
            shutil.copy(path, partial)
            partial.rename(incoming / path.name)  # files land atomically, as with rsync
            time.sleep(0.4)

    thread = threading.Thread(target=writer)
    thread.start()
    archive = str(tmp_path / "archive.zarr")
    spec = WatchSpec(archive=archive, directory=str(incoming), fmt="knmi", interval_s=0.5,
                     duration_s=LONGEST_S, time_chunk=4)
    result = run_watch(spec, stop=lambda totals: totals.frames_written == len(files)
                       and totals.files_rejected == 1)
    thread.join()
    assert result.frames_written == len(files), f"the watch ran {LONGEST_S} s without the work done"
    assert result.files_rejected == 1  # the broken file, after max_attempts polls
    (rejected,) = [r.message for r in caplog.records if r.message.startswith("rejected")]
    assert "cannot read it as a KNMI" in rejected
    assert "['" not in rejected  # the problems as sentences, not a list's repr
    assert result.polls >= spec.max_attempts

    streamed = open_archive(archive)
    (tmp_path / "batch").mkdir()
    for path in files:
        shutil.copy(path, tmp_path / "batch" / path.name)
    batch_url = str(tmp_path / "batch.zarr")
    run(IngestSpec(archive=batch_url, source=get_source("knmi", directory=str(tmp_path / "batch")),
                   time_chunk=4))
    batch = open_archive(batch_url)
    assert streamed["valid"].values.all()
    assert streamed.sizes["time"] == len(files)
    np.testing.assert_array_equal(streamed["precip"].values, batch["precip"].values)
    np.testing.assert_array_equal(streamed["time"].values, batch["time"].values)


def test_a_watch_without_a_duration_ends_when_its_condition_holds(tmp_path):
    """Without ``duration_s`` the watch runs until stopped (it once failed at once: an infinite
    stop time overflowed Beam's timestamp); its ``stop`` condition sees the running totals."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="knmi",
                     interval_s=0.05)
    result = run_watch(spec, stop=lambda totals: totals.polls >= 3)
    assert (result.polls, result.frames_written, result.files_rejected) == (3, 0, 0)
    assert not (tmp_path / "archive.zarr").exists()


def test_a_set_event_ends_the_watch_before_its_next_poll(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    stop = threading.Event()
    stop.set()
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="knmi")
    assert run_watch(spec, stop=stop).polls == 0


@pytest.mark.fault("watch", "a file off the archive's time step, before its start, of another "
                   "accumulation period (an hourly KNMI file among 5-minute ones), or of another product "
                   "(KNMI RAC among RAP), among good ones",
                   "rejected with a warning naming it and the fix; the good files keep coming in (the "
                   "watcher once stopped on the first, skipped the second without a word, and ingested the "
                   "hour's mean rate as a 5-minute frame, and another product's file as the archive's)")
def test_a_file_the_time_axis_cannot_hold_is_rejected_and_the_rest_ingested(tmp_path, radar_dir, caplog):
    files = sorted((radar_dir / "knmi").rglob("*.h5"))[:4]  # 00:00, 00:05, 00:10, 00:15
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for path in files[1:3]:
        shutil.copy(path, incoming / path.name)
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="knmi",
                     interval_s=1.0, duration_s=1.0, time_chunk=4)
    rejections = Rejections(spec.max_attempts)
    assert poll_once(spec, rejections) == 2  # the archive starts at 00:05
    early = incoming / files[0].name
    off_step = incoming / files[3].name.replace("201008260015", "201008260017")
    hourly = incoming / files[3].name.replace("201008260015", "201008260100").replace("_5min_", "_60min_")
    other_product = incoming / files[3].name.replace("201008260015", "201008260020").replace("_RAP_", "_RAC_")
    for source, target in ((files[0], early), (files[3], off_step), (files[3], hourly),
                           (files[3], other_product), (files[3], incoming / files[3].name)):
        shutil.copy(source, target)
    with caplog.at_level("WARNING", logger="nowcast.pipelines.jobs.watch"):
        assert poll_once(spec, rejections) == 1  # 00:15 comes in
    assert set(rejections.given_up) == {str(early), str(off_step), str(hourly), str(other_product)}
    assert "is RAD_NL25_RAC, the archive holds RAD_NL25_RAP (one radar and product" in caplog.text
    assert "before the archive start" in caplog.text
    assert "not on the archive's PT5M axis" in caplog.text
    assert "states a step of PT1H, the archive's is PT5M" in caplog.text
    assert poll_once(spec, rejections) == 0  # and none is tried again
    assert open_archive(spec.archive)["valid"].values.tolist() == [True, True, True]


@pytest.mark.fault("watch", "two files at the same time, a file whose name holds no time, and a rejected "
                   "file copied again, among good ones",
                   "the pair is held back with one warning until one is removed, the nameless file is "
                   "rejected alone, a changed file is tried again; the good files keep coming in (either "
                   "of the first two had blocked every poll for good, and a rejected file stayed rejected "
                   "until the watcher restarted)")
def test_one_bad_file_never_blocks_the_folder_and_a_repaired_file_is_tried_again(tmp_path, radar_dir,
                                                                                   caplog):
    files = sorted((radar_dir / "knmi").rglob("*.h5"))[:4]  # 00:00 .. 00:15
    incoming = tmp_path / "incoming"
    (incoming / "copy").mkdir(parents=True)
    shutil.copy(files[0], incoming / files[0].name)
    shutil.copy(files[1], incoming / files[1].name)
    twin = incoming / "copy" / files[1].name  # 00:05 twice
    shutil.copy(files[1], twin)
    (incoming / "RAD_NL25_RAP_5min_latest.h5").write_bytes(b"no time in this name")
    broken = incoming / files[2].name
    broken.write_bytes(b"cut short")
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="knmi",
                     interval_s=1.0, duration_s=1.0, time_chunk=4, max_attempts=2)
    rejections = Rejections(spec.max_attempts)
    with caplog.at_level("WARNING", logger="nowcast.pipelines.jobs.watch"):
        written = [poll_once(spec, rejections) for _ in range(3)]
    assert written == [1, 0, 0]  # 00:00; 00:05 held back, 00:10 broken
    assert caplog.text.count("appears in") == 1
    assert "neither is ingested until one is removed" in caplog.text
    assert set(rejections.given_up) == {str(incoming / "RAD_NL25_RAP_5min_latest.h5"), str(broken)}
    assert "cannot read a time from the name" in caplog.text

    twin.unlink()
    shutil.copy(files[2], broken)  # the sender copies the file again, whole
    shutil.copy(files[3], incoming / files[3].name)
    assert poll_once(spec, rejections) == 3
    valid = open_archive(spec.archive)["valid"].values
    assert valid.tolist() == [True, True, True, True]
    assert rejections.count == 1  # the nameless file; the one copied again whole went in


@pytest.mark.fault("watch", "a file without any observed pixel (all no-data) in a watched folder",
                   "stored as missing once, with one warning naming it; not read again unless it changes "
                   "(each poll rewrote its chunk, valid frames and all, without a word)")
def test_an_all_nan_file_is_stored_as_missing_once_and_said(tmp_path, radar_dir, caplog, monkeypatch):
    import h5py

    from nowcast.pipelines.jobs import watch

    files = sorted((radar_dir / "knmi").rglob("*.h5"))[:3]
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for path in files:
        shutil.copy(path, incoming / path.name)
    blank = incoming / files[1].name
    with h5py.File(blank, "r+") as f:
        f["image1/image_data"][...] = 65535  # KNMI's no-data everywhere
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="knmi",
                     interval_s=1.0, duration_s=1.0)
    rejections = Rejections(spec.max_attempts)
    writes = []
    ingest = watch.ingest_items
    monkeypatch.setattr(watch, "ingest_items", lambda *a, **k: writes.append(a[1]) or ingest(*a, **k))
    with caplog.at_level("WARNING", logger="nowcast.pipelines.jobs.watch"):
        assert [poll_once(spec, rejections) for _ in range(3)] == [2, 0, 0]
    assert len(writes) == 1  # the later polls read and write nothing
    assert caplog.text.count("(all NaN): stored as missing") == 1
    assert open_archive(spec.archive)["valid"].values.tolist() == [True, False, True]
    shutil.copy(files[1], blank)  # the sender sends it again, whole
    assert poll_once(spec, rejections) == 1
    assert open_archive(spec.archive)["valid"].values.tolist() == [True, True, True]


@pytest.mark.fault("watch", "a file sent again, changed, after its frame was ingested (a corrected re-send)",
                   "one warning naming it and the fix (ingest it with --overwrite); the archive keeps the "
                   "first version (the change was ignored without a word)")
def test_a_file_changed_after_its_ingest_is_told(tmp_path, radar_dir, caplog):
    files = sorted((radar_dir / "knmi").rglob("*.h5"))[:3]
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for path in files[:2]:
        shutil.copy(path, incoming / path.name)
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="knmi",
                     interval_s=1.0, duration_s=1.0)
    rejections = Rejections(spec.max_attempts)
    assert poll_once(spec, rejections) == 2
    first = open_archive(spec.archive)["precip"][0].values.copy()
    shutil.copy(files[2], incoming / files[0].name)  # other contents under the first name
    with caplog.at_level("WARNING", logger="nowcast.pipelines.jobs.watch"):
        assert [poll_once(spec, rejections) for _ in range(2)] == [0, 0]
    sent = f"{incoming / files[0].name} was written again after its frames were ingested"
    assert caplog.text.count(sent) == 1
    assert "ingest its folder with --overwrite" in caplog.text
    np.testing.assert_array_equal(open_archive(spec.archive)["precip"][0].values, first)


@pytest.mark.fault("watch", "a BoM folder with a stray file (or none yet) before the archive exists",
                   "the stray file is rejected after its attempts and the good files appended (the poll "
                   "ended the watch, exit 2, while telling the step from the files)")
def test_a_stray_file_in_a_new_bom_watch_never_stops_it(tmp_path, radar_dir):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="bom",
                     interval_s=1.0, duration_s=1.0)
    rejections = Rejections(spec.max_attempts)
    assert poll_once(spec, rejections) == 0  # nothing there yet
    for path in sorted((radar_dir / "bom").rglob("*prcp-c10.nc"))[:3]:
        shutil.copy(path, incoming / path.name)
    (incoming / "notes.nc").write_text("junk")
    assert poll_once(spec, rejections) == 3


@pytest.mark.filterwarnings("ignore:You will likely lose important projection:UserWarning")
@pytest.mark.fault("watch", "a NetCDF file of several frames, one of them without any observed pixel, that "
                   "then grows by a frame",
                   "the empty frame is stored as missing once and said once, the others ingested; the frame "
                   "the file grows by is ingested without a warning of a re-send (the file was called empty "
                   "as a whole, and a growing file was warned of at every append)")
def test_a_growing_netcdf_file_with_an_empty_frame(tmp_path, caplog):
    from tests.pipelines.sources.test_netcdf import sensor_dataset, write

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    times = ["2024-03-01T00:00", "2024-03-01T00:10", "2024-03-01T00:20", "2024-03-01T00:30"]

    def day(count: int) -> None:
        ds = sensor_dataset(times[:count], seed=1)
        for name in ("temperature", "humidity"):
            ds[name][1] = np.nan  # 00:10 holds nothing
        write(ds, incoming / "day.nc")

    day(3)
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="netcdf",
                     interval_s=1.0, duration_s=1.0, time_step="PT10M")
    rejections = Rejections(spec.max_attempts)
    with caplog.at_level("WARNING", logger="nowcast.pipelines.jobs.watch"):
        assert [poll_once(spec, rejections) for _ in range(2)] == [2, 0]
        assert caplog.text.count("holds no observed pixel at 2024-03-01T00:10:00") == 1
        day(4)
        assert poll_once(spec, rejections) == 1
    assert "was written again" not in caplog.text
    assert open_archive(spec.archive)["valid"].values.tolist() == [True, False, True, True]


@pytest.mark.filterwarnings("ignore:You will likely lose important projection:UserWarning")
@pytest.mark.fault("watch", "a watch of ODIM files whose first two are 10 minutes apart (a 5-minute feed "
                   "with one file late)",
                   "the watcher waits until a spacing is seen twice before it makes the archive (it made a "
                   "10-minute archive that refused the late file and every file between for ever)")
def test_a_first_odim_file_waits_for_the_step_to_be_told(tmp_path, caplog):
    """ODIM products come at 5, 6, 10 or 15 minutes: one file gives no step (it once made a 10-minute
    series a 5-minute archive with every other frame missing), and one spacing may span a missing file."""
    from tests.pipelines.sources.test_odim import write_odim

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="odim",
                     interval_s=1.0, duration_s=1.0)
    rejections = Rejections(spec.max_attempts)
    write_odim(incoming / "first.H5", time="120000")  # any case of the suffix
    with caplog.at_level("WARNING", logger="nowcast.pipelines.jobs.watch"):
        assert poll_once(spec, rejections) == 0
        write_odim(incoming / "third.h5", time="121000")  # the one at 12:05 is late
        assert poll_once(spec, rejections) == 0
    assert "too few frames so far to tell the input's time step" in caplog.text
    assert not (tmp_path / "archive.zarr").exists()
    write_odim(incoming / "second.h5", time="120500")
    assert poll_once(spec, rejections) == 3
    archive = open_archive(spec.archive)
    assert archive.attrs["time_step"] == "PT5M"
    assert archive["valid"].values.tolist() == [True, True, True]


@pytest.mark.filterwarnings("ignore:You will likely lose important projection:UserWarning")
def test_a_ten_minute_odim_feed_is_told_by_its_third_file(tmp_path):
    from tests.pipelines.sources.test_odim import write_odim

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="odim",
                     interval_s=1.0, duration_s=1.0)
    rejections = Rejections(spec.max_attempts)
    for name, time_ in (("a.h5", "120000"), ("b.h5", "121000"), ("c.h5", "122000")):
        write_odim(incoming / name, time=time_)
    assert poll_once(spec, rejections) == 3
    archive = open_archive(spec.archive)
    assert archive.attrs["time_step"] == "PT10M"
    assert archive["valid"].values.tolist() == [True, True, True]


@pytest.mark.filterwarnings("ignore:You will likely lose important projection:UserWarning")
def test_a_folder_of_netcdf_files_is_watched(tmp_path):
    """The watcher takes every folder format ingest does (``--format netcdf`` once failed on an option
    of the radar sources)."""
    from tests.pipelines.sources.test_netcdf import sensor_dataset, write

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="netcdf",
                     interval_s=1.0, duration_s=1.0, time_step="PT10M")
    rejections = Rejections(spec.max_attempts)
    assert poll_once(spec, rejections) == 0
    write(sensor_dataset(["2024-03-01T00:00", "2024-03-01T00:10"], seed=1), incoming / "a.nc")
    assert poll_once(spec, rejections) == 2
    write(sensor_dataset(["2024-03-01T00:20"], seed=2), incoming / "b.nc")
    assert poll_once(spec, rejections) == 1
    archive = open_archive(spec.archive)
    assert archive["valid"].values.tolist() == [True, True, True]
    assert set(archive.data_vars) >= {"temperature", "humidity"}


@pytest.mark.fault("watch", "a half-written NetCDF file in the folder before the archive exists, and a file "
                   "removed between its check and the ingest",
                   "the file is held back alone and the good ones come in (either stopped the watcher: the "
                   "first through the new archive's time step, which read every file)")
@pytest.mark.filterwarnings("ignore:You will likely lose important projection:UserWarning")
def test_a_half_written_or_vanished_file_never_stops_the_watcher(tmp_path, radar_dir, monkeypatch):
    from nowcast.pipelines.jobs import watch
    from tests.pipelines.sources.test_netcdf import sensor_dataset, write

    incoming = tmp_path / "netcdf"
    incoming.mkdir()
    write(sensor_dataset(["2024-03-01T00:00", "2024-03-01T00:10", "2024-03-01T00:20"], seed=1),
          incoming / "a.nc")
    (incoming / "b.nc").write_bytes((incoming / "a.nc").read_bytes()[:3000])  # still arriving
    spec = WatchSpec(archive=str(tmp_path / "netcdf.zarr"), directory=str(incoming), fmt="netcdf",
                     interval_s=1.0, duration_s=1.0)  # no time step given: the files' own
    rejections = Rejections(spec.max_attempts)
    assert poll_once(spec, rejections) == 3
    assert rejections.failures == {str(incoming / "b.nc"): 1}

    knmi = tmp_path / "knmi"
    knmi.mkdir()
    files = sorted((radar_dir / "knmi").rglob("*.h5"))[:3]
    for path in files:
        shutil.copy(path, knmi / path.name)
    vanishing = str(knmi / files[1].name)
    checked = watch.check_item

    def removed_after_its_check(source, item, grid, fields):
        found = checked(source, item, grid, fields)
        if item.path == vanishing:
            (knmi / files[1].name).unlink()  # an operator or a mirror deletes it now
        return found

    monkeypatch.setattr(watch, "check_item", removed_after_its_check)
    spec = WatchSpec(archive=str(tmp_path / "knmi.zarr"), directory=str(knmi), fmt="knmi", interval_s=1.0,
                     duration_s=1.0, time_chunk=4)
    rejections = Rejections(spec.max_attempts)
    assert poll_once(spec, rejections) == 2
    assert open_archive(spec.archive)["valid"].values.tolist() == [True, False, True]
    assert rejections.failures == {vanishing: 1}
    assert poll_once(spec, rejections) == 0  # gone from the listing: nothing held back any more


@pytest.mark.fault("watch", "a folder without files of the format, polled for hours",
                   "one warning (there was one per poll: about 17,000 lines a day at 5 s)")
def test_an_empty_folder_is_warned_of_once(tmp_path, caplog):
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(tmp_path), fmt="knmi",
                     interval_s=1.0, duration_s=1.0)
    rejections = Rejections(spec.max_attempts)
    with caplog.at_level("WARNING", logger="nowcast.pipelines.jobs.watch"):
        assert [poll_once(spec, rejections) for _ in range(3)] == [0, 0, 0]
    assert caplog.text.count(f"poll of {tmp_path}: no knmi files") == 1


def test_watch_names_the_formats_it_takes():
    with pytest.raises(IngestError, match="knmi, bom, fmi, mch, odim, netcdf"):
        WatchSpec(archive="a.zarr", directory="in", fmt="synthetic")


@pytest.mark.fault("watch", "a watcher or `score --follow` SIGKILLed",
                   "the next streaming job removes the status folder it left in the temporary folder (one "
                   "was left for good per kill); a live job's folder stays")
def test_a_killed_streams_status_folder_is_removed_by_the_next():
    import tempfile

    from nowcast.pipelines.jobs.ticks import remove_abandoned_state

    prefix = f"nowcast-test-stream-{os.getpid()}x"
    gone = tempfile.mkdtemp(prefix=f"{prefix}{2**22 + 1}-")  # above Linux's default pid_max: no process
    live = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")
    try:
        remove_abandoned_state(prefix)
        assert not os.path.exists(gone)
        assert os.path.isdir(live)
    finally:
        shutil.rmtree(live, ignore_errors=True)
        shutil.rmtree(gone, ignore_errors=True)


@pytest.mark.fault("watch", "a watcher's first poll finds one late file (its earlier files still arriving); "
                   "files removed after their ingest; a rejected file whose copy then completes",
                   "--start sets the new archive's first time, so the earlier files go in (they were "
                   "refused for good, the fix named an option watch lacked); removal is no 'written again' "
                   "warning; the completed file no longer counts as rejected in the summary")
def test_a_start_for_a_new_archive_and_what_counts_as_rejected(tmp_path, radar_dir, caplog):
    files = sorted((radar_dir / "knmi").rglob("*.h5"))[:3]  # 00:00, 00:05, 00:10
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copy(files[2], incoming / files[2].name)
    spec = WatchSpec(archive=str(tmp_path / "archive.zarr"), directory=str(incoming), fmt="knmi",
                     interval_s=1.0, duration_s=1.0, start="2010-08-26T00:00")
    rejections = Rejections(spec.max_attempts)
    assert poll_once(spec, rejections) == 1
    for path in files[:2]:
        shutil.copy(path, incoming / path.name)
    assert poll_once(spec, rejections) == 2
    assert open_archive(spec.archive)["valid"].values.tolist() == [True, True, True]
    with pytest.raises(IngestError, match=r"--start 2010-08-26T00:05:00 sets a new archive's first time"):
        run_watch(WatchSpec(archive=spec.archive, directory=str(incoming), fmt="knmi", duration_s=1.0,
                            start="2010-08-26T00:05:00"))
    removed = str(incoming / files[0].name)
    assert removed in rejections.ingested
    (incoming / files[0].name).unlink()  # cleaned up after its ingest, between a poll's listing and its look
    with caplog.at_level("WARNING", logger="nowcast.pipelines.jobs.watch"):
        rejections.sent_again([removed], set())
    assert "written again" not in caplog.text
    late = incoming / files[2].name.replace("201008260010", "201008260015")
    late.write_bytes(files[2].read_bytes()[:5000])  # a copy still arriving
    for _ in range(spec.max_attempts):
        poll_once(spec, rejections)
    assert rejections.count == 1
    late.write_bytes(files[2].read_bytes())  # renamed copy of 00:10: refused again, as another time's file
    rejections.listed([str(late)])
    assert rejections.count == 0  # tried again, no longer rejected
