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
        _windows_and_scoring_match_the_local_runner(env, fs, local, tmp_path)
    finally:
        stopped = stack.down(tmp_path / "stack")
    assert set(stopped) == {*state["pids"], "postgres"}  # type: ignore[misc]
    for pid in state["pids"].values():  # type: ignore[attr-defined]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (tmp_path / "stack" / stack.STATE_FILE).exists()


def _without_location(digests: dict[str, str], remote: dict[str, str]) -> tuple[dict, dict]:
    """Both snapshots without the root metadata, which names the store's and its archive's location."""
    return ({k: v for k, v in digests.items() if k != "zarr.json"},
            {k: v for k, v in remote.items() if k != "zarr.json"})


def _windows_and_scoring_match_the_local_runner(env, fs, local_archive: str, tmp_path) -> None:
    """The windows and scoring jobs on the stack's dask cluster with S3 stores, against the local runner.

    The jobs' drivers run here (the launcher); the work runs in the dask worker
    processes, which reach the stores and the model registry only through S3.
    """
    from nowcast.pipelines.jobs import scoring
    from nowcast.pipelines.jobs.runners import RunnerOptions
    from nowcast.pipelines.jobs.windows import WindowJob
    from nowcast.pipelines.jobs.windows import run as run_windows
    from nowcast.pipelines.plans.scoring import ScoringSpec
    from nowcast.pipelines.plans.window_spec import SplitSpec, WindowSpec
    from nowcast.pipelines.stores.groups import open_group
    from tests.pipelines.jobs.scoring_helpers import MODEL, save_tiny_model, synthetic_stats

    with stack.s3_client(env):  # this process is the jobs' launcher
        stores = env["NOWCAST_STORES"]
        cluster = RunnerOptions("dask", dask_address=env["NOWCAST_DASK_ADDRESS"])
        split = SplitSpec(block="PT1H", fractions=(0.5, 0.5, 0.0), method="contiguous")
        spec = WindowSpec(channels=("precip",), target="precip", t_in=3, t_out=2, stride=1,
                          patch_size=(16, 16), split=split, samples_per_chunk=8)
        run_windows(WindowJob(archive=f"{stores}/archive.zarr", output=f"{stores}/windows.zarr", spec=spec),
                    cluster)
        run_windows(WindowJob(archive=local_archive, output=str(tmp_path / "windows.zarr"), spec=spec),
                    RunnerOptions("inmemory"))
        local, remote = _without_location(snapshot(str(tmp_path / "windows.zarr")),
                                          _s3_snapshot(fs, f"{stack.BUCKET}/windows.zarr"))
        assert local == remote
        assert len(local) > 10

        models = f"{stores}/models"  # the registry too lives on S3: the workers load the model from there
        save_tiny_model(models, local_archive, synthetic_stats(24, (32, 32), seed=3), patch=(16, 16))
        for archive, forecasts, runner in ((f"{stores}/archive.zarr", f"{stores}/forecasts.zarr", cluster),
                                           (local_archive, str(tmp_path / "forecasts.zarr"),
                                            RunnerOptions("inmemory"))):
            spec_ = ScoringSpec(archive=archive, forecasts=forecasts, models=models, model=MODEL)
            result = scoring.run(spec_, runner)
            assert result.scored == 22
        local, remote = _without_location(snapshot(str(tmp_path / "forecasts.zarr")),
                                          _s3_snapshot(fs, f"{stack.BUCKET}/forecasts.zarr"))
        assert local == remote
        attrs = [dict(open_group(url).attrs) for url in (str(tmp_path / "forecasts.zarr"),
                                                         f"{stores}/forecasts.zarr")]
        assert {k: v for k, v in attrs[0].items() if k != "archive_url"} == \
            {k: v for k, v in attrs[1].items() if k != "archive_url"}  # the same archive fingerprint


def test_stack_commands_without_a_stack_say_so(tmp_path, capsys):
    from nowcast.flows.cli import main

    assert main(["stack", "status", "--folder", str(tmp_path)]) == 1
    assert "no stack is up" in capsys.readouterr().err
    assert main(["stack", "down", "--folder", str(tmp_path)]) == 0
    assert "no stack was up" in capsys.readouterr().out
