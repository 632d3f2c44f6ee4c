"""`nowcast check` finds damaged chunks of every kind of store; `ingest --repair` rewrites an archive's.

Before these, a truncated data chunk passed `summary` ("48 valid") and ingest
("already present"), and only failed later, in windowing or scoring.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nowcast.pipelines.jobs.ingest import IngestError, IngestSpec, ingest_items
from nowcast.pipelines.sources import get_source
from nowcast.pipelines.stores.archive import ArchiveError, open_archive
from nowcast.pipelines.stores.groups import StoreError
from nowcast.pipelines.stores.integrity import check_store
from tests.pipelines.jobs.ingest_helpers import snapshot
from tests.pipelines.jobs.scoring_helpers import make_archive, save_tiny_model, synthetic_stats

FRAMES, SIZE, CHUNK = 24, 32, 8
SYNTHETIC = ["--synthetic", "--frames", str(FRAMES), "--size", str(SIZE), "--time-chunk", str(CHUNK)]


def nowcast(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nowcast.flows.cli", *args], capture_output=True, text=True,
                          timeout=300)


def source(frames: int = FRAMES):
    return get_source("synthetic", shape=(SIZE, SIZE), n_frames=frames, seed=0)


@pytest.fixture
def archive(tmp_path) -> Path:
    """A 24-frame archive in three chunks, as `nowcast ingest --synthetic` writes it."""
    path = tmp_path / "archive.zarr"
    ingest_items(IngestSpec(archive=str(path), source=source(), time_chunk=CHUNK), source().items(), None)
    return path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # same length, still a zstd frame: only its checksum tells
    path.write_bytes(bytes(data))


def test_a_sound_archive_reads_whole(archive):
    report = check_store(str(archive))
    assert report.ok
    assert report.kind == "archive"
    assert report.chunks_read > 3 * 2  # every data, stats and flag chunk


@pytest.mark.parametrize("damage", [truncate, flip_a_bit], ids=["truncated", "flipped-bit"])
@pytest.mark.fault("stores", "a data chunk truncated or with a flipped bit",
                   "`check` names it with its times and the --repair fix")
def test_a_damaged_data_chunk_is_found_and_named_by_its_times(archive, damage):
    damage(archive / "precip" / "c" / "1" / "0" / "0")
    report = check_store(str(archive))
    assert [(d.array, d.chunk) for d in report.damaged] == [("precip", (1, 0, 0))]
    assert "2024-01-01T00:40 .. 2024-01-01T01:15" in report.text()
    assert "unreadable" in report.text()
    assert "--repair" in report.fix()


@pytest.mark.fault("stores", "a data chunk deleted while its frames are flagged valid",
                   "`check` reports it missing")
def test_a_chunk_flagged_valid_but_gone_is_missing(archive):
    os.remove(archive / "precip" / "c" / "2" / "0" / "0")
    (damage,) = check_store(str(archive)).damaged
    assert (damage.array, damage.first, damage.stop) == ("precip", 16, 24)
    assert damage.problem.startswith("missing")


@pytest.mark.fault("stores", "a data chunk deleted while its frames are flagged valid, then read by a job "
                   "(windows, scoring, `show`)",
                   "the read names the chunk, its times and the --repair fix (zarr read it as NaN: NaN "
                   "windows, a model trained on them, forecasts of NaN marked written and a blank map, all "
                   "exit 0)")
def test_a_missing_chunk_is_named_by_the_jobs_that_read_it(archive, tmp_path):
    from nowcast.pipelines.jobs.scoring import read_windows
    from nowcast.pipelines.stores.groups import array, open_group
    from nowcast.pipelines.stores.integrity import StoreDamagedError, read_span

    url = str(archive)
    whole = read_span(url, array(open_group(url), "precip"), 0, FRAMES)  # a sound archive reads as before
    assert not np.isnan(whole).all(axis=(1, 2)).any()
    os.remove(archive / "precip" / "c" / "1" / "0" / "0")
    named = (r"precip chunk 1 \(2024-01-01T00:40 .. 2024-01-01T01:15\): a chunk object is missing: 0 of a "
             r"frame's pixels read as observed where ingest wrote 1.*--repair")
    with pytest.raises(StoreDamagedError, match=named):
        read_span(url, array(open_group(url), "precip"), 4, 12)
    np.testing.assert_array_equal(read_span(url, array(open_group(url), "precip"), 16, 24), whole[16:])
    with pytest.raises(StoreDamagedError, match=named):
        list(read_windows(url, ["precip"], 4, [10]))
    shown = nowcast("show", url, "--out", str(tmp_path / "map.png"), "--time", "2024-01-01T01:00")
    assert shown.returncode == 2
    assert "missing" in shown.stderr
    assert "--repair" in shown.stderr
    assert not (tmp_path / "map.png").exists()


@pytest.mark.fault("stores", "new frames merged into a time chunk whose object was deleted while its frames "
                   "are flagged valid",
                   "refused before any write, naming the chunk and --repair (the valid frames were stored as "
                   "NaN and stayed flagged valid, exit 0)")
def test_merging_into_a_missing_chunk_is_refused(tmp_path):
    url = str(tmp_path / "archive.zarr")
    ingest_items(IngestSpec(archive=url, source=source(20), time_chunk=CHUNK), source(20).items(), None)
    os.remove(tmp_path / "archive.zarr" / "precip" / "c" / "2" / "0" / "0")  # frames 16-19
    before = snapshot(url)
    with pytest.raises(ArchiveError, match=r"chunk 2/0/0 of .*precip \(time index 16\) is missing.*--repair"):
        ingest_items(IngestSpec(archive=url, source=source()), source().items()[20:], None)
    assert snapshot(url) == before


@pytest.mark.slow
@pytest.mark.fault("stores", "a truncated data chunk and a truncated flag chunk",
                   "`check` exit 2 with the fix; ingest refuses to merge (bytes unchanged); "
                   "`--repair` restores the original bytes")
def test_check_then_repair_from_the_command_line(tmp_path):
    archive = tmp_path / "archive.zarr"
    assert nowcast("ingest", "--archive", str(archive), *SYNTHETIC).returncode == 0
    sound = snapshot(str(archive))
    truncate(archive / "precip" / "c" / "1" / "0" / "0")
    truncate(archive / "valid" / "c" / "2")
    damaged = snapshot(str(archive))

    result = nowcast("check", str(archive))
    assert result.returncode == 2
    assert "precip chunk 1/0/0 (2024-01-01T00:40 .. 2024-01-01T01:15): unreadable" in result.stderr
    assert "valid chunk 2" in result.stderr
    assert "--repair" in result.stderr
    assert "Traceback" not in result.stderr

    # a plain ingest that would merge into the damaged chunk refuses before writing anything
    appended = nowcast("ingest", "--archive", str(archive), *SYNTHETIC[:1], "--frames", "30",
                       *SYNTHETIC[3:], "--overwrite")
    assert appended.returncode == 2
    assert "cannot be read" in appended.stderr
    assert "--repair" in appended.stderr
    assert snapshot(str(archive)) == damaged

    repaired = nowcast("ingest", "--archive", str(archive), *SYNTHETIC, "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert "repaired 2 damaged chunks of" in repaired.stdout
    assert "(16 frames rewritten, 0 missing or all-NaN)" in repaired.stdout
    assert snapshot(str(archive)) == sound
    assert nowcast("check", str(archive)).returncode == 0
    again = nowcast("ingest", "--archive", str(archive), *SYNTHETIC, "--repair")
    assert again.returncode == 0, again.stderr
    assert f"repair: no damaged chunk in {archive}; nothing was rewritten" in again.stdout
    assert not again.stderr.strip()  # no WARNING line for a healthy archive


@pytest.mark.fault("stores", "`--repair` without all frames of a damaged chunk, also with frames later than "
                   "the archive's end", "refused naming the missing times; bytes unchanged (with the later "
                   "frames, the refused repair had grown the time axis)")
def test_repair_refuses_when_the_input_lacks_valid_frames_of_a_damaged_chunk(archive, caplog):
    truncate(archive / "precip" / "c" / "1" / "0" / "0")
    damaged = snapshot(str(archive))
    partial = source().items()[:12]  # ends half way through the damaged chunk
    with pytest.raises(IngestError, match=r"lacks 4 valid frame\(s\) of them \(2024-01-01T01:00"):
        ingest_items(IngestSpec(archive=str(archive), source=source(), repair=True), partial, None)
    assert snapshot(str(archive)) == damaged
    longer = source(FRAMES + 4)
    with pytest.raises(IngestError, match=r"lacks 4 valid frame\(s\) of them"):
        ingest_items(IngestSpec(archive=str(archive), source=longer, repair=True),
                     longer.items()[:12] + longer.items()[FRAMES:], None)
    assert snapshot(str(archive)) == damaged
    with caplog.at_level("WARNING", logger="nowcast.pipelines.jobs.ingest"):  # repaired: the rest is said
        ingest_items(IngestSpec(archive=str(archive), source=longer, repair=True), longer.items(), None)
    assert "4 frame(s) of the input lie past the archive's end and were not written" in caplog.text


def test_merging_into_a_damaged_chunk_is_refused_by_the_job(archive):
    truncate(archive / "precip" / "c" / "2" / "0" / "0")
    longer = source(FRAMES + 2)
    with pytest.raises(ArchiveError, match=r"chunk 2/0/0 of .*precip \(time index 16\) cannot be read"):
        ingest_items(IngestSpec(archive=str(archive), source=longer, overwrite=True), longer.items()[16:],
                     None)


@pytest.mark.fault("stores", "a damaged forecast or windows chunk",
                   "`check` names it with the fix for that store")
def test_forecast_and_windows_stores_are_checked_with_their_own_fix(tmp_path):
    from nowcast.pipelines.jobs.scoring import run
    from nowcast.pipelines.jobs.windows import WindowJob, run_in_process
    from nowcast.pipelines.plans.scoring import ScoringSpec
    from nowcast.pipelines.plans.window_spec import SplitSpec, WindowSpec

    archive = make_archive(str(tmp_path / "archive.zarr"), frames=16)
    save_tiny_model(tmp_path / "models", archive, synthetic_stats(frames=16))
    forecasts = str(tmp_path / "forecasts.zarr")
    run(ScoringSpec(archive=archive, forecasts=forecasts, models=str(tmp_path / "models"), model="tiny"))
    windows = str(tmp_path / "windows.zarr")
    everything_trains = SplitSpec(fractions=(1.0, 0.0, 0.0))
    run_in_process(WindowJob(archive, windows, WindowSpec(("precip",), "precip", t_in=3, t_out=2,
                                                          patch_size=(16, 16), split=everything_trains)))
    assert check_store(forecasts).ok
    assert check_store(windows).ok

    chunk = sorted((tmp_path / "forecasts.zarr" / "precip" / "c").rglob("*"))
    truncate(next(p for p in chunk if p.is_file()))
    report = check_store(forecasts)
    assert report.kind == "forecasts"
    assert len(report.damaged) == 1
    assert "rescore those init times" in report.text()

    inputs = tmp_path / "windows.zarr" / "train" / "inputs" / "c"
    truncate(next(p for p in inputs.rglob("*") if p.is_file()))
    report = check_store(windows)
    assert report.kind == "windows"
    assert report.damaged[0].array == "train/inputs"
    assert "rerun the windows job" in report.text()
    np.testing.assert_array_equal(open_archive(archive)["valid"].values, True)


@pytest.mark.fault("stores", "a windows store that lost a sample chunk; a forecast store whose scoring "
                   "stopped between an init time's data and its flag",
                   "check names the lost chunk with the fix (rerun windows; it said none damaged, and the "
                   "chunk read as NaN samples); the unflagged init time is named with a plain rerun of the "
                   "scoring as its fix (it had said rescore with overwrite)")
def test_a_lost_windows_chunk_and_an_unflagged_forecast_are_told_apart(tmp_path):
    import zarr

    from nowcast.pipelines.jobs.scoring import run
    from nowcast.pipelines.jobs.windows import WindowJob, run_in_process
    from nowcast.pipelines.plans.scoring import ScoringSpec
    from nowcast.pipelines.plans.window_spec import SplitSpec, WindowSpec

    archive = make_archive(str(tmp_path / "archive.zarr"), frames=16)
    windows = str(tmp_path / "windows.zarr")
    run_in_process(WindowJob(archive, windows, WindowSpec(("precip",), "precip", t_in=3, t_out=2,
                                                          patch_size=(16, 16), samples_per_chunk=4,
                                                          split=SplitSpec(fractions=(1.0, 0.0, 0.0)))))
    assert check_store(windows).ok
    targets = tmp_path / "windows.zarr" / "train" / "targets" / "c"
    chunks = sorted(p for p in targets.rglob("*") if p.is_file())  # c/<sample chunk>/0/0/0/0
    assert len(chunks) > 1
    chunks[1].unlink()
    report = check_store(windows)
    assert [(d.array, d.chunk[0], d.problem) for d in report.damaged] == [
        ("train/targets", int(chunks[1].parts[-5]),
         "missing: the windows job stored this chunk (lost since)")]
    assert "rerun the windows job" in report.fix()

    save_tiny_model(tmp_path / "models", archive, synthetic_stats(frames=16))
    forecasts = str(tmp_path / "forecasts.zarr")
    run(ScoringSpec(archive=archive, forecasts=forecasts, models=str(tmp_path / "models"), model="tiny"))
    written = zarr.open_array(f"{forecasts}/written", mode="r+")
    written[:] = False  # as a kill between the data and the flags leaves a chunk of them
    report = check_store(forecasts)
    assert report.damaged
    assert {d.array for d in report.damaged} == {"written"}
    assert report.fix().startswith("rerun the scoring over those init times")


@pytest.mark.fault("windows", "a windows store that an interrupted run of an older nowcast left (samples "
                   "promised but never written, no normalisation)",
                   "`check` exit 2 naming what is missing and the fix (rerun `nowcast windows`); training "
                   "and evaluation refuse to open it, with the same fix")
def test_an_unfinished_windows_store_is_found_by_check_and_refused_on_opening(tmp_path):
    from nowcast.pipelines.jobs.windows import WindowJob
    from nowcast.pipelines.plans.window_spec import SplitSpec, WindowSpec
    from nowcast.pipelines.stores.windows import WindowsError, WindowsStore

    archive = make_archive(str(tmp_path / "archive.zarr"), frames=16)
    windows = str(tmp_path / "windows.zarr")
    spec = WindowSpec(("precip",), "precip", t_in=3, t_out=2, split=SplitSpec(fractions=(1.0, 0.0, 0.0)))
    WindowJob(archive, windows, spec).prepare()  # what such a run left: the store at its size, nothing cut
    assert [d.array for d in check_store(windows).damaged] == ["normalization", "train/inputs"]
    result = nowcast("check", windows)
    assert result.returncode == 2
    assert "12 samples promised, none stored" in result.stderr
    assert "rerun the windows job (`nowcast windows`" in result.stderr
    with pytest.raises(WindowsError, match=r"incomplete.*rerun `nowcast windows`"):
        WindowsStore(windows, "train")


@pytest.mark.parametrize(("lost", "found"), [
    ("time/c/1", ("time", (1,), "values off the store's start and step")),
    ("valid/c/0", ("valid", (0,), "no frame flagged, though precip holds data there")),
    ("precip_mean/c/2", ("precip_mean", (2,), "no value at valid entries")),
], ids=["time", "flags", "statistics"])
@pytest.mark.fault("stores", "a chunk of the time coordinate, the valid flags or a statistic deleted (it "
                   "reads as its fill value, without an error)",
                   "`check` names it with the --repair fix, which restores the original bytes")
def test_a_lost_chunk_of_a_small_array_is_found_and_repaired(archive, lost, found):
    sound = snapshot(str(archive))
    os.remove(archive / lost)
    report = check_store(str(archive))
    assert [(d.array, d.chunk) for d in report.damaged] == [found[:2]]
    assert found[2] in report.text()
    assert "--repair" in report.fix()
    # lost flags are also what an interrupted ingest leaves (it flags last): its rerun is said first
    assert ("if an ingest was interrupted there, rerun it" in report.fix()) == (found[0] == "valid")
    ingest_items(IngestSpec(archive=str(archive), source=source(), time_chunk=CHUNK, repair=True),
                 source().items(), None)
    assert snapshot(str(archive)) == sound
    assert check_store(str(archive)).ok


@pytest.mark.fault("stores", "a grid coordinate's chunk deleted, or an axis of two lengths",
                   "`check` names it with its own fix (restore a copy; rerun the ingest)")
def test_lost_grid_coordinates_and_an_axis_of_two_lengths_are_found(archive, tmp_path):
    import shutil

    import zarr

    copy = tmp_path / "copy.zarr"
    shutil.copytree(archive, copy)
    os.remove(archive / "x" / "c" / "0")
    report = check_store(str(archive))
    assert [d.array for d in report.damaged] == ["x"]
    assert "restore the store from a copy" in report.fix()
    zarr.open_array(str(copy / "precip"), mode="r+").resize((16, SIZE, SIZE))  # an extension half done
    report = check_store(str(copy))
    assert "lengths [16, 24]" in report.text()
    assert "rerun the job" in report.fix()


@pytest.mark.parametrize(("damage", "member"), [("garbage", "precip"), ("deleted", "precip"),
                                                ("deleted", "time"), ("deleted", "x"),
                                                ("deleted", "precip_finite_fraction")])
@pytest.mark.fault("stores", "an array's zarr.json that is not zarr metadata, or deleted (a field's, or "
                   "a coordinate's)", "every reader (check, summary, ingest, windows) refuses naming the "
                   "file and the fix, no traceback (a deleted time or x zarr.json was a KeyError traceback "
                   "from ingest; a statistic's was passed over by ingest and windows, exit 0)")
def test_damaged_array_metadata_is_named_by_every_reader(archive, damage, member):
    from nowcast.pipelines.stores.archive import read_info

    meta = archive / member / "zarr.json"
    if damage == "garbage":
        meta.write_text("{garbage")
    else:
        meta.unlink()
    named = rf"metadata of {member}/zarr\.json .*restore the store from a copy"
    with pytest.raises(StoreError, match=named):
        check_store(str(archive))
    with pytest.raises(ArchiveError, match=named):
        read_info(str(archive))  # what ingest and windows open it with
    if damage == "garbage":  # without its zarr.json zarr does not see the array at all
        with pytest.raises(ArchiveError, match=r"metadata of precip/zarr\.json"):
            open_archive(str(archive))
    result = nowcast("summary", str(archive))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "ZarrUserWarning" not in result.stderr
    assert f"metadata of {member}/zarr.json" in result.stderr


@pytest.mark.fault("stores", "a grid coordinate's chunk truncated (x or y)",
                   "`check` lists it, with no time span, and restoring a copy as the fix; every job that "
                   "opens the archive names it with that fix (a Zstd traceback, exit 1, from check, ingest, "
                   "summary and windows)")
def test_a_truncated_grid_coordinate_is_named_by_check_and_the_jobs(archive):
    from nowcast.pipelines.stores.archive import read_info

    truncate(archive / "y" / "c" / "0")
    report = check_store(str(archive))
    assert [d.array for d in report.damaged] == ["y"]
    assert "\n  y chunk 0: unreadable (" in report.text()
    assert "restore the store from a copy" in report.fix()
    with pytest.raises(ArchiveError, match=r"the grid coordinates of .* cannot be read \(.*\): restore the "
                                           r"store from a copy"):
        read_info(str(archive))


@pytest.mark.fault("stores", "a statistic's array gone whole (folder and all), or an axis coordinate still "
                   "marked as growing (an ingest killed while it wrote the times)",
                   "`check` names it with its fix and every job refuses the archive (check said none damaged "
                   "while the jobs failed, or a KeyError traceback)")
def test_a_lost_statistic_and_a_marked_extension_are_found_by_check(archive, tmp_path):
    import shutil

    import zarr

    from nowcast.pipelines.stores.archive import read_info
    from nowcast.pipelines.stores.groups import GROWING

    marked = tmp_path / "marked.zarr"
    shutil.copytree(archive, marked)
    shutil.rmtree(archive / "precip_mean")
    report = check_store(str(archive))
    assert [d.array for d in report.damaged] == ["precip_mean"]
    assert report.fix() == "restore the store from a copy, or ingest its files into a new archive"
    with pytest.raises(ArchiveError, match=r"lacks the per-frame statistics \['precip_mean'\]: restore"):
        read_info(str(archive))
    zarr.open_group(str(marked), mode="r+")["time"].attrs[GROWING] = 24
    report = check_store(str(marked))
    assert "time: an extension of the axis was interrupted while its values were written" in report.text()
    assert "it completes the interrupted extension" in report.fix()
