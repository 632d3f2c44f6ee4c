"""A SIGKILL part way through ingest, then a rerun, leaves the same bytes as one clean run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pause import kill_at_points, kill_points
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
@pytest.mark.fault("ingest", "SIGKILL part way through an ingest, twice, at seeded points",
                   "the rerun ends byte-identical to an uninterrupted run")
def test_sigkill_then_rerun_is_byte_identical(tmp_path):
    clean = tmp_path / "clean.zarr"
    subprocess.run(ingest_command(clean), check=True, capture_output=True, timeout=300)

    crashed = tmp_path / "crashed.zarr"
    total = FRAMES // CHUNK
    done = []

    def part_way(_: int) -> None:
        done.append(written_chunks(crashed))
        assert 0 < done[-1] < total, f"kill did not land part way ({done[-1]}/{total} chunks)"

    # each run pauses after its N-th valid-flag chunk (flags are written last) and is killed there, whatever
    # the speed; the next run resumes and is killed at its own point (seeded: tests.pause.kill_points)
    kill_at_points(ingest_command(crashed), tmp_path, r"^valid/c/", kill_points(total), part_way)
    assert done == sorted(done), f"a resumed run lost chunks: {done}"
    assert snapshot(str(crashed)) != snapshot(str(clean))

    rerun = subprocess.run(ingest_command(crashed), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert snapshot(str(crashed)) == snapshot(str(clean))
