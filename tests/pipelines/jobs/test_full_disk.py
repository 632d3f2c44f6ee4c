"""A disk that fills up during a write: a clear exit-2 message, a store that still opens, and a rerun
after freeing space that completes as if nothing had happened (a real tmpfs of 1 MiB, grown to 16 MiB)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nowcast.pipelines.stores.archive import read_info, valid_flags
from tests.pipelines.jobs.ingest_helpers import snapshot

FRAMES = ["--synthetic", "--frames", "200", "--size", "64"]  # about 1.6 MB of chunks: more than the disk


def nowcast(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NOWCAST_LOCK_LEASE_S": "10"}  # a lease left behind on the full disk ends soon
    return subprocess.run([sys.executable, "-m", "nowcast.flows.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs the right to mount, as root has; skipped without it)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
@pytest.mark.fault("stores", "the disk fills up during an ingest",
                   "exit 2 naming the store, the full disk and the fix; the store opens with the complete "
                   "chunks; after freeing space the rerun completes, equal to an uninterrupted run")
def test_a_disk_that_fills_up_during_ingest(small_disk, tmp_path):
    archive = small_disk / "archive.zarr"
    full = nowcast("ingest", "--archive", str(archive), *FRAMES)
    assert full.returncode == 2, full.stderr[-2000:]
    assert f"ingest could not write {archive}: the disk is full" in full.stderr
    assert "free space" in full.stderr
    assert "Traceback" not in full.stderr
    assert read_info(str(archive)).length == 200  # the store opens
    assert 0 < valid_flags(str(archive)).sum() < 200  # the chunks that were complete, and no others

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    rerun = nowcast("ingest", "--archive", str(archive), *FRAMES)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    reference = tmp_path / "reference.zarr"
    assert nowcast("ingest", "--archive", str(reference), *FRAMES).returncode == 0
    assert snapshot(str(archive)) == snapshot(str(reference))
    assert nowcast("check", str(archive)).returncode == 0
