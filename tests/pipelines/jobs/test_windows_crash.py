"""A SIGKILL part way through the windows job, then a rerun, gives the bytes of one clean run."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from nowcast.pipelines.jobs.windows import WindowJob, run
from nowcast.pipelines.plans.window_spec import SplitSpec, WindowSpec
from tests.pause import kill_at_points, kill_points
from tests.pipelines.jobs.ingest_helpers import snapshot
from tests.pipelines.jobs.scoring_helpers import make_archive

pytestmark = pytest.mark.usefixtures("short_lock_lease")  # a killed run's lease ends in 10 s
SPEC = WindowSpec(("precip",), "precip", t_in=4, t_out=3, patch_size=(16, 16),
                  split=SplitSpec(block="PT1H", fractions=(0.8, 0.2, 0.0), method="contiguous"))
CHILD = """
import sys
from nowcast.pipelines.jobs.windows import WindowJob, run
from tests.pipelines.jobs.test_windows_crash import SPEC
run(WindowJob(sys.argv[1], sys.argv[2], SPEC, overwrite=True))
"""


def chunks_written(output: Path) -> int:
    folder = output / "train" / "inputs" / "c"
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


@pytest.mark.slow
@pytest.mark.fault("windows", "SIGKILL part way through the windows job over an existing windows store, "
                   "twice, at seeded points",
                   "the previous store stays byte-identical (the job builds beside it); the rerun "
                   "(overwrite) removes the killed runs' copies and ends byte-identical to an "
                   "uninterrupted run")
def test_sigkill_then_rerun_is_byte_identical(tmp_path):
    archive = make_archive(str(tmp_path / "archive.zarr"), frames=240, size=(64, 64), time_chunk=24)
    clean = tmp_path / "clean.zarr"
    run(WindowJob(archive, str(clean), SPEC))
    total = chunks_written(clean)

    crashed = tmp_path / "crashed.zarr"
    run(WindowJob(archive, str(crashed), dataclasses.replace(SPEC, t_out=2)))  # the previous windows
    previous = snapshot(str(crashed))

    def part_way(_: int) -> None:
        staged = list(tmp_path.glob("crashed.zarr.creating-*"))  # the killed run's copy, beside the store
        assert len(staged) == 1, staged
        at_kill = chunks_written(staged[0])
        assert 0 < at_kill < total, f"kill did not land part way ({at_kill}/{total} chunks)"
        assert snapshot(str(crashed)) == previous

    # killed at one seeded point, then the rerun (overwrite) at another (tests.pause.kill_points)
    kill_at_points([sys.executable, "-c", CHILD, archive, str(crashed)], tmp_path, r"^train/inputs/c/",
                   kill_points(total), part_way)

    run(WindowJob(archive, str(crashed), SPEC, overwrite=True))
    assert snapshot(str(crashed)) == snapshot(str(clean))
    assert not list(tmp_path.glob("crashed.zarr.creating-*"))
    assert subprocess.run([sys.executable, "-m", "nowcast.flows.cli", "check", str(crashed)],
                          capture_output=True, timeout=120).returncode == 0
