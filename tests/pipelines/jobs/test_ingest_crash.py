"""A SIGKILL part way through ingest, then a rerun, leaves the same bytes as one clean run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pause import kill_when_paused
from tests.pipelines.jobs.ingest_helpers import snapshot

FRAMES, SIZE, CHUNK = 480, 192, 8

pytestmark = pytest.mark.usefixtures("short_lock_lease")  # a killed run's lease ends in 10 s


def ingest_command(archive: Path) -> list[str]:
    return [sys.executable, "-m", "nowcast.flows.cli", "ingest", "--archive", str(archive), "--synthetic",
            "--frames", str(FRAMES), "--size", str(SIZE), "--time-chunk", str(CHUNK), "--seed", "3"]


def written_chunks(archive: Path) -> int:
    folder = archive / "valid" / "c"
    return len(os.listdir(folder)) if folder.is_dir() else 0


@pytest.mark.slow
@pytest.mark.fault("ingest", "SIGKILL part way through an ingest",
                   "the rerun ends byte-identical to an uninterrupted run")
def test_sigkill_then_rerun_is_byte_identical(tmp_path):
    clean = tmp_path / "clean.zarr"
    subprocess.run(ingest_command(clean), check=True, capture_output=True, timeout=300)

    crashed = tmp_path / "crashed.zarr"
    # paused after its second valid-flag chunk (flags are written last): killed part way, whatever the speed
    kill_when_paused(ingest_command(crashed), tmp_path / "paused", r"^valid/c/", 2)
    done_at_kill = written_chunks(crashed)
    total = FRAMES // CHUNK
    assert 0 < done_at_kill < total, f"kill did not land part way ({done_at_kill}/{total} chunks)"
    assert snapshot(str(crashed)) != snapshot(str(clean))

    rerun = subprocess.run(ingest_command(crashed), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert snapshot(str(crashed)) == snapshot(str(clean))
