"""The deployment stack as separate processes (nowcast.flows.stack): up, a deployment run, down.

Everything here is real: Debian's PostgreSQL behind ``prefect server start``,
deployments registered by ``prefect deploy`` from infra/prefect.yaml, a
``prefect worker`` process that runs them, moto's S3 server holding the
stores, and ``dask scheduler``/``dask worker`` processes (each in its own
folder with its own TMPDIR) running the Beam job.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from nowcast.flows import stack
from nowcast.pipelines.jobs.ingest import IngestSpec, run
from nowcast.pipelines.sources import get_source
from tests.pipelines.jobs.ingest_helpers import snapshot

SYNTHETIC = {"synthetic_frames": 24, "synthetic_size": 32, "time_chunk": 8, "seed": 3}

CLIENT = """
import json, sys
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

params = json.loads(sys.argv[1])
run = run_deployment("ingest/scheduled", parameters={"params": params}, timeout=600)
with get_client(sync_client=True) as client:
    names = sorted(f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments())
    pools = {d.work_pool_name for d in client.read_deployments()}
print(json.dumps({"state": run.state.type.value, "message": run.state.message, "id": str(run.id),
                  "deployments": names, "pools": sorted(pools)}))
"""


def _s3_snapshot(fs, prefix: str) -> dict[str, str]:
    return {key.removeprefix(prefix + "/"): hashlib.sha256(fs.cat_file(key)).hexdigest()
            for key in fs.find(prefix)}


@pytest.mark.slow
def test_a_deployment_runs_on_the_stack_worker_into_s3_through_the_dask_cluster(tmp_path):
    state = stack.up(tmp_path / "stack")
    try:
        env = stack.client_env(state)
        assert str(state["database"]).startswith("postgresql+asyncpg://")
        params = {"archive": f"{env['NOWCAST_STORES']}/archive.zarr", "input_dir": None, **SYNTHETIC,
                  "runner": {"kind": "dask", "dask_address": env["NOWCAST_DASK_ADDRESS"]}}
        done = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(params)], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["state"] == "COMPLETED", report
        assert report["deployments"] == [  # registered by prefect deploy from infra/prefect.yaml
            "backfill/on-demand-cpu", "evaluate/on-demand", "forecast/scheduled-cpu", "ingest/scheduled",
            "train/on-demand-cpu"]
        assert report["pools"] == [stack.POOL]
        worker_log = (tmp_path / "stack" / "prefect-worker.log").read_text()
        assert report["id"] in worker_log  # the separate worker process ran it

        import s3fs

        fs = s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                               client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]})
        remote = _s3_snapshot(fs, f"{stack.BUCKET}/archive.zarr")
        source = get_source("synthetic", shape=(32, 32), n_frames=24, seed=3, density=2.0)
        local = str(tmp_path / "local.zarr")
        run(IngestSpec(archive=local, source=source, time_chunk=8))  # the local runner, on local disk
        assert remote == snapshot(local)  # byte-identical: cluster + object store against the local runner
        assert fs.ls(stack.BUCKET) == [f"{stack.BUCKET}/archive.zarr"]  # the check reports went away
    finally:
        stopped = stack.down(tmp_path / "stack")
    assert set(stopped) == {*state["pids"], "postgres"}  # type: ignore[misc]
    for pid in state["pids"].values():  # type: ignore[attr-defined]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (tmp_path / "stack" / stack.STATE_FILE).exists()
