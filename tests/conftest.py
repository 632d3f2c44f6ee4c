"""Shared fixtures: the real radar data folder and an offline-friendly environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Prefect configures logging from scratch when prefect.main is first imported (setup_logging: a
# dictConfig that closes the root logger's handlers). First imported inside a test (the commands import
# flows lazily), it closed pytest's capture handlers and took that pytest process down ("I/O operation
# on closed file", "lost sys.stderr"); which test hit it depended on the order tests ran in. Imported
# here, before any test, it finds no capture handler yet.
import prefect.main  # noqa: F401

RADAR_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "radar"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Keeps every collected item for the fault catalogue's check (tests/test_catalogue.py)."""
    from tests.catalogue import ALL_ITEMS

    config.stash[ALL_ITEMS] = list(items)


@pytest.fixture(scope="session")
def radar_dir() -> Path:
    """../shared/data/radar; missing fails under CI=true and skips elsewhere."""
    if not RADAR_DIR.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"real radar data missing at {RADAR_DIR}; CI must provide ../shared")
        pytest.skip(f"real radar data not found at {RADAR_DIR}")
    return RADAR_DIR


@pytest.fixture
def short_lock_lease(monkeypatch):
    """Store-lock leases of 10 s instead of 60 s in this process and its children, for tests that kill a
    writer and rerun at once (the lease itself is tested in tests/pipelines/stores/test_lock.py)."""
    monkeypatch.setenv("NOWCAST_LOCK_LEASE_S", "10")


@pytest.fixture(scope="session")
def dask_scheduler() -> str:
    """Address of a real dask.distributed LocalCluster (2 worker processes) for DaskRunner tests."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real ``prefect server start`` (SQLite, its own PREFECT_HOME) for the whole session.

    Not ``prefect_test_harness``: its ephemeral server runs none of the server's
    services, so the repossessor never frees a concurrency slot whose holder was
    killed, and a test that kills a writer would wait for its slot forever.
    """
    import subprocess
    import sys

    import prefect.context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from nowcast.flows.serve import stop_process, wait_for_api
    from nowcast.processes import free_port

    home = tmp_path_factory.mktemp("prefect-server")
    api = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", api.split(":")[-1].removesuffix("/api")],
                                  env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_api(api, timeout_s=180)
        os.environ["PREFECT_API_URL"] = api  # for the subprocesses tests start
        # threads start with a fresh context: make the setting the process-global one too (as the
        # test harness does)
        with temporary_settings({PREFECT_API_URL: api}), \
                prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()):
            yield api
            # ship the session's flow-run logs and events while the server still answers
            APILogWorker.drain_all()
            EventsWorker.drain_all()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        stop_process(server, timeout_s=30)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A real S3 HTTP API (moto's server, as the stack starts it) on 127.0.0.1 for the session; credentials
    from the environment.

    s3fs (fsspec's s3:// backend) finds it through ``AWS_ENDPOINT_URL``; the
    credentials are moto's dummy ones, set here, never stored in a file.
    """
    from nowcast.flows import stack

    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}
    endpoint, server = stack.start_s3(tmp_path_factory.mktemp("moto"), {**os.environ, **credentials})
    env = {"AWS_ENDPOINT_URL": endpoint, **credentials}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.terminate()
    server.wait(timeout=10)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A new, empty bucket on the session's S3 server: ``s3://<name>``."""
    import uuid

    import s3fs

    name = f"nowcast-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(name)
    return f"s3://{name}"
