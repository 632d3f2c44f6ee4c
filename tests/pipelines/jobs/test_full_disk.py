"""A disk that fills up during a write: a clear exit-2 message, a store that still opens, and a rerun
after freeing space that completes as if nothing had happened (a real tmpfs of 4 MiB, which the ingest
fits until, paused after two chunks, another file takes the rest: ingest's check of the space it needs
passes, and the disk still fills up under it)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nowcast.pipelines.stores.archive import read_info, valid_flags
from tests.pause import pause_env, paused_pid
from tests.pipelines.jobs.ingest_helpers import snapshot

FRAMES = ["--synthetic", "--frames", "200", "--size", "64"]  # about 1.6 MB of chunks, 25 of them


def nowcast(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**(env or os.environ), "NOWCAST_LOCK_LEASE_S": "10"}  # a lease left on the full disk ends soon
    return subprocess.run([sys.executable, "-m", "nowcast.flows.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def fill(disk: Path) -> Path:
    """A file that takes every byte left on ``disk``."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):  # ENOSPC: full
        while True:
            handle.write(b"\0" * 65536)
    return filler


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs the right to mount, as root has; skipped without it)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
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
    paused, go = tmp_path / "paused", tmp_path / "go"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(nowcast, "ingest", "--archive", str(archive), *FRAMES,
                              env=pause_env(paused, r"^valid/c/", 2, go=go))
        try:
            paused_pid(paused)  # bounded: raises after its timeout
            filler = fill(small_disk)
        finally:
            go.touch()
        full = running.result(timeout=600)
    assert full.returncode == 2, full.stderr[-2000:]
    assert f"ingest could not write {archive}: the disk is full" in full.stderr
    assert "free space" in full.stderr
    assert "Traceback" not in full.stderr
    assert read_info(str(archive)).length == 200  # the store opens
    assert 0 < valid_flags(str(archive)).sum() < 200  # the chunks that were complete, and no others

    filler.unlink()
    rerun = nowcast("ingest", "--archive", str(archive), *FRAMES)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    reference = tmp_path / "reference.zarr"
    assert nowcast("ingest", "--archive", str(reference), *FRAMES).returncode == 0
    assert snapshot(str(archive)) == snapshot(str(reference))
    assert nowcast("check", str(archive)).returncode == 0
