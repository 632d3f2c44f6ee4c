"""Ingest: writes, idempotency, appends, backfills and refused inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr

from nowcast.pipelines.jobs.ingest import IngestSpec, run
from nowcast.pipelines.plans.ingest import IngestError
from nowcast.pipelines.sources.base import SourceError
from nowcast.pipelines.stores.archive import open_archive, read_info
from tests.pipelines.jobs.ingest_helpers import ArraySource, frame_for, snapshot, times


def ingest(tmp_path, source, **kwargs):
    spec = IngestSpec(archive=str(tmp_path / "archive.zarr"), source=source, time_chunk=4, **kwargs)
    return run(spec), spec.archive


def test_ingest_writes_values_stats_and_gaps(tmp_path):
    source = ArraySource(times("2024-01-01T00:00", 10, skip=(3,)),
                         overrides=(("2024-01-01T00:35:00", "nan"),))
    result, url = ingest(tmp_path, source)
    ds = open_archive(url)
    assert ds.sizes["time"] == 10
    assert read_info(url).time_chunk == 4
    assert ds.attrs["time_step"] == "PT5M"
    valid = ds["valid"].values
    assert valid.tolist() == [True, True, True, False, True, True, True, False, True, True]
    assert result.frames_written == 8
    assert result.frames_missing == 1
    for i in np.flatnonzero(valid):
        expected = frame_for(ds.time.values[i].astype("datetime64[s]"), (16, 20))
        np.testing.assert_array_equal(ds["precip"][i].values, expected)
        assert ds["precip_mean"][i] == pytest.approx(float(expected.mean()), rel=1e-5)
        k = list(ds["precip_threshold"].values).index(1.0)
        assert ds["precip_fraction_above"][i, k] == pytest.approx(float((expected >= 1.0).mean()))
    assert np.isnan(ds["precip"][3].values).all()
    assert np.isnan(ds["precip"][7].values).all()
    assert ds["precip"].attrs["units"] == "mm h-1"
    assert ds["precip"].attrs["grid_mapping"] == "crs"


@pytest.mark.fault("ingest", "the same batch ingested twice; a late file for a gap",
                   "the rerun writes nothing; the late file rewrites one chunk")
def test_rerun_writes_nothing_and_backfill_touches_one_chunk(tmp_path):
    all_times = times("2024-01-01T00:00", 12)
    _, url = ingest(tmp_path, ArraySource(all_times[:5] + all_times[6:]))
    before = snapshot(url)
    again, _ = ingest(tmp_path, ArraySource(all_times[:5] + all_times[6:]))
    assert again.frames_written == 0
    assert again.frames_skipped == 11
    assert snapshot(url) == before
    filled, _ = ingest(tmp_path, ArraySource((all_times[5],)))
    after = snapshot(url)
    assert filled.frames_written == 1
    assert filled.chunks_written == 1
    changed = {path for path in after if before.get(path) != after[path]}
    assert changed
    assert all(path.split("/c/")[1].split("/")[0] == "1" for path in changed), changed
    assert bool(open_archive(url)["valid"][5])


def test_append_extends_time_axis_and_keeps_old_frames(tmp_path):
    first = times("2024-01-01T00:00", 6)
    _, url = ingest(tmp_path, ArraySource(first))
    old = open_archive(url)["precip"].values.copy()
    later = times("2024-01-01T01:00", 3)
    result, _ = ingest(tmp_path, ArraySource(later))
    ds = open_archive(url)
    assert ds.sizes["time"] == 15
    assert result.time_length == 15
    np.testing.assert_array_equal(ds["precip"].values[:6], old)
    assert ds["valid"].values.tolist() == [True] * 6 + [False] * 6 + [True] * 3


def test_out_of_order_input_equals_ordered_input(tmp_path):
    ordered = times("2024-01-01T00:00", 9)
    shuffled = tuple(np.random.default_rng(1).permutation(ordered))
    ingest(tmp_path / "a", ArraySource(ordered))
    ingest(tmp_path / "b", ArraySource(shuffled))
    assert snapshot(str(tmp_path / "a" / "archive.zarr")) == snapshot(str(tmp_path / "b" / "archive.zarr"))


@pytest.mark.parametrize(("override", "message"), [
    ("corrupt", "corrupt"),
    ("grid", "grid differs"),
    ("negative", "below its valid_min"),
    ("infinite", "2 infinite values of precip; mask them"),  # were stored, poisoning the statistics
    ("huge", r"3 values of precip above its valid_max 1000 mm h-1 \(highest 7864.08\)"),  # were stored
])
@pytest.mark.fault("ingest", "a bad frame in a batch (corrupt, other grid, negative rain, infinite values, "
                   "rain above 1000 mm/h)",
                   "the whole batch is refused naming the file and problem; archive bytes unchanged")
def test_bad_frame_refuses_batch_and_leaves_archive_unchanged(tmp_path, override, message):
    _, url = ingest(tmp_path, ArraySource(times("2024-01-01T00:00", 4)))
    before = snapshot(url)
    later = times("2024-01-01T00:20", 6)
    with pytest.raises(IngestError, match=message):
        ingest(tmp_path, ArraySource(later, overrides=((later[3], override),)))
    assert snapshot(url) == before


@pytest.mark.fault("ingest", "two files with one timestamp",
                   "refused naming both; no archive created")
def test_duplicate_timestamp_is_refused(tmp_path):
    with pytest.raises(SourceError, match="appears twice"):
        ingest(tmp_path, ArraySource(("2024-01-01T00:00", "2024-01-01T00:05", "2024-01-01T00:00")))
    assert not (tmp_path / "archive.zarr").exists()


@pytest.mark.fault("ingest", "a batch in other units, or off the archive's time step",
                   "refused naming the first file, with the fix (convert, or a new archive); archive bytes "
                   "unchanged; another spelling of the same unit (mm/h for mm h-1) is accepted")
def test_other_units_or_step_are_refused(tmp_path):
    _, url = ingest(tmp_path, ArraySource(times("2024-01-01T00:00", 4)))
    before = snapshot(url)
    from nowcast.pipelines.stores.archive import PRECIP, FieldSpec

    kelvin = FieldSpec("precip", "K", "not rain")
    with pytest.raises(IngestError, match=r"^array:2024-01-01T00:20:00: precip is in 'K'.*convert the input"):
        ingest(tmp_path, ArraySource(times("2024-01-01T00:20", 2), field=kelvin))
    with pytest.raises(IngestError, match="not on the archive's PT5M axis"):
        ingest(tmp_path, ArraySource(("2024-01-01T00:22:00",)))
    assert snapshot(url) == before
    spelt = dataclasses.replace(PRECIP, units="mm/h")  # the archive says mm h-1: one unit, two spellings
    result, _ = ingest(tmp_path, ArraySource(times("2024-01-01T00:20", 2), field=spelt))
    assert result.frames_written == 2


@pytest.mark.parametrize(("options", "message"), [
    ({"start": "2024-01-01T01:00"}, "before the archive start"),
    ({"start": "2024-01-01T00:02"}, "comes from --start 2024-01-01T00:02"),
    ({"time_step": "PT7M"}, "comes from --time-step PT7M"),
])
@pytest.mark.fault("ingest", "a new archive's --start or --time-step that the frames' times are not on",
                   "refused naming the option before the archive is created: no empty archive binds a rerun")
def test_a_new_archive_axis_the_frames_miss_creates_nothing(tmp_path, options, message):
    source = ArraySource(times("2024-01-01T00:00", 4))
    with pytest.raises(IngestError, match=message):
        ingest(tmp_path, source, **options)
    assert not (tmp_path / "archive.zarr").exists()
    result, _ = ingest(tmp_path, source)  # the rerun without the option takes the input's own axis
    assert result.frames_written == 4


@pytest.mark.fault("ingest", "a time stamp (or --start) years off the rest of the batch or the archive",
                   "refused naming the widest gap and both ends, before any chunk is written (a file dated "
                   "1800 once grew a new axis to 23 million steps and the ingest ran out of memory)")
def test_a_time_stamp_years_off_is_refused_before_the_axis_grows(tmp_path):
    with pytest.raises(IngestError, match=r"between array:1800-01-01T00:00 \(1800.*and "
                                          r"array:2024-01-01T00:00:00 \(2024.* lie 23562431 empty"):
        ingest(tmp_path, ArraySource(("1800-01-01T00:00", *times("2024-01-01T00:00", 3))))
    assert not (tmp_path / "archive.zarr").exists()
    with pytest.raises(IngestError, match=r"between the new archive's start .* comes from --start 2000"):
        ingest(tmp_path, ArraySource(times("2024-01-01T00:00", 3)), start="2000-01-01T00:00")
    assert not (tmp_path / "archive.zarr").exists()
    _, url = ingest(tmp_path, ArraySource(times("2024-01-01T00:00", 3)))
    before = snapshot(url)
    with pytest.raises(IngestError, match=r"between the archive's last step \(2024-01-01T00:10:00\) and "
                                          r"array:2027-01-01T00:00"):
        ingest(tmp_path, ArraySource(("2027-01-01T00:00",)))
    assert snapshot(url) == before
    result, _ = ingest(tmp_path, ArraySource(("2024-01-08T00:00",)))  # a week on: a later event is fine
    assert result.frames_written == 1


def test_a_start_that_is_no_timestamp_is_refused_by_name():
    with pytest.raises(IngestError, match="--start 'noon' is not a timestamp"):
        IngestSpec(archive="unused.zarr", source=ArraySource(()), start="noon")


def test_all_nan_frames_of_one_file_are_counted_one_by_one(tmp_path):
    """A multi-time file (NetCDF) holds several frames: the warning counts frames, not files."""
    from nowcast.pipelines.jobs.ingest import check_batch
    from nowcast.pipelines.sources.base import SourceItem

    source = ArraySource(times("2024-01-01T00:00", 3), overrides=tuple(
        (t, "nan") for t in times("2024-01-01T00:00", 3)))
    one_file = [SourceItem(item.time, "rain.nc", i) for i, item in enumerate(source.items())]
    spec = IngestSpec(archive=str(tmp_path / "archive.zarr"), source=source)
    all_nan = check_batch(spec, one_file, source.fields(), source.read_grid(one_file[0]), None)
    assert all_nan == [f"rain.nc at {item.time}" for item in one_file]


def test_archive_readable_with_plain_xarray(tmp_path):
    _, url = ingest(tmp_path, ArraySource(times("2024-01-01T00:00", 5)))
    ds = xr.open_zarr(url, consolidated=False)
    assert ds["precip"].dims == ("time", "y", "x")
    assert ds["precip"].dtype == np.float32
    assert str(ds.time.values[0].astype("datetime64[s]")) == "2024-01-01T00:00:00"


@pytest.mark.fault("ingest", "--start that differs from an existing archive's start",
                   "refused naming both (it was ignored without a word); the archive's own start is accepted")
def test_a_start_other_than_the_archives_is_refused(tmp_path):
    _, url = ingest(tmp_path, ArraySource(times("2024-01-01T00:00", 4)))
    before = snapshot(url)
    with pytest.raises(IngestError, match="--start 2020-01-01T00:00 sets a new archive's first time"):
        ingest(tmp_path, ArraySource(times("2024-01-01T00:20", 2)), start="2020-01-01T00:00")
    assert snapshot(url) == before
    result, _ = ingest(tmp_path, ArraySource(times("2024-01-01T00:20", 2)), start="2024-01-01T00:00")
    assert result.frames_written == 2


@pytest.mark.fault("ingest", "synthetic frames of another --size into an existing archive",
                   "exit 2 naming both grids and the archive's --size; the archive unchanged (a Beam "
                   "traceback after the time axis had grown)")
def test_a_trusted_source_on_another_grid_is_refused_before_the_axis_grows(tmp_path):
    from nowcast.pipelines.sources import get_source

    url = str(tmp_path / "archive.zarr")
    run(IngestSpec(archive=url, source=get_source("synthetic", shape=(16, 16), n_frames=4), time_chunk=4))
    before = snapshot(url)
    larger = get_source("synthetic", shape=(32, 32), n_frames=8)
    with pytest.raises(IngestError, match=r"another grid than .* \(shape \(32, 32\) \(y, x\) instead of "
                                          r"\(16, 16\)\); nothing was written.*--size 16"):
        run(IngestSpec(archive=url, source=larger, time_chunk=4))
    assert snapshot(url) == before


@pytest.mark.fault("ingest", "another network's files, years away, into an existing archive",
                   "refused for the other grid, naming both shapes (it was refused for the empty steps the "
                   "years would add, which asked whether a time stamp was wrong)")
def test_another_networks_files_are_refused_for_their_grid_first(tmp_path):
    url = str(tmp_path / "archive.zarr")
    ingest(tmp_path, ArraySource(times("2024-01-01T00:00", 4)))
    before = snapshot(url)
    other = ArraySource(times("2031-06-01T00:00", 2), shape=(12, 20))
    with pytest.raises(IngestError, match=r"another grid than .* \(shape \(12, 20\) \(y, x\) instead of "):
        ingest(tmp_path, other)
    assert snapshot(url) == before


@pytest.mark.fault("ingest", "an ingest killed while it grew the time axis: after resizing some arrays, or "
                   "after every array had its length but before every chunk of the time values was written",
                   "the next ingest completes the extension and the archive equals an uninterrupted run's "
                   "(the first stayed part way for every rerun, exit 2; the second kept times of 1970 that "
                   "every rerun refused as duplicates)")
@pytest.mark.parametrize("stopped", ["arrays_resized", "time_values_part_written"])
def test_an_extension_stopped_anywhere_is_completed_by_the_next_ingest(tmp_path, stopped):
    import zarr

    from nowcast.pipelines.stores.groups import GROWING, arrays_along

    first, every = times("2024-01-01T00:00", 6), times("2024-01-01T00:00", 15)
    for folder in ("reference", "stopped"):
        (tmp_path / folder).mkdir()
        ingest(tmp_path / folder, ArraySource(first))
    reference = ingest(tmp_path / "reference", ArraySource(every))[1]
    url = str(tmp_path / "stopped" / "archive.zarr")
    group = zarr.open_group(url, mode="r+")
    if stopped == "arrays_resized":
        group["precip"].resize((15, *group["precip"].shape[1:]))
    else:  # as grow_axis leaves it: its mark set, every array resized, one late chunk of times written
        group["time"].attrs[GROWING] = 15
        for member in arrays_along(group, "time").values():
            member.resize((15, *member.shape[1:]))
        group["time"][12:] = zarr.open_group(reference)["time"][12:]
    with pytest.raises(Exception, match="part way through a time-axis extension"):
        read_info(url)
    ingest(tmp_path / "stopped", ArraySource(every))
    assert snapshot(url) == snapshot(reference)
