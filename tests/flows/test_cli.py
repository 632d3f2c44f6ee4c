"""The command line turns bad input into a clear message, exit status 2 and no output."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest

from nowcast.pipelines.stores.archive import open_archive
from tests.pipelines.jobs.ingest_helpers import snapshot


def nowcast(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nowcast.flows.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
@pytest.mark.fault("command line", "an empty input folder; files of no known format; an unknown --format",
                   "exit 2 naming the folder or the formats; no archive created")
def test_empty_folder_and_unknown_format_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    archive = tmp_path / "archive.zarr"
    result = nowcast("ingest", "--archive", str(archive), "--input", str(empty))
    assert result.returncode == 2
    assert "error:" in result.stderr
    assert str(empty) in result.stderr
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "frame_0001.tiff").write_bytes(b"II*\x00")
    result = nowcast("ingest", "--archive", str(archive), "--input", str(tmp_path / "odd"))
    assert result.returncode == 2
    assert "knmi" in result.stderr
    result = nowcast("ingest", "--archive", str(archive), "--input", str(empty), "--format", "gif")
    assert result.returncode == 2
    assert "--format 'gif' is not one nowcast reads: give one of auto, knmi" in result.stderr
    assert not archive.exists()


@pytest.mark.slow
@pytest.mark.fault("command line", "a corrupt radar file among good ones",
                   "exit 2 naming the file, archive unchanged; after removing it the rest ingests")
def test_corrupt_radar_file_leaves_archive_unchanged(tmp_path, radar_dir):
    files = sorted((radar_dir / "mch" / "20150515").iterdir())
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    for path in files[:6]:
        shutil.copy(path, first / path.name)
    for path in files[6:12]:
        shutil.copy(path, second / path.name)
    corrupt = second / files[9].name
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # a truncated download
    archive = tmp_path / "archive.zarr"
    assert nowcast("ingest", "--archive", str(archive), "--input", str(first)).returncode == 0
    before = snapshot(str(archive))
    result = nowcast("ingest", "--archive", str(archive), "--input", str(second))
    assert result.returncode == 2
    assert corrupt.name in result.stderr
    assert "nothing was written" in result.stderr
    assert snapshot(str(archive)) == before
    corrupt.unlink()
    assert nowcast("ingest", "--archive", str(archive), "--input", str(second)).returncode == 0
    ds = open_archive(str(archive))
    assert ds.sizes["time"] == 12
    assert ds["valid"].values.tolist() == [True] * 9 + [False] + [True] * 2


@pytest.mark.fault("command line", "an internal bug raising ValueError",
                   "keeps its traceback (exit 1); only input errors exit 2 with a message")
def test_only_input_errors_are_reported_as_bad_input(tmp_path, capsys, monkeypatch):
    """Every ValueError, internal bugs included, was once printed as the user's mistake with exit 2."""
    from nowcast.errors import InputError
    from nowcast.flows import cli

    monkeypatch.setattr(cli, "cmd_ingest", lambda args: (_ for _ in ()).throw(ValueError("a bug's message")))
    with pytest.raises(ValueError, match="a bug's message"):  # a traceback, exit 1
        cli.main(["ingest", "--synthetic", "--archive", str(tmp_path / "a.zarr")])
    monkeypatch.setattr(cli, "cmd_ingest", lambda args: (_ for _ in ()).throw(InputError("bad; fix it")))
    assert cli.main(["ingest", "--synthetic", "--archive", str(tmp_path / "a.zarr")]) == 2
    assert "nowcast ingest: error: bad; fix it" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_stops_a_watch_without_duration_cleanly(tmp_path):
    """A service manager's stop ends `nowcast watch` after its poll in progress, with its summary and
    exit 0 (without --duration it once failed at once: an infinite stop time overflowed Beam's timestamp)."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        watch = subprocess.Popen([sys.executable, "-m", "nowcast.flows.cli", "-v", "watch",
                                  "--archive", str(tmp_path / "archive.zarr"), "--input", str(incoming),
                                  "--format", "knmi", "--interval", "0.2"],
                                 stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + 240
        while f"poll of {incoming}" not in log.read_text():  # it polls: the empty folder is logged
            assert watch.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the watch never polled"
            time.sleep(0.1)
        watch.send_signal(signal.SIGTERM)
        out, _ = watch.communicate(timeout=120)
    finally:
        watch.kill()
    assert watch.returncode == 0, log.read_text()[-3000:]
    assert "stopping after the poll in progress" in log.read_text()
    assert "0 frames appended" in out


@pytest.mark.fault("command line", "`watch --input` of a folder that does not exist",
                   "exit 2 naming the folder and the fix before it polls (it polled, warned every poll and "
                   "ended with exit 0)")
def test_watching_a_folder_that_does_not_exist_is_refused(tmp_path, capsys):
    from nowcast.flows import cli

    assert cli.main(["watch", "--archive", str(tmp_path / "a.zarr"), "--input", str(tmp_path / "nowhere"),
                     "--format", "knmi", "--duration", "1"]) == 2
    assert f"the folder to watch, {tmp_path / 'nowhere'}, does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
