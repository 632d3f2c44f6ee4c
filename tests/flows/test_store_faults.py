"""Store- and file-system-level faults on the command line: exit 2 with the path, the problem and a fix
that never destroys what is there; nothing is written. (Before: tracebacks, or "no archive ... create it
by ingesting" about a folder full of data.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nowcast.flows import cli
from tests.pipelines.jobs.ingest_helpers import snapshot

pytestmark = pytest.mark.xdist_group(__name__)  # its module fixture is built once, on one worker

SYNTHETIC = ["--synthetic", "--frames", "8", "--size", "16"]


def make_file(good: Path, bad: Path) -> None:
    bad.write_text("not a store")


def delete_root_metadata(good: Path, bad: Path) -> None:
    shutil.copytree(good, bad)
    (bad / "zarr.json").unlink()


def truncate_root_metadata(good: Path, bad: Path) -> None:
    shutil.copytree(good, bad)
    (bad / "zarr.json").write_bytes((good / "zarr.json").read_bytes()[:50])


def make_zarr_v2(good: Path, bad: Path) -> None:
    import zarr

    zarr.open_group(str(bad), mode="w", zarr_format=2).create_array("precip", shape=(3,), dtype="f4")


def digest(path: Path) -> dict[str, str]:
    return {"": path.read_text()} if path.is_file() else snapshot(str(path))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "archive.zarr"
    assert cli.main(["ingest", "--archive", str(path), *SYNTHETIC]) == 0
    return path


@pytest.mark.fault("stores", "the archive path is a file, a zarr v2 store, or a store whose root zarr.json "
                   "is deleted or truncated",
                   "summary and ingest exit 2 naming the path, the problem and a fix that keeps the data; "
                   "nothing written")
@pytest.mark.parametrize(("damage", "message"), [
    (make_file, "is a file, not a store folder"),
    (delete_root_metadata, "entries but no zarr.json"),
    (truncate_root_metadata, "zarr.json cannot be read"),
    (make_zarr_v2, "is a zarr v2 store; nowcast reads and writes zarr v3"),
], ids=["file", "no-zarr-json", "truncated-zarr-json", "zarr-v2"])
def test_a_path_that_is_not_a_v3_store_is_named_and_left_alone(good, tmp_path, capsys, damage, message):
    bad = tmp_path / "archive.zarr"
    damage(good, bad)
    before = digest(bad)
    for command in (["summary", str(bad)], ["ingest", "--archive", str(bad), *SYNTHETIC]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert message in err
        assert str(bad) in err
        assert "create it by ingesting" not in err
    assert digest(bad) == before


@pytest.mark.fault("stores", "a store URL whose scheme needs a package that is not installed",
                   "exit 2 naming the URL and the package to install")
def test_a_url_whose_filesystem_is_not_installed_is_named(capsys):
    assert cli.main(["summary", "abfs://container/archive.zarr"]) == 2
    err = capsys.readouterr().err
    assert "abfs://container/archive.zarr" in err
    assert "adlfs" in err


@pytest.mark.fault("windows", "windows output, with overwrite, pointing at a store of another kind",
                   "refused: overwrite replaces only windows stores; the store is unchanged")
def test_windows_overwrite_never_replaces_another_store(good, tmp_path):
    from nowcast.pipelines.jobs.windows import WindowJob, run_in_process
    from nowcast.pipelines.plans.window_spec import WindowSpec
    from nowcast.pipelines.stores.windows import WindowsError

    other = tmp_path / "other.zarr"
    shutil.copytree(good, other)
    before = snapshot(str(other))
    job = WindowJob(str(good), str(other), WindowSpec(("precip",), "precip", t_in=2, t_out=1), overwrite=True)
    with pytest.raises(WindowsError, match="not a windows store"):
        run_in_process(job)
    assert snapshot(str(other)) == before


@pytest.mark.fault("stores", "a windows store given as the archive to summary, ingest or windows",
                   "exit 2 naming its kind (it was called \"not written by nowcast: re-ingest\"); unchanged")
def test_a_windows_store_given_as_archive_is_named_by_its_kind(good, tmp_path, capsys):
    from nowcast.pipelines.jobs.windows import WindowJob, run_in_process
    from nowcast.pipelines.plans.window_spec import WindowSpec

    windows = tmp_path / "windows.zarr"
    run_in_process(WindowJob(str(good), str(windows), WindowSpec(("precip",), "precip", t_in=2, t_out=1)))
    before = snapshot(str(windows))
    for command in (["summary", str(windows)], ["ingest", "--archive", str(windows), *SYNTHETIC],
                    ["windows", "--archive", str(windows), "--windows", str(tmp_path / "w2.zarr")]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert f"{windows} is a windows store, not an archive" in err, err
    assert snapshot(str(windows)) == before


@pytest.fixture
def read_only_mount(tmp_path):
    """A folder on a file system of its own (tmpfs), with ``remount(read_only)``: permissions do not stop
    root, a read-only mount does. Skipped where this user may not mount."""
    import subprocess

    folder = tmp_path / "mount"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("this user may not mount a file system (a read-only mount needs one)")

    def remount(read_only: bool) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(folder)], check=True)

    try:
        yield folder, remount
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.fault("stores", "an archive on a read-only file system that radar files are ingested into; a "
                   "work folder (train, evaluate) on one",
                   "exit 2 saying the file system is read-only, with the fix; nothing written (ingest's "
                   "check step and the work folder's lock were OSError tracebacks, exit 1)")
def test_a_read_only_file_system_is_named(read_only_mount, radar_dir, capsys):
    from nowcast.flows.workdir import held
    from nowcast.pipelines.stores.groups import StoreError
    from nowcast.pipelines.stores.lock import store_lock
    from tests.pipelines.sources.test_radar import copied_into

    folder, remount = read_only_mount
    knmi = sorted((radar_dir / "knmi").rglob("*.h5"))[:4]
    incoming = copied_into(folder / "in", knmi[:2])
    archive = folder / "archive.zarr"
    assert cli.main(["ingest", "--archive", str(archive), "--input", str(incoming)]) == 0
    for path in knmi[2:]:
        shutil.copy(path, incoming / path.name)
    before = snapshot(str(archive))
    remount(read_only=True)
    for runner in ("inmemory", "multiprocess"):
        command = ["ingest", "--archive", str(archive), "--input", str(incoming), "--runner", runner]
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert f"ingest could not write {archive}: it is on a read-only file system" in err, err
        assert "give a writable location, or remount it writable" in err
    assert snapshot(str(archive)) == before
    with pytest.raises(StoreError, match=r"the work folder .* cannot be written \(.* is on a read-only file"):
        held(folder / "train", "x").__enter__()
    forecasts = folder / "forecasts.zarr"  # the store's lock, the first write of a scoring run
    with pytest.raises(StoreError, match=r"could not write .*forecasts.zarr: it is on a read-only file"):
        store_lock(str(forecasts), "score").__enter__()
    assert sorted(path.name for path in folder.iterdir()) == ["archive.zarr", "archive.zarr.lock", "in"]


@pytest.mark.fault("ingest", "an ingest killed (SIGKILL) while it checked the frames",
                   "a later ingest into that archive removes the check folder it left beside the archive "
                   "once nothing was written in it for an hour (each run's had a new name, and none was "
                   "ever removed); a running check's is left alone")
def test_check_reports_left_by_a_killed_ingest_are_removed(tmp_path, radar_dir):
    import os
    import time

    from nowcast.pipelines.jobs.ingest import ABANDONED_CHECK_S
    from tests.pipelines.sources.test_radar import copied_into

    knmi = sorted((radar_dir / "knmi").rglob("*.h5"))[:4]
    incoming = copied_into(tmp_path / "in", knmi[:2])
    archive = tmp_path / "archive.zarr"
    assert cli.main(["ingest", "--archive", str(archive), "--input", str(incoming)]) == 0
    killed, running = (tmp_path / f"archive.zarr.check-{hex12}" for hex12 in ("0123456789ab", "ba98765432"))
    users = tmp_path / "archive.zarr.check-backup-2024"  # named like one, but not a name ingest makes
    for folder in (killed, running, users):
        folder.mkdir()
        (folder / "report.json").write_text("{}")
    then = time.time() - ABANDONED_CHECK_S - 60
    for file in (killed / "report.json", users / "report.json"):
        os.utime(file, (then, then))
    for path in knmi[2:]:
        shutil.copy(path, incoming / path.name)
    assert cli.main(["ingest", "--archive", str(archive), "--input", str(incoming)]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["archive.zarr", "archive.zarr.lock", "in", running.name, users.name])
