"""The main job (``make demo``) runs the whole chain end to end against a real Prefect server, quietly."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from nowcast.pipelines.stores.archive import open_archive
from nowcast.pipelines.stores.forecasts import written_flags

PNG = b"\x89PNG\r\n\x1a\n"
MOST_LINES = 41  # issue 16: about 40 lines at the default level, each one the user can use


@pytest.mark.slow
def test_demo_runs_the_chain_and_reports_in_a_few_lines(tmp_path, prefect_server):
    work = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "nowcast.flows.cli", "demo", "--workdir", str(work),
                             "--frames", "96", "--size", "32", "--epochs", "1", "--backfill-hours", "0.5",
                             "--workers", "1"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = (result.stdout + result.stderr).splitlines()
    assert len(printed) <= MOST_LINES, "\n".join(printed)
    assert not result.stderr.strip(), result.stderr  # no warnings, no worker chatter
    ds = open_archive(str(work / "archive.zarr"))
    assert ds.sizes["time"] == 96
    assert bool(ds["valid"].all())
    assert np.nanmax(ds["precip"].values) > 0.1  # some rain was synthesised
    flags = written_flags(str(work / "forecasts.zarr"))
    assert flags.sum() == 6
    assert flags[-6:].all()
    assert "backfilled 6 init times" in result.stdout
    assert "| persistence |" in result.stdout
    assert "| extrapolation |" in result.stdout
    assert result.stdout.count("| model | lead (min) |") == 2  # each table once: the test split, the store
    for name in ("frames.png", "evaluate/test_maps.png", "evaluate/stored_maps.png"):
        assert (work / name).read_bytes()[:8] == PNG, name
    assert list((work / "models" / "convlstm").glob("*/model.keras"))


@pytest.mark.fault("command line", "`demo --frames N` too few for the training run's three splits (10, or "
                   "36: the counts that fill them are not a bound), which failed in training after the "
                   "ingest",
                   "exit 2 before the ingest naming the next count that works and the one from which every "
                   "count does; one line on stderr, no archive written")
def test_demo_refuses_a_frame_count_that_leaves_a_split_empty(tmp_path, prefect_server):
    work = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "nowcast.flows.cli", "demo", "--workdir", str(work),
                             "--frames", "36", "--size", "32", "--epochs", "1"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        "nowcast demo: error: --frames 36 gives no val windows (each split takes PT1H blocks of 5-minute "
        "frames, a window 4 + 3 frames inside one split): use --frames 43 or 79 or more (a count in between "
        "can leave a split empty again)"]
    assert not (work / "archive.zarr").exists()
