"""Shared fixtures: the real radar data folder and an offline-friendly environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RADAR_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "radar"


@pytest.fixture(scope="session")
def radar_dir() -> Path:
    """../shared/data/radar; missing fails under CI=true and skips elsewhere."""
    if not RADAR_DIR.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"real radar data missing at {RADAR_DIR}; CI must provide ../shared")
        pytest.skip(f"real radar data not found at {RADAR_DIR}")
    return RADAR_DIR


@pytest.fixture(scope="session")
def dask_scheduler() -> str:
    """Address of a real dask.distributed LocalCluster (2 worker processes) for DaskRunner tests."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture(scope="session")
def prefect_server():
    """A real temporary Prefect server (SQLite) for the whole session (about 10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
